package hub

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
)

// Buffer sizes of a hijacked WebSocket connection (see leanHijack). The
// reader sits on TLS, which buffers a whole record already: a payload read
// of at least hijackReadBuf bytes bypasses it, so it only gathers frame
// headers. Each message the hub writes is flushed as one TLS record when
// it fits hijackWriteBuf (a control session's stream requests and pings
// do); a larger one goes out as the buffered start and the rest, two
// records, as it did with net/http's 4 KiB buffer (write batching joins
// them into one write below TLS).
const (
	hijackReadBuf  = 512
	hijackWriteBuf = 1 << 10
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
	return hijackSized(w.ResponseWriter, hijackWriteBuf)
}

// Unwrap lets http.ResponseController and coder/websocket reach w's other
// interfaces.
func (w leanHijack) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// controlHijack is leanHijack for a control session, with a writer of
// controlWriteBuf bytes.
type controlHijack struct{ http.ResponseWriter }

func (w controlHijack) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return hijackSized(w.ResponseWriter, controlWriteBuf)
}

// Unwrap lets http.ResponseController and coder/websocket reach w's other
// interfaces.
func (w controlHijack) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// hijackSized hijacks w's connection as leanHijack does, with a writer of
// writeBuf bytes.
func hijackSized(w http.ResponseWriter, writeBuf int) (net.Conn, *bufio.ReadWriter, error) {
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
	br := bufio.NewReaderSize(nc, hijackReadBuf)
	if n := brw.Reader.Buffered(); n > 0 {
		// Hand them over buffered: coder/websocket takes what the reader
		// holds and resets it onto the connection.
		early, _ := brw.Reader.Peek(n)
		br = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(bytes.Clone(early)), nc), max(n, hijackReadBuf))
		if _, err := br.Peek(n); err != nil {
			nc.Close()
			return nil, nil, fmt.Errorf("keep early bytes: %w", err)
		}
	}
	return nc, bufio.NewReadWriter(br, bufio.NewWriterSize(nc, writeBuf)), nil
}
