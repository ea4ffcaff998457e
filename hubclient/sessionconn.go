package hubclient

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"

	"github.com/dsproxy/dsproxy/internal/wire"
)

// Stream is one side of a stream to or from a device, whichever way the
// hub carries it: a [*Conn] over the streaming endpoint's WebSocket, or a
// stream inside a session (the fast path). Read returns io.EOF after the
// peer's half-close or normal close, and a [*StreamEndError] when the
// stream ended otherwise; CloseWrite half-closes; Abort ends the stream as
// a failure, so the peer's reads fail instead of returning io.EOF.
type Stream interface {
	net.Conn
	CloseWrite() error
	Abort() error
}

var (
	_ Stream = (*Conn)(nil)
	_ Stream = (*sessionConn)(nil)
)

// closeWriteTimeout bounds the write of a close frame: a peer that reads
// nothing learns of the close from the yamux FIN instead.
const closeWriteTimeout = 5 * time.Second

// sessionConn is one side of a session stream: frames (internal/wire) over
// a yamux stream. On the service side the hub's OpenResult comes first;
// open reads it before the first frame.
//
// It sends data frames of at most maxFrame bytes, what the peer accepts:
// on the device side as the StreamRequest said, on the service side
// wire.LegacyFramePayload until the hub's answer says more. It receives
// frames of up to wire.MaxFramePayload.
type sessionConn struct {
	st       atomic.Pointer[yamux.Stream] // replaced once per redirect
	local    net.Addr
	remote   net.Addr
	maxFrame atomic.Int32 // the largest data payload to send

	// answer reads the hub's answer to the opening: "" once the device
	// accepted, with the largest data payload the device accepts (as
	// wire.OpenResult.MaxFrame), or the host:port of the hub replica that
	// holds the device (a redirect), on which reopen opens the stream
	// again. Both are nil on the device side; answer is set to nil once
	// accepted (readMu).
	answer   func(*yamux.Stream) (redirect string, maxFrame int, err error)
	reopen   func(host string) (*yamux.Stream, error)
	answered atomic.Bool
	// decided is closed once the answer is final: accepted, or failed
	// with decidedErr.
	decided    chan struct{}
	decidedErr error
	// The deadlines last set, for the stream a redirect opens.
	readDeadline, writeDeadline atomic.Pointer[time.Time]

	closed atomic.Bool

	readMu  sync.Mutex
	left    int   // payload bytes of the current data frame not yet read
	readErr error // sticky end of the read side

	writeMu     sync.Mutex
	writeClosed bool
	// pending holds the frames written before the answer (up to
	// maxPending bytes), which a redirect replays on the new stream; the
	// first write after the answer drops them.
	pending []byte

	closeOnce sync.Once
}

// maxPending bounds the bytes a service stream keeps for a redirect;
// beyond them, writes wait for the hub's answer.
const maxPending = 64 << 10

// maxRedirects bounds the redirects of one stream (a device that moves
// between replicas while the stream opens).
const maxRedirects = 3

// newSessionConn returns one side of a session stream on st that sends
// data frames of at most wire.FrameLimit(maxFrame) bytes until answer (on
// the service side) says otherwise.
func newSessionConn(st *yamux.Stream, local, remote net.Addr, maxFrame int,
	answer func(*yamux.Stream) (string, int, error), reopen func(string) (*yamux.Stream, error),
) *sessionConn {
	c := &sessionConn{local: local, remote: remote, answer: answer, reopen: reopen}
	c.maxFrame.Store(int32(wire.FrameLimit(maxFrame)))
	c.st.Store(st)
	c.answered.Store(answer == nil)
	c.decided = make(chan struct{})
	if answer == nil {
		close(c.decided)
	}
	return c
}

// stream is the yamux stream in use.
func (c *sessionConn) stream() *yamux.Stream { return c.st.Load() }

// Read reads stream bytes.
func (c *sessionConn) Read(p []byte) (int, error) {
	c.readMu.Lock()
	defer c.readMu.Unlock()
	if c.readErr != nil {
		return 0, c.readErr
	}
	if err := c.handshake(); err != nil {
		return 0, err
	}
	for c.left == 0 {
		if err := c.nextFrame(); err != nil {
			return 0, err
		}
		if len(p) == 0 {
			return 0, nil
		}
	}
	n, err := c.stream().Read(p[:min(len(p), c.left)])
	c.left -= n
	if err != nil {
		err = c.fail(err)
	}
	return n, err
}

