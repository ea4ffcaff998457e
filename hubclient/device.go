package hubclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"

	"github.com/dsproxy/dsproxy/internal/wire"
	"github.com/dsproxy/dsproxy/internal/wsmux"
)

// DeviceConfig configures a [DeviceClient].
type DeviceConfig struct {
	// ConnectionString is the device's connection string
	// (HostName=...;DeviceId=...;SharedAccessKey=...).
	ConnectionString string

	// TLSConfig verifies the hub; nil uses the system roots.
	TLSConfig *tls.Config

	// Hubs, when set, are the hub replicas to connect to (host:port),
	// instead of the connection string's HostName, which tokens are still
	// signed for. The client stays with one until it cannot be reached or
	// shuts down, then moves to the next.
	Hubs []string

	// KeepAliveInterval is how often the device pings the hub; a hub that
	// does not answer within ConnectionWriteTimeout is considered gone, the
	// streams its session delivered are ended, and the device redials. A
	// dead hub is thus noticed within their sum. Zero values mean 15 s and
	// 10 s.
	KeepAliveInterval      time.Duration
	ConnectionWriteTimeout time.Duration

	// MinBackoff and MaxBackoff bound the wait between reconnection
	// attempts, which doubles from MinBackoff up to MaxBackoff, with
	// jitter. While the hub is away on purpose (it closed the session,
	// nothing listens while it restarts, it answers 503 or turns the
	// handshake away), the wait is instead drawn from [0, 1 s] (closed,
	// refusing connections) or [0, 10 s] (503, handshake turned away),
	// at most [0, MaxBackoff], and does not grow, so that a fleet
	// spreads its reconnects after a restart; any other failed attempt
	// meanwhile (cut short, timed out, a session torn down before it was
	// ready: the fleet's return) waits within [0, 1 s], without growing.
	// Zero values mean 500 ms and 30 s.
	MinBackoff time.Duration
	MaxBackoff time.Duration

	// TokenTTL is the lifetime of the SAS tokens the device signs; zero
	// means one hour.
	TokenTTL time.Duration

	// Logger receives the client's logs. The zero value logs nothing.
	Logger zerolog.Logger

	// legacyFrames makes the device announce no wire.FeatureLargeFrames,
	// as a build before it (a test hook: export_test.go).
	legacyFrames bool
}

// StreamHandler handles one stream request. It must call exactly one of
// req.Accept or req.Reject (a handler that returns having called neither
// rejects the request), and may keep running with the accepted stream.
// ctx ends when the DeviceClient stops, or when the control session that
// delivered the request is lost (the hub stopped answering keepalives or
// the connection broke), because the hub then ends the stream too. A
// session the hub closes, or replaces, does not end ctx.
type StreamHandler func(ctx context.Context, req *StreamRequest)

// StreamRequest is a service's request for a stream, as delivered to a
// [StreamHandler].
type StreamRequest struct {
	// ID is the hub's stream ID, Name the stream name the service asked for.
	ID   string
	Name string
	// Deadline is when the hub stops waiting for this device to connect.
	Deadline time.Time

	dev      *DeviceClient
	url      string
	token    string
	ctl      *yamux.Stream // the control stream the answer goes on
	ctlAddrs [2]net.Addr   // the control session's local and remote addresses
	inline   bool          // the data follows on ctl (see Accept)
	maxFrame int           // of an inline request: what the service accepts (wire.StreamRequest.MaxFrame)
	answered bool
}

// Accept tells the hub the device takes the stream and connects this side
// of it. ctx bounds the connection; the returned stream lives until
// closed. A stream requested over a service's session (the fast path) is
// carried by the control session itself: Accept then connects nothing,
// and the service's first bytes may already be waiting.
func (r *StreamRequest) Accept(ctx context.Context) (Stream, error) {
	if r.inline {
		if err := r.answer(wire.StreamResponse{Accepted: true}); err != nil {
			return nil, err
		}
		return newSessionConn(r.ctl, r.ctlAddrs[0], r.ctlAddrs[1], r.maxFrame, nil, nil), nil
	}
	if err := r.answer(wire.StreamResponse{Accepted: true}); err != nil {
		return nil, err
	}
	if hook := testHookAccepted.Load(); hook != nil {
		(*hook)()
	}
	if dl := r.Deadline; !dl.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl)
		defer cancel()
	}
	conn, err := r.dev.streams.Dial(ctx, r.url, r.token)
	if err != nil {
		return nil, fmt.Errorf("accept stream %s: %w", r.ID, err)
	}
	return conn, nil
}

