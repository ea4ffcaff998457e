package wsmux

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/coder/websocket"
)

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
			var want, got []byte
			for i := range frames {
				hdr, body := dataFrame(1000+i, byte(i))
				want = append(append(want, hdr...), body...)
			}
			for len(got) < len(want) {
				_, msg, err := cli.Read(ctx)
				if err != nil {
					t.Fatalf("after %d of %d bytes: %v", len(got), len(want), err)
				}
				got = append(got, msg...)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("the messages did not carry the frames written, in order")
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

// TestDirectKeepsOrder: large data frames, which the writer sends itself
// instead of queueing, and small frames, queued meanwhile and sent by the
// flusher, reach the peer in the order written; each large frame leaves
// whole in a message of its own.
func TestDirectKeepsOrder(t *testing.T) {
	srv, cli := pair(t)
	nc := Conn(context.Background(), srv, nil)
	sizes := []int{10, 300 << 10, 5, 7, DirectMin, 1, DirectMin - 1, 256 << 10, 3, 64 << 10, 2, 2, 2}
	const rounds = 5
	var want []byte
	written := make(chan error, 1)
	go func() {
		for round := range rounds {
			for i, n := range sizes {
				hdr, body := dataFrame(n, byte(round*len(sizes)+i))
				if _, err := nc.Write(hdr); err != nil {
					written <- err
					return
				}
				if _, err := nc.Write(body); err != nil {
					written <- err
					return
				}
			}
		}
		written <- nil
	}()
	for round := range rounds {
		for i, n := range sizes {
			hdr, body := dataFrame(n, byte(round*len(sizes)+i))
			want = append(append(want, hdr...), body...)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var got []byte
	for len(got) < len(want) {
		_, msg, err := cli.Read(ctx)
		if err != nil {
			nc.Close() // ends the writer
			t.Fatalf("after %d of %d bytes: %v", len(got), len(want), err)
		}
		if len(msg) >= 12 && msg[0] == 0 && msg[1] == 0 {
			if n := int(binary.BigEndian.Uint32(msg[8:12])); n >= DirectMin && len(msg) != 12+n {
				t.Fatalf("a message of %d bytes starts a %d-byte frame: a large frame did not leave alone and whole", len(msg), n)
			}
		}
		got = append(got, msg...)
	}
	if err := <-written; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the messages did not carry the frames written, in order")
	}
	nc.Close()
}
