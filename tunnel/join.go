// Package tunnel is dsproxy's byte plumbing: the device-side proxy that
// bridges each accepted stream to a local TCP target, the service-side
// proxy that opens a stream for each accepted local connection, and [Join],
// the one function that moves bytes between two connections.
package tunnel

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// closeWriter is a connection that can half-close: *net.TCPConn,
// *hubclient.Conn.
type closeWriter interface {
	CloseWrite() error
}

// Stats counts what a [Join] moved.
type Stats struct {
	AToB int64 // bytes read from a and written to b
	BToA int64 // bytes read from b and written to a
}

// Join copies bytes both ways between a and b until both directions end,
// then closes both. When one direction reaches EOF it half-closes the
// destination (CloseWrite) and the other direction goes on, so protocols
// that half-close work. When a direction fails (not EOF), Join closes both
// at once; a TCP connection is then reset rather than closed cleanly, so
// the peer knows the data is incomplete. ctx ending closes both as well.
//
// Join blocks until both copies have returned; it returns the first
// failure, or nil when both directions ended with EOF.
func Join(ctx context.Context, a, b net.Conn) (Stats, error) {
	var stats Stats
	var aToB, bToA atomic.Int64
	var once sync.Once
	abort := func() {
		once.Do(func() {
			abortConn(a)
			abortConn(b)
		})
	}
	stop := context.AfterFunc(ctx, abort)
	defer stop()

	errc := make(chan error, 2)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		errc <- half(b, a, &aToB)
	}()
	go func() {
		defer wg.Done()
		errc <- half(a, b, &bToA)
	}()
	var first error
	for range 2 {
		if err := <-errc; err != nil && first == nil {
			first = err
			abort()
		}
	}
	wg.Wait()
	a.Close()
	b.Close()
	stats.AToB, stats.BToA = aToB.Load(), bToA.Load()
	if first != nil && ctx.Err() != nil {
		first = ctx.Err()
	}
	return stats, first
}

// half copies src to dst, then half-closes dst.
func half(dst, src net.Conn, n *atomic.Int64) error {
	if err := copyConn(&countWriter{w: dst, n: n}, src); err != nil {
		return err
	}
	if cw, ok := dst.(closeWriter); ok {
		if err := cw.CloseWrite(); err != nil && !errors.Is(err, net.ErrClosed) {
			return err
		}
		return nil
	}
	// No half-close on dst: closing it is the only way to pass EOF on.
	return dst.Close()
}

// copyBufSize is the most a Join reads from a TCP connection at once. A
// stream sends each read as one message, and fewer, larger messages cost
// less all along the way (issue 6); io.Copy would read 32 KiB. It is the
// largest message a stream sends (hubclient.MaxWriteMessage).
const copyBufSize = 64 << 10

// copyBufs holds copy buffers, taken only while data flows.
var copyBufs = sync.Pool{New: func() any { return new([copyBufSize]byte) }}

// copyConn copies src to dst until src's EOF. From a TCP connection it
// reads up to copyBufSize at once, and between bursts it waits for data
// without holding a buffer, so an idle connection costs none; a source
// that copies itself (a stream: see hubclient.Conn.WriteTo) does so;
// anything else goes through io.Copy.
func copyConn(dst io.Writer, src net.Conn) error {
	tc, ok := src.(*net.TCPConn)
	if !ok {
		_, err := io.Copy(dst, src)
		return err
	}
	for {
		if err := waitReadable(tc); err != nil {
			return err
		}
		if done, err := copyBurst(dst, tc); done || err != nil {
			return err
		}
	}
}

// burstReader is a destination that reads a burst from a source itself,
// into buffers of its own: a session stream reads into the frame that
// carries the bytes, one copy less (hubclient's sessionConn.ReadBurst). It
// stops when a read comes back short, or at src's EOF (done).
type burstReader interface {
	ReadBurst(src io.Reader) (n int64, done bool, err error)
}

// copyBurst copies from src to dst with a pooled buffer until a read
// comes back short (src has nothing more buffered) or src ends; done
// reports src's EOF.
func copyBurst(dst io.Writer, src io.Reader) (done bool, err error) {
	if cw, ok := dst.(*countWriter); ok {
		if br, ok := cw.w.(burstReader); ok {
			n, done, err := br.ReadBurst(src)
			cw.n.Add(n)
			return done, err
		}
	}
	buf := copyBufs.Get().(*[copyBufSize]byte)
	defer copyBufs.Put(buf)
	for {
		n, rerr := src.Read(buf[:])
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return false, err
			}
		}
		switch {
		case rerr == io.EOF:
			return true, nil
		case rerr != nil:
			return false, rerr
		case n < len(buf):
			return false, nil
		}
	}
}

// countWriter counts bytes as they are written, so a Join's counts are
// right even when it is cut short.
type countWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// aborter is a connection that can end as a failure rather than a clean
// close: *hubclient.Conn.
type aborter interface {
	Abort() error
}

// abortConn closes c so that its peer learns the data is incomplete: a TCP
// connection is reset, a stream is closed with an error code.
func abortConn(c net.Conn) {
	switch c := c.(type) {
	case aborter:
		_ = c.Abort()
	case *net.TCPConn:
		_ = c.SetLinger(0)
		c.Close()
	default:
		c.Close()
	}
}
