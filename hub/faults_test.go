package hub_test

// Faults (issue #4): hub restarts, key rotation without a gap, silent peers
// (a device or a stream side that stops answering, simulated with
// dsproxytest.Freezer), and the stream events that record how each stream
// ended. The helpers at the top are shared with shutdown_test.go.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/dsproxy/dsproxy/hub"
	"github.com/dsproxy/dsproxy/hub/certs"
	"github.com/dsproxy/dsproxy/hub/registry"
	"github.com/dsproxy/dsproxy/hubclient"
	"github.com/dsproxy/dsproxy/internal/dsproxytest"
	"github.com/dsproxy/dsproxy/internal/sas"
	"github.com/dsproxy/dsproxy/tunnel"
)

// hubProc is a hub that a test stops when it chooses (dsproxytest.NewHub's
// stops at cleanup): for restarts and shutdown. It is stopped at cleanup
// if the test did not.
type hubProc struct {
	*dsproxytest.Hub
	cancel context.CancelFunc
	done   chan struct{}
	err    error // Run's result, once done is closed
}

// hubConfig is a hub configuration for 127.0.0.1 in dir. Its registry is
// the hub's own unless the test sets one.
func hubConfig(t *testing.T, dir string) hub.Config {
	cfg := hub.DefaultConfig()
	cfg.DataDir = dir
	cfg.HostNames = []string{"127.0.0.1"}
	cfg.Logger = dsproxytest.Logger(t).With().Str("role", "hub").Logger()
	return cfg
}

