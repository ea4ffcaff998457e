package hub

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"

	"github.com/dsproxy/dsproxy/hub/registry"
	"github.com/dsproxy/dsproxy/internal/sas"
	"github.com/dsproxy/dsproxy/internal/wire"
	"github.com/dsproxy/dsproxy/internal/wsmux"
)

// session is a device's control session: a yamux client over the device's
// WebSocket.
type session struct {
	deviceID string
	mux      *yamux.Session
	ws       *websocket.Conn
	log      sessionLog
	token    sas.Token // the device signed in with; see signedWith
	since    time.Time
	epoch    int64         // the session's number among the device's, across replicas (cluster.go)
	up       chan struct{} // closed once SessionReady is sent
	inline   bool          // the device takes inline stream requests
	// maxFrame is the largest data payload the device accepts, as the
	// wire carries it (see announcedMaxFrame, wire.FrameLimit).
	maxFrame int

	// active counts the inline streams the session carries; quiet gets a
	// token whenever it drops to zero. A session that is replaced or that
	// the hub stops using stays open until they are over.
	active atomic.Int32
	quiet  chan struct{}

	// ended is set by end, before the session is closed: no new stream
	// goes over a session from then on (see Server.initiate).
	ended atomic.Bool

	// h is the session's state from its setup to its teardown (see held).
	h held
}

// end asks for the session to be closed, for why; it does not wait. Only
// the first reason counts. From its return, ending reports true.
func (c *session) end(why error) {
	c.ended.Store(true)
	c.finish(why)
}

// ending reports whether end was called: the session is being closed
// (replaced, revoked, the hub shutting down) and takes no new stream.
func (c *session) ending() bool { return c.ended.Load() }

// errSessionGone reports a control session that ended while a request was
// being delivered over it.
var errSessionGone = errors.New("device session closed")

// request delivers one stream request over the session and returns the
// device's answer. The request must reach the device within deliver; ctx
// bounds the whole exchange. For an inline request, sent (when not nil) is
// called once the request is on the control stream, and when the device
// accepts, the control stream is returned: it carries the stream's data,
// and the caller must hand it back with release.
func (c *session) request(ctx context.Context, req *wire.StreamRequest, deliver time.Duration, sent func(*yamux.Stream)) (wire.StreamResponse, *yamux.Stream, error) {
	// The device takes the first stream it accepts for SessionReady: no
	// request may overtake it.
	select {
	case <-c.up:
	case <-c.mux.CloseChan():
		return wire.StreamResponse{}, nil, errSessionGone
	case <-ctx.Done():
		return wire.StreamResponse{}, nil, ctx.Err()
	}
	st, err := c.mux.OpenStream()
	if err != nil {
		return wire.StreamResponse{}, nil, fmt.Errorf("open control stream: %w", errSessionGone)
	}
	keep := false
	defer func() {
		if !keep {
			st.Close()
		}
	}()
	_ = st.SetWriteDeadline(time.Now().Add(deliver))
	if dl, ok := ctx.Deadline(); ok {
		_ = st.SetReadDeadline(dl)
	}
	// A deadline, not Close: Close only half-closes a yamux stream, and
	// the read would wait on for the device's answer.
	stop := context.AfterFunc(ctx, func() { _ = st.SetDeadline(time.Now()) })
	defer stop()

	var resp wire.StreamResponse
	err = wire.WriteMessage(st, req)
	if err == nil && sent != nil {
		sent(st)
	}
	if err == nil {
		err = wire.ReadMessage(st, &resp)
	}
	if err == nil {
		err = resp.Validate()
	}
	if err == nil && req.Inline && resp.Accepted && !stop() {
		err = ctx.Err() // the deadline above may have hit the stream
	}
	if err != nil {
		if ctx.Err() != nil {
			return resp, nil, ctx.Err()
		}
		if c.mux.IsClosed() || errors.Is(err, io.EOF) || errors.Is(err, yamux.ErrConnectionReset) || errors.Is(err, yamux.ErrSessionShutdown) {
			return resp, nil, fmt.Errorf("%w: %v", errSessionGone, err)
		}
		var ne interface{ Timeout() bool }
		if errors.As(err, &ne) && ne.Timeout() {
			return resp, nil, context.DeadlineExceeded
		}
		return resp, nil, fmt.Errorf("device answer: %w", err)
	}
	if req.Inline && resp.Accepted {
		_ = st.SetDeadline(time.Time{})
		c.active.Add(1)
		keep = true
		return resp, st, nil
	}
	return resp, nil, nil
}

