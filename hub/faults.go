package hub

// Faults and shutdown (issue #4, "Faults"): how the hub notices a peer that
// died without a word, what it does with the streams of a device it lost
// or stopped trusting, and how it stops.
//
// Silent peers. A device's control session is a yamux session with
// keepalive: the hub pings it every KeepAliveInterval, and a ping not
// answered within ConnectionWriteTimeout closes it. When a session ends
// that way, or any other way that neither the hub nor the device chose
// (anything but a close frame from the device or the hub closing it),
// the device is lost: its session is forgotten at once, so initiations
// answer 404 at once, and every stream delivered over that session is
// ended with ClosePeerLost, because the device behind it is most likely
// frozen or cut off too. A session that a newer one replaces is not lost:
// its streams keep running, since each has its own WebSockets (this is
// what lets a device switch sessions, or keys, without a gap).
//
// The relay also watches each stream on its own, because the service side
// has no control session and a stream may outlive the session that made
// it: every KeepAliveInterval it pings both sides, and a side that does not
// answer within ConnectionWriteTimeout ends the stream with ClosePeerLost.
// Pings and answers queue behind the data sent before them, and data moves
// only as fast as the slower side takes it: backpressure, not death. So no
// ping is sent while a relay write is in progress, and a ping that times
// out is forgiven if a relay write is in progress or anything moved
// meanwhile (see checkLive). A side that stops reading is never ended for it
// while the other side keeps writing; a side that answers nothing while
// the stream stands still, for the keepalive window, is.
//
// Revocation. Disabling or deleting a device, or replacing the key its
// session signed in with, ends that session and the streams delivered
// over it (close code 1008): the hub no longer vouches for them.
//
// Shutdown. When Run's context ends the hub drains: it refuses new stream
// initiations, stream connections and control sessions with 503 (and
// closes its listener, so new connections are refused), closes every
// control session with 1001 at once (a session only carries new stream
// requests, which the hub no longer takes, and a device that learns early
// can redial a restarted hub or another replica sooner), and ends streams
// whose sides have not both connected (their peer can no longer join).
// Relayed streams run on, each on its own WebSockets, until they end or
// ShutdownGrace passes; then the rest are closed with 1001 "hub shutting
// down". Every one of these ends is recorded as a stream event.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"

	"github.com/dsproxy/dsproxy/hub/registry"
	"github.com/dsproxy/dsproxy/internal/wire"
)

// Results of the stream events recorded when a stream that was accepted
// ends, besides "expired" (a side never connected) and "idle".
const (
	resultEnded    = "ended"    // a side closed the stream, normally or with its own code
	resultLost     = "lost"     // a side's connection failed or went silent
	resultShutdown = "shutdown" // the hub stopped
	resultRevoked  = "revoked"  // the device was disabled or deleted, or its key replaced
)

// errShuttingDown reports a stream request that the hub could not deliver
// because it is shutting down.
var errShuttingDown = errors.New("hub shutting down")

// shutdownEnd ends the relays still running when the shutdown grace
// period is over.
var shutdownEnd = end{
	from: -1, code: websocket.StatusGoingAway, why: "hub shutting down",
	result: resultShutdown, reason: "hub shutting down: the stream outlived the shutdown grace period",
}

func errHubShuttingDown() *apiError {
	return &apiError{http.StatusServiceUnavailable, wire.CodeServiceUnavailable, "ServiceUnavailable", "hub is shutting down: retry in a moment"}
}

// deliver sends st's request to the device over sess and returns the
// device's answer, and for an accepted inline stream the control stream
// that carries its data (sent is called once the request is on it). When
// sess ends during delivery because a newer session of the device
// replaced it, deliver tries once more over the newer one, with a new
// device token (the old session may have seen the first), so a device
// that switches sessions loses no stream. An inline request is not tried
// again: the service's first bytes may already have gone to the old one.
func (s *Server) deliver(ctx context.Context, st *stream, sess *session, connectTO time.Duration, sent func(*yamux.Stream)) (wire.StreamResponse, *yamux.Stream, error) {
	for attempt := 0; ; attempt++ {
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			return wire.StreamResponse{}, nil, errShuttingDown
		}
		st.sess = sess
		req := &wire.StreamRequest{
			StreamID: st.id,
			Name:     st.name,
			Deadline: st.deadline,
			Inline:   st.inline,
		}
		if !st.inline {
			req.URL, req.AuthToken = s.streamURL(st.id), st.tokens[sideDevice]
		} else if st.svc != nil {
			req.MaxFrame = st.svc.maxFrame // what the service accepts
		}
		s.mu.Unlock()
		resp, ctl, err := sess.request(ctx, req, connectTO, sent)
		if err == nil || !errors.Is(err, errSessionGone) {
			return resp, ctl, err
		}
		if s.isClosing() {
			return resp, nil, errShuttingDown
		}
		newer := s.sessionFor(st.deviceID)
		if attempt > 0 || st.inline || newer == nil || newer == sess {
			return resp, nil, err
		}
		st.log.Debug().Msg("device session replaced during delivery: retrying over the newer one")
		s.mu.Lock()
		st.tokens[sideDevice] = randomID(32)
		s.mu.Unlock()
		sess = newer
	}
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// sessionErr returns the error a closed yamux session ended with: io.EOF
// after the peer's close frame, yamux.ErrKeepAliveTimeout after a missed
// keepalive, yamux.ErrSessionShutdown after Close.
func sessionErr(mux *yamux.Session) error {
	// On a closed session AcceptStream returns the shutdown error (a
	// stream the device opened, which it may not, could come instead).
	st, err := mux.AcceptStream()
	if st != nil {
		st.Close()
		return nil
	}
	return err
}