// nextFrame reads frame headers until a data frame's, whose payload it
// leaves to be read (left), or the end of the stream: a fin or a close
// frame, a broken frame or a failure, which it makes sticky in readErr
// (a deadline excepted) and returns. readMu is held and left is 0.
func (c *sessionConn) nextFrame() error {
	var h [wire.FrameHeaderSize]byte
	if _, err := io.ReadFull(c.stream(), h[:]); err != nil {
		return c.fail(err)
	}
	typ, n, err := wire.ParseFrameHeader(h[:])
	if err != nil {
		c.readErr = fmt.Errorf("read stream: %w", err)
		return c.readErr
	}
	switch typ {
	case wire.FrameFin:
		c.readErr = io.EOF
		return io.EOF
	case wire.FrameClose:
		b := make([]byte, n)
		if _, err := io.ReadFull(c.stream(), b); err != nil {
			return c.fail(err)
		}
		code, reason, err := wire.ParseClose(b)
		switch {
		case err != nil:
			c.readErr = fmt.Errorf("read stream: %w", err)
		case code == int(websocket.StatusNormalClosure):
			c.readErr = io.EOF
		default:
			c.readErr = &StreamEndError{Code: code, Reason: reason}
		}
		return c.readErr
	}
	c.left = n
	return nil
}

// WriteTo copies the stream to w until the peer's half-close or a normal
// close, which end it with a nil error, or until a failure, reported as
// Read reports it. Each data frame (up to wire.MaxFramePayload) reaches w
// in one Write: io.Copy through Read would split it in 32 KiB writes, a
// system call each on a TCP connection. The payload goes to w straight
// from the buffer yamux received it in (yamux.Stream.Next), without a
// copy. It is a Read: it must not run concurrently with Read.
func (c *sessionConn) WriteTo(w io.Writer) (int64, error) {
	c.readMu.Lock()
	defer c.readMu.Unlock()
	var total int64
	for {
		if c.readErr != nil {
			if c.readErr == io.EOF {
				return total, nil
			}
			return total, c.readErr
		}
		if c.left == 0 {
			if err := c.handshake(); err != nil {
				return total, err
			}
			if err := c.nextFrame(); err != nil {
				if c.readErr == nil {
					return total, err // a deadline
				}
				continue // the end: see readErr
			}
			if c.left == 0 {
				continue // an empty data frame
			}
		}
		// The payload as yamux received it, without a copy: one Write
		// per received piece of it (a whole frame, as a rule).
		st := c.stream()
		p, err := st.Next()
		if err != nil {
			if err = c.fail(err); c.readErr == nil {
				return total, err // a deadline
			}
			continue
		}
		p = p[:min(len(p), c.left)]
		m, werr := w.Write(p)
		total += int64(m)
		c.left -= m
		cerr := st.Consume(m)
		if werr == nil && m < len(p) {
			werr = io.ErrShortWrite
		}
		if werr != nil {
			return total, werr
		}
		if cerr != nil {
			if err = c.fail(cerr); c.readErr == nil {
				return total, err
			}
		}
	}
}

// Handshake waits for the hub's answer to the stream's opening, which Read
// otherwise waits for first: nil once the device accepted, else why the
// stream was refused or rejected. Writes need not wait for it.
func (c *sessionConn) Handshake() error {
	c.readMu.Lock()
	defer c.readMu.Unlock()
	if c.readErr != nil && c.answer != nil {
		return c.readErr
	}
	if err := c.handshake(); err != nil {
		return err
	}
	return c.decidedErr
}

// awaitAnswer waits for the hub's final answer for a Write: it reads it
// unless a Read is at it (or past it) already. readMu must not be held.
func (c *sessionConn) awaitAnswer() error {
	for {
		if c.readMu.TryLock() {
			err := c.handshake()
			if err == nil {
				err = c.decidedErr
			}
			c.readMu.Unlock()
			return err
		}
		select {
		case <-c.decided:
			return c.decidedErr
		case <-time.After(50 * time.Millisecond):
			// The reader may have given up on a deadline: try again.
		}
	}
}

