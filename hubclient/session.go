package hubclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"

	"github.com/dsproxy/dsproxy/internal/wire"
)

// SessionClient opens streams over one session it holds to the hub (the
// fast path): a new stream costs no TCP, TLS or WebSocket handshake, and
// its first bytes travel with the request, so data reaches the device one
// round trip after the stream is opened. Streams have the semantics of
// [ServiceClient.OpenStream]'s, except that a refusal or rejection comes
// from the stream's first Read instead of from OpenStream.
//
// Run holds the session, redialling with backoff when it drops; OpenStream
// waits for the first dial and otherwise fails at once, with the reason,
// while there is no session. It is safe for concurrent use.
type SessionClient struct {
	*base
	cfg ServiceConfig
	log zerolog.Logger

	mu      sync.Mutex
	cur     *clientSession
	err     error         // why there is no session; nil before the first dial ends
	changed chan struct{} // closed and replaced when cur or err changes
	stopped bool          // Run returned: no more sessions to other replicas

	// Sessions to other hub replicas, made when a stream is redirected
	// to one (the replica that holds the device's session), and where
	// each device was found; guarded by mu. Dials to them are serialized
	// by dialMu.
	others map[string]*clientSession
	routes map[string]string
	dialMu sync.Mutex
}

// maxRoutes bounds the devices a SessionClient remembers the replica of.
const maxRoutes = 4096

// clientSession is one session to the hub.
type clientSession struct {
	mux    *yamux.Session
	ws     *websocket.Conn
	cancel context.CancelFunc
	local  net.Addr
	remote net.Addr

	watched func() // waits for the keepalive watch, once mux is closed
}

// close ends the session and waits for its keepalive watch.
func (s *clientSession) close() {
	s.mux.Close()
	s.ws.Close(websocket.StatusNormalClosure, "")
	s.cancel()
	s.watched()
}

// NewSessionClient checks cfg and returns a client. It does not contact
// the hub; Run does.
func NewSessionClient(cfg ServiceConfig) (*SessionClient, error) {
	b, err := newServiceBase(cfg)
	if err != nil {
		return nil, err
	}
	sessionDefaults(&cfg.KeepAliveInterval, &cfg.ConnectionWriteTimeout, &cfg.MinBackoff, &cfg.MaxBackoff)
	return &SessionClient{base: b, cfg: cfg, log: cfg.Logger, changed: make(chan struct{})}, nil
}

// HostName is the hub address from the connection string.
func (c *SessionClient) HostName() string { return c.cs.HostName }

// Session returns a [SessionClient] with c's configuration.
func (c *ServiceClient) Session() (*SessionClient, error) { return NewSessionClient(c.cfg) }

// set publishes the current session, or why there is none.
func (c *SessionClient) set(s *clientSession, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cur, c.err = s, err
	close(c.changed)
	c.changed = make(chan struct{})
}

// Run holds the session until ctx ends, redialling with exponential
// backoff and jitter whenever it drops or cannot be made; streams on a
// session that drops end with an error matching ErrSessionLost. Run
// returns early only when the hub refuses the credential
// (ErrUnauthorized, ErrForbidden), and returns after closing the session.
func (c *SessionClient) Run(ctx context.Context) error {
	defer c.closeOthers()
	defer c.set(nil, net.ErrClosed)
	return redial(ctx, c.cfg.MinBackoff, c.cfg.MaxBackoff, c.log, "session down", func(ctx context.Context) error {
		s, err := c.dial(ctx)
		if err != nil {
			c.set(nil, err)
			return err
		}
		c.set(s, nil)
		c.log.Info().Str("hub", c.cs.HostName).Msg("session up")
		select {
		case <-s.mux.CloseChan():
			err = fmt.Errorf("%w: %v", ErrSessionLost, sessionEnd(s.mux))
		case <-ctx.Done():
		}
		c.set(nil, err)
		s.close()
		return err
	})
}