// sharedRegistry opens the SQLite registry in dir for a hub to use
// (Config.Registry), so that the test can read stream events after the hub
// has stopped. It is closed at cleanup.
func sharedRegistry(t *testing.T, dir string) registry.Store {
	t.Helper()
	reg, err := registry.OpenSQLite(filepath.Join(dir, "registry.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	return reg
}

// startHub runs a hub with cfg listening on addr: "127.0.0.1:0" for a new
// port, or the address of a hub that has stopped. A port that is briefly
// still taken is retried for a few seconds.
func startHub(t *testing.T, cfg hub.Config, addr string) *hubProc {
	t.Helper()
	var ln net.Listener
	deadline := time.Now().Add(5 * time.Second)
	for {
		var err error
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("listen on %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	srv, err := hub.New(cfg, ln)
	if err != nil {
		ln.Close()
		t.Fatalf("start hub: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &hubProc{
		Hub: &dsproxytest.Hub{
			Server:                srv,
			Config:                cfg,
			Addr:                  ln.Addr().String(),
			DataDir:               cfg.DataDir,
			OwnerConnectionString: srv.OwnerConnectionString(),
		},
		cancel: cancel,
		done:   make(chan struct{}),
	}
	go func() {
		h.err = srv.Run(ctx)
		close(h.done)
	}()
	t.Cleanup(func() { h.stop(t) })
	if h.ClientTLS, err = certs.ClientConfig(srv.CAPEM()); err != nil {
		t.Fatal(err)
	}
	h.Service = h.ServiceClient(t, h.OwnerConnectionString)
	return h
}

// stop cancels the hub's Run and waits for it; it fails the test if Run
// fails or takes longer than dsproxytest.WaitTimeout. It is idempotent.
func (h *hubProc) stop(t *testing.T) {
	t.Helper()
	h.cancel()
	select {
	case <-h.done:
		if h.err != nil {
			t.Errorf("hub stopped with: %v", h.err)
		}
	case <-time.After(dsproxytest.WaitTimeout):
		t.Errorf("hub did not stop within %s", dsproxytest.WaitTimeout)
	}
}

// agent is a device agent (the real client and proxy) whose Run result the
// test reads, unlike dsproxytest's, which must end cleanly.
type agent struct {
	client *hubclient.DeviceClient
	cancel context.CancelFunc
	done   chan struct{}
	err    error // Run's result, once done is closed
}

// runAgent starts a device agent for connStr serving targets and returns
// at once. configure adjusts its configuration. It stops at cleanup.
func runAgent(t *testing.T, tlsCfg *tls.Config, connStr string, configure func(*hubclient.DeviceConfig), targets ...string) *agent {
	t.Helper()
	var ts []tunnel.Target
	for _, s := range targets {
		tg, err := tunnel.ParseTarget(s)
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, tg)
	}
	log := dsproxytest.Logger(t).With().Str("role", "device").Logger()
	proxy, err := tunnel.NewDevice(tunnel.DeviceConfig{Targets: ts, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	cfg := hubclient.DeviceConfig{ConnectionString: connStr, TLSConfig: tlsCfg, Logger: log}
	if configure != nil {
		configure(&cfg)
	}
	dc, err := hubclient.NewDeviceClient(cfg, proxy.HandleStream)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &agent{client: dc, cancel: cancel, done: make(chan struct{})}
	go func() {
		a.err = dc.Run(ctx)
		close(a.done)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-a.done:
		case <-time.After(dsproxytest.WaitTimeout):
			t.Errorf("device agent did not stop within %s", dsproxytest.WaitTimeout)
		}
	})
	return a
}

// connected reports whether the agent holds a control session.
func (a *agent) connected() bool {
	select {
	case <-a.client.Connected():
		return true
	default:
		return false
	}
}

// waitConnected waits until the agent holds a control session.
func (a *agent) waitConnected(t *testing.T) {
	t.Helper()
	select {
	case <-a.client.Connected():
	case <-a.done:
		t.Fatalf("device agent stopped before connecting: %v", a.err)
	case <-time.After(dsproxytest.WaitTimeout):
		t.Fatalf("device agent did not connect within %s", dsproxytest.WaitTimeout)
	}
}

// waitStopped waits for the agent's Run to return by itself and returns
// its error.
func (a *agent) waitStopped(t *testing.T) error {
	t.Helper()
	select {
	case <-a.done:
		return a.err
	case <-time.After(dsproxytest.WaitTimeout):
		t.Fatalf("device agent still running after %s", dsproxytest.WaitTimeout)
		return nil
	}
}

// within polls cond every 5 ms until it holds and returns how long that
// took; it fails the test after dsproxytest.WaitTimeout.
func within(t *testing.T, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	dsproxytest.Eventually(t, what, cond)
	return time.Since(start)
}

// openEcho opens a stream named "echo" to id with sc.
func openEcho(t *testing.T, sc *hubclient.ServiceClient, id string) (hubclient.Stream, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	c, err := sc.OpenStream(ctx, id, "echo")
	if err == nil {
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
	}
	return c, err
}

// echoOnce sends msg over c, a stream to an echo target, and checks it
// comes back.
func echoOnce(c net.Conn, msg string) error {
	if _, err := c.Write([]byte(msg)); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if string(got) != msg {
		return fmt.Errorf("echo: got %q, want %q", got, msg)
	}
	return nil
}

// echoStream opens a stream to an echo target, checks one round trip and
// closes it.
func echoStream(t *testing.T, sc *hubclient.ServiceClient, id, msg string) error {
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	c, err := sc.OpenStream(ctx, id, "echo")
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
	return echoOnce(c, msg)
}

// streamEnd reads from c until it fails and returns the error, which must
// come within d.
func streamEnd(t *testing.T, c net.Conn, d time.Duration) (error, time.Duration) {
	t.Helper()
	start := time.Now()
	c.SetDeadline(start.Add(d))
	_, err := io.Copy(io.Discard, c)
	el := time.Since(start)
	if el >= d {
		t.Fatalf("stream still open after %s", d)
	}
	if err == nil {
		err = io.EOF
	}
	return err, el
}

// closeCode is the close code a stream ended with: a *StreamEndError's, or
// 0.
func closeCode(err error) int {
	var se *hubclient.StreamEndError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

// streamEvent waits for the event of stream id in reg.
func streamEvent(t *testing.T, reg registry.Store, id string) registry.StreamEvent {
	t.Helper()
	var found registry.StreamEvent
	dsproxytest.Eventually(t, "the event of stream "+id, func() bool {
		evs, err := reg.StreamEvents(context.Background(), registry.EventFilter{})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			if e.StreamID == id {
				found = e
				return true
			}
		}
		return false
	})
	return found
}

// lastEvent waits for an event of device id that match accepts and
// returns the newest.
func lastEvent(t *testing.T, reg registry.Store, id string, match func(registry.StreamEvent) bool) registry.StreamEvent {
	t.Helper()
	var found registry.StreamEvent
	dsproxytest.Eventually(t, "a stream event of "+id, func() bool {
		evs, err := reg.StreamEvents(context.Background(), registry.EventFilter{DeviceID: id})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			if match(e) {
				found = e
				return true
			}
		}
		return false
	})
	return found
}

// checkEvent checks an event's result and that its reason says want.
func checkEvent(t *testing.T, e registry.StreamEvent, result, want string) {
	t.Helper()
	if e.Result != result || !strings.Contains(e.Reason, want) {
		t.Errorf("stream event %q %q, want result %q and a reason saying %q", e.Result, e.Reason, result, want)
	}
}

// viaFreezer rewrites a device connection string to reach the hub through
// f.
func viaFreezer(t *testing.T, connStr string, f *dsproxytest.Freezer) string {
	t.Helper()
	cs, err := sas.ParseConnectionString(connStr)
	if err != nil {
		t.Fatal(err)
	}
	cs.HostName = f.Addr
	return cs.String()
}

// TestHubRestart: a hub stops (Run's context ends) and a new one starts on
// the same address and data directory. The device agent notices, redials
// with its default backoff and is back within a second or so; the keys
// and policies are the same; the service proxy's streams work again. Then
// replacing the device's keys, or disabling another device, ends its
// session and its streams, and its agent, refused, stops.
func TestHubRestart(t *testing.T) {
	dir := t.TempDir()
	cfg := hubConfig(t, dir)
	h1 := startHub(t, cfg, "127.0.0.1:0")
	addr := h1.Addr
	connStr := h1.AddDevice(t, "dev1")
	connStr2 := h1.AddDevice(t, "dev2")
	echo := dsproxytest.Echo(t)
	a := runAgent(t, h1.ClientTLS, connStr, nil, "echo="+echo) // default backoff: 500 ms, doubling, up to 30 s; a 1 s window while the hub is away
	a.waitConnected(t)
	svc := h1.StartService(t, "dev1", "echo")
	roundTrip := func(msg string) error {
		c, err := net.DialTimeout("tcp", svc, dsproxytest.WaitTimeout)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
		return echoOnce(c, msg)
	}
	if err := roundTrip("before"); err != nil {
		t.Fatalf("before the restart: %v", err)
	}

	stopAt := time.Now()
	h1.stop(t)
	stopped := time.Since(stopAt)
	if a.connected() {
		t.Fatal("the device still holds a session after the hub stopped")
	}
	h2 := startHub(t, cfg, addr)
	up := time.Now()
	if h2.OwnerConnectionString != h1.OwnerConnectionString {
		t.Errorf("the owner connection string changed across the restart")
	}
	if h2.Server.FirstStart() {
		t.Errorf("the restarted hub thinks it is new")
	}
	a.waitConnected(t)
	back := time.Since(up)
	t.Logf("hub stopped in %s; the device was back %s after the new hub started, %s after the old one was told to stop",
		stopped.Round(time.Millisecond), back.Round(time.Millisecond), time.Since(stopAt).Round(time.Millisecond))
	// The hub went away on purpose (its close frame, then nothing
	// listening): the device retries at random within 1 s, again and
	// again, without backing off further (hubclient's away window).
	if back > 3*time.Second {
		t.Errorf("the device reconnected %s after the hub came back, want within 1s (3s on a loaded machine)", back)
	}
	if err := roundTrip("after"); err != nil {
		t.Fatalf("after the restart: %v", err)
	}
	d, err := h2.Service.GetDevice(ctxFor(t), "dev1")
	if err != nil {
		t.Fatal(err)
	}
	if cs, _ := sas.ParseConnectionString(connStr); d.PrimaryKey != cs.SharedAccessKey {
		t.Errorf("the device's key changed across the restart")
	}

	t.Run("key replaced", func(t *testing.T) {
		running, err := openEcho(t, h2.Service, "dev1")
		if err != nil {
			t.Fatal(err)
		}
		if err := echoOnce(running, "x"); err != nil {
			t.Fatal(err)
		}
		d.PrimaryKey, d.SecondaryKey = sas.NewKey(), sas.NewKey()
		if _, err := h2.Service.UpdateDevice(ctxFor(t), d); err != nil {
			t.Fatal(err)
		}
		if err := a.waitStopped(t); !errors.Is(err, hubclient.ErrUnauthorized) {
			t.Errorf("agent with the replaced key stopped with %v, want ErrUnauthorized", err)
		}
		err, _ = streamEnd(t, running, 5*time.Second)
		if closeCode(err) != int(websocket.StatusPolicyViolation) {
			t.Errorf("running stream ended with %v, want close code 1008", err)
		}
		if _, err := openEcho(t, h2.Service, "dev1"); !errors.Is(err, hubclient.ErrDeviceUnavailable) {
			t.Errorf("new stream after the key was replaced: %v, want ErrDeviceUnavailable", err)
		}
		ev := lastEvent(t, h2.Server.Registry(), "dev1", func(e registry.StreamEvent) bool { return e.Result == "revoked" })
		checkEvent(t, ev, "revoked", "device key replaced")
	})
	t.Run("disabled", func(t *testing.T) {
		a2 := runAgent(t, h2.ClientTLS, connStr2, nil, "echo="+echo)
		a2.waitConnected(t)
		if err := echoStream(t, h2.Service, "dev2", "x"); err != nil {
			t.Fatal(err)
		}
		if _, err := h2.Service.UpdateDevice(ctxFor(t), hubclient.Device{ID: "dev2", Status: "disabled"}); err != nil {
			t.Fatal(err)
		}
		if err := a2.waitStopped(t); !errors.Is(err, hubclient.ErrUnauthorized) {
			t.Errorf("agent of the disabled device stopped with %v, want ErrUnauthorized", err)
		}
		if _, err := openEcho(t, h2.Service, "dev2"); !errors.Is(err, hubclient.ErrDeviceUnavailable) {
			t.Errorf("new stream to the disabled device: %v, want ErrDeviceUnavailable", err)
		}
	})
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// TestKeyRotation: a device switches from its primary key to a new
// secondary one without a gap. While streams are opened one after another
// all along, the operator sets the secondary key, a second agent starts
// with it and takes over (newest session wins), a stream through the first
// agent goes on flowing, and not one stream fails. Then the primary key is
// replaced: the old key no longer connects, and streams the first agent
// still carried end.
func TestKeyRotation(t *testing.T) {
	w := dsproxytest.NewHub(t)
	d, err := w.Service.CreateDevice(ctxFor(t), "dev1")
	if err != nil {
		t.Fatal(err)
	}
	oldConn := w.Service.DeviceConnectionString(d)
	echo := dsproxytest.Echo(t)
	// A redials only after a minute: once replaced it stays replaced, as
	// an agent that is being retired would.
	a := runAgent(t, w.ClientTLS, oldConn, func(c *hubclient.DeviceConfig) {
		c.MinBackoff, c.MaxBackoff = time.Minute, time.Minute
	}, "echo="+echo, "who="+sayer(t, "A"))
	a.waitConnected(t)

	long, err := openEcho(t, w.Service, "dev1") // through A
	if err != nil {
		t.Fatal(err)
	}
	long2, err := openEcho(t, w.Service, "dev1") // through A, kept past the key's end
	if err != nil {
		t.Fatal(err)
	}

	var (
		stop     = make(chan struct{})
		opened   atomic.Int64
		failures []error
		mu       sync.Mutex
		loopDone = make(chan struct{})
	)
	go func() {
		defer close(loopDone)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := echoStream(t, w.Service, "dev1", fmt.Sprint("m", i)); err != nil {
				mu.Lock()
				failures = append(failures, err)
				mu.Unlock()
			}
			opened.Add(1)
		}
	}()
	waitOpened := func(n int64) {
		t.Helper()
		target := opened.Load() + n
		dsproxytest.Eventually(t, "streams to be opened", func() bool { return opened.Load() >= target })
	}
	waitOpened(5)

	// The operator adds the new key as the secondary one: A, signed in
	// with the primary, stays.
	newKey := sas.NewKey()
	if _, err := w.Service.UpdateDevice(ctxFor(t), hubclient.Device{ID: "dev1", Status: "enabled", SecondaryKey: newKey}); err != nil {
		t.Fatal(err)
	}
	waitOpened(5)
	if !a.connected() {
		t.Fatal("setting the secondary key dropped the session signed with the primary")
	}

	// B starts with the secondary key and takes over.
	d.PrimaryKey = newKey
	b := runAgent(t, w.ClientTLS, w.Service.DeviceConnectionString(d), nil, "echo="+echo, "who="+sayer(t, "B"))
	b.waitConnected(t)
	within(t, "A to be replaced", func() bool { return !a.connected() })
	waitOpened(5)
	if got, err := who(w, "dev1"); got != "B" || err != nil {
		t.Fatalf("after B connected, streams reach %q (%v), want B", got, err)
	}
	for i := range 3 {
		if err := echoOnce(long, fmt.Sprint("long", i)); err != nil {
			t.Fatalf("the stream through A after B took over: %v", err)
		}
	}
	close(stop)
	<-loopDone
	if len(failures) > 0 {
		t.Errorf("%d of %d streams failed during the switch, want none; first: %v", len(failures), opened.Load(), failures[0])
	}
	t.Logf("%d streams opened during the switch, %d failed", opened.Load(), len(failures))
	if err := long.Close(); err != nil {
		t.Fatal(err)
	}

	// The primary key is replaced: the old key is dead.
	if _, err := w.Service.UpdateDevice(ctxFor(t), hubclient.Device{ID: "dev1", Status: "enabled", PrimaryKey: sas.NewKey()}); err != nil {
		t.Fatal(err)
	}
	err, _ = streamEnd(t, long2, 5*time.Second)
	if closeCode(err) != int(websocket.StatusPolicyViolation) {
		t.Errorf("stream through A when its key was replaced ended with %v, want close code 1008", err)
	}
	old := runAgent(t, w.ClientTLS, oldConn, nil, "echo="+echo)
	if err := old.waitStopped(t); !errors.Is(err, hubclient.ErrUnauthorized) {
		t.Errorf("agent with the old key stopped with %v, want ErrUnauthorized", err)
	}
	if !b.connected() {
		t.Error("replacing the primary key dropped B, which signed in with the secondary")
	}
	if got, err := who(w, "dev1"); got != "B" || err != nil {
		t.Errorf("after the primary key was replaced, streams reach %q (%v), want B", got, err)
	}
}

// TestSilentDevice: a device whose connection to the hub freezes (packets
// neither delivered nor refused) is noticed by the hub within its
// keepalive window: the device is unavailable at once and its running
// stream ends with ClosePeerLost, recorded as lost. The device notices the
// same way and redials, and once the connection thaws it is back.
func TestSilentDevice(t *testing.T) {
	const keepAlive, timeout = 100 * time.Millisecond, 300 * time.Millisecond
	const window = keepAlive + timeout
	w := dsproxytest.NewHub(t, func(c *hub.Config) { c.KeepAliveInterval, c.ConnectionWriteTimeout = keepAlive, timeout })
	f := dsproxytest.NewFreezer(t, w.Addr)
	connStr := viaFreezer(t, w.AddDevice(t, "dev1"), f)
	d := w.RunDevice(t, connStr, func(c *hubclient.DeviceConfig) {
		c.KeepAliveInterval, c.ConnectionWriteTimeout = keepAlive, timeout
	}, "echo="+dsproxytest.Echo(t))

	// Only the control session goes through the freezer: the stream
	// connections go straight to the hub, so what ends this stream is the
	// hub's verdict on the device.
	running, err := openEcho(t, w.Service, "dev1")
	if err != nil {
		t.Fatal(err)
	}
	if err := echoOnce(running, "x"); err != nil {
		t.Fatal(err)
	}
	ended := make(chan error, 1)
	go func() {
		err, _ := streamEnd(t, running, dsproxytest.WaitTimeout)
		ended <- err
	}()

	frozen := time.Now()
	f.Freeze()
	unavailable := within(t, "the hub to give up on the device", func() bool {
		_, err := w.Service.OpenStream(ctxFor(t), "dev1", "echo")
		return errors.Is(err, hubclient.ErrDeviceUnavailable)
	})
	var streamGone time.Duration
	select {
	case err := <-ended:
		streamGone = time.Since(frozen)
		if closeCode(err) != int(hub.ClosePeerLost) {
			t.Errorf("the running stream ended with %v, want close code %d", err, hub.ClosePeerLost)
		}
	case <-time.After(dsproxytest.WaitTimeout):
		t.Fatal("the running stream outlived the device")
	}
	within(t, "the device to give up on the hub", func() bool { return !connected(d) })
	deviceNoticed := time.Since(frozen)
	t.Logf("window %s: hub refused streams after %s, the stream ended after %s, the device noticed after %s",
		window, unavailable.Round(time.Millisecond), streamGone.Round(time.Millisecond), deviceNoticed.Round(time.Millisecond))
	// Slack for a loaded machine: the point is seconds, not a minute.
	if limit := window + 2*time.Second; unavailable > limit || streamGone > limit || deviceNoticed > limit {
		t.Errorf("noticed after %s, %s and %s; want within %s", unavailable, streamGone, deviceNoticed, limit)
	}
	// The device, whose keepalive window is the same, may give up first
	// and abort the stream itself: lost either way.
	ev := lastEvent(t, w.Server.Registry(), "dev1", func(e registry.StreamEvent) bool { return e.Result == "lost" })
	if !strings.Contains(ev.Reason, "device control session lost") && !strings.Contains(ev.Reason, "peer connection lost") {
		t.Errorf("stream event %q %q, want lost because the device's session was lost", ev.Result, ev.Reason)
	}

	f.Thaw()
	within(t, "the device to reconnect", func() bool { return connected(d) })
	if err := echoStream(t, w.Service, "dev1", "back"); err != nil {
		t.Fatalf("after the thaw: %v", err)
	}
}

// dialWSVia is dialWS through f: the WebSocket reaches the hub through the
// freezer.
func dialWSVia(t *testing.T, w *dsproxytest.Hub, f *dsproxytest.Freezer, url string, hdr http.Header) *wsConn {
	t.Helper()
	var (
		mu  sync.Mutex
		tcp net.Conn
	)
	tr := &http.Transport{
		TLSClientConfig:   w.ClientTLS.Clone(),
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := f.Dial(ctx, network, addr)
			mu.Lock()
			tcp = c
			mu.Unlock()
			return c, err
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}, HTTPHeader: hdr})
	if err != nil {
		t.Fatalf("dial %s through the freezer: %v", url, err)
	}
	ws.SetReadLimit(-1)
	t.Cleanup(func() { ws.CloseNow() })
	mu.Lock()
	defer mu.Unlock()
	return &wsConn{Conn: ws, tcp: tcp}
}

// reading reads c in the background, as a live peer does (a WebSocket
// answers pings only while it is read), and reports how it ended.
func reading(c *wsConn) <-chan error {
	ended := make(chan error, 1)
	go func() {
		for {
			if _, _, err := c.Read(context.Background()); err != nil {
				ended <- err
				return
			}
		}
	}()
	return ended
}

// TestSilentStreamSide: the relay pings both sides of a stream. Live sides
// answer and an idle stream stays up for many keepalive intervals; a side
// that stops answering (its connection frozen) ends the stream within the
// window: the other side gets ClosePeerLost and the event says which side
// went silent. Here the device's control session stays healthy, so only
// the relay's own check can tell.
func TestSilentStreamSide(t *testing.T) {
	const keepAlive, timeout = 100 * time.Millisecond, 300 * time.Millisecond
	const window = keepAlive + timeout
	w := dsproxytest.NewHub(t, func(c *hub.Config) { c.KeepAliveInterval, c.ConnectionWriteTimeout = keepAlive, timeout })
	key := addDevice(t, w, "dev1")
	d := connectRawDevice(t, w, "dev1", deviceToken(t, w, "dev1", key))

	for _, silent := range []string{"service", "device"} {
		t.Run(silent+" goes silent", func(t *testing.T) {
			f := dsproxytest.NewFreezer(t, w.Addr)
			s := openRaw(t, w, d, "dev1", "ssh")
			var svc, dev *wsConn
			if silent == "service" {
				svc = dialWSVia(t, w, f, s.url, bearer(s.serviceToken))
				dev = dialStream(t, w, s.deviceURL, s.deviceToken)
			} else {
				svc = dialStream(t, w, s.url, s.serviceToken)
				dev = dialWSVia(t, w, f, s.deviceURL, bearer(s.deviceToken))
			}
			svcEnd, devEnd := reading(svc), reading(dev)
			live, gone := devEnd, svcEnd
			if silent == "device" {
				live, gone = svcEnd, devEnd
			}

			time.Sleep(3 * window) // several pings, all answered
			select {
			case err := <-live:
				t.Fatalf("an idle stream with live sides ended: %v", err)
			case err := <-gone:
				t.Fatalf("an idle stream with live sides ended: %v", err)
			default:
			}

			frozen := time.Now()
			f.Freeze()
			select {
			case err := <-live:
				el := time.Since(frozen)
				if got := websocket.CloseStatus(err); got != hub.ClosePeerLost {
					t.Errorf("live side ended with %v, want close code %d", err, hub.ClosePeerLost)
				}
				t.Logf("window %s: the live side was closed %s after the %s froze", window, el.Round(time.Millisecond), silent)
				if limit := window + 2*time.Second; el > limit {
					t.Errorf("closed %s after the freeze, want within %s", el, limit)
				}
			case <-time.After(dsproxytest.WaitTimeout):
				t.Fatalf("the stream outlived its silent %s", silent)
			}
			checkEvent(t, streamEvent(t, w.Server.Registry(), s.id), "lost", silent+" did not answer a ping")
		})
	}
}

// TestBackpressureIsNotSilence: a side that stops reading while the other
// keeps writing holds the stream back; it is alive, so the relay's
// liveness check must not end the stream however long that lasts (here
// many keepalive windows). When it reads again, everything arrives.
func TestBackpressureIsNotSilence(t *testing.T) {
	const keepAlive, timeout = 100 * time.Millisecond, 200 * time.Millisecond
	svc, dev, svcGot := readingServiceStream(t, keepAlive, timeout)

	// The service writes until its writes block for a while: the device
	// reads nothing.
	msg := make([]byte, 64<<10)
	var sent atomic.Int64
	writerDone := make(chan error, 1)
	stopWriting := make(chan struct{})
	go func() {
		for {
			select {
			case <-stopWriting:
				writerDone <- svc.Write(context.Background(), websocket.MessageBinary, nil)
				return
			default:
			}
			if err := svc.Write(context.Background(), websocket.MessageBinary, msg); err != nil {
				writerDone <- err
				return
			}
			sent.Add(1)
		}
	}()
	last, since := int64(-1), time.Now()
	dsproxytest.Eventually(t, "the service's writes to block", func() bool {
		if n := sent.Load(); n != last {
			last, since = n, time.Now()
		}
		return time.Since(since) > 200*time.Millisecond
	})
	time.Sleep(8 * (keepAlive + timeout)) // held back for many windows
	close(stopWriting)

	// The device reads again: every message, then the half-close.
	var got int64
	for {
		_, b := readMessage(t, dev)
		if len(b) == 0 {
			break
		}
		got++
	}
	if err := <-writerDone; err != nil {
		t.Fatalf("service write: %v", err)
	}
	if got != sent.Load() {
		t.Fatalf("device read %d messages, the service sent %d", got, sent.Load())
	}
	t.Logf("%d messages (%d MiB) held back, then delivered", got, got*int64(len(msg))>>20)
	expectStillHere(t, dev, svcGot, "the stream was taken for dead")
}

// TestStreamEvents: each way a stream ends is recorded as a stream event
// whose result and reason name the cause. (Silent sides, lost devices,
// revoked keys and shutdown are checked where they are caused:
// TestSilentStreamSide, TestSilentDevice, TestHubRestart and
// shutdown_test.go.)
func TestStreamEvents(t *testing.T) {
	w := dsproxytest.NewHub(t, func(c *hub.Config) { c.HandshakeTimeout = time.Second })
	key := addDevice(t, w, "dev1")
	d := connectRawDevice(t, w, "dev1", deviceToken(t, w, "dev1", key))
	pair := func(t *testing.T) (rawStream, *wsConn, *wsConn) {
		s := openRaw(t, w, d, "dev1", "ssh")
		svc := dialStream(t, w, s.url, s.serviceToken)
		dev := dialStream(t, w, s.deviceURL, s.deviceToken)
		writeMessage(t, svc, []byte("x"))
		readMessage(t, dev)
		return s, svc, dev
	}
	for _, tc := range []struct {
		name           string
		end            func(t *testing.T) rawStream
		result, reason string
	}{
		{"service closes", func(t *testing.T) rawStream {
			s, svc, dev := pair(t)
			svc.Close(websocket.StatusNormalClosure, "")
			readClose(t, dev)
			return s
		}, "ended", "service closed the stream"},
		{"device closes with its own code", func(t *testing.T) rawStream {
			s, svc, dev := pair(t)
			dev.Close(4321, "device says bye")
			readClose(t, svc)
			return s
		}, "ended", "device side ended: device says bye"},
		{"device crashes", func(t *testing.T) rawStream {
			s, svc, dev := pair(t)
			dev.tcp.Close()
			readClose(t, svc)
			return s
		}, "lost", "device connection lost"},
		{"service crashes", func(t *testing.T) rawStream {
			s, svc, dev := pair(t)
			svc.tcp.Close()
			readClose(t, dev)
			return s
		}, "lost", "service connection lost"},
		{"message too big", func(t *testing.T) rawStream {
			s, svc, dev := pair(t)
			writeMessage(t, svc, make([]byte, w.Config.MaxMessageSize+1))
			readClose(t, dev)
			readClose(t, svc)
			return s
		}, "ended", "service sent a message over the size limit"},
		{"device never joins", func(t *testing.T) rawStream {
			s := openRaw(t, w, d, "dev1", "ssh")
			readClose(t, dialStream(t, w, s.url, s.serviceToken))
			return s
		}, "expired", "did not connect before the handshake deadline"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.end(t)
			e := streamEvent(t, w.Server.Registry(), s.id)
			checkEvent(t, e, tc.result, tc.reason)
			if e.DeviceID != "dev1" || e.Name != "ssh" || e.Policy != "iothubowner" {
				t.Errorf("event %+v: want device dev1, name ssh, policy iothubowner", e)
			}
		})
	}
}

