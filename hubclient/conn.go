package hubclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/dsproxy/dsproxy/internal/wire"
)

// MaxWriteMessage is the largest WebSocket message a [Conn] sends; larger
// writes are split. Azure's streaming endpoint accepts 64 KiB.
const MaxWriteMessage = 64 << 10

// Close codes that end a stream on purpose (from the hub).
const (
	closePeerLost         websocket.StatusCode = wire.ClosePeerLost
	closeHandshakeTimeout websocket.StatusCode = wire.CloseHandshakeTimeout
	closeIdleTimeout      websocket.StatusCode = wire.CloseIdleTimeout
)

// ErrStreamClosed reports a use of a [Conn] after Close, or a write after
// CloseWrite.
var ErrStreamClosed = errors.New("stream closed")

// Conn is one side of a stream: a net.Conn over the streaming endpoint's
// WebSocket. Each Write is sent as binary messages; CloseWrite sends the
// zero-length message that means "no more data from me", after which Read
// on the peer returns io.EOF. Read returns io.EOF after the peer's
// half-close or a normal close, and an error naming the cause when the
// stream ended otherwise (peer lost, handshake timeout, hub shutdown).
//
// One goroutine may Read while another Writes. A deadline that passes
// closes the stream: the WebSocket library cannot abandon a single read.
type Conn struct {
	ws     *websocket.Conn
	layers *streamLayers // under ws: send each message in one write
	ctx    context.Context
	cancel context.CancelFunc
	local  net.Addr
	remote net.Addr

	readMu  sync.Mutex
	r       io.Reader
	fresh   bool // r has not yielded a byte yet
	readEOF bool

	writeMu     sync.Mutex
	writeClosed bool

	deadlineMu sync.Mutex
	timer      *time.Timer

	closeOnce sync.Once
}

var _ net.Conn = (*Conn)(nil)

func newConn(ws *websocket.Conn, layers *streamLayers) *Conn {
	c := &Conn{ws: ws, layers: layers, local: layers.local, remote: layers.remote}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	return c
}

// Read reads stream bytes.
func (c *Conn) Read(p []byte) (int, error) {
	c.readMu.Lock()
	defer c.readMu.Unlock()
	for {
		if c.readEOF {
			return 0, io.EOF
		}
		if c.r == nil {
			typ, r, err := c.ws.Reader(c.ctx)
			if err != nil {
				return 0, c.readErr(err)
			}
			if typ != websocket.MessageBinary {
				c.ws.Close(websocket.StatusUnsupportedData, "only binary messages are allowed")
				return 0, fmt.Errorf("read stream: peer sent a text message")
			}
			c.r, c.fresh = r, true
		}
		if len(p) == 0 {
			return 0, nil
		}
		n, err := c.r.Read(p)
		if n > 0 {
			c.fresh = false
		}
		if err == io.EOF {
			fin := c.fresh
			c.r = nil
			if fin {
				// A zero-length message: the peer's half-close.
				c.readEOF = true
				return 0, io.EOF
			}
			err = nil
		}
		if n > 0 || err != nil {
			if err != nil {
				err = c.readErr(err)
			}
			return n, err
		}
	}
}

// copyBufSize is the buffer WriteTo copies a message through: a message of
// up to this size is written on in one Write.
const copyBufSize = MaxWriteMessage

// copyBufs holds WriteTo's buffers, taken only while a message is copied.
var copyBufs = sync.Pool{New: func() any { return new([copyBufSize]byte) }}

// WriteTo copies the stream to w until the peer's half-close or a normal
// close, which end it with a nil error, or until a failure, reported as
// Read reports it. Each message of up to 64 KiB reaches w in one Write.
// Unlike io.Copy through Read, it holds a buffer only while a message is
// being copied, so a stream that waits for data costs none. It is a Read:
// it must not run concurrently with Read.
func (c *Conn) WriteTo(w io.Writer) (int64, error) {
	c.readMu.Lock()
	defer c.readMu.Unlock()
	var total int64
	for {
		if c.readEOF {
			return total, nil
		}
		if c.r == nil {
			typ, r, err := c.ws.Reader(c.ctx)
			if err != nil {
				if err = c.readErr(err); err == io.EOF {
					err = nil
				}
				return total, err
			}
			if typ != websocket.MessageBinary {
				c.ws.Close(websocket.StatusUnsupportedData, "only binary messages are allowed")
				return total, fmt.Errorf("read stream: peer sent a text message")
			}
			c.r, c.fresh = r, true
		}
		n, err := c.copyMessage(w)
		total += n
		if err == io.EOF { // a normal close mid-message
			err = nil
		}
		if err != nil {
			return total, err
		}
	}
}

// copyMessage copies the rest of message c.r to w, in one Write when it
// fits in a buffer. A zero-length message is the peer's half-close.
func (c *Conn) copyMessage(w io.Writer) (int64, error) {
	buf := copyBufs.Get().(*[copyBufSize]byte)
	defer copyBufs.Put(buf)
	var total int64
	for {
		n, err := io.ReadFull(c.r, buf[:])
		if n > 0 {
			c.fresh = false
			m, werr := w.Write(buf[:n])
			total += int64(m)
			if werr != nil {
				return total, werr
			}
		}
		switch err {
		case nil: // a larger message: go on
			continue
		case io.EOF, io.ErrUnexpectedEOF:
			if c.fresh {
				c.readEOF = true // a zero-length message
			}
			c.r = nil
			return total, nil
		default:
			return total, c.readErr(err)
		}
	}
}