// release closes an inline stream's control stream and lets a session that
// waits for its inline streams go when it was the last.
func (c *session) release(st *yamux.Stream) {
	st.Close()
	if c.active.Add(-1) == 0 {
		select {
		case c.quiet <- struct{}{}:
		default:
		}
	}
}

// retire waits until the session carries no inline stream, the session
// dies or ctx ends.
func (c *session) retire(ctx context.Context) {
	for c.active.Load() > 0 {
		select {
		case <-c.quiet:
		case <-c.mux.CloseChan():
			return
		case <-ctx.Done():
			return
		}
	}
}

// ready tells the device that stream requests now reach it.
func (c *session) ready() error {
	st, err := c.mux.OpenStream()
	if err != nil {
		return err
	}
	defer st.Close()
	return wire.WriteMessage(st, &wire.SessionReady{DeviceID: c.deviceID})
}

func (s *Server) handleControl(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if aerr := checkDeviceID(id); aerr != nil {
		s.writeError(w, r, aerr.status, aerr)
		return
	}
	p, ok := s.require(w, r, "/devices/"+id, registry.DeviceConnect)
	if !ok {
		return
	}
	if p.deviceID != id {
		s.writeError(w, r, http.StatusForbidden, errForbidden(fmt.Sprintf("a control session needs the token of device %q itself", id)))
		return
	}
	if !slices.Contains(headerTokens(r.Header, "Sec-WebSocket-Protocol"), wire.ControlSubprotocol) {
		s.writeError(w, r, http.StatusBadRequest, errBadRequest("a control session needs the WebSocket subprotocol "+wire.ControlSubprotocol))
		return
	}
	if !s.track() {
		s.writeError(w, r, http.StatusServiceUnavailable, &apiError{http.StatusServiceUnavailable, wire.CodeServiceUnavailable, "ServiceUnavailable", "hub is shutting down"})
		return
	}
	ctx, drop := context.WithCancel(s.ctx)
	tok, _ := sas.ParseToken(r.Header.Get("Authorization")) // require checked it
	features := headerTokens(r.Header, wire.HeaderFeatures)
	c := &session{
		deviceID: id,
		log:      sessionLog{base: s.log, device: id, remote: r.RemoteAddr},
		token:    tok,
		since:    time.Now(),
		up:       make(chan struct{}),
		inline:   slices.Contains(features, wire.FeatureInline),
		quiet:    make(chan struct{}, 1),
		h:        held{s: s, ctx: ctx, drop: drop},

		maxFrame: announcedMaxFrame(features),
	}
	// The session has no goroutine of its own besides yamux's two loops
	// (issue 6: an idle device's memory): yamux refuses the streams the
	// device opens itself and tells the hub (deviceOpened), and calls
	// finish when the session ends; the keepalive runs on timers
	// (wsmux.Watch). The backlog bounds the streams the hub opens that
	// the device has not yet taken: 64 at once per device is plenty.
	ws, nc, mux := upgradeMux(ctx, controlHijack{w}, r, wire.ControlSubprotocol, yamux.Client, func(cfg *yamux.Config) {
		cfg.AcceptBacklog = controlBacklog
		cfg.RefuseStream = c.deviceOpened
		cfg.OnClose = c.closed
		cfg.Logger = log.New(c.log, "", 0)
	}, c.log.Logger())
	if mux == nil {
		drop()
		s.conns.Done()
		return
	}
	c.ws, c.mux, c.h.nc = ws, mux, nc
	// The session outlives the request (its context is the hub's). Its
	// setup (the claim, the replacement of an older session, the ready
	// message) runs on this goroutine; net/http's goroutine, its
	// per-connection buffers and the request go once this returns. Its
	// end runs on a goroutine that the hub starts then and waits for
	// (s.conns), closeSession.
	if !s.openSession(ctx, c, nc) {
		drop()
		s.conns.Done()
		return
	}
	s.holdSession(c)
}

// sessionLog is a control session's logger: the hub's, with the
// session's fields added to each event. It is no zerolog child logger,
// whose 500-byte buffer an idle device would keep for its session's life
// (issue 6); a session logs little.
type sessionLog struct {
	base           zerolog.Logger
	device, remote string
}

func (l sessionLog) Debug() *zerolog.Event { return l.with(l.base.Debug()) }
func (l sessionLog) Info() *zerolog.Event  { return l.with(l.base.Info()) }
func (l sessionLog) Warn() *zerolog.Event  { return l.with(l.base.Warn()) }

