package hub

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"

	"github.com/dsproxy/dsproxy/hub/registry"
	"github.com/dsproxy/dsproxy/internal/batch"
	"github.com/dsproxy/dsproxy/internal/sas"
	"github.com/dsproxy/dsproxy/internal/wire"
)

// side is one end of a stream.
type side int

const (
	sideService side = iota
	sideDevice
)

func (sd side) String() string {
	if sd == sideService {
		return "service"
	}
	return "device"
}

// Close codes the hub sends on the streaming endpoint besides the
// standard ones it relays (see internal/wire).
const (
	CloseHandshakeTimeout websocket.StatusCode = wire.CloseHandshakeTimeout
	ClosePeerLost         websocket.StatusCode = wire.ClosePeerLost
	CloseIdleTimeout      websocket.StatusCode = wire.CloseIdleTimeout
)

// stream is one initiated stream, from initiation until both sides are gone.
// Fields below mu are guarded by Server.mu.
type stream struct {
	id       string
	deviceID string
	name     string
	policy   string
	// tokens are the sides' stream tokens, for a stream over two
	// WebSockets; the device's is re-minted under Server.mu on a retry
	// (see deliver). An inline stream has none: no side connects to the
	// streaming endpoint, and claim refuses it.
	tokens   [2]string
	created  time.Time
	deadline time.Time
	log      streamLog

	bytesUp   atomic.Int64 // service → device
	bytesDown atomic.Int64 // device → service

	// ended is closed when the stream is over: relayed and closed, expired
	// unpaired, or dropped. A waiting first side returns then.
	ended chan struct{}
	// stop ends a session stream's relay from outside it (halt);
	// buffered, sent to without blocking. Nil for a stream over two
	// WebSockets: its relay is ended through relay.
	stop chan end

	// A session stream (the fast path): carried over the service's session
	// (svc) and the device's control session instead of two WebSockets.
	// Set by newStream, then read-only.
	inline bool
	svc    *svcSession

	// guarded by Server.mu
	sess     *session // the control session the request went over
	accepted bool     // the device accepted: the stream's end is an event
	paired   bool     // both sides are connected: the limiter counts it as such
	used     [2]bool
	conns    [2]*websocket.Conn
	batches  [2]*batch.Conn // under conns, when served by Run (relay.go)
	relay    *relayRun      // once both sides are connected (relay.go)
	timer    *time.Timer
	closed   bool
}

// newStream mints a stream for an initiation, with its tokens unless it is
// inline, and registers it until its handshake deadline.
func (s *Server) newStream(in initiation) *stream {
	now := time.Now()
	st := &stream{
		id:       randomID(16),
		deviceID: in.deviceID,
		name:     in.name,
		policy:   in.policy,
		created:  now,
		deadline: now.Add(s.cfg.HandshakeTimeout),
		ended:    make(chan struct{}),
		inline:   in.inline,
		svc:      in.svc,
	}
	if in.inline {
		st.stop = make(chan end, 1)
	} else {
		st.tokens = [2]string{randomID(32), randomID(32)}
	}
	st.log = streamLog{&s.log, st}
	s.mu.Lock()
	s.streams[st.id] = st
	st.timer = time.AfterFunc(s.cfg.HandshakeTimeout, func() { s.expire(st) })
	s.mu.Unlock()
	return st
}

// streamLog is a stream's logger: the hub's, with the stream's fields
// (fieldStream, fieldDevice, fieldName) added to each line it writes.
// Unlike a child logger (zerolog's With), which copies its fields into a
// buffer of its own, it costs a stream nothing until a line is written:
// most streams write none (a child logger was a share of a stream's setup,
// issue 7).
type streamLog struct {
	log *zerolog.Logger
	st  *stream
}

// Debug starts a debug line, nil when the level is off (as zerolog's).
func (l streamLog) Debug() *zerolog.Event { return l.fields(l.log.Debug()) }

// Info starts an info line, nil when the level is off (as zerolog's).
func (l streamLog) Info() *zerolog.Event { return l.fields(l.log.Info()) }

func (l streamLog) fields(e *zerolog.Event) *zerolog.Event {
	// Methods of a nil *zerolog.Event do nothing.
	return e.Str(fieldStream, l.st.id).Str(fieldDevice, l.st.deviceID).Str(fieldName, l.st.name)
}

