package hub

// Service sessions (the fast path; internal/wire describes the protocol).
// A service proxy holds one session and opens a yamux stream per stream;
// the hub asks the device over its control session with an inline request
// and, on acceptance, splices the service's yamux stream to the device's
// control stream, frame by frame. No TCP, TLS or WebSocket handshake per
// stream, and the service's first bytes follow the request to the device
// before it has answered. Everything else is the per-stream flow's:
// initiate (limits, registry, events, metrics), the handshake deadline,
// revocation, loss and shutdown through the stream's stop channel.
//
// Liveness: the relay pings nothing; the two sessions' yamux keepalives
// do. A lost session ends the streams it carried (ClosePeerLost); a stream
// whose reader stalls holds only its own yamux window.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
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

// svcSession is a service's session.
type svcSession struct {
	policy string
	token  sas.Token // the service signed in with
	since  time.Time
	log    zerolog.Logger
	// maxFrame is the largest data payload the service accepts, as the
	// wire carries it (see announcedMaxFrame, wire.FrameLimit).
	maxFrame int

	// verified holds the policy's keys (primary, secondary) that token
	// last verified with. The check depends on nothing else that changes
	// (its time is since), so while the keys are the same the HMAC need
	// not be computed again for each stream (issue 7).
	verified atomic.Pointer[[2]string]
}

func (s *Server) handleServiceSession(w http.ResponseWriter, r *http.Request) {
	p, ok := s.require(w, r, "", registry.ServiceConnect)
	if !ok {
		return
	}
	if !slices.Contains(headerTokens(r.Header, "Sec-WebSocket-Protocol"), wire.SessionSubprotocol) {
		s.writeError(w, r, http.StatusBadRequest, errBadRequest("a service session needs the WebSocket subprotocol "+wire.SessionSubprotocol))
		return
	}
	if !s.track() {
		s.writeError(w, r, http.StatusServiceUnavailable, errHubShuttingDown())
		return
	}
	defer s.conns.Done()
	log := s.log.With().Str(fieldPolicy, p.policy).Str(fieldRemote, r.RemoteAddr).Logger()
	ctx, drop := context.WithCancel(s.ctx)
	defer drop()
	ws, nc, mux, watched := s.acceptSession(ctx, w, r, wire.SessionSubprotocol, yamux.Server, log)
	if mux == nil {
		return
	}
	defer watched()
	tok, _ := sas.ParseToken(r.Header.Get("Authorization")) // require checked it
	ss := &svcSession{policy: p.policy, token: tok, since: time.Now(), log: log,
		maxFrame: announcedMaxFrame(headerTokens(r.Header, wire.HeaderFeatures))}
	log.Info().Msg("service session up")
	s.svcSessions.Add(1)
	defer s.svcSessions.Add(-1)

	var streams sync.WaitGroup
	accepting := make(chan struct{})
	go func() {
		defer close(accepting)
		for {
			st, err := mux.AcceptStream()
			if err != nil {
				return
			}
			streams.Add(1)
			go func() {
				defer streams.Done()
				s.serveSessionStream(ctx, ss, st)
			}()
		}
	}()
	why := "session ended"
	select {
	case <-mux.CloseChan():
	case <-s.stopping:
		// New streams are refused (503) from now on; those running
		// finish, or end when the shutdown grace is over.
		why = "hub shutting down"
		done := make(chan struct{})
		go func() {
			<-accepting
			streams.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-mux.CloseChan():
		case <-ctx.Done():
		}
	case <-ctx.Done():
	}
	if mux.IsClosed() {
		if err := sessionErr(mux); !errors.Is(err, io.EOF) {
			log.Warn().Err(err).Msg("service session lost: no keepalive answer or a broken connection; ending its streams")
			s.endStreams(func(st *stream) bool { return st.svc == ss }, end{
				from: sideService, dead: true, code: ClosePeerLost, why: "service connection lost",
				result: resultLost, reason: fmt.Sprintf("service session lost: %v", err),
			})
			drop() // a lost peer never answers the close handshake
		}
	}
	wsmux.Flush(nc) // the streams' last frames go before the close frame
	ws.Close(websocket.StatusGoingAway, why)
	mux.Close()
	<-accepting
	streams.Wait()
	log.Info().Msg("service session ended")
}

