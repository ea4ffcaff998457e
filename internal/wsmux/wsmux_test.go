package wsmux

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// pair returns the server's and the client's end of a WebSocket over
// loopback; both close at cleanup.
func pair(t *testing.T) (srvConn, cli *websocket.Conn) {
	t.Helper()
	got := make(chan *websocket.Conn, 1)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			t.Error(err)
			return
		}
		got <- ws
	}))
	t.Cleanup(hs.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cli, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(hs.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	cli.SetReadLimit(-1)
	t.Cleanup(func() { cli.CloseNow() })
	srvConn = <-got
	t.Cleanup(func() { srvConn.CloseNow() })
	return srvConn, cli
}

// TestFramePerMessage: a yamux data frame (12-byte header, then its body)
// leaves as one WebSocket message; other frames as they are.
func TestFramePerMessage(t *testing.T) {
	srv, cli := pair(t)
	nc := Conn(context.Background(), srv, nil)
	hdr := []byte{0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 5} // data, stream 1, 5 bytes
	ping := []byte{0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7}
	for _, w := range [][]byte{hdr, []byte("hello"), ping} {
		if n, err := nc.Write(w); err != nil || n != len(w) {
			t.Fatalf("write %x: %d, %v", w, n, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, want := range [][]byte{append(hdr[:12:12], "hello"...), ping} {
		_, got, err := cli.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("message %x, want %x", got, want)
		}
	}
}

// TestKeepalive: a peer that sends nothing, not even pongs, is dropped
// within interval+timeout (and a little); one that answers is kept.
func TestKeepalive(t *testing.T) {
	const interval, timeout = 50 * time.Millisecond, 100 * time.Millisecond
	t.Run("silent peer", func(t *testing.T) {
		srv, _ := pair(t) // the client end never reads: no pong
		nc := Conn(context.Background(), srv, nil)
		mux, err := yamux.Server(nc, Config(nil))
		if err != nil {
			t.Fatal(err)
		}
		defer mux.Close()
		start := time.Now()
		if err := Keepalive(mux, nc, interval, timeout); err != ErrPeerSilent {
			t.Fatalf("Keepalive: %v, want ErrPeerSilent", err)
		}
		if el := time.Since(start); el < interval+timeout || el > interval+timeout+2*time.Second {
			t.Errorf("dropped after %s, want about %s", el, interval+timeout)
		}
	})
	t.Run("answering peer", func(t *testing.T) {
		srv, cli := pair(t)
		nc := Conn(context.Background(), srv, nil)
		mux, err := yamux.Server(nc, Config(nil))
		if err != nil {
			t.Fatal(err)
		}
		peer, err := yamux.Client(Conn(context.Background(), cli, nil), Config(nil))
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- Keepalive(mux, nc, interval, timeout) }()
		time.Sleep(10 * (interval + timeout))
		select {
		case err := <-done:
			t.Fatalf("Keepalive gave up on a peer that answers: %v", err)
		default:
		}
		peer.Close()
		mux.Close()
		if err := <-done; err != nil && err != ErrPeerSilent {
			t.Errorf("Keepalive after close: %v", err)
		}
	})
}

// dataFrame returns a yamux data frame header for a body of n bytes on
// stream 1, and the body.
func dataFrame(n int, fill byte) (hdr, body []byte) {
	hdr = []byte{0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(hdr[8:], uint32(n))
	return hdr, bytes.Repeat([]byte{fill}, n)
}

// TestCloseSendsQueued: frames written just before Close, and before a
// Flush and the WebSocket's own close, reach the peer before the close
// frame, in order; writes after Close fail.
func TestCloseSendsQueued(t *testing.T) {
	for _, how := range []string{"Close", "Flush then close the WebSocket"} {
		t.Run(how, func(t *testing.T) {
			srv, cli := pair(t)
			nc := Conn(context.Background(), srv, nil)
			const frames = 20
			for i := range frames {
				hdr, body := dataFrame(1000+i, byte(i))
				if _, err := nc.Write(hdr); err != nil {
					t.Fatal(err)
				}
				if _, err := nc.Write(body); err != nil {
					t.Fatal(err)
				}
			}
			closed := make(chan error, 1)
			go func() {
				if how == "Close" {
					closed <- nc.Close()
					return
				}
				Flush(nc)
				closed <- srv.Close(websocket.StatusGoingAway, "bye")
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			for i := range frames {
				_, got, err := cli.Read(ctx)
				if err != nil {
					t.Fatalf("message %d: %v", i, err)
				}
				hdr, body := dataFrame(1000+i, byte(i))
				if !bytes.Equal(got, append(hdr, body...)) {
					t.Fatalf("message %d: %d bytes, not the frame written", i, len(got))
				}
			}
			if _, _, err := cli.Read(ctx); websocket.CloseStatus(err) == -1 {
				t.Fatalf("after the frames: %v, want the close frame", err)
			}
			if err := <-closed; err != nil && how == "Close" {
				t.Logf("Close: %v", err)
			}
			if how == "Close" {
				ping := []byte{0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7}
				if _, err := nc.Write(ping); !errors.Is(err, net.ErrClosed) {
					t.Errorf("write after Close: %v, want net.ErrClosed", err)
				}
			}
			nc.Close()
		})
	}
}

// TestQueueBounded: towards a peer that reads nothing, writes stop being
// accepted once the queue holds MaxQueued bytes (memory stays bounded),
// and Close ends the blocked write within about half a second.
func TestQueueBounded(t *testing.T) {
	srv, _ := pair(t) // the client end never reads
	nc := Conn(context.Background(), srv, nil)
	hdr, body := dataFrame(64<<10, 'x')
	wrote := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		for {
			if _, err := nc.Write(hdr); err != nil {
				done <- err
				return
			}
			if _, err := nc.Write(body); err != nil {
				done <- err
				return
			}
			select {
			case wrote <- struct{}{}:
			default:
			}
		}
	}()
	// Wait until writes stop going through: the socket buffers and the
	// queue are full.
	for still := 0; still < 5; {
		select {
		case <-wrote:
			still = 0
		case err := <-done:
			t.Fatalf("write failed: %v", err)
		case <-time.After(100 * time.Millisecond):
			still++
		}
	}
	if q := Queued(nc); q > MaxQueued {
		t.Errorf("%d bytes queued, want at most %d", q, MaxQueued)
	}
	start := time.Now()
	nc.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Error("blocked write returned no error after Close")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a write still blocked 10 s after Close")
	}
	if el := time.Since(start); el > 7*time.Second {
		t.Errorf("Close took %s", el)
	}
}
