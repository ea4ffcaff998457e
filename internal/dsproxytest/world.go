// Package dsproxytest is the in-process world for dsproxy's tests: a real
// hub on 127.0.0.1:0 with its own data directory, SQLite registry and
// private CA; devices running the real device client and proxy; service
// proxies on their own loopback listeners; and TCP targets. Everything a
// constructor starts is stopped by t.Cleanup, and each stop waits for the
// goroutines it owns, so goleak holds in every package that uses it.
//
// Typical use:
//
//	w := dsproxytest.NewHub(t)
//	echo := dsproxytest.Echo(t)
//	w.StartDevice(t, "dev1", "ssh="+echo)
//	addr := w.StartService(t, "dev1", "ssh")
//	c, _ := net.Dial("tcp", addr) // bytes now go c → service → hub → device → echo
package dsproxytest

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dsproxy/dsproxy/hub"
	"github.com/dsproxy/dsproxy/hub/certs"
	"github.com/dsproxy/dsproxy/hubclient"
	"github.com/dsproxy/dsproxy/tunnel"
)

// WaitTimeout bounds every wait in the fixture.
const WaitTimeout = 20 * time.Second

// Hub is a running hub and what a test needs to talk to it.
type Hub struct {
	ln *killableListener

	Server  *hub.Server
	Config  hub.Config
	Addr    string // host:port of the listener
	DataDir string
	// OwnerConnectionString is the iothubowner policy's.
	OwnerConnectionString string
	// ClientTLS trusts the hub's private CA.
	ClientTLS *tls.Config
	// Service is a ServiceClient with the owner's credential.
	Service *hubclient.ServiceClient
}

// Logger returns a logger that writes to the test log when DSPROXY_TEST_LOG
// is set, and is silent otherwise.
func Logger(t testing.TB) zerolog.Logger {
	if os.Getenv("DSPROXY_TEST_LOG") == "" {
		return zerolog.Nop()
	}
	return zerolog.New(zerolog.ConsoleWriter{Out: zerolog.TestWriter{T: t}, NoColor: true}).Level(zerolog.DebugLevel).With().Timestamp().Logger()
}

// NewHub starts a hub on 127.0.0.1:0 in a temporary data directory.
// configure, when given, adjusts the configuration first (shorter
// timeouts, say). The hub stops at cleanup.
func NewHub(t testing.TB, configure ...func(*hub.Config)) *Hub {
	t.Helper()
	cfg := hub.DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.HostNames = []string{"127.0.0.1"}
	cfg.Logger = Logger(t).With().Str("role", "hub").Logger()
	for _, f := range configure {
		f(&cfg)
	}
	return StartHub(t, cfg)
}

// StartHub starts a hub with cfg on 127.0.0.1:0; it stops at cleanup.
func StartHub(t testing.TB, cfg hub.Config) *Hub {
	t.Helper()
	return StartHubAt(t, cfg, "127.0.0.1:0")
}

// StartHubAt starts a hub with cfg listening on addr (port 0 for any); it
// stops at cleanup.
func StartHubAt(t testing.TB, cfg hub.Config, addr string) *Hub {
	t.Helper()
	inner, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ln := newKillableListener(inner)
	srv, err := hub.New(cfg, ln)
	if err != nil {
		ln.Close()
		t.Fatalf("start hub: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("hub stopped with: %v", err)
			}
		case <-time.After(WaitTimeout):
			t.Errorf("hub did not stop within %s", WaitTimeout)
		}
	})
	h := &Hub{
		ln:                    ln,
		Server:                srv,
		Config:                cfg,
		Addr:                  ln.Addr().String(),
		DataDir:               cfg.DataDir,
		OwnerConnectionString: srv.OwnerConnectionString(),
	}
	if pem := srv.CAPEM(); pem != nil {
		h.ClientTLS, err = certs.ClientConfig(pem)
		if err != nil {
			t.Fatal(err)
		}
	}
	h.Service = h.ServiceClient(t, h.OwnerConnectionString)
	return h
}

// ServiceClient returns a client for connStr that trusts the hub.
func (h *Hub) ServiceClient(t testing.TB, connStr string) *hubclient.ServiceClient {
	t.Helper()
	sc, err := hubclient.NewServiceClient(hubclient.ServiceConfig{
		ConnectionString: connStr,
		TLSConfig:        h.ClientTLS,
		Logger:           Logger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sc.Close)
	return sc
}

// AddDevice registers a device and returns its connection string.
func (h *Hub) AddDevice(t testing.TB, id string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), WaitTimeout)
	defer cancel()
	d, err := h.Service.CreateDevice(ctx, id)
	if err != nil {
		t.Fatalf("add device %q: %v", id, err)
	}
	return h.Service.DeviceConnectionString(d)
}