// upgradeMux upgrades r to a WebSocket with subprotocol and runs a yamux
// session over it (newMux is yamux.Client or yamux.Server; tune, when not
// nil, adjusts its configuration), for as long as ctx: the session outlives
// the request, ctx is the caller's share of the hub's lifetime. It returns
// a nil mux when the upgrade failed. Before closing ws itself, the caller
// should let the session's queued frames go out (wsmux.Flush on nc).
func upgradeMux(ctx context.Context, w http.ResponseWriter, r *http.Request, subprotocol string,
	newMux func(io.ReadWriteCloser, *yamux.Config) (*yamux.Session, error), tune func(*yamux.Config), log zerolog.Logger,
) (ws *websocket.Conn, nc net.Conn, mux *yamux.Session) {
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		Subprotocols:       []string{subprotocol},
		InsecureSkipVerify: true, // not a browser endpoint: authentication is the SAS token
	})
	if err != nil {
		log.Debug().Err(err).Msg("session upgrade failed")
		return nil, nil, nil
	}
	nc = wsmux.Conn(ctx, ws, batcherOf(r))
	// yamux's complaints say why a session broke: at debug.
	cfg := wsmux.Config(yamuxLogger(log))
	if tune != nil {
		tune(cfg)
	}
	mux, err = newMux(nc, cfg)
	if err != nil {
		ws.CloseNow()
		return nil, nil, nil
	}
	return ws, nc, mux
}

// acceptSession is upgradeMux for a service session, watched by
// wsmux.Keepalive. The caller must close mux, then call watched, which
// waits for the keepalive watch.
func (s *Server) acceptSession(ctx context.Context, w http.ResponseWriter, r *http.Request, subprotocol string,
	newMux func(io.ReadWriteCloser, *yamux.Config) (*yamux.Session, error), log zerolog.Logger,
) (ws *websocket.Conn, nc net.Conn, mux *yamux.Session, watched func()) {
	ws, nc, mux = upgradeMux(ctx, w, r, subprotocol, newMux, nil, log)
	if mux == nil {
		return nil, nil, nil, nil
	}
	watching := make(chan struct{})
	go func() {
		defer close(watching)
		_ = wsmux.Keepalive(mux, nc, s.cfg.KeepAliveInterval, s.cfg.ConnectionWriteTimeout)
	}()
	return ws, nc, mux, func() { <-watching }
}

// serveSessionStream runs one stream of a service session: it reads the
// service's OpenStream, initiates the stream and answers with an
// OpenResult, then relays until the stream ends.
func (s *Server) serveSessionStream(ctx context.Context, ss *svcSession, yst *yamux.Stream) {
	defer yst.Close()
	_ = yst.SetReadDeadline(time.Now().Add(s.cfg.ConnectionWriteTimeout))
	var req wire.OpenStream
	err := wire.ReadMessage(yst, &req)
	if err != nil {
		ss.log.Debug().Err(err).Msg("session stream without an OpenStream message")
		return
	}
	_ = yst.SetReadDeadline(time.Time{})
	aerr := openErr(req.Validate())
	if aerr == nil {
		aerr = checkDeviceID(req.DeviceID)
	}
	if aerr == nil {
		aerr = checkStreamName(req.Name)
	}
	if aerr == nil {
		aerr = s.authorizeSession(ctx, ss, req.DeviceID)
	}
	if aerr == nil && s.cluster != nil && !s.connected(req.DeviceID) {
		// Another replica may hold the device: the service opens the
		// stream on a session to it (cluster.go).
		var replica string
		if replica, aerr = s.locate(ctx, req.DeviceID); aerr == nil && replica != s.addr {
			ss.log.Debug().Str(fieldDevice, req.DeviceID).Str("replica", replica).Msg("session stream redirected")
			s.redirectOpen(yst, req.DeviceID, replica)
			return
		}
	}
	if aerr != nil {
		ss.log.Debug().Str(fieldDevice, req.DeviceID).Str("reason", aerr.msg).Msg("session stream refused")
		s.answerOpen(yst, &refusal{apiError: aerr}, nil, wire.StreamResponse{}, 0)
		return
	}

	sp := &splice{s: s, ends: make(chan end, 3), idle: s.watchIdle(nil)}
	defer sp.idle.stop()
	sp.conns[sideService] = yst
	sp.limit[sideService] = wire.FrameLimit(ss.maxFrame)
	in := initiation{
		policy: ss.policy, deviceID: req.DeviceID, name: req.Name,
		connectTO:  clampSeconds(req.ConnectTimeout, s.cfg.ConnectTimeout, s.cfg.MaxRequestTimeout),
		responseTO: clampSeconds(req.ResponseTimeout, s.cfg.ResponseTimeout, s.cfg.MaxRequestTimeout),
		inline:     true,
		svc:        ss,
		sent: func(st *stream, ctl *yamux.Stream) {
			// The service's first bytes follow the request at once. Its
			// end, should it come first, waits in sp.ends: the stream
			// ends as soon as it is relayed, and the device sees why.
			s.mu.Lock()
			sp.limit[sideDevice] = wire.FrameLimit(st.sess.maxFrame)
			s.mu.Unlock()
			sp.st, sp.conns[sideDevice] = st, ctl
			sp.run(sideService)
		},
	}
	st, resp, ctl, ref := s.initiate(ctx, in)
	if ctl == nil {
		// Refused, rejected or abandoned: stop the service's data.
		_ = yst.SetReadDeadline(time.Now())
		sp.wg.Wait()
		s.answerOpen(yst, ref, st, resp, 0)
		return
	}
	s.mu.Lock()
	sess := st.sess
	s.mu.Unlock()
	defer sess.release(ctl)
	if err := s.answerOpen(yst, nil, st, resp, sess.maxFrame); err != nil {
		st.log.Debug().Err(err).Msg("service gone before the answer")
	}
	result, reason := sp.relay(st)
	s.mu.Lock()
	s.endLocked(st)
	s.mu.Unlock()
	s.streamEnded(st, result, reason)
}