// handshake reads the hub's answer once, following redirects; readMu is
// held.
func (c *sessionConn) handshake() error {
	for redirects := 0; c.answer != nil; redirects++ {
		host, maxFrame, err := c.answer(c.stream())
		if err == nil && host != "" {
			if redirects >= maxRedirects {
				err = fmt.Errorf("open stream: redirected more than %d times: the device keeps moving between hub replicas", maxRedirects)
			} else {
				err = c.redirect(host)
			}
		}
		if err != nil {
			if !errors.Is(err, yamux.ErrTimeout) {
				c.readErr = err
				c.answer, c.reopen = nil, nil
				c.decidedErr = err
				close(c.decided)
			}
			return err
		}
		if host == "" {
			// The next write drops pending: taking writeMu here could wait
			// for a write that waits for this side to read. Frames are
			// of the size the device accepts from then on.
			c.maxFrame.Store(int32(wire.FrameLimit(maxFrame)))
			c.answer, c.reopen = nil, nil
			c.answered.Store(true)
			close(c.decided)
		}
	}
	return nil
}

// redirect opens the stream again on the replica at host and replays
// what was written so far.
func (c *sessionConn) redirect(host string) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	st, err := c.reopen(host)
	if err != nil {
		return err
	}
	if len(c.pending) > 0 {
		if _, err := st.Write(c.pending); err != nil {
			st.Close()
			return c.writeErr(err)
		}
	}
	if t := c.readDeadline.Load(); t != nil {
		_ = st.SetReadDeadline(*t)
	}
	if t := c.writeDeadline.Load(); t != nil {
		_ = st.SetWriteDeadline(*t)
	}
	c.st.Swap(st).Close()
	if c.closed.Load() {
		st.Close()
		return net.ErrClosed
	}
	return nil
}

// fail turns an error of the yamux stream into what Read reports, and
// makes it sticky unless it is a deadline.
func (c *sessionConn) fail(err error) error {
	var ne net.Error
	switch {
	case c.closed.Load():
		err = net.ErrClosed
	case errors.Is(err, yamux.ErrTimeout), errors.As(err, &ne) && ne.Timeout():
		return err // a read deadline: the stream goes on
	case errors.Is(err, yamux.ErrSessionShutdown), c.stream().Session().IsClosed():
		err = fmt.Errorf("read stream: %w", ErrSessionLost)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, yamux.ErrConnectionReset):
		// The stream ended without a close frame: its far end is gone.
		err = &StreamEndError{Code: wire.ClosePeerLost}
	default:
		err = fmt.Errorf("read stream: %w", err)
	}
	c.readErr = err
	return err
}

// Write sends p to the peer as data frames.
func (c *sessionConn) Write(p []byte) (int, error) {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if c.writeClosed || c.closed.Load() {
		return 0, ErrStreamClosed
	}
	limit := int(c.maxFrame.Load())
	if !c.answered.Load() && len(c.pending)+len(p)+wire.FrameHeaderSize*(len(p)/limit+1) > maxPending {
		// Kept data would outgrow maxPending: wait for the answer.
		c.writeMu.Unlock()
		err := c.awaitAnswer()
		c.writeMu.Lock()
		if err != nil {
			return 0, err
		}
		if c.writeClosed || c.closed.Load() {
			return 0, ErrStreamClosed
		}
		limit = int(c.maxFrame.Load())
	}
	bp := wire.FrameBuffer()
	defer wire.PutFrameBuffer(bp)
	n := 0
	for len(p) > 0 {
		k := min(len(p), limit)
		buf := (*bp)[:wire.FrameHeaderSize+k]
		wire.PutFrameHeader(buf, wire.FrameData, k)
		copy(buf[wire.FrameHeaderSize:], p[:k])
		if err := c.writeFrames(buf); err != nil {
			return n, err
		}
		n += k
		p = p[k:]
	}
	return n, nil
}

// ReadBurst sends what r has to give as data frames, each read from r
// straight into the frame that carries it (Write copies p into a frame),
// until a read comes back short (r has nothing more buffered: wait for r
// to be readable before calling again), r ends (done), or a read or write
// fails. It returns the bytes it sent. A frame buffer is held only during
// the call, so a stream that waits for data costs none. Until the hub has
// answered, it reads through Write, which keeps what a redirect replays
// within bounds. A read error from r is returned as it is; a write error
// as Write reports it.
func (c *sessionConn) ReadBurst(r io.Reader) (n int64, done bool, err error) {
	bp := wire.FrameBuffer()
	defer wire.PutFrameBuffer(bp)
	// Answered: read into the frame after its header. Not yet: through
	// Write, in pieces that keep the replay bounded.
	slow := !c.answered.Load()
	off, size := wire.FrameHeaderSize, int(c.maxFrame.Load())
	if slow {
		off, size = 0, maxPending/2
	}
	buf := (*bp)[:off+size]
	for {
		k, rerr := r.Read(buf[off:])
		if k > 0 {
			m := 0
			if slow {
				m, err = c.Write(buf[:k])
			} else if err = c.writeFrame(buf[:off+k]); err == nil {
				m = k
			}
			n += int64(m)
			if err != nil {
				return n, false, err
			}
		}
		switch {
		case rerr == io.EOF:
			return n, true, nil
		case rerr != nil:
			return n, false, rerr
		case k < size:
			return n, false, nil
		}
	}
}