// readErr turns the end of the WebSocket into what Read reports.
func (c *Conn) readErr(err error) error {
	switch websocket.CloseStatus(err) {
	case websocket.StatusNormalClosure:
		c.readEOF = true
		return io.EOF
	case -1:
	default:
		var ce websocket.CloseError
		errors.As(err, &ce)
		return &StreamEndError{Code: int(ce.Code), Reason: ce.Reason}
	}
	if c.ctx.Err() != nil {
		return net.ErrClosed
	}
	return fmt.Errorf("read stream: %w", err)
}

// Write sends p to the peer.
func (c *Conn) Write(p []byte) (int, error) {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if c.writeClosed {
		return 0, ErrStreamClosed
	}
	n := 0
	for len(p) > 0 {
		chunk := p
		if len(chunk) > MaxWriteMessage {
			chunk = chunk[:MaxWriteMessage]
		}
		if err := c.writeMessage(chunk); err != nil {
			if c.ctx.Err() != nil {
				return n, net.ErrClosed
			}
			return n, fmt.Errorf("write stream: %w", err)
		}
		n += len(chunk)
		p = p[len(chunk):]
	}
	return n, nil
}

// writeMessage sends p as one binary message, in one TLS write and one
// write to the TCP connection.
func (c *Conn) writeMessage(p []byte) error {
	c.layers.hold()
	err := c.ws.Write(c.ctx, websocket.MessageBinary, p)
	if ferr := c.layers.release(); err == nil {
		err = ferr
	}
	return err
}

// CloseWrite tells the peer no more data will come (a TCP FIN). Reads go on.
func (c *Conn) CloseWrite() error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if c.writeClosed {
		return nil
	}
	c.writeClosed = true
	if err := c.ws.Write(c.ctx, websocket.MessageBinary, nil); err != nil {
		return fmt.Errorf("half-close stream: %w", err)
	}
	return nil
}

// Close ends the stream with a normal close. It is safe to call more than
// once and concurrently with Read and Write, which then fail.
func (c *Conn) Close() error {
	return c.closeWith(websocket.StatusNormalClosure, "")
}

// Abort ends the stream as a failure: the peer's reads fail instead of
// returning io.EOF. Use it when the data the stream carried is incomplete.
func (c *Conn) Abort() error {
	return c.closeWith(closePeerLost, "peer connection lost")
}

// closeWait bounds the close handshake: a hub that answers at all does
// so within a round trip.
const closeWait = time.Second

// closeWith ends the stream once, with code and reason, within closeWait
// (and batch's flush bound).
func (c *Conn) closeWith(code websocket.StatusCode, reason string) error {
	var err error
	c.closeOnce.Do(func() {
		c.deadlineMu.Lock()
		if c.timer != nil {
			c.timer.Stop()
		}
		c.deadlineMu.Unlock()
		// The close handshake needs the hub to read our close frame and
		// answer. A hub that reads nothing from this stream (its other
		// side stalled) never does, and the WebSocket library would wait
		// 5 s for each step; after closeWait the connection under the
		// WebSocket is closed, which ends the handshake.
		fired := make(chan struct{})
		t := time.AfterFunc(closeWait, func() {
			defer close(fired)
			c.layers.wire.Close()
		})
		err = c.ws.Close(code, reason)
		if !t.Stop() {
			<-fired
		}
		c.cancel()
		if errors.Is(err, net.ErrClosed) || websocket.CloseStatus(err) != -1 {
			err = nil
		}
	})
	return err
}

// LocalAddr returns the local address of the connection to the hub.
func (c *Conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr returns the hub's address.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// SetDeadline closes the stream at t; the zero time cancels it.
func (c *Conn) SetDeadline(t time.Time) error {
	c.deadlineMu.Lock()
	defer c.deadlineMu.Unlock()
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
	if !t.IsZero() {
		c.timer = time.AfterFunc(time.Until(t), func() { c.ws.CloseNow(); c.cancel() })
	}
	return nil
}

// SetReadDeadline is SetDeadline: a passed deadline closes the stream.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.SetDeadline(t) }

// SetWriteDeadline is SetDeadline: a passed deadline closes the stream.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.SetDeadline(t) }

// StreamEndError reports a stream the hub or the peer ended with a close
// code other than a normal closure.
type StreamEndError struct {
	Code   int
	Reason string
}

func (e *StreamEndError) Error() string {
	switch websocket.StatusCode(e.Code) {
	case closePeerLost:
		return "stream ended: the other side's connection was lost"
	case closeHandshakeTimeout:
		return "stream ended: the other side did not connect before the handshake deadline"
	case closeIdleTimeout:
		return "stream ended: idle for longer than the hub's idle timeout"
	case websocket.StatusGoingAway:
		return "stream ended: " + orDefault(e.Reason, "the hub or peer went away")
	case websocket.StatusMessageTooBig:
		return "stream ended: message too big"
	}
	return fmt.Sprintf("stream ended with close code %d: %s", e.Code, orDefault(e.Reason, "no reason given"))
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