func (l sessionLog) with(e *zerolog.Event) *zerolog.Event {
	return e.Str(fieldDevice, l.device).Str(fieldRemote, l.remote)
}

// Logger returns a child logger with the session's fields.
func (l sessionLog) Logger() zerolog.Logger {
	return l.base.With().Str(fieldDevice, l.device).Str(fieldRemote, l.remote).Logger()
}

// Write makes l yamux's logger (through a log.Logger): what yamux says
// about the session goes to debug, as yamuxLogger's.
func (l sessionLog) Write(p []byte) (int, error) {
	l.Debug().Str("detail", string(trimNewline(p))).Msg("control session")
	return len(p), nil
}

// controlBacklog is a control session's yamux AcceptBacklog.
const controlBacklog = 64

// Why a session is closed besides its own end (see end).
var (
	errSessionReplaced = errors.New("session replaced or revoked")
	errHubStopping     = errors.New("hub shutting down")
	errDeviceOpened    = errors.New("device opened a control stream")
)

// held is a control session's state from its setup (openSession) to its
// teardown (closeSession).
type held struct {
	s          *Server
	ctx        context.Context    // the session's share of the hub's lifetime
	drop       context.CancelFunc // ends ctx: cuts the connection
	nc         net.Conn           // the session's connection (wsmux.Conn)
	watch      *wsmux.Watcher
	stopChecks func()
	readyErr   error

	mu      sync.Mutex
	holding bool  // holdSession ran: finish starts the teardown
	asked   bool  // finish was called
	why     error // finish's first reason; nil: the session ended by itself
}

// finish asks for the session's teardown, for why (nil when the session
// ended by itself); it does not wait. Only the first call counts. Before
// holdSession, it only records the request, which holdSession then serves.
func (c *session) finish(why error) {
	h := &c.h
	h.mu.Lock()
	if h.asked {
		h.mu.Unlock()
		return
	}
	h.asked, h.why = true, why
	run := h.holding
	h.mu.Unlock()
	if run {
		go h.s.closeSession(c)
	}
}

// closed is yamux's OnClose: the session ended (by itself or closed by
// the hub), and so does the hub's hold on it.
func (c *session) closed(error) { c.finish(nil) }

// deviceOpened is yamux's RefuseStream: the device opened a stream, which
// in dsproxy.control.v1 only the hub does. yamux resets it at once and
// queues nothing; the hub ends the session. Upstream yamux would queue up
// to its backlog of streams a device opens, each with a 256 KiB window of
// data the hub never reads. The device is not lost (its streams go on,
// each on its own WebSockets); it may connect again. It runs on yamux's
// receive loop and does not block.
func (c *session) deviceOpened() {
	if c.ending() {
		return // said once
	}
	c.log.Warn().Msg("device opened a control stream, which only the hub may: session closed")
	c.end(errDeviceOpened)
}

// openSession sets up the control session c over nc: it starts the
// keepalive watch, claims the session, makes it the device's current one
// (ending an older one) and tells the device it is ready. It returns false
// when the session is closed already (the registry refused the claim, or a
// newer session is held); otherwise the caller must call holdSession.
func (s *Server) openSession(ctx context.Context, c *session, nc net.Conn) bool {
	ws, mux, h := c.ws, c.mux, &c.h
	h.watch = wsmux.Watch(mux, nc, s.cfg.KeepAliveInterval, s.cfg.ConnectionWriteTimeout)
	closed := func(code websocket.StatusCode, why string) bool {
		wsmux.Flush(nc)
		ws.Close(code, why)
		mux.Close()
		h.watch.Stop() // after mux.Close
		return false
	}
	if err := s.claimSession(ctx, c); err != nil {
		c.log.Warn().Err(err).Msg("cannot record the device's session in the registry: closing it, the device will retry")
		return closed(websocket.StatusTryAgainLater, "registry unavailable: retry later")
	}
	old, current := s.addSession(c)
	if !current {
		c.log.Info().Msg("device session closed: a newer one is already held")
		return closed(websocket.StatusGoingAway, "session replaced by a newer one")
	}
	if old != nil {
		old.log.Info().Msg("device session replaced by a newer one")
		old.end(errSessionReplaced) // its streams go on: they have their own connections
	}
	h.stopChecks = s.announce(c)
	h.readyErr = c.ready()
	if h.readyErr != nil {
		c.log.Debug().Err(h.readyErr).Msg("session ended before it was ready")
		mux.Close()
	} else {
		close(c.up)
		c.log.Info().Msg("device connected")
	}
	return true
}

