package hub

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/dsproxy/dsproxy/internal/batch"
)

// relayBufSize is the largest message the relay reads whole before it
// writes it on as one frame; larger ones are copied on in chunks of this
// size. It is the largest message a dsproxy client sends.
const relayBufSize = 64 << 10

// relayBuf is a relay copy buffer, one byte longer than relayBufSize so
// that a message of exactly relayBufSize is known to be whole.
type relayBuf [relayBufSize + 1]byte

// relayBufs holds the relay's copy buffers. A pump takes one only while it
// moves a message, so an idle stream holds none.
var relayBufs = sync.Pool{New: func() any { return new(relayBuf) }}

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

// relayRun is the relay of one stream over two WebSockets (the per-stream
// mode): a pump per direction copies messages until one of them ends,
// then the relay closes the other side at once and records the stream.
//
// The relay has no goroutine of its own (issue 6: the hub's memory per
// open stream): besides the two pumps, what can end a stream arrives as a
// callback, which ends it through fire: a fault or revocation
// (stream.halt), the shutdown (the hub's context), the idle timeout and
// the liveness check (timers). Every goroutine that works for the relay,
// the pumps included, holds it (hold, release); the last to let go ends
// the stream's record and the connection's count (Server.conns), so the
// hub's shutdown waits for all of them.
type relayRun struct {
	s   *Server
	st  *stream
	act activity // what the liveness and idle checks learn from the pumps
	lv  liveness // touched only by the running liveness check
	// late is where a pump that ended after the chosen end leaves its
	// own, for whyClosed.
	late chan end

	mu             sync.Mutex
	holds          int  // goroutines working for the relay; over at 0
	ending         bool // an end was chosen: the relay closes both sides
	keepalive      *time.Timer
	stopShutdown   func() bool        // unregisters the end at the hub's shutdown
	cancelCheck    context.CancelFunc // the running liveness check's
	result, reason string             // for the stream event, set with ending
}

// newRelay makes the relay of st, whose two sides have both connected, and
// arms its timers and its end at the hub's shutdown; start starts its
// pumps. Called with s.mu held, when st is paired: from then on st.halt
// ends the relay.
func (s *Server) newRelay(st *stream) *relayRun {
	r := &relayRun{s: s, st: st, late: make(chan end, 1), holds: 2} // the pumps'
	// A callback that comes at once waits in hold until r is complete.
	r.mu.Lock()
	defer r.mu.Unlock()
	r.act.idle = s.watchIdle(func() { r.fire(end{from: -1, err: errIdle}) })
	r.keepalive = time.AfterFunc(s.cfg.KeepAliveInterval, r.check)
	r.stopShutdown = context.AfterFunc(s.ctx, func() { r.fire(shutdownEnd) })
	return r
}

// start starts the relay's two pumps. The relay ends the stream when they
// are done (see relayRun).
func (r *relayRun) start() {
	go r.pump(sideService)
	go r.pump(sideDevice)
}

// pump copies messages from side from to the other until either fails,
// then ends the relay.
func (r *relayRun) pump(from side) {
	defer r.release()
	st := r.st
	to := 1 - from
	n := &st.bytesUp // service → device
	if from == sideDevice {
		n = &st.bytesDown
	}
	// The relay's context is never canceled: cancelling a context under
	// coder/websocket closes the connection with a generic code, and the
	// hub wants to say why. The relay's end closes both sides explicitly.
	e := pump(context.Background(), st.conns[from], st.conns[to], st.batches[to], from, n, &r.act)
	r.end(e, true)
}

// hold counts one more goroutine working for the relay, unless the relay
// is ending or over; then it reports false and the caller does nothing.
func (r *relayRun) hold() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ending || r.holds == 0 {
		return false
	}
	r.holds++
	return true
}

// release ends a hold. The last one ends the stream: it forgets it,
// records its event and lets the hub's shutdown go on.
func (r *relayRun) release() {
	r.mu.Lock()
	r.holds--
	last := r.holds == 0
	result, reason := r.result, r.reason
	r.mu.Unlock()
	if !last {
		return
	}
	s, st := r.s, r.st
	s.mu.Lock()
	s.endLocked(st)
	s.mu.Unlock()
	s.streamEnded(st, result, reason)
	s.conns.Done()
}

// fire ends the relay with e from outside its pumps, on a goroutine that
// holds the relay; it does nothing when the relay is already ending. It
// does not block, and it may be called with s.mu held.
func (r *relayRun) fire(e end) {
	if !r.hold() {
		return
	}
	go func() {
		defer r.release()
		r.end(e, false)
	}()
}

// check runs the liveness check (checkLive) once, from the keepalive
// timer, and arms the timer for the next one unless the check ended the
// relay.
func (r *relayRun) check() {
	if !r.hold() {
		return
	}
	defer r.release()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r.mu.Lock()
	if r.ending {
		r.mu.Unlock()
		return
	}
	r.cancelCheck = cancel // the end cuts the check short
	r.mu.Unlock()
	e, dead := r.s.checkLive(ctx, r.st.conns, &r.act, &r.lv)
	r.mu.Lock()
	r.cancelCheck = nil
	if !dead && !r.ending {
		r.keepalive.Reset(r.s.cfg.KeepAliveInterval)
	}
	r.mu.Unlock()
	if dead {
		r.end(e, false)
	}
}