// TestPausedReaderIsNotSilence: a side that was sent data and then reads
// nothing for many keepalive windows, while the other side sends nothing
// more, is a reader that paused (a pager, a suspended client), not a dead
// peer: the stream stays up and the data arrives when it reads again.
func TestPausedReaderIsNotSilence(t *testing.T) {
	const keepAlive, timeout = 100 * time.Millisecond, 200 * time.Millisecond
	svc, dev, svcGot := readingServiceStream(t, keepAlive, timeout)

	msg := []byte("the whole answer")
	if err := svc.Write(context.Background(), websocket.MessageBinary, msg); err != nil {
		t.Fatal(err)
	}
	// The device reads nothing, so it answers no ping, for many windows.
	time.Sleep(8 * (keepAlive + timeout))
	if _, b := readMessage(t, dev); string(b) != string(msg) {
		t.Fatalf("device read %q, want %q", b, msg)
	}
	expectStillHere(t, dev, svcGot, "the paused reader was taken for dead")
}

// readingServiceStream pairs a raw service side and a raw device side of a
// stream through a hub with the given keepalive settings. The service side
// reads (and so answers pings) all along, as a live peer does; what it
// reads arrives on the returned channel, which is closed when the stream
// ends. The device side reads only when the test does.
func readingServiceStream(t *testing.T, keepAlive, timeout time.Duration) (svc, dev *wsConn, svcGot <-chan []byte) {
	t.Helper()
	w := dsproxytest.NewHub(t, func(c *hub.Config) { c.KeepAliveInterval, c.ConnectionWriteTimeout = keepAlive, timeout })
	key := addDevice(t, w, "dev1")
	d := connectRawDevice(t, w, "dev1", deviceToken(t, w, "dev1", key))
	s := openRaw(t, w, d, "dev1", "ssh")
	svc = dialStream(t, w, s.url, s.serviceToken)
	dev = dialStream(t, w, s.deviceURL, s.deviceToken)
	got := make(chan []byte, 1)
	go func() {
		defer close(got)
		for {
			_, b, err := svc.Read(context.Background())
			if err != nil {
				return
			}
			got <- b
		}
	}()
	return svc, dev, got
}

// expectStillHere checks the stream still carries a message from the
// device side to the service side; else fails with why.
func expectStillHere(t *testing.T, dev *wsConn, svcGot <-chan []byte, why string) {
	t.Helper()
	writeMessage(t, dev, []byte("still here"))
	select {
	case b, ok := <-svcGot:
		if !ok || string(b) != "still here" {
			t.Fatalf("service got %q (stream open: %v), want still here: %s", b, ok, why)
		}
	case <-time.After(dsproxytest.WaitTimeout):
		t.Fatalf("the device's message did not arrive: %s", why)
	}
}