// announcedMaxFrame is the largest data payload a session's peer accepts,
// from the features it announced, as OpenResult.MaxFrame and
// StreamRequest.MaxFrame carry it: wire.MaxFramePayload with
// wire.FeatureLargeFrames, else 0 (wire.LegacyFramePayload).
func announcedMaxFrame(features []string) int {
	if slices.Contains(features, wire.FeatureLargeFrames) {
		return wire.MaxFramePayload
	}
	return 0
}

// openErr turns an invalid OpenStream into a 400.
func openErr(err error) *apiError {
	if err != nil {
		return errBadRequest(err.Error())
	}
	return nil
}

// clampSeconds reads a timeout in seconds from an OpenStream: zero (or
// less) means def, and it is at most max.
func clampSeconds(n int, def, max time.Duration) time.Duration {
	if n <= 0 {
		return def
	}
	return min(time.Duration(n)*time.Second, max)
}

// authorizeSession checks, for each stream, that the session's credential
// still allows a stream to deviceID: its token covers the device, its
// policy still exists and holds ServiceConnect, and the token still
// verifies with one of the policy's keys as it did when the session began.
func (s *Server) authorizeSession(ctx context.Context, ss *svcSession, deviceID string) *apiError {
	if err := ss.token.Covers(s.hostNames(), "/devices/"+deviceID); err != nil {
		return errUnauthorized(fmt.Sprintf("the session's token does not cover device %q: %v", deviceID, err))
	}
	pol, err := s.reg.GetPolicy(ctx, ss.policy)
	switch {
	case errors.Is(err, registry.ErrNotFound):
		return errUnauthorized(fmt.Sprintf("shared access policy %q no longer exists", ss.policy))
	case err != nil:
		return &apiError{http.StatusInternalServerError, wire.CodeInternal, "ServerError", "registry unavailable"}
	case !pol.Rights.Has(registry.ServiceConnect):
		return errForbidden(fmt.Sprintf("%s lacks %s", ss.policy, registry.ServiceConnect))
	}
	keys := [2]string{pol.PrimaryKey, pol.SecondaryKey}
	if v := ss.verified.Load(); v == nil || *v != keys {
		if aerr := verifyEither(ss.token, pol.PrimaryKey, pol.SecondaryKey, ss.since, s.cfg.ClockSkew); aerr != nil {
			return errUnauthorized("the policy's keys changed since the session began: reconnect with the new key")
		}
		ss.verified.Store(&keys)
	}
	return nil
}

// answerOpen writes the OpenResult of a session stream: ref's error, the
// device's rejection, or acceptance, with maxFrame, the largest data
// payload the device accepts (0 for wire.LegacyFramePayload). With neither
// ref nor st (the service went away first) it writes nothing.
func (s *Server) answerOpen(yst *yamux.Stream, ref *refusal, st *stream, resp wire.StreamResponse, maxFrame int) error {
	var res wire.OpenResult
	switch {
	case ref != nil:
		s.metrics.refused(ref.status)
		res = wire.OpenResult{Status: ref.status, ErrorCode: ref.code, Message: ref.msg}
		if ref.retryAfter > 0 {
			res.RetryAfter = int(retrySeconds(ref.retryAfter))
		}
	case st == nil:
		return nil
	default:
		res = wire.OpenResult{StreamID: st.id, Status: http.StatusOK, Accepted: resp.Accepted, Reason: resp.Reason}
		if resp.Accepted {
			res.MaxFrame = maxFrame
		}
	}
	_ = yst.SetWriteDeadline(time.Now().Add(s.cfg.ConnectionWriteTimeout))
	defer yst.SetWriteDeadline(time.Time{})
	return wire.WriteMessage(yst, &res)
}