// Reject tells the hub the device refuses the stream; the service sees
// reason.
func (r *StreamRequest) Reject(reason string) error {
	if len(reason) > wire.MaxReasonLen {
		reason = reason[:wire.MaxReasonLen]
	}
	return r.answer(wire.StreamResponse{Accepted: false, Reason: reason})
}

func (r *StreamRequest) answer(resp wire.StreamResponse) error {
	if r.answered {
		return errors.New("stream request already answered")
	}
	r.answered = true
	keep := r.inline && resp.Accepted // the stream's data follows on ctl
	if !keep {
		defer r.ctl.Close()
	}
	_ = r.ctl.SetWriteDeadline(time.Now().Add(10 * time.Second))
	err := wire.WriteMessage(r.ctl, &resp)
	_ = r.ctl.SetWriteDeadline(time.Time{})
	if err != nil {
		if keep {
			r.ctl.Close()
		}
		return fmt.Errorf("answer stream request %s: %w", r.ID, err)
	}
	return nil
}

// testHookAccepted runs between a device's answer and its dial of the
// streaming endpoint (see export_test.go).
var testHookAccepted atomic.Pointer[func()]

// DeviceClient holds a device's control session to the hub, redialling it
// whenever it drops, and hands each stream request to its handler.
type DeviceClient struct {
	*base
	cfg     DeviceConfig
	handler StreamHandler
	log     zerolog.Logger

	mu        sync.Mutex
	connected chan struct{} // closed while a session is up

	streams *streamDialer // dials the stream WebSockets (streamdial.go)
}

// NewDeviceClient checks cfg and returns a client that will hand stream
// requests to h. It does not contact the hub; Run does.
func NewDeviceClient(cfg DeviceConfig, h StreamHandler) (*DeviceClient, error) {
	if h == nil {
		return nil, errors.New("device client: nil stream handler")
	}
	b, err := newBase(cfg.ConnectionString, cfg.Hubs, cfg.TLSConfig, cfg.TokenTTL)
	if err != nil {
		return nil, err
	}
	if !b.cs.IsDevice() {
		return nil, errors.New("connection string: a device needs its own connection string (DeviceId=...), not a policy's")
	}
	sessionDefaults(&cfg.KeepAliveInterval, &cfg.ConnectionWriteTimeout, &cfg.MinBackoff, &cfg.MaxBackoff)
	return &DeviceClient{
		base:      b,
		cfg:       cfg,
		handler:   h,
		log:       cfg.Logger.With().Str("device", b.cs.DeviceID).Logger(),
		connected: make(chan struct{}),
		streams:   newStreamDialer(b.http.Transport.(*http.Transport)),
	}, nil
}

// DeviceID is the device's ID from its connection string.
func (c *DeviceClient) DeviceID() string { return c.cs.DeviceID }

// Connected returns a channel that is closed while the device holds a
// control session. Call again after a drop to wait for the next session.
func (c *DeviceClient) Connected() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.connected
}

func (c *DeviceClient) setConnected(up bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.connected:
		if !up {
			c.connected = make(chan struct{})
		}
	default:
		if up {
			close(c.connected)
		}
	}
}

// Run holds the control session until ctx ends, redialling with
// exponential backoff and jitter whenever it drops or cannot be made. It
// returns early only for errors that retrying cannot fix: the hub refusing
// the device's credential (ErrUnauthorized, ErrForbidden). Run returns
// after every handler it started has returned.
func (c *DeviceClient) Run(ctx context.Context) error {
	var handlers sync.WaitGroup
	defer c.streams.Close()
	defer handlers.Wait()
	return redial(ctx, c.cfg.MinBackoff, c.cfg.MaxBackoff, c.log, "control session down", func(ctx context.Context) error {
		return c.session(ctx, &handlers)
	})
}