// writeFrame sends frame, a data frame's buffer whose header it fills in
// from the payload that follows it.
func (c *sessionConn) writeFrame(frame []byte) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if c.writeClosed || c.closed.Load() {
		return ErrStreamClosed
	}
	wire.PutFrameHeader(frame, wire.FrameData, len(frame)-wire.FrameHeaderSize)
	return c.writeFrames(frame)
}

// writeFrames writes whole frames, keeping them for a redirect until the
// hub has answered; writeMu is held.
func (c *sessionConn) writeFrames(b []byte) error {
	if !c.answered.Load() {
		c.pending = append(c.pending, b...)
	} else if c.pending != nil {
		c.pending = nil
	}
	if _, err := c.stream().Write(b); err != nil {
		return c.writeErr(err)
	}
	return nil
}

func (c *sessionConn) writeErr(err error) error {
	switch {
	case c.closed.Load():
		return net.ErrClosed
	case errors.Is(err, yamux.ErrSessionShutdown):
		return fmt.Errorf("write stream: %w", ErrSessionLost)
	}
	return fmt.Errorf("write stream: %w", err)
}

// CloseWrite tells the peer no more data will come (a TCP FIN). Reads go on.
func (c *sessionConn) CloseWrite() error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if c.writeClosed || c.closed.Load() {
		return nil
	}
	c.writeClosed = true
	var h [wire.FrameHeaderSize]byte
	wire.PutFrameHeader(h[:], wire.FrameFin, 0)
	if err := c.writeFrames(h[:]); err != nil {
		return fmt.Errorf("half-close stream: %w", err)
	}
	return nil
}

// Close ends the stream normally. It is safe to call more than once and
// concurrently with Read and Write, which then fail with net.ErrClosed.
func (c *sessionConn) Close() error {
	return c.closeWith(int(websocket.StatusNormalClosure), "")
}

// Abort ends the stream as a failure: the peer's reads fail instead of
// returning io.EOF.
func (c *sessionConn) Abort() error {
	return c.closeWith(wire.ClosePeerLost, "peer connection lost")
}

// closeWith sends a close frame, unless a write is in progress, which it
// cuts short instead (the hub then sees a broken frame and ends the stream
// as lost); then it closes the yamux stream and wakes a waiting Read.
func (c *sessionConn) closeWith(code int, reason string) error {
	c.closeOnce.Do(func() {
		st := c.stream()
		if c.writeMu.TryLock() {
			c.closed.Store(true)
			st = c.stream()
			_ = st.SetWriteDeadline(time.Now().Add(closeWriteTimeout))
			_, _ = st.Write(wire.AppendClose(nil, code, reason))
			c.writeMu.Unlock()
		} else {
			c.closed.Store(true)
			_ = st.SetWriteDeadline(time.Now())
		}
		_ = st.Close()
		_ = st.SetReadDeadline(time.Now())
	})
	return nil
}

// LocalAddr returns the local address of the session's connection.
func (c *sessionConn) LocalAddr() net.Addr { return c.local }

// RemoteAddr returns the hub's address.
func (c *sessionConn) RemoteAddr() net.Addr { return c.remote }

// SetDeadline sets the read and write deadlines: unlike [Conn]'s, they
// do not end the stream.
func (c *sessionConn) SetDeadline(t time.Time) error {
	c.readDeadline.Store(&t)
	c.writeDeadline.Store(&t)
	return c.stream().SetDeadline(t)
}

// SetReadDeadline sets the read deadline.
func (c *sessionConn) SetReadDeadline(t time.Time) error {
	c.readDeadline.Store(&t)
	return c.stream().SetReadDeadline(t)
}

// SetWriteDeadline sets the write deadline.
func (c *sessionConn) SetWriteDeadline(t time.Time) error {
	c.writeDeadline.Store(&t)
	return c.stream().SetWriteDeadline(t)
}
