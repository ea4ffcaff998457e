// Package wsmux runs yamux sessions over WebSockets: the device's control
// session and the service's session, on the hub and on the clients.
//
// yamux writes each frame as two writes, its 12-byte header and then its
// body. Over a plain net.Conn adapter each write would become its own
// WebSocket message: twice the messages, and a tiny one before every
// body. [Conn] sends a data frame's header and body in one message, and
// frames that queue while an earlier write is on its way share one
// message and one write (see conn). The peer reads the session as a byte
// stream, so message boundaries carry no meaning.
package wsmux

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"
)

// WindowSize is the most a session stream may have in flight towards a
// reader that has not read it, on either end: it bounds the memory a
// stalled reader pins (per stream) and the throughput of one stream over
// a long round trip (WindowSize per RTT: 4 MiB per 50 ms is 80 MiB/s).
const WindowSize = 4 << 20

// frameTimeout is how long a frame may wait to be written before its
// write fails. A busy session queues data frames of many streams; a
// session whose peer is gone is caught by [Keepalive], not by this.
const frameTimeout = time.Minute

// Config returns the yamux configuration of dsproxy's sessions. yamux's
// own keepalive is off: it ends a session whose pong waits behind a busy
// session's data, so [Keepalive] watches the session instead. logger
// receives yamux's own complaints (why a session broke).
//
// A session reads its [Conn] through a small buffer (readBuffer) instead of
// yamux's 4 KiB: the WebSocket under it buffers already, and the hub keeps
// one per connected device (issue 6).
//
// A stream's data frame is written in place by the writing goroutine when
// the session has nothing queued (yamux.Config.WriteInPlace), instead of
// going through yamux's send loop and back: each hand-off between
// goroutines was a thread wake-up, and a bulk session stream moves
// thousands of frames a second through the proxies and the hub (issue 7).
// A frame written in place is bounded by the connection's context and
// [Keepalive], not by frameTimeout.
func Config(logger yamux.Logger) *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.ReadBufferSize = readBuffer
	cfg.EnableKeepAlive = false
	cfg.ConnectionWriteTimeout = frameTimeout
	cfg.StreamOpenTimeout = frameTimeout
	cfg.MaxStreamWindowSize = WindowSize
	cfg.WriteInPlace = true
	cfg.LogOutput = nil
	cfg.Logger = logger
	if logger == nil {
		cfg.LogOutput = io.Discard
	}
	return cfg
}

// readBuffer is the size of the buffer a session reads its Conn through
// (yamux.Config.ReadBufferSize, of the fork in third_party/yamux): a few
// frame headers. A frame's body larger than it is read straight into the
// stream's buffer.
const readBuffer = 256

// yamux frame header layout (github.com/hashicorp/yamux const.go).
const (
	headerSize = 12
	typeData   = 0
)

// Batcher gathers the writes that make up one message into one write
// below TLS (see internal/batch): Hold before the message, Release after.
type Batcher interface {
	Hold()
	Release() error
}

// Conn returns a net.Conn over ws for a yamux session: reads and writes
// binary messages, and each yamux data frame goes out as one message,
// gathered by b when it is not nil. It raises ws's read limit to the
// largest frame a session sends (a stream's whole window). ctx bounds the
// connection: when it ends, the connection closes.
func Conn(ctx context.Context, ws *websocket.Conn, b Batcher) net.Conn {
	ws.SetReadLimit(headerSize + WindowSize)
	c := &conn{Conn: websocket.NetConn(ctx, ws, websocket.MessageBinary), ws: ws, ctx: ctx, b: b, start: time.Now(), readEnded: make(chan struct{})}
	c.space.L = &c.mu
	return c
}

func (c *conn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.heard.Store(int64(time.Since(c.start)))
	}
	if err != nil {
		// websocket.NetConn returns io.EOF itself for a close frame; a
		// connection cut without one fails with an error that only wraps
		// io.EOF.
		if err == io.EOF { //nolint:errorlint // the exact value is the signal
			c.peerClosed.Store(true)
		}
		c.readOnce.Do(func() { close(c.readEnded) })
	}
	return n, err
}

