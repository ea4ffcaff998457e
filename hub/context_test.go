package hub_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dsproxy/dsproxy/hub"
	"github.com/dsproxy/dsproxy/hub/certs"
	"github.com/dsproxy/dsproxy/internal/dsproxytest"
)

// cancelOnHijack cancels the request's context as soon as the handler has
// hijacked the connection: what a middleware that ends requests early, or
// a server that cancels contexts once the handler is done with HTTP, would
// do to a WebSocket that lived on its request context.
type cancelOnHijack struct {
	http.ResponseWriter
	cancel   context.CancelFunc
	hijacked func()
}

func (w *cancelOnHijack) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil {
		w.cancel()
		w.hijacked()
	}
	return c, rw, err
}

func (w *cancelOnHijack) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// TestConnectionsOutliveRequestContext: the hub's handler served by an
// http.Server whose request contexts end right after the upgrade. A device
// control session and relayed streams must go on working: their lifetime
// is the hub's, not the request's.
func TestConnectionsOutliveRequestContext(t *testing.T) {
	cfg := hub.DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.HostNames = []string{"127.0.0.1"}
	cfg.Logger = dsproxytest.Logger(t).With().Str("role", "hub").Logger()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := hub.New(cfg, ln)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	// New made the TLS material; this loads the same.
	bundle, err := certs.LoadOrCreate(filepath.Join(cfg.DataDir, "tls"), cfg.HostNames)
	if err != nil {
		srv.Close()
		t.Fatal(err)
	}
	tlsCfg := bundle.Config.Clone()
	tlsCfg.NextProtos = []string{"http/1.1"}

	var (
		active   atomic.Int64 // handlers running
		mu       sync.Mutex
		hijacked = map[string]int{} // "control" or "stream" → upgrades
	)
	h := srv.Handler()
	hs := &http.Server{
		ReadHeaderTimeout: 10 * time.Second,
		Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			active.Add(1)
			defer active.Add(-1)
			ctx, cancel := context.WithCancel(r.Context())
			defer cancel()
			kind := "stream"
			if strings.HasSuffix(r.URL.Path, "/control") {
				kind = "control"
			}
			h.ServeHTTP(&cancelOnHijack{ResponseWriter: rw, cancel: cancel, hijacked: func() {
				mu.Lock()
				hijacked[kind]++
				mu.Unlock()
			}}, r.WithContext(ctx))
		}),
	}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(tls.NewListener(ln, tlsCfg)) }()
	t.Cleanup(func() {
		// Run is never called, so Close is what ends the hub's sessions
		// and streams; the handlers then return.
		srv.Close()
		hs.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			t.Errorf("serve: %v", err)
		}
		dsproxytest.Eventually(t, "hub handlers to return", func() bool { return active.Load() == 0 })
	})

	w := &dsproxytest.Hub{
		Server:                srv,
		Config:                cfg,
		Addr:                  ln.Addr().String(),
		DataDir:               cfg.DataDir,
		OwnerConnectionString: srv.OwnerConnectionString(),
	}
	if w.ClientTLS, err = certs.ClientConfig(srv.CAPEM()); err != nil {
		t.Fatal(err)
	}
	w.Service = w.ServiceClient(t, w.OwnerConnectionString)
	dev := w.StartDevice(t, "dev1", "echo="+dsproxytest.Echo(t))
	addr := w.StartService(t, "dev1", "echo")

	for i := range 3 {
		c, err := net.DialTimeout("tcp", addr, dsproxytest.WaitTimeout)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
		msg := []byte("still alive " + string(rune('0'+i)))
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		_, err = io.ReadFull(c, got)
		c.Close()
		if err != nil || string(got) != string(msg) {
			t.Fatalf("stream %d: read %q, %v; want %q", i, got, err, msg)
		}
	}

	mu.Lock()
	defer mu.Unlock()
	if hijacked["control"] != 1 || hijacked["stream"] != 6 {
		t.Errorf("upgrades: %v, want 1 control session (never redialled) and 6 stream sides", hijacked)
	}
	select {
	case <-dev.Client.Connected():
	default:
		t.Error("the device's control session is down")
	}
}
