package tunnel_test

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dsproxy/dsproxy/internal/dsproxytest"
	"github.com/dsproxy/dsproxy/tunnel"
)

// TestStopWithStalledStream: a service proxy told to stop ends a stalled
// stream at once. Its close handshake cannot finish (the hub reads nothing
// from it while the target reads nothing), and must not hold the proxy for
// the WebSocket library's 5 s timeouts.
func TestStopWithStalledStream(t *testing.T) {
	for _, m := range []struct {
		name   string
		opener func(w *dsproxytest.Hub, t *testing.T) tunnel.Opener
	}{
		{"per-stream", func(w *dsproxytest.Hub, t *testing.T) tunnel.Opener { return w.Service }},
		{"session", func(w *dsproxytest.Hub, t *testing.T) tunnel.Opener {
			return w.SessionClient(t, w.OwnerConnectionString, nil)
		}},
	} {
		for _, up := range []bool{false, true} {
			name := m.name + "/down"
			if up {
				name = m.name + "/up"
			}
			t.Run(name, func(t *testing.T) { testStopWithStalledStream(t, m.opener, up) })
		}
	}
}

// testStopWithStalledStream stalls a stream, up (the target reads
// nothing) or down (the client reads nothing), and stops the service.
func testStopWithStalledStream(t *testing.T, opener func(w *dsproxytest.Hub, t *testing.T) tunnel.Opener, up bool) {
	w := dsproxytest.NewHub(t)
	var written atomic.Int64
	hold := make(chan struct{})
	fill := func(c net.Conn) {
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Write(buf)
			written.Add(int64(n))
			if err != nil {
				return
			}
		}
	}
	target := dsproxytest.Serve(t, func(c *net.TCPConn) {
		if !up {
			fill(c)
			return
		}
		<-hold // reads nothing
	})
	t.Cleanup(func() { close(hold) })
	w.StartDevice(t, "dev1", target)
	svc, err := tunnel.NewService(tunnel.ServiceConfig{
		DeviceID:   "dev1",
		StreamName: "bulk",
		Logger:     dsproxytest.Logger(t),
	}, opener(w, t))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- svc.Serve(ctx, ln) }()

	c := dial(t, ln.Addr().String())
	if up {
		c.SetDeadline(time.Time{})
		go fill(c) // ends when c is closed
	}
	// Stalled: the target's writes stop moving.
	last := int64(-1)
	dsproxytest.Eventually(t, "the stream to stall", func() bool {
		time.Sleep(200 * time.Millisecond)
		n := written.Load()
		stalled := n > 0 && n == last
		last = n
		return stalled
	})

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(4 * time.Second):
		t.Fatal("the service proxy did not stop within 4 s with a stalled stream open")
		<-done
	}
	c.Close()
}