// expire ends a stream whose sides did not both connect in time.
func (s *Server) expire(st *stream) {
	s.mu.Lock()
	if st.closed || (st.conns[0] != nil && st.conns[1] != nil) {
		s.mu.Unlock()
		return
	}
	conns, accepted := st.conns, st.accepted
	s.endLocked(st)
	s.mu.Unlock()
	for sd, c := range conns {
		if c != nil {
			st.log.Info().Str("side", side(sd).String()).Msg("peer did not connect before the handshake deadline")
			c.Close(CloseHandshakeTimeout, "peer did not connect before the handshake deadline")
		}
	}
	switch {
	case conns[0] != nil || conns[1] != nil:
		s.recordEvent(st, "expired", "peer did not connect before the handshake deadline")
	case accepted:
		s.recordEvent(st, "expired", "neither side connected before the handshake deadline")
	}
	// Not accepted yet: handleInitiate records the outcome.
}

// drop forgets a stream that will never be relayed.
func (s *Server) drop(st *stream) {
	s.mu.Lock()
	s.endLocked(st)
	s.mu.Unlock()
}

func (s *Server) endLocked(st *stream) {
	if st.closed {
		return
	}
	st.closed = true
	st.timer.Stop()
	s.lim.release(st.deviceID, st.paired)
	delete(s.streams, st.id)
	delete(s.relays, st)
	close(st.ended)
}

func (s *Server) streamURL(id string) string {
	return "wss://" + s.addr + "/streams/" + id
}

// checkDeviceID validates a device ID from a request path.
func checkDeviceID(id string) *apiError {
	if err := sas.ValidDeviceID(id); err != nil {
		return errBadRequest(fmt.Sprintf("invalid device ID: %v", err))
	}
	return nil
}

// checkStreamName validates a stream name from a request path.
func checkStreamName(name string) *apiError {
	if name == "" || name == "." || name == ".." || len(name) > wire.MaxStreamNameLen {
		return errBadRequest(fmt.Sprintf("stream name must be 1 to %d bytes, and not . or ..", wire.MaxStreamNameLen))
	}
	for _, r := range name {
		if r == '/' || r == '\\' || r > unicode.MaxASCII || !unicode.IsPrint(r) {
			return errBadRequest(fmt.Sprintf("stream name %q: only printable ASCII without slashes is allowed", name))
		}
	}
	return nil
}

func (s *Server) handleInitiate(w http.ResponseWriter, r *http.Request) {
	id, name := r.PathValue("id"), r.PathValue("name")
	if aerr := checkDeviceID(id); aerr != nil {
		s.writeError(w, r, aerr.status, aerr)
		return
	}
	if aerr := checkStreamName(name); aerr != nil {
		s.writeError(w, r, aerr.status, aerr)
		return
	}
	p, ok := s.require(w, r, "/devices/"+id, registry.ServiceConnect)
	if !ok {
		return
	}
	connectTO, err := parseSeconds(r.Header.Get(wire.HeaderConnectTimeout), s.cfg.ConnectTimeout, s.cfg.MaxRequestTimeout)
	if err != nil {
		s.writeError(w, r, http.StatusBadRequest, errBadRequest(wire.HeaderConnectTimeout+": "+err.Error()))
		return
	}
	responseTO, err := parseSeconds(r.Header.Get(wire.HeaderResponseTimeout), s.cfg.ResponseTimeout, s.cfg.MaxRequestTimeout)
	if err != nil {
		s.writeError(w, r, http.StatusBadRequest, errBadRequest(wire.HeaderResponseTimeout+": "+err.Error()))
		return
	}
	in := initiation{policy: p.policy, deviceID: id, name: name, connectTO: connectTO, responseTO: responseTO}
	var ans *wire.InitiateResponse
	var ref *refusal
	if s.cluster != nil && !s.connected(id) {
		// Another replica may hold the device: it answers with a URL on
		// itself (cluster.go).
		ans, ref = s.initiateRemote(r.Context(), in)
	} else {
		var st *stream
		var resp wire.StreamResponse
		st, resp, _, ref = s.initiate(r.Context(), in)
		if st != nil {
			a := s.initiateResponse(st, resp)
			ans = &a
		}
	}
	switch {
	case ref != nil:
		if ref.retryAfter > 0 {
			w.Header().Set("Retry-After", strconv.FormatInt(retrySeconds(ref.retryAfter), 10))
		}
		s.writeError(w, r, ref.status, ref.apiError)
	case ans == nil:
		// The service went away before the device answered: nobody to
		// answer.
	case !ans.IsAccepted:
		w.Header().Set(wire.HeaderIsAccepted, wire.NotAccepted)
		writeJSON(w, http.StatusOK, ans)
	default:
		w.Header().Set(wire.HeaderIsAccepted, wire.Accepted)
		w.Header().Set(wire.HeaderURL, ans.URL)
		w.Header().Set(wire.HeaderAuthToken, ans.AuthToken)
		writeJSON(w, http.StatusOK, ans)
	}
}

