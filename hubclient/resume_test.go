package hubclient_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dsproxy/dsproxy/hub"
	"github.com/dsproxy/dsproxy/hub/certs"
	"github.com/dsproxy/dsproxy/hubclient"
	"github.com/dsproxy/dsproxy/internal/dsproxytest"
)

// runHubAt runs a hub on dataDir at addr ("127.0.0.1:0" for any port)
// until the returned stop is called, which waits for it; bound is the
// address it listens on.
func runHubAt(t *testing.T, dataDir, addr string) (srv *hub.Server, bound string, stop func()) {
	t.Helper()
	cfg := hub.DefaultConfig()
	cfg.DataDir = dataDir
	cfg.HostNames = []string{"127.0.0.1"}
	cfg.ShutdownGrace = 0
	cfg.Logger = dsproxytest.Logger(t).With().Str("role", "hub").Logger()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv, err = hub.New(cfg, ln)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("hub Run: %v", err)
			}
		case <-time.After(dsproxytest.WaitTimeout):
			t.Fatal("hub did not stop")
		}
	}
	t.Cleanup(stop)
	return srv, ln.Addr().String(), stop
}

// runLoggedDevice registers the device "dev1" on srv and runs an agent for
// it that rejects every stream and logs into the returned lines;
// configure, when not nil, adjusts its configuration. The agent stops at
// cleanup.
func runLoggedDevice(t *testing.T, srv *hub.Server, configure func(*hubclient.DeviceConfig)) (*logLines, *hubclient.DeviceClient) {
	t.Helper()
	clientTLS, err := certs.ClientConfig(srv.CAPEM())
	if err != nil {
		t.Fatal(err)
	}
	sc, err := hubclient.NewServiceClient(hubclient.ServiceConfig{ConnectionString: srv.OwnerConnectionString(), TLSConfig: clientTLS})
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	d, err := sc.CreateDevice(ctx, "dev1")
	if err != nil {
		t.Fatal(err)
	}

	logs := &logLines{}
	cfg := hubclient.DeviceConfig{
		ConnectionString: sc.DeviceConnectionString(d),
		TLSConfig:        clientTLS,
		Logger:           zerolog.New(logs),
	}
	if configure != nil {
		configure(&cfg)
	}
	dc, err := hubclient.NewDeviceClient(cfg, func(_ context.Context, r *hubclient.StreamRequest) { _ = r.Reject("idle") })
	if err != nil {
		t.Fatal(err)
	}
	devCtx, stopDev := context.WithCancel(context.Background())
	devDone := make(chan error, 1)
	go func() { devDone <- dc.Run(devCtx) }()
	t.Cleanup(func() {
		stopDev()
		if err := <-devDone; err != nil {
			t.Errorf("device Run: %v", err)
		}
	})
	return logs, dc
}

// TestReconnectResumesTLS: after a hub restart on the same data
// directory, the device's reconnect resumes its TLS session (the hub's
// ticket keys survive the restart, the client keeps its session cache),
// and the device says so when its session is up, with how long the dial
// and the wait for the hub's ready message took.
func TestReconnectResumesTLS(t *testing.T) {
	dir := t.TempDir()
	srv, addr, stop := runHubAt(t, dir, "127.0.0.1:0")
	logs, _ := runLoggedDevice(t, srv, nil)
	waitUp := func(n int) map[string]any {
		t.Helper()
		var up []map[string]any
		dsproxytest.Eventually(t, "control session up", func() bool {
			up = logs.with("control session up")
			return len(up) >= n
		})
		return up[n-1]
	}
	first := waitUp(1)
	stop()
	runHubAt(t, dir, addr)
	second := waitUp(2)

	if first["tls_resumed"] != false {
		t.Errorf("first session: tls_resumed %v, want false (a new client has no session to resume)", first["tls_resumed"])
	}
	if second["tls_resumed"] != true {
		t.Errorf("session after the restart: tls_resumed %v, want true", second["tls_resumed"])
	}
	for _, f := range []string{"dial", "ready"} {
		if v, ok := second[f].(float64); !ok || v < 0 {
			t.Errorf("session after the restart: %s %v, want a duration in ms", f, second[f])
		}
	}
}
