// Package batch gathers the writes that make up one WebSocket message into
// one write on the connection below TLS.
//
// coder/websocket writes a message through a 4 KiB bufio.Writer: a client
// masks and flushes every 4 KiB, and a server flushes its frame header with
// the first 4 KiB and writes the rest apart. Over TLS each of those writes
// is a record and a write system call, and system calls were most of the
// CPU a stream cost (issue 6). A [Conn] sits between TLS and the TCP
// connection; while a message is being written (between [Conn.Hold] and
// [Conn.Release]) it keeps the encrypted records and sends them in one
// write when the message is done.
//
// Outside a hold, writes go straight through, except that a write made
// while another one is blocked in the TCP connection (a slow reader at the
// other end) is queued behind it, up to [MaxQueued] bytes, instead of
// blocking. Pongs, pings and close frames that other goroutines write
// while a message waits for the peer therefore neither wait for the hold
// nor block inside the WebSocket library's write timeout, which would
// close the connection: they go out right after the message, as they
// would have without batching.
package batch

import (
	"net"
	"sync"
	"time"
)

// MaxQueued is how many bytes a [Conn] keeps at most: a session's data
// frame of 256 KiB (wire.MaxFramePayload) in its message, the frame headers
// and the TLS overhead of its records, with room to spare for control
// frames, so that the message leaves in one write. A hold that gathers more sends what it has and
// goes on gathering; a write that would queue more waits for the queue to
// drain. Memory stays bounded whatever the writers do.
const MaxQueued = 272 << 10

// pool recycles queue buffers: a connection owns one only while it has
// bytes to send, so idle connections cost none.
var pool = sync.Pool{New: func() any { b := make([]byte, 0, MaxQueued); return &b }}

// Conn is a net.Conn whose writes can be gathered. Read, deadlines and
// Close go straight to the wrapped connection. It is safe for concurrent
// use: writes reach the wrapped connection whole and in the order they
// were made.
type Conn struct {
	net.Conn

	mu       sync.Mutex // guards the fields below
	drained  sync.Cond  // signaled when flushing ends
	holds    int        // Hold calls not yet released
	buf      *[]byte    // bytes not yet handed to Conn; nil when none
	flushing bool       // a goroutine is writing to Conn outside mu
	err      error      // the write to Conn that failed; every later write fails with it
}

var _ net.Conn = (*Conn)(nil)

// New wraps c.
func New(c net.Conn) *Conn {
	bc := &Conn{Conn: c}
	bc.drained.L = &bc.mu
	return bc
}

// Write sends p. During a hold, or while another write is blocked, it
// queues p and reports success; a failure to send p later is reported by
// the write or Release that sends it, and by every write after. Otherwise
// it writes p to the wrapped connection and blocks as that does.
func (c *Conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		if c.err != nil {
			return 0, c.err
		}
		if c.holds == 0 && !c.flushing {
			// Nothing is queued (the last flush drained it): write p
			// without a copy, then whatever queued meanwhile.
			c.flushing = true
			c.mu.Unlock()
			n, err := c.Conn.Write(p)
			c.mu.Lock()
			c.fail(err)
			c.drainLocked(false)
			return n, err
		}
		if c.queued()+len(p) <= MaxQueued {
			if c.buf == nil {
				c.buf = pool.Get().(*[]byte)
			}
			*c.buf = append(*c.buf, p...)
			return len(p), nil
		}
		if c.flushing {
			c.drained.Wait()
			continue
		}
		// A hold that outgrew the queue: send what it has, and p too
		// if p alone is too big to queue.
		c.drainLocked(true)
		if c.err == nil && len(p) > MaxQueued {
			c.flushing = true
			c.mu.Unlock()
			n, err := c.Conn.Write(p)
			c.mu.Lock()
			c.fail(err)
			c.flushing = false
			c.drained.Broadcast()
			return n, err
		}
	}
}

// Hold starts gathering writes until the matching Release. Holds nest;
// every Hold must be paired with one Release.
func (c *Conn) Hold() {
	c.mu.Lock()
	c.holds++
	c.mu.Unlock()
}

// Release ends a hold. When it ends the last one, it sends what was
// gathered in one write and returns once that is done, with its error. It
// blocks while the wrapped connection does (a write deadline or Close
// bounds it).
func (c *Conn) Release() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.holds <= 0 {
		panic("batch: Release without Hold")
	}
	c.holds--
	if c.holds > 0 {
		return nil
	}
	for c.flushing { // the flusher sends what this hold gathered
		c.drained.Wait()
	}
	c.drainLocked(false)
	return c.err
}

// drainLocked writes the queue to the wrapped connection until it is
// empty, unlocking mu while it writes; unless force is set, it stops when
// a hold has begun meanwhile, leaving that hold's bytes to its Release.
// It must be called with mu held, by the goroutine that set flushing or
// while no goroutine has.
func (c *Conn) drainLocked(force bool) {
	c.flushing = true
	for c.err == nil && c.buf != nil && (force || c.holds == 0) {
		b := c.buf
		c.buf = nil
		c.mu.Unlock()
		_, err := c.Conn.Write(*b)
		*b = (*b)[:0]
		pool.Put(b)
		c.mu.Lock()
		c.fail(err)
	}
	c.flushing = false
	c.drained.Broadcast()
}

// closeFlush bounds how long Close tries to send what is queued.
const closeFlush = 500 * time.Millisecond

// Close sends what is queued, waiting for a write in progress, then closes
// the wrapped connection. A WebSocket's close reply is often queued behind
// a message (or inside a hold that will never be released once the
// connection closes); without this it would be lost and the peer's close
// handshake would fail. The flush is bounded by closeFlush (a write
// deadline on the wrapped connection), so a peer that reads nothing
// cannot hold Close up.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.err == nil && (c.flushing || c.buf != nil) {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(closeFlush))
		for c.flushing {
			c.drained.Wait()
		}
		c.drainLocked(true)
	}
	c.fail(net.ErrClosed)
	c.mu.Unlock()
	return c.Conn.Close()
}

// fail records the first write error.
func (c *Conn) fail(err error) {
	if err != nil && c.err == nil {
		c.err = err
	}
}

func (c *Conn) queued() int {
	if c.buf == nil {
		return 0
	}
	return len(*c.buf)
}
