package hub

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestLeanHijackKeepsEarlyBytes: bytes a client sends right behind its
// request, already read into net/http's buffer, come out of the small
// reader leanHijack hands over, and the small writer reaches the client.
func TestLeanHijackKeepsEarlyBytes(t *testing.T) {
	t.Run("stream", func(t *testing.T) {
		testHijackKeepsEarlyBytes(t, func(w http.ResponseWriter) http.Hijacker { return leanHijack{w} }, streamReadBuf, streamWriteBuf)
	})
	t.Run("control", func(t *testing.T) {
		testHijackKeepsEarlyBytes(t, func(w http.ResponseWriter) http.Hijacker { return controlHijack{w} }, hijackReadBuf, controlWriteBuf)
	})
}

func testHijackKeepsEarlyBytes(t *testing.T, wrap func(http.ResponseWriter) http.Hijacker, readBuf, writeBuf int) {
	got := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		nc, brw, err := wrap(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer nc.Close()
		if brw.Reader.Size() != readBuf || brw.Writer.Size() != writeBuf {
			t.Errorf("buffers %d and %d bytes", brw.Reader.Size(), brw.Writer.Size())
		}
		_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, len("early bytes"))
		if _, err := io.ReadFull(brw, b); err != nil {
			t.Error(err)
		}
		got <- string(b)
		_, _ = brw.WriteString("reply\n")
		_ = brw.Flush()
	}))
	defer srv.Close()
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\nearly bytes"); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		if s != "early bytes" {
			t.Fatalf("read %q after the hijack", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no read after the hijack")
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "reply\n" {
		t.Fatalf("client read %q, %v", line, err)
	}
}