// redial runs session until ctx ends, again each time it returns, waiting
// between runs as backoff chooses (backoff.go): exponential backoff from
// minB to maxB with jitter after a failure (the wait starts over after a
// session that was up for longer than maxB), and full jitter over a window that
// does not grow while the hub is away on purpose (restarting, shutting
// down, turning handshakes away). It logs each failure as down. It returns
// nil when ctx ends, and the error when the hub refuses the credential
// (ErrUnauthorized, ErrForbidden), which retrying cannot fix.
func redial(ctx context.Context, minB, maxB time.Duration, log zerolog.Logger, down string, session func(context.Context) error) error {
	b := newBackoff(minB, maxB)
	for {
		start := time.Now()
		err := session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, ErrUnauthorized) || errors.Is(err, ErrForbidden) {
			return err
		}
		wait := b.next(err, start, time.Now())
		log.Warn().Err(err).Stringer("retry_in", wait.Round(time.Millisecond)).Msg(down)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// sessionEnd says why a closed yamux session ended.
func sessionEnd(mux *yamux.Session) error {
	if _, err := mux.AcceptStream(); err != nil {
		return err
	}
	return errors.New("session closed")
}

// sessionPath is the hub's service session endpoint.
const sessionPath = "/service/session?api-version=2020-09-30"

// features is the dsproxy-features header of a service session: the
// service accepts data frames of up to wire.MaxFramePayload.
func (c *SessionClient) features() http.Header {
	if c.cfg.legacyFrames {
		return nil
	}
	return http.Header{wire.HeaderFeatures: {wire.FeatureLargeFrames}}
}

// dial connects a session.
func (c *SessionClient) dial(ctx context.Context) (*clientSession, error) {
	ws, layers, err := c.dialMux(ctx, sessionPath, wire.SessionSubprotocol, c.features(), "session")
	if err != nil {
		return nil, err
	}
	return c.start(ws, layers)
}

// start runs a session over a dialled WebSocket.
func (c *SessionClient) start(ws *websocket.Conn, layers *streamLayers) (*clientSession, error) {
	sctx, stop := context.WithCancel(context.Background()) // the session's lifetime, until close
	mux, _, watched, err := runMux(sctx, ws, layers, yamux.Client, c.cfg.KeepAliveInterval, c.cfg.ConnectionWriteTimeout)
	if err != nil {
		stop()
		return nil, fmt.Errorf("session: %w", err)
	}
	return &clientSession{mux: mux, ws: ws, cancel: stop, local: layers.local, remote: layers.remote, watched: watched}, nil
}

// session returns the current session, waiting for a dial in progress.
func (c *SessionClient) session(ctx context.Context) (*clientSession, error) {
	for {
		c.mu.Lock()
		s, err, changed := c.cur, c.err, c.changed
		c.mu.Unlock()
		switch {
		case s != nil && !s.mux.IsClosed():
			return s, nil
		case err != nil:
			return nil, err
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for a session to the hub: %w", ctx.Err())
		}
	}
}

// sessionAt returns the session to the hub replica at host, dialling it
// when there is none: a stream's device is held there.
func (c *SessionClient) sessionAt(ctx context.Context, host string) (*clientSession, error) {
	if s := c.other(host); s != nil {
		return s, nil
	}
	c.dialMu.Lock()
	defer c.dialMu.Unlock()
	if s := c.other(host); s != nil {
		return s, nil
	}
	ws, layers, resp, err := c.dialMuxAt(ctx, host, sessionPath, wire.SessionSubprotocol, c.features())
	if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
		return nil, hubError("connect session at "+host, resp)
	}
	if err != nil {
		return nil, fmt.Errorf("connect session at %s: %w", host, err)
	}
	s, err := c.start(ws, layers)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		s.close()
		return nil, net.ErrClosed
	}
	if c.others == nil {
		c.others = make(map[string]*clientSession)
	}
	if old := c.others[host]; old != nil {
		old.close() // dead: other returned nil for it
	}
	c.others[host] = s
	c.log.Info().Str("hub", host).Msg("session up to another hub replica")
	return s, nil
}

// other returns the live session to the replica at host, or nil.
func (c *SessionClient) other(host string) *clientSession {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.others[host]; s != nil && !s.mux.IsClosed() {
		return s
	}
	return nil
}