// loseSession ends the streams delivered over c, a control session that
// died without a close frame: the device behind it is gone or cut off.
func (s *Server) loseSession(c *session, cause error) {
	s.endStreams(func(st *stream) bool { return st.sess == c }, end{
		from: sideDevice, dead: true, code: ClosePeerLost, why: "device connection lost",
		result: resultLost, reason: fmt.Sprintf("device control session lost: %v", cause),
	})
}

// revoke ends the device's sessions, and the streams delivered over them,
// that keep does not accept (all of them when keep is nil), because the
// device was disabled or deleted or the key a session signed in with was
// replaced.
func (s *Server) revoke(id string, keep func(*session) bool, why string) {
	bad := func(c *session) bool { return c != nil && (keep == nil || !keep(c)) }
	if c := s.sessionFor(id); bad(c) {
		c.log.Info().Str("reason", why).Msg("closing device session")
		c.end(errSessionReplaced)
	}
	s.endStreams(func(st *stream) bool { return st.deviceID == id && bad(st.sess) }, end{
		from: -1, code: websocket.StatusPolicyViolation, why: why, result: resultRevoked, reason: why,
	})
}

// endStreams ends every stream that match selects with e: relays through
// the stream's stop channel, streams that wait for their second side by
// closing the side that waits. match is called with s.mu held.
func (s *Server) endStreams(match func(*stream) bool, e end) {
	var unpaired []*stream
	s.mu.Lock()
	for st := range s.relays {
		if match(st) {
			st.halt(e)
		}
	}
	for _, st := range s.streams {
		if match(st) {
			unpaired = append(unpaired, st)
		}
	}
	conns := make([][2]*websocket.Conn, len(unpaired))
	for i, st := range unpaired {
		conns[i] = st.conns
		s.endLocked(st)
	}
	s.mu.Unlock()
	for i, st := range unpaired {
		s.closeUnpaired(st, conns[i], e.code, e.why, e.result, e.reason)
	}
}

// closeUnpaired closes the connected side, if any, of a stream ended
// before it was paired, and records the stream. (It records one that no
// side had reached as well: a side may be connecting just then, and it
// will find the stream over.)
func (s *Server) closeUnpaired(st *stream, conns [2]*websocket.Conn, code websocket.StatusCode, why, result, reason string) {
	for sd, c := range conns {
		if c != nil {
			st.log.Info().Str("side", side(sd).String()).Str("reason", reason).Msg("stream ended before its peer connected")
			c.Close(code, why)
		}
	}
	s.recordEvent(st, result, reason)
}

// drain starts the shutdown: from now on the hub refuses new streams and
// control sessions, control sessions end (drain ends each session's wait),
// and streams still waiting for a side are ended, since that side can no
// longer connect. It is idempotent.
func (s *Server) drain() {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return
	}
	s.closing = true
	close(s.stopping)
	for _, c := range s.sessions {
		c.end(errHubStopping) // addSession ends those that come later
	}
	s.mu.Unlock()
	s.endUnpaired()
}

// endUnpaired ends every stream whose sides have not both connected.
func (s *Server) endUnpaired() {
	// match runs under s.mu, which guards conns.
	s.endStreams(func(st *stream) bool { return st.conns[0] == nil || st.conns[1] == nil }, end{
		code: websocket.StatusGoingAway, why: "hub shutting down",
		result: resultShutdown, reason: "hub shutting down before both sides connected",
	})
}

// awaitConns waits for the hub's connections and their goroutines to end
// until deadline, then ends the rest (relays close both sides with 1001)
// and waits for them.
func (s *Server) awaitConns(deadline time.Time) {
	done := make(chan struct{})
	go func() {
		s.conns.Wait()
		close(done)
	}()
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		s.log.Info().Stringer("grace", s.cfg.ShutdownGrace).Msg("shutdown grace period over: closing the remaining streams")
	}
	s.cancel()
	<-done
	// Initiations that raced the drain may have registered streams after
	// it; their handlers are done, so nothing else touches them now.
	s.endUnpaired()
}

