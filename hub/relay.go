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
	ends := make(chan end, 2)
	act := activity{idle: idle} // what the liveness and idle checks learn from the pumps
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		ends <- pump(ctx, svc, dev, st.batches[sideDevice], sideService, &st.bytesUp, &act)
	}()
	go func() {
		defer wg.Done()
		ends <- pump(ctx, dev, svc, st.batches[sideService], sideDevice, &st.bytesDown, &act)
	}()

	// The liveness check runs on a goroutine of its own only while it
	// pings: an idle stream costs the hub no goroutine for it.
	tick := time.NewTicker(s.cfg.KeepAliveInterval)
	defer tick.Stop()
	checkCtx, stopCheck := context.WithCancel(ctx)
	defer stopCheck()
	var lv liveness
	checks := make(chan end, 1) // a check's finding; the zero end when both sides answered
	checking := false
	var first end
wait:
	for {
		select {
		case first = <-ends:
			if errors.Is(first.err, net.ErrClosed) {
				// A write found a side's connection closed under it: the
				// library closes it once that side's close frame has
				// been read, and the other pump, its reader, is about
				// to report the close frame, which says how it ended.
				first = whyClosed(first, ends)
			}
			break wait
		case first = <-st.stop:
			break wait
		case <-s.ctx.Done():
			first = shutdownEnd
			break wait
		case <-idle.expired():
			first = end{from: -1, err: errIdle}
			break wait
		case <-tick.C:
			if checking {
				continue
			}
			checking = true
			wg.Add(1)
			go func() {
				defer wg.Done()
				e, _ := s.checkLive(checkCtx, [2]*websocket.Conn{svc, dev}, &act, &lv)
				checks <- e
			}()
		case e := <-checks:
			checking = false
			if e.err != nil {
				first = e
				break wait
			}
		}
	}
	stopCheck()
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
