package tunnel

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

// StdioConn is a net.Conn over a reader and a writer, such as a process's
// stdin and stdout, for `ssh -o ProxyCommand`. CloseWrite closes the
// writer, so the reading side sees EOF; Close closes both when they can be
// closed.
type StdioConn struct {
	R io.Reader
	W io.Writer
}

var _ net.Conn = (*StdioConn)(nil)

// Stdio returns a StdioConn on the process's stdin and stdout. Where it
// can, it puts them in non-blocking mode so that Close interrupts a
// pending read.
func Stdio() *StdioConn {
	return &StdioConn{R: pollable(0, "stdin", os.Stdin), W: pollable(1, "stdout", os.Stdout)}
}

func (c *StdioConn) Read(p []byte) (int, error)  { return c.R.Read(p) }
func (c *StdioConn) Write(p []byte) (int, error) { return c.W.Write(p) }

// CloseWrite closes the writer when it is an io.Closer.
func (c *StdioConn) CloseWrite() error {
	if wc, ok := c.W.(io.Closer); ok {
		return wc.Close()
	}
	return nil
}

// Close closes the reader and the writer where they are io.Closers.
func (c *StdioConn) Close() error {
	var err error
	if rc, ok := c.R.(io.Closer); ok {
		err = rc.Close()
	}
	if werr := c.CloseWrite(); err == nil {
		err = werr
	}
	return err
}

// LocalAddr and RemoteAddr name the pipe.
func (c *StdioConn) LocalAddr() net.Addr  { return stdioAddr{} }
func (c *StdioConn) RemoteAddr() net.Addr { return stdioAddr{} }

// Deadlines are not supported on a pipe; they are ignored.
func (c *StdioConn) SetDeadline(time.Time) error      { return nil }
func (c *StdioConn) SetReadDeadline(time.Time) error  { return nil }
func (c *StdioConn) SetWriteDeadline(time.Time) error { return nil }

type stdioAddr struct{}

func (stdioAddr) Network() string { return "stdio" }
func (stdioAddr) String() string  { return "stdio" }

// CarryOne opens one stream and joins it with c until both directions end.
// Unlike Serve it returns the error that kept the stream from opening, so
// a ProxyCommand can report it and exit non-zero; after the stream ends it
// returns nil unless the stream failed. When the stream cannot be opened,
// c is left open: ssh kills its ProxyCommand as soon as the proxy's stdout
// closes, so the caller must report the error first.
func (s *Service) CarryOne(ctx context.Context, c net.Conn) error {
	start := time.Now()
	sc, err := s.opener.OpenStream(ctx, s.cfg.DeviceID, s.cfg.StreamName)
	if err != nil {
		return err
	}
	// A session stream answers on its first read; Join would close c on a
	// refusal before it could be reported.
	if h, ok := sc.(handshaker); ok {
		if err := h.Handshake(); err != nil {
			sc.Close()
			return err
		}
	}
	stats, err := Join(ctx, c, sc)
	logEnd(s.log.Info(), stats.AToB, stats.BToA, start, err).Msg("connection ended")
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("stream to %q: %w", s.cfg.DeviceID, err)
	}
	return nil
}