// closeOthers closes the sessions to other replicas once Run returns.
func (c *SessionClient) closeOthers() {
	c.mu.Lock()
	others := c.others
	c.others, c.stopped = nil, true
	c.mu.Unlock()
	for _, s := range others {
		s.close()
	}
}

// route returns the session a stream to the device goes on: the one to
// the replica the device was last found on, while it is up, or the main
// one.
func (c *SessionClient) route(ctx context.Context, deviceID string) (*clientSession, error) {
	c.mu.Lock()
	host := c.routes[deviceID]
	c.mu.Unlock()
	if host != "" {
		if s := c.other(host); s != nil {
			return s, nil
		}
	}
	return c.session(ctx)
}

// remember notes the replica a device's stream was redirected to.
func (c *SessionClient) remember(deviceID, host string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.routes == nil || len(c.routes) >= maxRoutes {
		c.routes = make(map[string]string)
	}
	c.routes[deviceID] = host
}

// OpenStream opens a stream named name to device deviceID over the
// session and returns at once, without waiting for the hub: the hub's
// refusal, or the device's rejection, is the error of the stream's first
// Read (a [*HubError] or [*RejectedError], as from
// [ServiceClient.OpenStream]). Data written before that is discarded when
// the stream is refused. ctx bounds the wait for a session only.
func (c *SessionClient) OpenStream(ctx context.Context, deviceID, name string) (Stream, error) {
	// Formatted for an error only: most streams never need it (issue 7).
	op := func() string { return fmt.Sprintf("open stream %q to device %q", name, deviceID) }
	s, err := c.route(ctx, deviceID)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op(), err)
	}
	req := wire.OpenStream{DeviceID: deviceID, Name: name}
	if c.cfg.ConnectTimeout > 0 {
		req.ConnectTimeout = seconds(c.cfg.ConnectTimeout)
	}
	if c.cfg.ResponseTimeout > 0 {
		req.ResponseTimeout = seconds(c.cfg.ResponseTimeout)
	}
	st, err := openOn(s, &req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op(), err)
	}
	answer := func(st *yamux.Stream) (string, int, error) {
		var res wire.OpenResult
		if err := wire.ReadMessage(st, &res); err != nil {
			switch {
			case errors.Is(err, yamux.ErrTimeout):
				return "", 0, err
			case st.Session().IsClosed():
				return "", 0, fmt.Errorf("%s: %w", op(), ErrSessionLost)
			}
			return "", 0, fmt.Errorf("%s: no answer from the hub: %w", op(), err)
		}
		switch {
		case res.Status == wire.StatusRedirect && res.Replica != "":
			return res.Replica, 0, nil
		case res.Status != http.StatusOK:
			return "", 0, &HubError{Op: op(), StatusCode: res.Status, Code: res.ErrorCode, Message: res.Message,
				RetryAfter: time.Duration(max(res.RetryAfter, 0)) * time.Second}
		case !res.Accepted:
			return "", 0, &RejectedError{DeviceID: deviceID, Name: name, Reason: orDefault(res.Reason, "no reason given")}
		}
		return "", res.MaxFrame, nil
	}
	reopen := func(host string) (*yamux.Stream, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s, err := c.sessionAt(ctx, host)
		if err != nil {
			return nil, fmt.Errorf("%s: the device is on hub replica %s: %w", op(), host, err)
		}
		st, err := openOn(s, &req)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", op(), err)
		}
		c.remember(deviceID, host)
		return st, nil
	}
	// Until the hub answers, frames are of the size every device accepts.
	return newSessionConn(st, s.local, s.remote, 0, answer, reopen), nil
}

// openOn opens a session stream on s and writes its OpenStream.
func openOn(s *clientSession, req *wire.OpenStream) (*yamux.Stream, error) {
	st, err := s.mux.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSessionLost, err)
	}
	if err := wire.WriteMessage(st, req); err != nil {
		st.Close()
		return nil, fmt.Errorf("%w: %v", ErrSessionLost, err)
	}
	return st, nil
}