// initiateResponse is the answer to a stream initiation the device
// answered: for an accepted stream, the URL and the service's token.
func (s *Server) initiateResponse(st *stream, resp wire.StreamResponse) wire.InitiateResponse {
	if !resp.Accepted {
		return wire.InitiateResponse{StreamID: st.id, IsAccepted: false, Reason: resp.Reason}
	}
	return wire.InitiateResponse{StreamID: st.id, IsAccepted: true, URL: s.streamURL(st.id), AuthToken: st.tokens[sideService]}
}

// initiation is a request for a stream, from a POST or a service session.
type initiation struct {
	policy, deviceID, name string
	connectTO, responseTO  time.Duration

	// Set for a session stream: the device's data comes on the control
	// stream (wire.StreamRequest.Inline). svc is the service's session;
	// sent, when set, is called with the control stream once the request
	// is on it, so the service's first bytes can follow at once.
	inline bool
	svc    *svcSession
	sent   func(*stream, *yamux.Stream)

	// routed is set for an initiation another replica routed here: that
	// replica metered the policy's rate (cluster.go).
	routed bool
}

// refusal is an initiation refused before or instead of a device's
// answer: the error to send, and for 429 how long to wait.
type refusal struct {
	*apiError
	retryAfter time.Duration
}

// initiate runs a stream initiation: the policy's rate, the hub's state,
// the registry, the device's session and the hub's limits, then the
// device's answer. It records every outcome but acceptance (the stream's
// end is recorded then). It returns the stream and the device's answer
// (with a reason when rejected), or a refusal; for an accepted inline
// stream also the control stream that carries the data. All nil means the
// caller's ctx ended before the device answered.
func (s *Server) initiate(ctx context.Context, in initiation) (*stream, wire.StreamResponse, *yamux.Stream, *refusal) {
	var none wire.StreamResponse
	id, name, policy := in.deviceID, in.name, in.policy
	// The line of a refusal before the stream exists (the stream has a
	// logger of its own).
	log := func() *zerolog.Event {
		return s.log.Info().Str(fieldDevice, id).Str(fieldName, name).Str(fieldPolicy, policy)
	}
	refuse := func(line *zerolog.Event, result string, aerr *apiError, retryAfter time.Duration) *refusal {
		s.refusedLine(line, id, name, policy, result, aerr)
		return &refusal{aerr, retryAfter}
	}
	if !in.routed {
		if le := s.lim.allow(policy, time.Now()); le != nil {
			return nil, none, nil, refuse(log(), "throttled", errThrottled(le), le.retryAfter)
		}
	}
	if !s.track() {
		return nil, none, nil, refuse(log(), resultShutdown, errHubShuttingDown(), 0)
	}
	defer s.conns.Done()

	// The device's session vouches for the device on a single hub: the
	// device signed in with its key while enabled, and every change to
	// the device (disable, delete, a replaced key) goes through this hub,
	// which ends the sessions it no longer allows before it answers
	// (deviceChanged), so from then on they are ending. Without such a
	// session, or with replicas (whose changes arrive later, over NATS),
	// the registry decides, and says why a device cannot be reached.
	sess := s.sessionFor(id)
	if sess == nil || sess.ending() || s.cluster != nil {
		dev, err := s.reg.GetDevice(ctx, id)
		switch {
		case errors.Is(err, registry.ErrNotFound):
			return nil, none, nil, refuse(log(), "unavailable", &apiError{http.StatusNotFound, wire.CodeDeviceNotFound, "DeviceNotFound",
				fmt.Sprintf("device %q is not registered on this hub", id)}, 0)
		case err != nil:
			return nil, none, nil, refuse(log(), "error", &apiError{http.StatusInternalServerError, wire.CodeInternal, "ServerError", "registry unavailable"}, 0)
		case dev.Status != registry.StatusEnabled:
			return nil, none, nil, refuse(log(), "unavailable", &apiError{http.StatusNotFound, wire.CodeDeviceUnavailable, "DeviceNotOnline",
				fmt.Sprintf("device %q is disabled", id)}, 0)
		}
		if sess = s.sessionFor(id); sess != nil && sess.ending() {
			sess = nil // being closed: revoked, replaced or the hub stopping
		}
	}
	switch {
	case sess == nil:
		return nil, none, nil, refuse(log(), "unavailable", errNotConnected(id), 0)
	case in.inline && !sess.inline:
		return nil, none, nil, refuse(log(), "error", &apiError{http.StatusNotImplemented, wire.CodeNotImplemented, "NotImplemented",
			fmt.Sprintf("device %q runs a dsproxy that takes no session streams: upgrade it, or use per-stream mode", id)}, 0)
	}

	if le := s.lim.admit(id); le != nil {
		return nil, none, nil, refuse(log(), "throttled", errThrottled(le), le.retryAfter)
	}
	st := s.newStream(in)
	dctx, cancel := context.WithTimeout(ctx, in.responseTO)
	defer cancel()
	var sent func(*yamux.Stream)
	if in.sent != nil {
		sent = func(ctl *yamux.Stream) { in.sent(st, ctl) }
	}
	resp, ctl, err := s.deliver(dctx, st, sess, in.connectTO, sent)
	s.metrics.answered(st.created)
	if err != nil {
		s.drop(st)
		switch {
		case errors.Is(err, errShuttingDown):
			return nil, none, nil, refuse(st.log.Info(), resultShutdown, errHubShuttingDown(), 0)
		case errors.Is(err, context.DeadlineExceeded):
			return nil, none, nil, refuse(st.log.Info(), "timeout", &apiError{http.StatusGatewayTimeout, wire.CodeGatewayTimeout, "GatewayTimeout",
				fmt.Sprintf("device %q did not answer the stream request within %s", id, in.responseTO)}, 0)
		case errors.Is(err, context.Canceled):
			st.log.Debug().Msg("service went away before the device answered")
			s.recordEvent(st, "canceled", "service went away before the device answered")
			return nil, none, nil, nil
		case !errors.Is(err, errSessionGone):
			// The device answered, but not with a StreamResponse.
			return nil, none, nil, refuse(st.log.Info(), "error", &apiError{http.StatusBadGateway, wire.CodeBadGateway, "BadGateway",
				fmt.Sprintf("device %q sent an invalid answer to the stream request: %v", id, err)}, 0)
		default:
			st.log.Debug().Err(err).Msg("stream request not delivered")
			return nil, none, nil, refuse(st.log.Info(), "unavailable", &apiError{http.StatusNotFound, wire.CodeDeviceUnavailable, "DeviceNotOnline",
				fmt.Sprintf("device %q disconnected before answering", id)}, 0)
		}
	}
	if !resp.Accepted {
		s.drop(st)
		if resp.Reason == "" {
			resp.Reason = "rejected by the device"
		}
		st.log.Info().Str("reason", resp.Reason).Msg("stream rejected by device")
		s.recordEvent(st, "rejected", resp.Reason)
		return st, resp, nil, nil
	}
	s.mu.Lock()
	st.accepted = true
	late := st.closed // expired while the device was deciding
	if !late && ctl != nil {
		// An inline stream is relayed from now on.
		st.timer.Stop()
		st.paired = true
		s.lim.paired()
		delete(s.streams, st.id)
		s.relays[st] = struct{}{}
	}
	s.mu.Unlock()
	if late {
		if ctl != nil {
			sess.release(ctl)
		}
		return nil, none, nil, refuse(st.log.Info(), "timeout", &apiError{http.StatusGatewayTimeout, wire.CodeGatewayTimeout, "GatewayTimeout",
			fmt.Sprintf("device %q accepted the stream after its handshake deadline", id)}, 0)
	}
	s.metrics.streamStarted()
	if ctl != nil {
		s.metrics.paired(st.created)
		st.log.Debug().Str("mode", "session").Bool("paired", true).Msg("stream relaying")
	}
	return st, resp, ctl, nil
}