// Device is a running device agent: the real device client and proxy.
type Device struct {
	Client *hubclient.DeviceClient
	cancel context.CancelFunc
	done   chan error
}

// Stop stops the device and waits for it. It is idempotent.
func (d *Device) Stop(t testing.TB) {
	d.cancel()
	select {
	case err, ok := <-d.done:
		if ok && err != nil {
			t.Errorf("device stopped with: %v", err)
		}
	case <-time.After(WaitTimeout):
		t.Errorf("device did not stop within %s", WaitTimeout)
	}
}

// StartDevice registers id (unless it exists), runs a device agent serving
// targets ("[name=]host:port"), and waits until its control session is up.
func (h *Hub) StartDevice(t testing.TB, id string, targets ...string) *Device {
	t.Helper()
	connStr := h.AddDevice(t, id)
	return h.RunDevice(t, connStr, func(*hubclient.DeviceConfig) {}, targets...)
}

// RunDevice runs a device agent with connStr and waits until its session
// is up. configure, when not nil, adjusts the client configuration.
func (h *Hub) RunDevice(t testing.TB, connStr string, configure func(*hubclient.DeviceConfig), targets ...string) *Device {
	t.Helper()
	var ts []tunnel.Target
	for _, s := range targets {
		tg, err := tunnel.ParseTarget(s)
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, tg)
	}
	proxy, err := tunnel.NewDevice(tunnel.DeviceConfig{Targets: ts, Logger: Logger(t).With().Str("role", "device").Logger()})
	if err != nil {
		t.Fatal(err)
	}
	return h.RunDeviceHandler(t, connStr, configure, proxy.HandleStream)
}

// RunDeviceHandler is RunDevice with the device's stream requests going to
// handle instead of a device proxy.
func (h *Hub) RunDeviceHandler(t testing.TB, connStr string, configure func(*hubclient.DeviceConfig), handle hubclient.StreamHandler) *Device {
	t.Helper()
	cfg := hubclient.DeviceConfig{
		ConnectionString: connStr,
		TLSConfig:        h.ClientTLS,
		MinBackoff:       50 * time.Millisecond,
		MaxBackoff:       500 * time.Millisecond,
		Logger:           Logger(t).With().Str("role", "device").Logger(),
	}
	if configure != nil {
		configure(&cfg)
	}
	dc, err := hubclient.NewDeviceClient(cfg, handle)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &Device{Client: dc, cancel: cancel, done: make(chan error, 1)}
	go func() {
		d.done <- dc.Run(ctx)
		close(d.done)
	}()
	t.Cleanup(func() { d.Stop(t) })
	select {
	case <-dc.Connected():
	case err := <-d.done:
		t.Fatalf("device stopped before connecting: %v", err)
	case <-time.After(WaitTimeout):
		t.Fatalf("device did not connect within %s", WaitTimeout)
	}
	return d
}

// StartService runs a service proxy for deviceID and stream name on
// 127.0.0.1:0 and returns its address.
func (h *Hub) StartService(t testing.TB, deviceID, name string) string {
	t.Helper()
	return h.StartServiceWith(t, h.Service, deviceID, name)
}

// StartServiceWith is StartService with a given client.
func (h *Hub) StartServiceWith(t testing.TB, o tunnel.Opener, deviceID, name string) string {
	t.Helper()
	svc, err := tunnel.NewService(tunnel.ServiceConfig{
		DeviceID:   deviceID,
		StreamName: name,
		Logger:     Logger(t).With().Str("role", "service").Logger(),
	}, o)
	if err != nil {
		t.Fatal(err)
	}
	return ServeProxy(t, svc)
}

// ServeProxy runs svc on a new 127.0.0.1:0 listener and returns its
// address; it stops at cleanup.
func ServeProxy(t testing.TB, svc *tunnel.Service) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("service proxy stopped with: %v", err)
			}
		case <-time.After(WaitTimeout):
			t.Errorf("service proxy did not stop within %s", WaitTimeout)
		}
	})
	return ln.Addr().String()
}

// Eventually polls cond every 10 ms until it holds or WaitTimeout passes.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(WaitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