// end ends the relay with e, unless another end was chosen first: it
// stops the relay's timers, closes both sides with the close code e calls
// for, and returns once both are closed. pumped says e is a pump's: one
// that comes after the chosen end is left for whyClosed.
func (r *relayRun) end(e end, pumped bool) {
	r.mu.Lock()
	if r.ending {
		r.mu.Unlock()
		if pumped {
			select {
			case r.late <- e:
			default:
			}
		}
		return
	}
	r.ending = true
	r.keepalive.Stop()
	if r.cancelCheck != nil {
		r.cancelCheck()
	}
	r.stopShutdown()
	r.act.idle.stop()
	r.mu.Unlock()

	if pumped && errors.Is(e.err, net.ErrClosed) {
		// A write found a side's connection closed under it: the
		// library closes it once that side's close frame has been
		// read, and the other pump, its reader, is about to report the
		// close frame, which says how it ended.
		e = whyClosed(e, r.late)
	}
	code, why := closeFor(e)
	// End both sides. Close sends the close frame at once; the wait for
	// the peer's answer runs concurrently so neither side holds up the other.
	var cw sync.WaitGroup
	for sd, c := range r.st.conns {
		cw.Add(1)
		go func() {
			defer cw.Done()
			if e.dead && side(sd) == e.from {
				c.CloseNow() // it would not answer the close frame
				return
			}
			c.Close(code, why)
		}()
	}
	cw.Wait()

	result, reason := outcome(e, why)
	if e.err == errIdle {
		result, reason = "idle", fmt.Sprintf("idle timeout: no message in either direction for %s", r.s.cfg.IdleStreamTimeout)
	}
	r.mu.Lock()
	r.result, r.reason = result, reason
	r.mu.Unlock()
}

// halt ends a relayed stream from outside its relay with e (faults.go):
// a per-stream relay through fire, a session stream through its stop
// channel. It does not block; called with s.mu held.
func (st *stream) halt(e end) {
	if st.relay != nil {
		st.relay.fire(e)
		return
	}
	select {
	case st.stop <- e:
	default: // already being ended
	}
}

// whyClosed returns the other pump's end instead of first when it arrives
// soon and carries a close frame.
func whyClosed(first end, ends <-chan end) end {
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case second := <-ends:
		if websocket.CloseStatus(second.err) != -1 {
			return second
		}
	case <-t.C:
	}
	return first
}

// pump copies messages from src to dst until either fails. It reports
// which side ended, and tells act of every message and chunk it moves and
// of every write in progress. dstBatch, when not nil, is the batch.Conn
// under dst.
func pump(ctx context.Context, src, dst *websocket.Conn, dstBatch *batch.Conn, from side, n *atomic.Int64, act *activity) end {
	to := 1 - from
	ar := &activeReader{idle: act.idle}
	for {
		typ, r, err := src.Reader(ctx)
		if err != nil {
			return end{from: from, err: err}
		}
		act.moved(to)
		ar.r = r
		if e, ok := relayMessage(ctx, typ, ar, dst, dstBatch, from, n, act); !ok {
			return e
		}
	}
}

// relayMessage copies one message, read from r, to dst: whole, as one
// frame in one write to dstBatch, when it fits in a relay buffer;
// otherwise in chunks as it arrives. ok is false when a side failed, which
// e names.
func relayMessage(ctx context.Context, typ websocket.MessageType, r io.Reader, dst *websocket.Conn, dstBatch *batch.Conn, from side, n *atomic.Int64, act *activity) (e end, ok bool) {
	to := 1 - from
	buf := relayBufs.Get().(*relayBuf)
	defer relayBufs.Put(buf)
	m, err := io.ReadFull(r, buf[:])
	switch err {
	case io.EOF, io.ErrUnexpectedEOF: // the whole message: m bytes
		act.busy.Add(1)
		err = writeWhole(ctx, dst, dstBatch, typ, buf[:m])
		act.busy.Add(-1)
		if err != nil {
			return end{from: to, err: err}, false
		}
		act.moved(to)
		n.Add(int64(m))
		return end{}, true
	case nil: // a larger message: copy it on as it comes
	default:
		// src died mid-message: send nothing of it, so dst cannot
		// take a truncated part for a whole message; the close
		// frame that follows says why.
		return end{from: from, err: err}, false
	}
	act.busy.Add(1)
	w, err := dst.Writer(ctx, typ)
	act.busy.Add(-1)
	if err != nil {
		return end{from: to, err: err}, false
	}
	tw := trackedWriter{w: w, act: act, to: to}
	if _, err := tw.Write(buf[:m]); err != nil {
		return end{from: to, err: err}, false
	}
	n.Add(int64(m))
	c, err := io.CopyBuffer(&tw, r, buf[:])
	n.Add(c)
	if err != nil {
		if tw.err != nil {
			return end{from: to, err: tw.err}, false
		}
		// src died mid-message: leave the message unfinished, so
		// dst cannot take the truncated part for a whole one; the
		// close frame that follows says why.
		return end{from: from, err: err}, false
	}
	act.busy.Add(1)
	err = w.Close()
	act.busy.Add(-1)
	if err != nil {
		return end{from: to, err: err}, false
	}
	return end{}, true
}

// activeReader reads a message and counts each chunk that arrives as
// activity for the idle check, so that a message that arrives slowly keeps
// its stream up while the relay gathers it.
type activeReader struct {
	r    io.Reader
	idle *idleWatch
}

func (a *activeReader) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	if n > 0 {
		a.idle.touch()
	}
	return n, err
}

// writeWhole writes p to dst as one message. coder/websocket sends a
// server's frame header with the first 4 KiB and the rest apart; under a
// hold of dstBatch all of it reaches TCP in one write.
func writeWhole(ctx context.Context, dst *websocket.Conn, dstBatch *batch.Conn, typ websocket.MessageType, p []byte) error {
	if dstBatch == nil {
		return dst.Write(ctx, typ, p)
	}
	dstBatch.Hold()
	err := dst.Write(ctx, typ, p)
	if ferr := dstBatch.Release(); err == nil {
		err = ferr
	}
	return err
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