// PeerClosed reports whether the peer of nc (from [Conn]) closed the
// WebSocket with a normal or going-away close frame, waiting up to wait
// for the read side to end. yamux's own error for the end of a session is
// not that answer: when a write fails on the connection the close
// handshake just closed, the session can end with the write's error
// before the read returns the close frame.
func PeerClosed(nc net.Conn, wait time.Duration) bool {
	c := nc.(*conn)
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-c.readEnded:
	case <-t.C:
	}
	return c.peerClosed.Load()
}

// silentFor is how long nothing has arrived from the peer.
func (c *conn) silentFor() time.Duration {
	return time.Since(c.start) - time.Duration(c.heard.Load())
}

// ErrPeerSilent ends a session whose peer sent nothing, not even a pong,
// for a keepalive interval and the timeout after it.
var ErrPeerSilent = errors.New("no keepalive answer")

// Keepalive watches the session mux over nc (from [Conn]) until the
// session closes: once nothing has arrived from the peer for interval it
// pings, and when nothing arrives within timeout of the ping either, the
// peer is gone: Keepalive closes the session and returns ErrPeerSilent.
// Anything arriving proves the peer alive, so a pong stuck behind a busy
// session's data is no death sentence. It returns nil when the session
// closed otherwise.
func Keepalive(mux *yamux.Session, nc net.Conn, interval, timeout time.Duration) error {
	c := nc.(*conn)
	t := time.NewTimer(interval)
	defer t.Stop()
	var (
		pong   chan struct{} // closed when the last Ping returned
		pinged time.Time     // when the ping of this silence went out
	)
	defer func() {
		if pong != nil {
			<-pong
		}
	}()
	for {
		select {
		case <-mux.CloseChan():
			return nil
		case <-t.C:
		}
		quiet := c.silentFor()
		if quiet < interval {
			t.Reset(interval - quiet)
			continue
		}
		if pinged.IsZero() || time.Since(pinged) > quiet {
			// A new silence: ask for a sign of life (noting the time
			// first: the answer may beat the next line).
			pinged = time.Now()
			if pong == nil || isClosed(pong) {
				pong = make(chan struct{})
				go func(done chan struct{}) {
					defer close(done)
					_, _ = mux.Ping() // its answer is heard like any frame
				}(pong)
			}
			t.Reset(timeout)
			continue
		}
		if since := time.Since(pinged); since < timeout {
			t.Reset(timeout - since)
			continue
		}
		mux.Close() // ends a ping in flight
		return ErrPeerSilent
	}
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// conn joins each data frame's header to its body, and sends messages
// from a goroutine of its own so that frames queued meanwhile go out
// together. yamux writes one frame at a time (its send loop, or a stream
// writing in place, under the session's write lock), so a header is always
// followed by its body; wmu only keeps a misuse from corrupting the
// stream.
//
// Why the queue: yamux's send loop writes one frame at a time and waits
// for each. Written in place, every frame of a stream setup (the open, the
// request, the first data, the fin, the close, window updates) was a TLS
// record and a write system call of its own, and system calls were most
// of the CPU a setup cost. Now the send loop only queues a frame's message,
// and one flusher writes whatever has queued in one hold of the batcher:
// one TLS write and one system call for all of them. A large data frame
// that finds nothing queued (one stream's bulk transfer) is the exception:
// its writer (the send loop, or the stream writing in place) sends it at
// once (sendDirect), which saves copying up to 256 KiB into the queue and
// a hand-off to the flusher per frame.
type conn struct {
	net.Conn
	ws    *websocket.Conn
	ctx   context.Context
	b     Batcher      // nil: no gathering
	start time.Time    // monotonic origin of heard
	heard atomic.Int64 // time.Since(start) when the peer was last heard from
	// peerClosed is set once a read found the peer's close frame (normal
	// closure or going away), which websocket.NetConn reads as io.EOF;
	// readEnded is closed by the first read that fails.
	peerClosed atomic.Bool
	readEnded  chan struct{}
	readOnce   sync.Once

	wmu  sync.Mutex
	hdr  [headerSize]byte
	want int // body length of the held header; 0 when none is held

	mu       sync.Mutex
	space    sync.Cond     // signaled when the flusher takes the queue or stops
	q        *queue        // messages not yet taken by the flusher; nil when none
	flushing bool          // a flusher goroutine runs
	idle     chan struct{} // closed when the running flusher stops
	err      error         // the first failed write, or net.ErrClosed after Close
	closed   bool
	flushers sync.WaitGroup
}

// maxQueued bounds the bytes a conn queues: a Write waits while the queue
// holds more. One message larger than that is queued alone. With the
// messages being written, a conn holds at most about twice this.
const maxQueued = 256 << 10

// maxJoin is the most bytes of queued messages the flusher joins into one
// WebSocket message: far below the read limit Conn sets.
const maxJoin = 256 << 10

// queue is a run of messages, back to back in buf; ends[i] is where
// message i ends.
type queue struct {
	buf  []byte
	ends []int
}

// queues recycles queues: a conn holds one only while it has messages to
// send, so an idle session holds none.
var queues = sync.Pool{New: func() any { return &queue{buf: make([]byte, 0, 80<<10)} }}

func putQueue(q *queue) {
	if cap(q.buf) > 2*maxQueued {
		return // an unusually large message: do not keep its buffer
	}
	q.buf, q.ends = q.buf[:0], q.ends[:0]
	queues.Put(q)
}

func (c *conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.want > 0 {
		want := c.want
		c.want = 0
		if len(p) != want {
			// Not the body the header announced: send both as they came.
			if err := c.enqueue(c.hdr[:], nil); err != nil {
				return 0, err
			}
			if err := c.enqueue(p, nil); err != nil {
				return 0, err
			}
			return len(p), nil
		}
		if len(p) >= directMin {
			sent, err := c.sendDirect(c.hdr[:], p)
			if err != nil {
				return 0, err
			}
			if sent {
				return len(p), nil
			}
		}
		if err := c.enqueue(c.hdr[:], p); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	if len(p) == headerSize && p[0] == 0 && p[1] == typeData {
		if n := binary.BigEndian.Uint32(p[8:12]); n > 0 {
			copy(c.hdr[:], p)
			c.want = int(n)
			return len(p), nil
		}
	}
	if err := c.enqueue(p, nil); err != nil {
		return 0, err
	}
	return len(p), nil
}

// enqueue queues a and b, joined, as one message, waiting while the queue
// is full, and starts a flusher unless one runs. It fails with the error
// of an earlier write, or net.ErrClosed after Close.
func (c *conn) enqueue(a, b []byte) error {
	n := len(a) + len(b)
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.err == nil && c.q != nil && len(c.q.buf)+n > maxQueued {
		c.space.Wait()
	}
	switch {
	case c.err != nil:
		return fmt.Errorf("write session frame: %w", c.err)
	case c.closed:
		return fmt.Errorf("write session frame: %w", net.ErrClosed)
	}
	if c.q == nil {
		c.q = queues.Get().(*queue)
	}
	c.q.buf = append(append(c.q.buf, a...), b...)
	c.q.ends = append(c.q.ends, len(c.q.buf))
	if !c.flushing {
		c.flushing = true
		c.idle = make(chan struct{})
		c.flushers.Add(1)
		go c.flush(c.idle)
	}
	return nil
}

// directMin is the smallest data frame body that [conn.sendDirect] sends
// in place rather than queueing: copying a large body into the queue costs
// more than the wait for the write, and a stream's bulk data comes in
// frames of up to 256 KiB (wire.MaxFramePayload).
const directMin = 16 << 10

// sendDirect sends a data frame, header hdr and body body, as one message
// from the calling goroutine (yamux's send loop, or a stream writing in
// place), without copying it into the queue, when nothing is queued or
// being flushed; otherwise it sends nothing and reports sent false, and
// the frame must be queued. Frames queued while it sends go out after it,
// by a flusher it starts. So one
// stream's bulk transfer costs neither the copy nor a hand-off per frame,
// while a busy session (many streams, a flusher at work) keeps queueing:
// its send loop goes on while the flusher writes, and frames share
// messages. It fails as enqueue does, or with the send's error.
func (c *conn) sendDirect(hdr, body []byte) (sent bool, err error) {
	c.mu.Lock()
	switch {
	case c.err != nil:
		c.mu.Unlock()
		return false, fmt.Errorf("write session frame: %w", c.err)
	case c.closed:
		c.mu.Unlock()
		return false, fmt.Errorf("write session frame: %w", net.ErrClosed)
	case c.flushing || c.q != nil:
		c.mu.Unlock()
		return false, nil
	}
	// Frames enqueued meanwhile wait behind this one, as behind a flusher.
	c.flushing = true
	idle := make(chan struct{})
	c.idle = idle
	c.mu.Unlock()

	err = c.sendParts(hdr, body)

	c.mu.Lock()
	defer c.mu.Unlock()
	c.failedLocked(err)
	if c.err == nil && c.q != nil {
		c.flushers.Add(1)
		go c.flush(idle)
		return true, nil
	}
	c.doneFlushingLocked(idle)
	if err != nil {
		return true, fmt.Errorf("write session frame: %w", err)
	}
	return true, nil
}

// sendParts writes hdr and body as one binary message without joining
// them: the message's WebSocket frames (one per part, and an empty last
// one) are gathered by the batcher into one write.
func (c *conn) sendParts(hdr, body []byte) error {
	if c.b != nil {
		c.b.Hold()
	}
	w, err := c.ws.Writer(c.ctx, websocket.MessageBinary)
	if err == nil {
		if _, err = w.Write(hdr); err == nil {
			_, err = w.Write(body)
		}
		if cerr := w.Close(); err == nil {
			err = cerr
		}
	}
	if c.b != nil {
		if rerr := c.b.Release(); err == nil {
			err = rerr
		}
	}
	return err
}

// flush writes queued messages until the queue is empty or a write fails,
// then closes idle.
func (c *conn) flush(idle chan struct{}) {
	defer c.flushers.Done()
	c.mu.Lock()
	for c.err == nil && c.q != nil {
		q := c.q
		c.q = nil
		c.space.Broadcast()
		c.mu.Unlock()
		err := c.sendQueue(q)
		putQueue(q)
		c.mu.Lock()
		c.failedLocked(err)
	}
	c.doneFlushingLocked(idle)
	c.mu.Unlock()
}

// failedLocked records err, a failed send, as the conn's error: the
// message may be cut short, so nothing more can follow it. Closing makes
// the session's reads fail too, so yamux ends. A nil err does nothing.
func (c *conn) failedLocked(err error) {
	if err != nil && c.err == nil {
		c.err = err
		c.ws.CloseNow()
	}
}

// doneFlushingLocked ends a flush: what still waits after a failed write
// is dropped, and writers waiting for space or for the flush are woken.
func (c *conn) doneFlushingLocked(idle chan struct{}) {
	if c.q != nil { // a write failed: drop what waits
		putQueue(c.q)
		c.q = nil
	}
	c.flushing = false
	close(idle)
	c.space.Broadcast()
}

// closeFlush bounds how long Close and Flush wait for queued messages to
// go out.
const closeFlush = 500 * time.Millisecond

// Flush waits until the messages nc (from [Conn]) has queued are written,
// or a write failed, for at most half a second. Call it before closing
// the WebSocket under a session, so that the frames yamux has sent go out
// before the close frame.
func Flush(nc net.Conn) {
	nc.(*conn).flushed()
}

// flushed waits for the running flusher, if any, for at most closeFlush.
func (c *conn) flushed() {
	c.mu.Lock()
	idle, flushing := c.idle, c.flushing
	c.mu.Unlock()
	if !flushing {
		return
	}
	t := time.NewTimer(closeFlush)
	defer t.Stop()
	select {
	case <-idle:
	case <-t.C:
	}
}

// Close sends what is queued (yamux closes the connection right after
// writing a stream's last frames: they must not be lost), for at most
// closeFlush, then closes the WebSocket and waits for the flusher. Later
// writes fail with net.ErrClosed. It is safe to call more than once.
func (c *conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.flushed()
	c.mu.Lock()
	if c.err == nil {
		c.err = net.ErrClosed
	}
	c.space.Broadcast()
	c.mu.Unlock()
	err := c.Conn.Close() // ends a write the peer holds up
	c.flushers.Wait()
	return err
}

// sendQueue writes q's messages, gathered by the batcher into one write
// (holds nest: each send's own hold ends inside this one). Messages that
// queued together go out as one WebSocket message, up to maxJoin bytes:
// the peer reads the session as a byte stream, whatever the message
// boundaries, and one message is one frame header and, from the hub, one
// run of TLS records instead of one per yamux frame.
func (c *conn) sendQueue(q *queue) error {
	if c.b != nil {
		c.b.Hold()
	}
	var err error
	from := 0
	for i := 0; i < len(q.ends) && err == nil; {
		// The longest run of messages from i that fits in maxJoin, and
		// at least message i.
		to := q.ends[i]
		for i++; i < len(q.ends) && q.ends[i]-from <= maxJoin; i++ {
			to = q.ends[i]
		}
		err = c.send(q.buf[from:to])
		from = to
	}
	if c.b != nil {
		if rerr := c.b.Release(); err == nil {
			err = rerr
		}
	}
	return err
}

// send writes p as one binary message.
func (c *conn) send(p []byte) error {
	if c.b == nil {
		return c.ws.Write(c.ctx, websocket.MessageBinary, p)
	}
	c.b.Hold()
	err := c.ws.Write(c.ctx, websocket.MessageBinary, p)
	if rerr := c.b.Release(); err == nil {
		err = rerr
	}
	return err
}

// Watcher is [Keepalive] without a goroutine of its own: it runs on
// timers, so a session that stands idle costs a timer, not a parked
// goroutine and its stack. Start one with [Watch]; it is safe for
// concurrent use.
type Watcher struct {
	mux               *yamux.Session
	c                 *conn
	interval, timeout time.Duration

	mu      sync.Mutex
	t       *time.Timer
	stopped bool
	pinged  time.Time // when the ping of this silence went out
	pinging bool      // a Ping is in flight
	err     error     // ErrPeerSilent once the peer was given up on

	// busy counts the armed timer (at most one) and the Ping in flight, so
	// that Stop can wait for both.
	busy sync.WaitGroup
}

// Watch watches the session mux over nc (from [Conn]) as [Keepalive] does,
// on timers, until the session closes or Stop is called: once nothing has
// arrived from the peer for interval it pings, and when nothing arrives
// within timeout of the ping either, it closes the session (Err then
// returns ErrPeerSilent). The caller must call Stop, which waits for the
// watch's timer and ping.
func Watch(mux *yamux.Session, nc net.Conn, interval, timeout time.Duration) *Watcher {
	w := &Watcher{mux: mux, c: nc.(*conn), interval: interval, timeout: timeout}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.busy.Add(1)
	w.t = time.AfterFunc(interval, w.check)
	return w
}

// arm schedules the next check in d; w.mu must be held, from within a
// check (whose timer has fired).
func (w *Watcher) arm(d time.Duration) {
	w.busy.Add(1)
	w.t.Reset(d)
}

// check is the timer's function: Keepalive's loop body.
func (w *Watcher) check() {
	defer w.busy.Done()
	if w.silent() {
		// Outside w.mu: closing waits for the peer's close handshake
		// (which a silent peer never sends) until the connection's
		// context ends, and Err must answer meanwhile.
		w.mux.Close() // ends a ping in flight
	}
}

// silent decides, under w.mu, whether the peer has been silent too long
// (then it records ErrPeerSilent and reports true); otherwise it pings or
// schedules the next check as due.
func (w *Watcher) silent() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped || w.mux.IsClosed() {
		return false
	}
	quiet := w.c.silentFor()
	if quiet < w.interval {
		w.arm(w.interval - quiet)
		return false
	}
	if w.pinged.IsZero() || time.Since(w.pinged) > quiet {
		// A new silence: ask for a sign of life (noting the time first:
		// the answer may beat the next line).
		w.pinged = time.Now()
		if !w.pinging {
			w.pinging = true
			w.busy.Add(1)
			go w.ping()
		}
		w.arm(w.timeout)
		return false
	}
	if since := time.Since(w.pinged); since < w.timeout {
		w.arm(w.timeout - since)
		return false
	}
	w.err = ErrPeerSilent
	return true
}

// ping sends one yamux ping; its answer is heard like any frame. It
// returns on the pong, yamux's own timeout or the session's end.
func (w *Watcher) ping() {
	defer w.busy.Done()
	_, _ = w.mux.Ping()
	w.mu.Lock()
	w.pinging = false
	w.mu.Unlock()
}

// Err returns ErrPeerSilent when the watch closed the session because the
// peer went silent, and nil otherwise.
func (w *Watcher) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Stop ends the watch and waits for its timer function and ping to
// return. A ping in flight returns once the session closes (or on yamux's
// ping timeout), so close the session first. It is idempotent.
func (w *Watcher) Stop() {
	w.mu.Lock()
	w.stopped = true
	if w.t.Stop() {
		w.busy.Done() // the armed check will not run
	}
	w.mu.Unlock()
	w.busy.Wait()
}
