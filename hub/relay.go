package hub

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/coder/websocket"
)

// relayBufSize is the copy buffer of one relay direction.
const relayBufSize = 32 << 10

// errIdle ends a relay whose stream was idle for Config.IdleStreamTimeout.
var errIdle = errors.New("stream idle")

// end is how one relay direction stopped.
type end struct {
	from side // the side whose connection ended first
	err  error

	// Set when the hub itself ends the stream (a silent side, a lost or
	// revoked device, shutdown; see faults.go): the close code and reason
	// sent to both sides, the stream event's result and reason, and
	// whether the from side is unresponsive, so that it is closed without
	// waiting for its close frame.
	code           websocket.StatusCode
	why            string
	result, reason string
	dead           bool
}

// relay copies messages between the two sides of a stream until one of them
// ends, then closes the other at once and returns when both directions
// have stopped. It returns the stream's result and a reason for the event
// log.
func (s *Server) relay(st *stream, svc, dev *websocket.Conn) (result, reason string) {
	// The relay's own context is never canceled: cancelling a context
	// under coder/websocket closes the connection with a generic code, and
	// the hub wants to say why. Shutdown closes both sides explicitly.
	ctx := context.Background()
	idle := s.watchIdle()
	defer idle.stop()
	ends := make(chan end, 3)
	act := activity{idle: idle} // what the liveness and idle checks learn from the pumps
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		ends <- pump(ctx, svc, dev, sideService, &st.bytesUp, &act)
	}()
	go func() {
		defer wg.Done()
		ends <- pump(ctx, dev, svc, sideDevice, &st.bytesDown, &act)
	}()
	go func() {
		defer wg.Done()
		s.watch(watchCtx, [2]*websocket.Conn{svc, dev}, &act, ends)
	}()

	var first end
	select {
	case first = <-ends:
	case first = <-st.stop:
	case <-s.ctx.Done():
		first = shutdownEnd
	case <-idle.expired():
		first = end{from: -1, err: errIdle}
	}
	stopWatch()
	code, why := closeFor(first)
	// End both sides. Close sends the close frame at once; the wait for
	// the peer's answer runs concurrently so neither side holds up the other.
	var cw sync.WaitGroup
	for sd, c := range []*websocket.Conn{svc, dev} {
		cw.Add(1)
		go func() {
			defer cw.Done()
			if first.dead && side(sd) == first.from {
				c.CloseNow() // it would not answer the close frame
				return
			}
			c.Close(code, why)
		}()
	}
	cw.Wait()
	wg.Wait()

	switch {
	case first.err == errIdle:
		return "idle", fmt.Sprintf("idle timeout: no message in either direction for %s", s.cfg.IdleStreamTimeout)
	default:
		return outcome(first, why)
	}
}

// pump copies messages from src to dst until either fails. It reports
// which side ended, and tells act of every message and chunk it moves and
// of every write in progress.
func pump(ctx context.Context, src, dst *websocket.Conn, from side, n *atomic.Int64, act *activity) end {
	to := 1 - from
	buf := make([]byte, relayBufSize)
	for {
		typ, r, err := src.Reader(ctx)
		if err != nil {
			return end{from: from, err: err}
		}
		act.moved(to)
		act.busy.Add(1)
		w, err := dst.Writer(ctx, typ)
		act.busy.Add(-1)
		if err != nil {
			return end{from: to, err: err}
		}
		tw := trackedWriter{w: w, act: act, to: to}
		c, err := io.CopyBuffer(&tw, r, buf)
		n.Add(c)
		if err != nil {
			if tw.err != nil {
				return end{from: to, err: tw.err}
			}
			// src died mid-message: leave the message unfinished, so
			// dst cannot take the truncated part for a whole one; the
			// close frame that follows says why.
			return end{from: from, err: err}
		}
		act.busy.Add(1)
		err = w.Close()
		act.busy.Add(-1)
		if err != nil {
			return end{from: to, err: err}
		}
	}
}

// trackedWriter remembers a write error so pump can tell which side
// failed, and tells act of each chunk written to side to.
type trackedWriter struct {
	w   io.Writer
	err error
	act *activity
	to  side
}

func (t *trackedWriter) Write(p []byte) (int, error) {
	t.act.busy.Add(1)
	n, err := t.w.Write(p)
	t.act.busy.Add(-1)
	t.act.moved(t.to)
	if err != nil {
		t.err = err
	}
	return n, err
}

// closeFor chooses the close code and reason sent to the side that did not
// end first.
func closeFor(e end) (websocket.StatusCode, string) {
	if e.err == errIdle {
		return CloseIdleTimeout, "idle timeout"
	}
	if e.code != 0 {
		return e.code, e.why
	}
	if e.from < 0 {
		return websocket.StatusGoingAway, "hub shutting down"
	}
	if errors.Is(e.err, websocket.ErrMessageTooBig) {
		return websocket.StatusMessageTooBig, "message too big"
	}
	var ce websocket.CloseError
	if errors.As(e.err, &ce) && sendable(ce.Code) {
		return ce.Code, truncate(ce.Reason, 100)
	}
	return ClosePeerLost, e.from.String() + " connection lost"
}

// sendable reports whether a close code may appear in a close frame
// (RFC 6455 7.4: 1005, 1006 and 1015 must not be sent).
func sendable(c websocket.StatusCode) bool {
	switch {
	case c >= 3000 && c <= 4999:
		return true
	case c >= 1000 && c <= 1011:
		return c != 1004 && c != 1005 && c != 1006
	}
	return false
}

func isNormalClose(err error) bool {
	switch websocket.CloseStatus(err) {
	case websocket.StatusNormalClosure, websocket.StatusGoingAway:
		return true
	}
	return false
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
