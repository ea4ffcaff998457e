package hub

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/http"
)

// Buffer sizes of a hijacked WebSocket connection (see leanHijack). The
// reader sits on TLS, which buffers a whole record already: a payload read
// at least as large as the reader bypasses it, so it only gathers frame
// headers (at most 14 bytes) and the small messages behind them. Each
// message the hub writes is flushed as one TLS record when it fits the
// writer; a larger one goes out as the buffered start and the rest, two
// records, as it did with net/http's 4 KiB buffer (write batching joins
// them into one write below TLS).
const (
	// hijackReadBuf is a control session's reader: yamux reads its
	// frames through it.
	hijackReadBuf = 512

	// streamReadBuf and streamWriteBuf are a stream side's (leanHijack):
	// the hub keeps two of each per open stream for the stream's life
	// (issue 6). The writer holds a relayed message of up to 250 bytes,
	// an interactive session's keystrokes and echoes, whole; larger
	// messages go out in two records either way, and bulk data as 16 KiB
	// records whatever the writer's size.
	streamReadBuf  = 64
	streamWriteBuf = 256
)

// controlWriteBuf is the writer's size for a control session (see
// controlHijack): what the hub sends an idle device (yamux pings and
// window updates, a stream request of a few hundred bytes) fits, and the
// hub keeps one per connected device (issue 6). An inline stream's data
// larger than it goes out in two records, as any larger message does.
const controlWriteBuf = 512

// leanHijack wraps w so that a WebSocket upgrade's Hijack hands over the
// connection with small buffers of its own (above) instead of net/http's
// 4 KiB bufio.Reader and bufio.Writer, which coder/websocket would keep
// for the connection's life. Once the handler returns, nothing refers to
// net/http's per-connection state (its buffers, the request, its
// contexts) any more: a long-lived connection whose owner is not the
// handler's goroutine costs only what it uses. Bytes the client sent
// behind its upgrade request, already in net/http's reader, are kept.
type leanHijack struct{ http.ResponseWriter }

func (w leanHijack) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return hijackSized(w.ResponseWriter, streamReadBuf, streamWriteBuf)
}

// Unwrap lets http.ResponseController and coder/websocket reach w's other
// interfaces.
func (w leanHijack) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// controlHijack is leanHijack for a control session, with a writer of
// controlWriteBuf bytes.
type controlHijack struct{ http.ResponseWriter }

func (w controlHijack) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return hijackSized(w.ResponseWriter, hijackReadBuf, controlWriteBuf)
}

// Unwrap lets http.ResponseController and coder/websocket reach w's other
// interfaces.
func (w controlHijack) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// hijackSized hijacks w's connection as leanHijack does, with a reader of
// readBuf bytes and a writer of writeBuf bytes.
func hijackSized(w http.ResponseWriter, readBuf, writeBuf int) (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, nil, err
	}
	if brw.Writer.Buffered() > 0 { // net/http flushes the 101 before handing over; be sure
		if err := brw.Writer.Flush(); err != nil {
			nc.Close()
			return nil, nil, fmt.Errorf("flush upgrade response: %w", err)
		}
	}
	if n := brw.Reader.Buffered(); n > 0 {
		// Bytes the client sent behind its request come first out of
		// the connection handed over, so that the reader keeps its size
		// however many there were (coder/websocket reads what the
		// reader holds, then the connection).
		early, _ := brw.Reader.Peek(n)
		nc = &earlyConn{Conn: nc, early: bytes.Clone(early)}
	}
	return nc, bufio.NewReadWriter(bufio.NewReaderSize(nc, readBuf), bufio.NewWriterSize(nc, writeBuf)), nil
}

// earlyConn is a hijacked connection whose first bytes were read before
// the hijack: Read returns them first, then reads the connection.
type earlyConn struct {
	net.Conn
	early []byte // not yet read; nil once all are
}

func (c *earlyConn) Read(p []byte) (int, error) {
	if len(c.early) == 0 {
		return c.Conn.Read(p)
	}
	n := copy(p, c.early)
	c.early = c.early[n:]
	if len(c.early) == 0 {
		c.early = nil // let them go
	}
	return n, nil
}