// redirectOpen answers a session stream with the replica that holds the
// device's session.
func (s *Server) redirectOpen(yst *yamux.Stream, deviceID, replica string) {
	_ = yst.SetWriteDeadline(time.Now().Add(s.cfg.ConnectionWriteTimeout))
	_ = wire.WriteMessage(yst, &wire.OpenResult{
		Status: wire.StatusRedirect, Replica: replica,
		Message: fmt.Sprintf("device %q is connected to hub replica %s: open the stream there", deviceID, replica),
	})
}

// streamEnded logs and records the end of a relayed stream. The line is
// at debug level: the stream event has the same (and the policy, and the
// result), and a line per stream at info was a share of a stream's setup
// (issue 7).
func (s *Server) streamEnded(st *stream, result, reason string) {
	st.log.Debug().
		Int64("bytes_up", st.bytesUp.Load()).
		Int64("bytes_down", st.bytesDown.Load()).
		Stringer("duration", time.Since(st.created).Round(time.Millisecond)).
		Str("reason", reason).
		Msg("stream ended")
	s.recordEvent(st, result, reason)
}

// splice relays the frames of one session stream between the service's
// yamux stream and the device's control stream.
type splice struct {
	s     *Server
	st    *stream          // set, with conns[sideDevice], before a pump starts
	conns [2]*yamux.Stream // by side
	idle  *idleWatch       // nil when the idle timeout is off
	ends  chan end         // one per pump, and one to spare
	// limit is, by side, the largest data payload it accepts
	// (wire.FrameLimit); set with conns.
	limit [2]int

	// mu[sd] is held while a frame is written to side sd; after shut[sd]
	// nothing more is.
	mu   [2]sync.Mutex
	shut [2]bool
	wg   sync.WaitGroup
}

// errUnframed is how a pump reports a side whose yamux stream ended
// without a close frame, or that sent a broken frame.
var errUnframed = errors.New("stream ended without a close frame")

// run starts the pump from side from.
func (sp *splice) run(from side) {
	sp.wg.Add(1)
	go func() {
		defer sp.wg.Done()
		sp.ends <- sp.pump(from)
	}()
}

// relay runs st from the moment the device accepted until it ends, then
// ends both sides with the same close code and returns the stream's
// result and reason, as Server.relay does.
func (sp *splice) relay(st *stream) (result, reason string) {
	idle := sp.idle
	idle.touch() // the handshake was activity
	sp.run(sideDevice)
	var first end
	select {
	case first = <-sp.ends:
	case first = <-st.stop:
	case <-sp.s.ctx.Done():
		first = shutdownEnd
	case <-idle.expired():
		first = end{from: -1, err: errIdle}
	}
	if first.from == sideDevice && errors.Is(first.err, errUnframed) {
		first = sp.sessionEnd(st, first)
	}
	code, why := closeFor(first)
	for sd, c := range sp.conns {
		if first.dead && side(sd) == first.from {
			continue
		}
		if sp.mu[sd].TryLock() {
			if !sp.shut[sd] {
				_ = c.SetWriteDeadline(time.Now().Add(time.Second))
				_, _ = c.Write(wire.AppendClose(nil, int(code), why))
			}
			sp.shut[sd] = true
			sp.mu[sd].Unlock()
		}
		// Else a pump is writing a frame, which a stalled reader may
		// hold up: the deadline below cuts it, and the side sees the
		// stream end without a close frame, as a lost peer.
	}
	for _, c := range sp.conns {
		_ = c.SetDeadline(time.Now())
	}
	sp.wg.Wait()
	switch {
	case first.err == errIdle:
		return "idle", fmt.Sprintf("idle timeout: no message in either direction for %s", sp.s.cfg.IdleStreamTimeout)
	default:
		return outcome(first, why)
	}
}

// sessionEnd is the end of st when the device's side ended without a
// close frame (first): when the device's control session is closed, its
// yamux streams end before the hub has read why (closeSession runs from
// yamux's OnClose, after), so the session's end, which loseSession or a
// revocation sends on st.stop, is waited for briefly and names the cause.
func (sp *splice) sessionEnd(st *stream, first end) end {
	sp.s.mu.Lock()
	sess := st.sess
	sp.s.mu.Unlock()
	if sess == nil || !sess.mux.IsClosed() {
		return first
	}
	t := time.NewTimer(sessionEndWait)
	defer t.Stop()
	select {
	case e := <-st.stop:
		return e
	case <-t.C:
		return first
	}
}