// retrySeconds is a Retry-After in whole seconds, at least one.
func retrySeconds(d time.Duration) int64 {
	return max(int64(math.Ceil(d.Seconds())), 1)
}

// refused logs and records a stream initiation that never reached a
// device.
func (s *Server) refused(log zerolog.Logger, id, name, policy, result string, aerr *apiError) {
	s.refusedLine(log.Info(), id, name, policy, result, aerr)
}

// refusedLine is refused, logging on line (an info line of the caller's
// logger, nil when that level is off).
func (s *Server) refusedLine(line *zerolog.Event, id, name, policy, result string, aerr *apiError) {
	line.Str("result", result).Str("reason", aerr.msg).Msg("stream refused")
	s.addEvent(registry.StreamEvent{DeviceID: id, Name: name, Policy: policy, Result: result, Reason: aerr.msg, Started: time.Now()})
}

func (s *Server) recordEvent(st *stream, result, reason string) {
	s.addEvent(registry.StreamEvent{
		StreamID:  st.id,
		DeviceID:  st.deviceID,
		Policy:    st.policy,
		Name:      st.name,
		Result:    result,
		Reason:    reason,
		BytesUp:   st.bytesUp.Load(),
		BytesDown: st.bytesDown.Load(),
		Started:   st.created,
		Duration:  time.Since(st.created),
	})
}