// session dials the hub, serves stream requests until the session ends,
// and returns why it ended.
func (c *DeviceClient) session(ctx context.Context, handlers *sync.WaitGroup) error {
	features := []string{wire.FeatureInline, wire.FeatureLargeFrames}
	if c.cfg.legacyFrames {
		features = features[:1]
	}
	start := time.Now()
	ws, layers, err := c.dialMux(ctx, "/devices/"+pathEscape(c.cs.DeviceID)+"/control?api-version=2020-09-30",
		wire.ControlSubprotocol, http.Header{wire.HeaderFeatures: {strings.Join(features, ",")}}, "control session")
	if err != nil {
		return err
	}
	dialed := time.Now()
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	// The streams this session delivers run under hctx, which ends with
	// ctx, or when the session is lost: the hub then ends those streams
	// too, and their connections may be as dead as this one. refs counts
	// the session and its running handlers, so that hctx is released when
	// the last of them is done.
	hctx, lose := context.WithCancel(ctx)
	var refs atomic.Int32
	refs.Add(1)
	release := func() {
		if refs.Add(-1) == 0 {
			lose()
		}
	}
	var lost bool
	defer func() {
		if lost {
			lose()
		}
		release()
	}()
	addrs := [2]net.Addr{layers.local, layers.remote}
	mux, nc, watched, err := runMux(sctx, ws, layers, yamux.Server, c.cfg.KeepAliveInterval, c.cfg.ConnectionWriteTimeout)
	if err != nil {
		return fmt.Errorf("control session: %w", err)
	}
	defer watched()
	defer mux.Close()
	stopOnCancel := context.AfterFunc(ctx, func() { mux.Close() })
	defer stopOnCancel()

	if err := awaitReady(mux, c.cfg.ConnectionWriteTimeout); err != nil {
		return err
	}
	c.setConnected(true)
	defer c.setConnected(false)
	defer c.streams.Reset() // the next session may be with a restarted hub
	// How the session was made, for whoever follows a fleet's reconnects
	// (issue 6): the dial (TCP, TLS, the WebSocket upgrade) and the wait
	// for the hub's ready message, and whether TLS resumed a session.
	c.log.Info().Str("hub", c.cs.HostName).Bool("tls_resumed", tlsResumed(layers)).
		Dur("dial", dialed.Sub(start)).Dur("ready", time.Since(dialed)).Msg("control session up")

	for {
		st, err := mux.AcceptStream()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			// The hub's close frame ends the session (yamux then says
			// io.EOF, or the error of a write that lost the race to the
			// closing connection); anything else is a loss.
			lost = !errors.Is(err, io.EOF) && !wsmux.PeerClosed(nc, peerCloseWait)
			if lost {
				stop() // a lost hub never answers the close handshake: cut the connection
				return fmt.Errorf("control session ended: %w: %w", errSessionLost, err)
			}
			// The hub ended the session on purpose (shutting down, a newer
			// session): the reconnect spreads over a window (backoff.go).
			return fmt.Errorf("control session ended: %w: %w", errHubClosed, err)
		}
		handlers.Add(1)
		refs.Add(1)
		go func() {
			defer handlers.Done()
			defer release()
			c.serve(hctx, st, addrs)
		}()
	}
}

// tlsResumed reports whether the TLS connection under layers resumed a
// session (a ticket from an earlier connection, no certificate).
func tlsResumed(layers *streamLayers) bool {
	if layers == nil || layers.plain == nil {
		return false
	}
	tc, ok := layers.plain.Conn.(*tls.Conn)
	return ok && tc.ConnectionState().DidResume
}

// peerCloseWait bounds how long a control session that ended with an error
// waits for its read side to show whether the hub closed it.
const peerCloseWait = 100 * time.Millisecond

// awaitReady reads the hub's SessionReady from the session's first stream.
func awaitReady(mux *yamux.Session, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	st, err := mux.AcceptStreamWithContext(ctx)
	if err != nil {
		return fmt.Errorf("control session: no ready message from the hub: %w", err)
	}
	defer st.Close()
	_ = st.SetReadDeadline(time.Now().Add(timeout))
	var msg wire.SessionReady
	if err := wire.ReadMessage(st, &msg); err != nil {
		return fmt.Errorf("control session: ready message: %w", err)
	}
	return nil
}

// serve reads one stream request and runs the handler on it.
func (c *DeviceClient) serve(ctx context.Context, st *yamux.Stream, addrs [2]net.Addr) {
	_ = st.SetReadDeadline(time.Now().Add(c.cfg.ConnectionWriteTimeout))
	var msg wire.StreamRequest
	err := wire.ReadMessage(st, &msg)
	if err == nil {
		err = msg.Validate()
	}
	if err != nil {
		c.log.Warn().Err(err).Msg("bad stream request from hub")
		st.Close()
		return
	}
	_ = st.SetReadDeadline(time.Time{})
	if !msg.Inline {
		c.streams.Prepare(msg.URL) // while the handler decides
	}
	req := &StreamRequest{
		ID:       msg.StreamID,
		Name:     msg.Name,
		Deadline: msg.Deadline,
		dev:      c,
		url:      msg.URL,
		token:    msg.AuthToken,
		ctl:      st,
		ctlAddrs: addrs,
		inline:   msg.Inline,
		maxFrame: msg.MaxFrame,
	}
	c.handler(ctx, req)
	if !req.answered {
		_ = req.Reject("the device did not handle the stream request")
	}
}