// holdSession hands the control session c, set up by openSession, to its
// end: from now on finish starts closeSession on a goroutine of its own,
// and at once when it was called already. It does not block: until the
// session ends (by itself, or when a newer session replaces it, the
// device is revoked or the hub shuts down, see end), it costs the hub no
// goroutine besides yamux's two loops. The hub's context ends only after
// drain ended every session.
func (s *Server) holdSession(c *session) {
	h := &c.h
	h.mu.Lock()
	h.holding = true
	run := h.asked
	h.mu.Unlock()
	if run {
		go s.closeSession(c)
	}
}

// closeSession closes the control session c, for the reason finish was
// given, and does the hub's bookkeeping of its end: the device becomes
// unavailable, a lost device's streams end, the registry and the logs
// hear of it. It holds the hub's count of connections (s.conns) that
// handleControl took, and gives it back.
func (s *Server) closeSession(c *session) {
	ws, mux, h := c.ws, c.mux, &c.h
	ctx, drop, nc, watch := h.ctx, h.drop, h.nc, h.watch
	defer s.conns.Done()
	defer drop()
	defer watch.Stop() // after mux.Close below
	defer h.stopChecks()
	why := "session ended"
	if !mux.IsClosed() && h.why != nil && ctx.Err() == nil {
		why = h.why.Error()
	}
	var lost error
	if !mux.IsClosed() && c.active.Load() > 0 {
		// Route nothing more here, but let the inline streams the session
		// carries run to their end (a revocation or the end of the
		// shutdown grace ends them).
		s.removeSession(c)
		c.retire(ctx)
	}
	if mux.IsClosed() {
		// The session died by itself. Unless the device closed it (its
		// close frame reads as io.EOF), the device is lost: a keepalive
		// or stream-open timeout, a broken connection.
		if err := sessionErr(mux); h.readyErr == nil && !errors.Is(err, io.EOF) {
			lost = err
			if werr := watch.Err(); werr != nil {
				lost = werr
			}
		}
	}
	// Unavailable at once, before the close handshake, which a frozen
	// device makes wait.
	removed := s.removeSession(c)
	if lost != nil {
		s.metrics.sessionLost()
		c.log.Warn().Err(lost).Msg("device lost: no keepalive answer or a broken connection; ending its streams")
		s.loseSession(c, lost)
		drop() // a lost device never answers the close handshake: cut the connection
	} else {
		wsmux.Flush(nc) // the frames yamux sent go out before the close frame
	}
	ws.Close(websocket.StatusGoingAway, why)
	mux.Close()
	if removed {
		s.release(c)
		c.log.Info().Msg("device disconnected")
	}
}

// addSession makes c the device's current session and returns the one it
// replaces, if any. The newer session wins: the later one on a single
// node, the higher epoch in a cluster; current is false when the session
// held already is newer than c, which is then not added. A session added
// while the hub drains is ended at once (drain ends those added before).
func (s *Server) addSession(c *session) (old *session, current bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		c.end(errHubStopping)
	}
	old = s.sessions[c.deviceID]
	if old != nil && old.epoch > c.epoch {
		return nil, false
	}
	s.sessions[c.deviceID] = c
	if old == nil && s.cluster != nil {
		s.cluster.holdLocked(c.deviceID)
	}
	s.metrics.sessionAdded(old != nil)
	return old, true
}

// removeSession forgets c if it is still the device's current session.
func (s *Server) removeSession(c *session) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sessions[c.deviceID] != c {
		return false
	}
	delete(s.sessions, c.deviceID)
	if s.cluster != nil {
		s.cluster.dropLocked(c.deviceID)
	}
	return true
}

// sessionFor returns the device's current session, or nil.
func (s *Server) sessionFor(id string) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions[id]
}

// dropSession closes the device's session, if any, and ends the streams
// delivered to it (after the device was disabled or deleted).
func (s *Server) dropSession(id string) {
	s.revoke(id, nil, "device disabled or deleted")
}

// connected reports whether the device holds a session.
func (s *Server) connected(id string) bool { return s.sessionFor(id) != nil }

// Connected reports whether the device holds a control session on this
// hub (on this replica, when there are several).
func (s *Server) Connected(id string) bool { return s.connected(id) }

// headerTokens splits a comma-separated header into its trimmed tokens.
func headerTokens(h http.Header, name string) []string {
	var out []string
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if t = strings.TrimSpace(t); t != "" {
				out = append(out, t)
			}
		}
	}
	return out
}