func (s *Server) addEvent(e registry.StreamEvent) {
	s.metrics.streamEvent(e)
	s.events.add(e)
}

// bearer returns the token of an "Authorization: Bearer" header.
func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "Bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

// claim finds the stream and side a bearer token belongs to and marks the
// token used.
func (s *Server) claim(id, token string) (*stream, side, *apiError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[id]
	if st == nil || st.closed || st.inline {
		return nil, 0, &apiError{http.StatusNotFound, wire.CodeStreamNotFound, "StreamNotFound", "no such stream: it ended, expired or never existed"}
	}
	sd := side(-1)
	for i, t := range st.tokens {
		if subtle.ConstantTimeCompare([]byte(token), []byte(t)) == 1 {
			sd = side(i)
		}
	}
	switch {
	case sd < 0:
		return nil, 0, &apiError{http.StatusUnauthorized, wire.CodeStreamTokenRejected, "IotHubUnauthorizedAccess", "stream token does not belong to this stream"}
	case time.Now().After(st.deadline):
		return nil, 0, &apiError{http.StatusUnauthorized, wire.CodeStreamTokenRejected, "IotHubUnauthorizedAccess", "stream token expired"}
	case st.used[sd]:
		return nil, 0, &apiError{http.StatusUnauthorized, wire.CodeStreamTokenRejected, "IotHubUnauthorizedAccess", "stream token already used"}
	}
	st.used[sd] = true
	return st, sd, nil
}

func (s *Server) handleStream(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	tok := bearer(r)
	if tok == "" {
		s.writeError(w, r, http.StatusUnauthorized, errUnauthorized("no stream token: send Authorization: Bearer <iothub-streaming-auth-token>"))
		return
	}
	st, sd, aerr := s.claim(id, tok)
	if aerr != nil {
		s.log.Debug().Str(fieldStream, id).Str(fieldRemote, r.RemoteAddr).Str("reason", aerr.msg).Msg("stream connection refused")
		s.writeError(w, r, aerr.status, aerr)
		return
	}
	if !s.track() {
		s.writeError(w, r, http.StatusServiceUnavailable, &apiError{http.StatusServiceUnavailable, wire.CodeServiceUnavailable, "ServiceUnavailable", "hub is shutting down"})
		return
	}
	ws, err := websocket.Accept(leanHijack{w}, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		st.log.Debug().Err(err).Msg("stream upgrade failed")
		s.conns.Done()
		return
	}
	ws.SetReadLimit(s.cfg.MaxMessageSize)

	s.mu.Lock()
	if st.closed {
		closing := s.closing
		s.mu.Unlock()
		if closing {
			ws.Close(websocket.StatusGoingAway, "hub shutting down")
		} else {
			ws.Close(CloseHandshakeTimeout, "peer did not connect before the handshake deadline")
		}
		s.conns.Done()
		return
	}
	st.conns[sd] = ws
	st.batches[sd] = batchOf(r)
	paired := st.conns[0] != nil && st.conns[1] != nil
	if paired {
		st.timer.Stop()
		st.paired = true
		s.lim.paired()
		s.metrics.paired(st.created)
		delete(s.streams, st.id)
		s.relays[st] = struct{}{}
		st.relay = s.newRelay(st)
	}
	s.mu.Unlock()
	st.log.Debug().Str("side", sd.String()).Bool("paired", paired).Msg("stream side connected")

	if !paired {
		// The side waits for its peer without a goroutine of its own:
		// the peer's connection starts the relay, which ends both sides;
		// the handshake deadline or the shutdown's drain ends a stream
		// that never pairs (endStreams closes its side).
		s.conns.Done()
		return
	}
	// The relay outlives the request on two goroutines of its own (its
	// pumps) and none besides, so that net/http's per-connection state
	// (buffers, request) goes now (issue 6: a stream's memory). It keeps
	// the connection counted until it has ended the stream.
	st.relay.start()
}
