package wsmux

import (
	"bytes"
	"context"
	"io"
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
// leaves whole in one WebSocket message, which frames queued with it may
// share; the messages carry the frames in order.
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
	want := append(append(hdr[:12:12], "hello"...), ping...)
	var got []byte
	for len(got) < len(want) {
		_, msg, err := cli.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 && len(msg) < 17 {
			t.Fatalf("first message %x: the data frame was split", msg)
		}
		got = append(got, msg...)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("messages carried %x, want %x", got, want)
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

// TestWatch: Watch, Keepalive on timers, drops a silent peer within
// interval+timeout (and a little) and keeps one that answers.
func TestWatch(t *testing.T) {
	const interval, timeout = 50 * time.Millisecond, 100 * time.Millisecond
	t.Run("silent peer", func(t *testing.T) {
		srv, _ := pair(t) // the client end never reads: no pong
		nc := Conn(context.Background(), srv, nil)
		mux, err := yamux.Server(nc, Config(nil))
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		w := Watch(mux, nc, interval, timeout)
		select {
		case <-mux.CloseChan():
		case <-time.After(interval + timeout + 5*time.Second):
			t.Fatal("silent peer not dropped")
		}
		if el := time.Since(start); el < interval+timeout || el > interval+timeout+2*time.Second {
			t.Errorf("dropped after %s, want about %s", el, interval+timeout)
		}
		// Err answers at once, whatever the session's close waits for
		// (a silent peer's close handshake, in the hub).
		errAt := time.Now()
		if err := w.Err(); err != ErrPeerSilent {
			t.Errorf("Err: %v, want ErrPeerSilent", err)
		}
		if el := time.Since(errAt); el > time.Second {
			t.Errorf("Err took %s: it waited for the session's close", el)
		}
		w.Stop()
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
		w := Watch(mux, nc, interval, timeout)
		time.Sleep(10 * (interval + timeout))
		if mux.IsClosed() || w.Err() != nil {
			t.Fatalf("Watch gave up on a peer that answers: %v", w.Err())
		}
		peer.Close()
		mux.Close()
		w.Stop()
		w.Stop() // idempotent
	})
}

// TestPeerClosed: a close frame from the peer is told apart from a broken
// connection, even when the session's read has not returned yet.
func TestPeerClosed(t *testing.T) {
	for _, tt := range []struct {
		name  string
		close func(ws *websocket.Conn)
		want  bool
	}{
		{"going away", func(ws *websocket.Conn) { ws.Close(websocket.StatusGoingAway, "replaced") }, true},
		{"normal", func(ws *websocket.Conn) { ws.Close(websocket.StatusNormalClosure, "") }, true},
		{"policy violation", func(ws *websocket.Conn) { ws.Close(websocket.StatusPolicyViolation, "revoked") }, false},
		{"cut", func(ws *websocket.Conn) { ws.CloseNow() }, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv, cli := pair(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			nc := Conn(ctx, cli, nil)
			if PeerClosed(nc, 10*time.Millisecond) {
				t.Fatal("PeerClosed before anything was read")
			}
			done := make(chan struct{})
			go func() {
				defer close(done)
				_, _ = io.Copy(io.Discard, nc)
			}()
			tt.close(srv)
			if got := PeerClosed(nc, 5*time.Second); got != tt.want {
				t.Fatalf("PeerClosed = %v, want %v", got, tt.want)
			}
			nc.Close()
			<-done
		})
	}
}