// errNoPong is how the liveness check reports a side that did not answer.
var errNoPong = errors.New("no answer to ping")

// activity is what a relay's pumps tell its liveness check.
type activity struct {
	busy atomic.Int32    // relay writes in progress
	sent [2]atomic.Int64 // messages begun and chunks written to each side so far
	idle *idleWatch      // nil when the idle timeout is off
}

// moved records a message begun or a chunk written towards side to.
func (a *activity) moved(to side) {
	a.sent[to].Add(1)
	a.idle.touch()
}

// total is how much the relay has moved either way so far.
func (a *activity) total() int64 { return a.sent[0].Load() + a.sent[1].Load() }

// liveness is what the liveness check of one relayed stream remembers
// between checks.
type liveness struct {
	proven [2]int64 // act.sent of each side as of its last pong
	seen   int64    // act.total() at the last check
}

// checkLive checks once that the two sides of a relayed stream are alive,
// as the relay does every KeepAliveInterval: it pings both, and when a side
// does not answer within ConnectionWriteTimeout it returns that side's end
// and true. ctx ending cuts the check short.
//
// Pings and their answers queue behind the messages sent before them, which
// move only as fast as the slower side takes them: backpressure, not
// death. So no ping is sent while a relay write is in progress, and a ping
// that timed out is forgiven when a relay write is in progress or the
// relay moved anything meanwhile; a stream that moved anything since the
// last check is not pinged at all. What the check catches is a side that
// answers nothing while the stream stands still and that has read all it
// was sent: a pong proves the side read everything written to it before
// the ping, so a side sent data since its last pong may just be a reader
// that paused (a pager, a suspended client) and is never ended for
// silence. (A frozen side that was sent data, or that the other keeps
// sending to, is seen as backpressure; a frozen device is caught by its
// control session instead, and a lost network by TCP's retransmission
// limit on the unacknowledged data.)
func (s *Server) checkLive(ctx context.Context, conns [2]*websocket.Conn, act *activity, lv *liveness) (end, bool) {
	// A stream that moved anything since the last check is not still, and
	// a ping could find its peer's writer stuck behind backpressure: the
	// WebSocket library fails a read whose pong it cannot write within
	// seconds. Ping only a stream that stood still for a whole interval.
	total := act.total()
	still := total == lv.seen
	lv.seen = total
	if !still || act.busy.Load() > 0 {
		return end{}, false
	}
	var errs [2]error
	sentBefore := [2]int64{act.sent[0].Load(), act.sent[1].Load()}
	moved := sentBefore[0] + sentBefore[1]
	pctx, cancel := context.WithTimeout(ctx, s.cfg.ConnectionWriteTimeout)
	var wg sync.WaitGroup
	for sd, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[sd] = c.Ping(pctx)
		}()
	}
	wg.Wait()
	cancel()
	if ctx.Err() != nil {
		return end{}, false
	}
	for sd, err := range errs {
		if err == nil {
			lv.proven[sd] = sentBefore[sd]
			continue
		}
		// Only a timeout means silence; other errors come from a
		// connection that is closing, which its pump reports.
		if !errors.Is(err, context.DeadlineExceeded) ||
			act.busy.Load() > 0 || act.total() != moved ||
			sentBefore[sd] != lv.proven[sd] {
			continue
		}
		from := side(sd)
		return end{
			from: from, err: errNoPong, dead: true, code: ClosePeerLost, why: from.String() + " connection lost",
			result: resultLost, reason: fmt.Sprintf("%s did not answer a ping within %s", from, s.cfg.ConnectionWriteTimeout),
		}, true
	}
	return end{}, false
}

// outcome names how a relay ended, for the stream event: a result and a
// reason. why is the close reason sent to the sides.
func outcome(e end, why string) (result, reason string) {
	switch {
	case e.result != "":
		return e.result, e.reason
	case e.err == nil || isNormalClose(e.err):
		return resultEnded, e.from.String() + " closed the stream"
	case errors.Is(e.err, websocket.ErrMessageTooBig):
		return resultEnded, fmt.Sprintf("%s sent a message over the size limit", e.from)
	case websocket.CloseStatus(e.err) == -1:
		return resultLost, fmt.Sprintf("%s connection lost: %v", e.from, e.err)
	case websocket.CloseStatus(e.err) == ClosePeerLost:
		// The side's own peer (its TCP target or client) failed.
		return resultLost, fmt.Sprintf("%s side ended: %s", e.from, why)
	default:
		return resultEnded, fmt.Sprintf("%s side ended: %s", e.from, why)
	}
}

// signedWith reports whether the token c signed in with verifies with one
// of d's keys (as it did when the session began).
func (c *session) signedWith(d registry.Device, skew time.Duration) bool {
	for _, k := range []string{d.PrimaryKey, d.SecondaryKey} {
		if k != "" && c.token.Verify(k, c.since, skew) == nil {
			return true
		}
	}
	return false
}
