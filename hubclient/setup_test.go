package hubclient_test

import (
	"context"
	"crypto/tls"
	"io"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dsproxy/dsproxy/hubclient"
	"github.com/dsproxy/dsproxy/internal/dsproxytest"
)

// TestInitiationKeepsConnection checks that stream initiations, accepted
// and rejected, go over one kept-alive connection to the hub: a new one
// per POST costs a TCP connection and a TLS handshake on every setup.
func TestInitiationKeepsConnection(t *testing.T) {
	w := dsproxytest.NewHub(t)
	cs := w.AddDevice(t, "dev")
	a := newAccepter()
	startDevice(t, w, cs, func(ctx context.Context, req *hubclient.StreamRequest) {
		if req.Name == "no" {
			req.Reject("not this one")
			return
		}
		a.handle(ctx, req)
	})
	sc := w.ServiceClient(t, w.OwnerConnectionString)
	var posts, fresh atomic.Int32
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) {
			if info.Reused {
				return
			}
			fresh.Add(1)
		},
		WroteHeaders: func() { posts.Add(1) },
	})
	ctx, cancel := context.WithTimeout(ctx, dsproxytest.WaitTimeout)
	defer cancel()
	for i := range 4 {
		name := "yes"
		if i == 2 {
			name = "no"
		}
		c, err := sc.OpenStream(ctx, "dev", name)
		if name == "no" {
			if err == nil {
				t.Fatal("rejected stream opened")
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		a.next(t)
		c.Close()
	}
	// One connection for the POSTs, one per accepted stream's WebSocket.
	if got, want := fresh.Load(), int32(1+3); got != want {
		t.Errorf("%d new connections for %d requests, want %d", got, posts.Load(), want)
	}
}

// TestParallelInitiationsKeepConnections checks that a burst of parallel
// stream initiations finds its connections kept from the burst before:
// the POSTs' pool keeps as many idle connections as a busy service proxy
// has initiations in flight (issue 6: 64 parallel clients with 16 kept
// made a TCP connection and a TLS handshake for every fourth setup).
func TestParallelInitiationsKeepConnections(t *testing.T) {
	const burst = 48
	w := dsproxytest.NewHub(t)
	cs := w.AddDevice(t, "dev")
	// The device answers no request of a burst before all of them have
	// arrived, so that each burst has all its POSTs in flight at once.
	var arrived atomic.Int32
	var mu sync.Mutex
	all := make(chan struct{})
	startDevice(t, w, cs, func(ctx context.Context, req *hubclient.StreamRequest) {
		mu.Lock()
		round := all
		if arrived.Add(1)%burst == 0 {
			close(all)
			all = make(chan struct{})
		}
		mu.Unlock()
		select {
		case <-round:
		case <-ctx.Done():
		}
		req.Reject("not now")
	})
	sc := w.ServiceClient(t, w.OwnerConnectionString)
	var fresh atomic.Int32
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) {
			if !info.Reused {
				fresh.Add(1)
			}
		},
	})
	ctx, cancel := context.WithTimeout(ctx, dsproxytest.WaitTimeout)
	defer cancel()
	for round := range 2 {
		fresh.Store(0)
		var wg sync.WaitGroup
		for range burst {
			wg.Go(func() {
				if c, err := sc.OpenStream(ctx, "dev", "s"); err == nil {
					c.Close()
					t.Error("rejected stream opened")
				}
			})
		}
		wg.Wait()
		want := int32(burst)
		if round > 0 {
			want = 0
		}
		if got := fresh.Load(); got != want {
			t.Errorf("burst %d: %d new connections for %d parallel initiations, want %d", round+1, got, burst, want)
		}
	}
}

// handshakeCounter counts the TLS handshakes a client makes with cfg.
func handshakeCounter(cfg *tls.Config) (*tls.Config, *atomic.Int32) {
	var n atomic.Int32
	cfg = cfg.Clone()
	cfg.VerifyConnection = func(tls.ConnectionState) error {
		n.Add(1)
		return nil
	}
	return cfg, &n
}