// sessionEndWait bounds how long a stream whose device session closed
// waits for the session's end to say why.
const sessionEndWait = 500 * time.Millisecond

// pump copies frames from side from to the other side until a close
// frame, an error, a data frame larger than the other side accepts or the
// end of from's stream.
func (sp *splice) pump(from side) end {
	to := 1 - from
	src := sp.conns[from]
	var h [wire.FrameHeaderSize]byte
	for {
		// A data frame that arrived in one piece, as a rule, goes on
		// from the buffer yamux received it in, without a copy; it
		// stays counted against from's window until it is sent.
		p, err := src.Next()
		if err != nil {
			return end{from: from, err: unframed(err)}
		}
		if frame := wholeData(p, sp.limit[to]); frame != nil {
			err := sp.send(to, frame)
			cerr := src.Consume(len(frame))
			if err != nil {
				return end{from: to, err: unframed(err)}
			}
			if cerr != nil {
				return end{from: from, err: unframed(cerr)}
			}
			sp.moved(from, len(frame)-wire.FrameHeaderSize)
			continue
		}
		if _, err := io.ReadFull(src, h[:]); err != nil {
			return end{from: from, err: unframed(err)}
		}
		typ, n, err := wire.ParseFrameHeader(h[:])
		if err != nil {
			return end{from: from, err: fmt.Errorf("%w: %v", errUnframed, err)}
		}
		if typ == wire.FrameData && n > sp.limit[to] {
			// A peer that sends more than was negotiated (wire.OpenResult,
			// wire.StreamRequest): relayed, it would break the other side's
			// stream with a bad frame; ended here, both sides learn why.
			return oversized(from, n, sp.limit[to])
		}
		if typ == wire.FrameClose {
			b := make([]byte, n)
			if _, err := io.ReadFull(src, b); err != nil {
				return end{from: from, err: unframed(err)}
			}
			code, reason, err := wire.ParseClose(b)
			if err != nil {
				return end{from: from, err: fmt.Errorf("%w: %v", errUnframed, err)}
			}
			return end{from: from, err: websocket.CloseError{Code: websocket.StatusCode(code), Reason: reason}}
		}
		bp := wire.FrameBuffer()
		frame := (*bp)[:wire.FrameHeaderSize+n]
		copy(frame, h[:])
		if _, err := io.ReadFull(src, frame[wire.FrameHeaderSize:]); err != nil {
			wire.PutFrameBuffer(bp)
			return end{from: from, err: unframed(err)}
		}
		err = sp.send(to, frame)
		wire.PutFrameBuffer(bp)
		if err != nil {
			return end{from: to, err: unframed(err)}
		}
		if typ == wire.FrameData {
			sp.moved(from, n)
		} else {
			sp.idle.touch()
		}
	}
}

// wholeData returns the data frame at the start of p when all of it is
// there and its payload is at most limit; nil otherwise.
func wholeData(p []byte, limit int) []byte {
	if len(p) < wire.FrameHeaderSize {
		return nil
	}
	typ, n, err := wire.ParseFrameHeader(p[:wire.FrameHeaderSize])
	if err != nil || typ != wire.FrameData || n > limit || len(p) < wire.FrameHeaderSize+n {
		return nil
	}
	return p[:wire.FrameHeaderSize+n]
}

// moved counts a data frame of n payload bytes relayed from side from.
func (sp *splice) moved(from side, n int) {
	sp.idle.touch()
	if from == sideService {
		sp.st.bytesUp.Add(int64(n))
	} else {
		sp.st.bytesDown.Add(int64(n))
	}
}

// oversized is the end of a stream whose side from sent a data frame of n
// bytes to a side that accepts at most limit.
func oversized(from side, n, limit int) end {
	why := fmt.Sprintf("%s sent a %d-byte frame; the %s accepts %d", from, n, 1-from, limit)
	return end{
		from: from, code: websocket.StatusProtocolError, why: why,
		result: causeError, reason: "protocol error: " + why,
	}
}

// send writes one frame to side to.
func (sp *splice) send(to side, frame []byte) error {
	sp.mu[to].Lock()
	defer sp.mu[to].Unlock()
	if sp.shut[to] {
		return errUnframed
	}
	_, err := sp.conns[to].Write(frame)
	return err
}

// unframed names the end of a yamux stream for the relay's end.
func unframed(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errUnframed
	}
	return err
}