// echoOnce writes a byte on c and reads it back from peer, then the other
// way.
func echoOnce(t *testing.T, c, peer hubclient.Stream) {
	t.Helper()
	b := make([]byte, 1)
	for _, p := range [][2]hubclient.Stream{{c, peer}, {peer, c}} {
		if _, err := p[0].Write([]byte{7}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(p[1], b); err != nil {
			t.Fatal(err)
		}
	}
}

// TestWarmConnectionUsedOnce checks that streams opened one after the
// other use connections dialed ahead, each for one stream: both sides
// make one TLS handshake per stream, and one more for the next stream.
func TestWarmConnectionUsedOnce(t *testing.T) {
	defer hubclient.SetWarmKeep(time.Minute)()
	w := dsproxytest.NewHub(t)
	cs := w.AddDevice(t, "dev")
	a := newAccepter()
	devTLS, devHandshakes := handshakeCounter(w.ClientTLS)
	dev := startDeviceTLS(t, w, cs, devTLS, a.handle)
	svcTLS, svcHandshakes := handshakeCounter(w.ClientTLS)
	sc, err := hubclient.NewServiceClient(hubclient.ServiceConfig{ConnectionString: w.OwnerConnectionString, TLSConfig: svcTLS})
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	devBase, svcBase := devHandshakes.Load(), svcHandshakes.Load() // control session
	const streams = 5
	for range streams {
		c, err := sc.OpenStream(ctx, "dev", "s")
		if err != nil {
			t.Fatal(err)
		}
		echoOnce(t, c, a.next(t))
		c.Close()
	}
	dsproxytest.Eventually(t, "connections dialed ahead", func() bool { return dev.Warm() && sc.Warm() })
	// The service's first handshake is its POSTs' connection.
	if got, want := devHandshakes.Load()-devBase, int32(streams+1); got != want {
		t.Errorf("device: %d TLS handshakes for %d streams, want %d", got, streams, want)
	}
	if got, want := svcHandshakes.Load()-svcBase, int32(1+streams+1); got != want {
		t.Errorf("service: %d TLS handshakes for %d streams, want %d", got, streams, want)
	}
}

// TestWarmConnectionClosedWhenIdle checks that a connection dialed ahead
// that no stream takes is closed after the keep time, on both sides, and
// that a client that has opened no stream holds none: an idle device
// costs the hub no more than its control session.
func TestWarmConnectionClosedWhenIdle(t *testing.T) {
	defer hubclient.SetWarmKeep(300 * time.Millisecond)()
	w := dsproxytest.NewHub(t)
	cs := w.AddDevice(t, "dev")
	a := newAccepter()
	dev := startDevice(t, w, cs, a.handle)
	sc := w.ServiceClient(t, w.OwnerConnectionString)
	if dev.Warm() || sc.Warm() {
		t.Fatal("a connection dialed ahead before any stream")
	}
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	for range 2 {
		c, err := sc.OpenStream(ctx, "dev", "s")
		if err != nil {
			t.Fatal(err)
		}
		echoOnce(t, c, a.next(t))
		c.Close()
	}
	dsproxytest.Eventually(t, "connections dialed ahead closed", func() bool { return !dev.Warm() && !sc.Warm() })
}

// TestWarmConnectionNotAfterHubRestart checks that streams open after the
// hub restarted, although both sides held connections dialed ahead to
// the hub that went away.
func TestWarmConnectionNotAfterHubRestart(t *testing.T) {
	defer hubclient.SetWarmKeep(time.Minute)()
	w := dsproxytest.NewHub(t)
	cs := w.AddDevice(t, "dev")
	a := newAccepter()
	dev := startDevice(t, w, cs, a.handle)
	sc := w.ServiceClient(t, w.OwnerConnectionString)
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	open := func() {
		t.Helper()
		c, err := sc.OpenStream(ctx, "dev", "s")
		if err != nil {
			t.Fatal(err)
		}
		echoOnce(t, c, a.next(t))
		c.Close()
	}
	open()
	open()
	dsproxytest.Eventually(t, "connections dialed ahead", func() bool { return dev.Warm() && sc.Warm() })

	w.Kill()
	dsproxytest.Eventually(t, "device session down", func() bool {
		select {
		case <-dev.Connected():
			return false
		default:
			return true
		}
	})
	if dev.Warm() {
		t.Error("device kept its connection dialed ahead after its session ended")
	}
	dsproxytest.StartHubAt(t, w.Config, w.Addr)
	select {
	case <-dev.Connected():
	case <-time.After(dsproxytest.WaitTimeout):
		t.Fatal("device did not reconnect")
	}
	// The service's connection dialed ahead is to the hub that went away:
	// the stream opens on a fresh one.
	open()
	open()
}
