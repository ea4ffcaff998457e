package hubclient_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dsproxy/dsproxy/hub"
	"github.com/dsproxy/dsproxy/hubclient"
	"github.com/dsproxy/dsproxy/internal/dsproxytest"
	"github.com/dsproxy/dsproxy/internal/sas"
	"github.com/dsproxy/dsproxy/internal/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// device is a DeviceClient run by a test with its own handler.
type device struct {
	*hubclient.DeviceClient
	cancel  context.CancelFunc
	stopped chan struct{} // closed when Run has returned
	err     error         // Run's result, once stopped is closed
}

// startDevice runs a DeviceClient for connStr with handler h and waits for
// its control session; configure, if any, adjusts its configuration. It
// stops at cleanup.
func startDevice(t *testing.T, w *dsproxytest.Hub, connStr string, h hubclient.StreamHandler, configure ...func(*hubclient.DeviceConfig)) *device {
	t.Helper()
	return startDeviceTLS(t, w, connStr, w.ClientTLS, h, configure...)
}

// startDeviceTLS is startDevice with the device's own TLS configuration.
func startDeviceTLS(t *testing.T, w *dsproxytest.Hub, connStr string, tlsCfg *tls.Config, h hubclient.StreamHandler, configure ...func(*hubclient.DeviceConfig)) *device {
	t.Helper()
	cfg := hubclient.DeviceConfig{
		ConnectionString: connStr,
		TLSConfig:        tlsCfg,
		MinBackoff:       20 * time.Millisecond,
		MaxBackoff:       200 * time.Millisecond,
		Logger:           dsproxytest.Logger(t).With().Str("role", "device").Logger(),
	}
	for _, f := range configure {
		f(&cfg)
	}
	dc, err := hubclient.NewDeviceClient(cfg, h)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &device{DeviceClient: dc, cancel: cancel, stopped: make(chan struct{})}
	go func() {
		d.err = dc.Run(ctx)
		close(d.stopped)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-d.stopped:
		case <-time.After(dsproxytest.WaitTimeout):
			t.Errorf("device did not stop within %s", dsproxytest.WaitTimeout)
		}
	})
	select {
	case <-dc.Connected():
	case <-d.stopped:
		t.Fatalf("device stopped before connecting: %v", d.err)
	case <-time.After(dsproxytest.WaitTimeout):
		t.Fatal("device did not connect")
	}
	return d
}

// accepter is a stream handler that accepts every request and hands the
// device's side of each stream to the test.
type accepter struct {
	conns chan hubclient.Stream
	errs  chan error
}

func newAccepter() *accepter {
	return &accepter{conns: make(chan hubclient.Stream, 16), errs: make(chan error, 16)}
}

func (a *accepter) handle(ctx context.Context, req *hubclient.StreamRequest) {
	c, err := req.Accept(ctx)
	if err != nil {
		a.errs <- err
		return
	}
	a.conns <- c
}

// next returns the device's side of the next accepted stream; it is closed
// at cleanup.
func (a *accepter) next(t *testing.T) hubclient.Stream {
	t.Helper()
	select {
	case c := <-a.conns:
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
		return c
	case err := <-a.errs:
		t.Fatalf("device could not accept: %v", err)
	case <-time.After(dsproxytest.WaitTimeout):
		t.Fatal("no stream reached the device")
	}
	return nil
}

// open opens a stream with the hub's owner client.
func open(t *testing.T, w *dsproxytest.Hub, id, name string) (hubclient.Stream, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	c, err := w.Service.OpenStream(ctx, id, name)
	if err == nil {
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
	}
	return c, err
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// TestRejection: a device's refusal reaches the service as a
// *RejectedError with the device's reason.
func TestRejection(t *testing.T) {
	w := dsproxytest.NewHub(t)
	refused := dsproxytest.ClosedPort(t)
	w.StartDevice(t, "dev1", "ssh="+dsproxytest.Echo(t), "vnc="+refused)

	for _, tc := range []struct {
		stream string
		want   []string // in the reason
	}{
		{"rdp", []string{`"rdp"`, `"ssh"`}},
		{"vnc", []string{"connection refused", refused}},
	} {
		t.Run(tc.stream, func(t *testing.T) {
			_, err := open(t, w, "dev1", tc.stream)
			var re *hubclient.RejectedError
			if !errors.Is(err, hubclient.ErrRejected) || !errors.As(err, &re) {
				t.Fatalf("open stream: %v, want a *RejectedError", err)
			}
			if errors.Is(err, hubclient.ErrDeviceUnavailable) {
				t.Errorf("a rejection is not ErrDeviceUnavailable: %v", err)
			}
			if re.DeviceID != "dev1" || re.Name != tc.stream {
				t.Errorf("rejection names device %q stream %q", re.DeviceID, re.Name)
			}
			for _, s := range tc.want {
				if !strings.Contains(re.Reason, s) {
					t.Errorf("reason %q does not mention %s", re.Reason, s)
				}
			}
		})
	}

	t.Run("handler's own reason", func(t *testing.T) {
		startDevice(t, w, w.AddDevice(t, "picky"), func(ctx context.Context, req *hubclient.StreamRequest) {
			if req.Name == "silent" {
				return // neither accepts nor rejects
			}
			req.Reject("not today: " + req.Name)
		})
		_, err := open(t, w, "picky", "x")
		var re *hubclient.RejectedError
		if !errors.As(err, &re) || re.Reason != "not today: x" {
			t.Errorf("open stream: %v, want the reason %q", err, "not today: x")
		}
		_, err = open(t, w, "picky", "silent")
		if !errors.As(err, &re) || !strings.Contains(re.Reason, "did not handle") {
			t.Errorf("open stream to a handler that did not answer: %v, want a rejection", err)
		}
	})
}

// TestDeviceUnavailable: an unknown device, a registered device that is not
// connected, and a device whose agent stopped fail fast with
// ErrDeviceUnavailable.
func TestDeviceUnavailable(t *testing.T) {
	w := dsproxytest.NewHub(t)
	w.AddDevice(t, "offline")
	gone := w.StartDevice(t, "gone", dsproxytest.Echo(t))
	gone.Stop(t)

	for _, id := range []string{"nosuch", "offline", "gone"} {
		t.Run(id, func(t *testing.T) {
			start := time.Now()
			_, err := open(t, w, id, "ssh")
			if !errors.Is(err, hubclient.ErrDeviceUnavailable) {
				t.Fatalf("open stream: %v, want ErrDeviceUnavailable", err)
			}
			if d := time.Since(start); d > 500*time.Millisecond {
				t.Errorf("failed after %s, want well under a second", d)
			}
			var he *hubclient.HubError
			if !errors.As(err, &he) || he.StatusCode != http.StatusNotFound {
				t.Errorf("error %v: want a 404 *HubError", err)
			}
		})
	}
}

// TestDisabledDevice: disabling a device (or deleting it) ends its control
// session at once; its agent's redial is refused as unauthorized, so Run
// returns an error that says why, and streams to the device fail fast as
// unavailable. Enabling it again lets a new agent connect.
func TestDisabledDevice(t *testing.T) {
	w := dsproxytest.NewHub(t)
	connStr := w.AddDevice(t, "dev1")
	d := startDevice(t, w, connStr, newAccepter().handle)

	dev, err := w.Service.GetDevice(ctxT(t), "dev1")
	if err != nil {
		t.Fatal(err)
	}
	if dev.ConnectionState != "Connected" {
		t.Errorf("connection state %q, want Connected", dev.ConnectionState)
	}
	dev.Status = "disabled"
	dis, err := w.Service.UpdateDevice(ctxT(t), dev)
	if err != nil {
		t.Fatal(err)
	}
	if dis.Status != "disabled" || dis.PrimaryKey != dev.PrimaryKey {
		t.Fatalf("after update: status %q, key kept %v", dis.Status, dis.PrimaryKey == dev.PrimaryKey)
	}

	select {
	case <-d.stopped:
	case <-time.After(dsproxytest.WaitTimeout):
		t.Fatal("the disabled device's agent is still running")
	}
	if !errors.Is(d.err, hubclient.ErrUnauthorized) || !strings.Contains(d.err.Error(), "disabled") {
		t.Errorf("agent of a disabled device stopped with %v, want ErrUnauthorized saying it is disabled", d.err)
	}
	select {
	case <-d.Connected():
		t.Error("Connected() still closed after the session ended")
	default:
	}

	start := time.Now()
	_, err = open(t, w, "dev1", "ssh")
	if !errors.Is(err, hubclient.ErrDeviceUnavailable) || !strings.Contains(err.Error(), "disabled") {
		t.Errorf("open stream to a disabled device: %v, want ErrDeviceUnavailable saying it is disabled", err)
	}
	if el := time.Since(start); el > 500*time.Millisecond {
		t.Errorf("failed after %s, want well under a second", el)
	}

	dis.Status = "enabled"
	if _, err := w.Service.UpdateDevice(ctxT(t), dis); err != nil {
		t.Fatal(err)
	}
	acc := newAccepter()
	startDevice(t, w, connStr, acc.handle)
	c, err := open(t, w, "dev1", "ssh")
	if err != nil {
		t.Fatalf("open stream after enabling again: %v", err)
	}
	c.Close()
	acc.next(t)

	t.Run("deleted", func(t *testing.T) {
		d := startDevice(t, w, w.AddDevice(t, "dev2"), newAccepter().handle)
		if err := w.Service.DeleteDevice(ctxT(t), "dev2"); err != nil {
			t.Fatal(err)
		}
		select {
		case <-d.stopped:
		case <-time.After(dsproxytest.WaitTimeout):
			t.Fatal("the deleted device's agent is still running")
		}
		if !errors.Is(d.err, hubclient.ErrUnauthorized) {
			t.Errorf("agent of a deleted device stopped with %v, want ErrUnauthorized", d.err)
		}
		if _, err := open(t, w, "dev2", "ssh"); !errors.Is(err, hubclient.ErrDeviceUnavailable) {
			t.Errorf("open stream to a deleted device: %v, want ErrDeviceUnavailable", err)
		}
	})
}

// silentDevice registers id and runs an agent whose handler never answers.
func silentDevice(t *testing.T, w *dsproxytest.Hub, id string) {
	startDevice(t, w, w.AddDevice(t, id), func(ctx context.Context, req *hubclient.StreamRequest) {
		<-ctx.Done()
	})
}

// TestNoAnswer: a device that never answers gives 504, ErrTimeout, after
// the response timeout: the hub's, or the one the service asks for.
func TestNoAnswer(t *testing.T) {
	check := func(t *testing.T, sc *hubclient.ServiceClient) {
		t.Helper()
		// Connect first, so that the time measured is the hub's wait.
		if _, err := sc.GetDevice(ctxT(t), "mute"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, err := sc.OpenStream(ctxT(t), "mute", "ssh")
		el := time.Since(start)
		var he *hubclient.HubError
		if !errors.Is(err, hubclient.ErrTimeout) || !errors.As(err, &he) ||
			he.StatusCode != http.StatusGatewayTimeout || he.Code != wire.CodeGatewayTimeout {
			t.Fatalf("open stream: %v, want a 504 %d ErrTimeout", err, wire.CodeGatewayTimeout)
		}
		// Far below the 60 s default, with room for a loaded machine.
		if el < 900*time.Millisecond || el > 5*time.Second {
			t.Errorf("timed out after %s, want about 1s", el)
		}
	}
	t.Run("hub timeout", func(t *testing.T) {
		w := dsproxytest.NewHub(t, func(c *hub.Config) { c.ResponseTimeout = time.Second })
		silentDevice(t, w, "mute")
		check(t, w.Service)
	})
	t.Run("requested timeout", func(t *testing.T) {
		w := dsproxytest.NewHub(t)
		silentDevice(t, w, "mute")
		sc, err := hubclient.NewServiceClient(hubclient.ServiceConfig{
			ConnectionString: w.OwnerConnectionString,
			TLSConfig:        w.ClientTLS,
			ResponseTimeout:  time.Second,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(sc.Close)
		check(t, sc)
	})
}

// TestHandshakeDeadline: when the device accepts but never reaches the
// streaming endpoint, the service's stream ends at the handshake deadline
// with a *StreamEndError saying so, and the late device cannot join.
func TestHandshakeDeadline(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	// Cleanups run last first: the hook is removed after the device has
	// stopped, and the device can stop because the hook was released.
	t.Cleanup(hubclient.SetAcceptedHook(func() { <-release }))
	w := dsproxytest.NewHub(t, func(c *hub.Config) { c.HandshakeTimeout = time.Second })
	acc := newAccepter()
	startDevice(t, w, w.AddDevice(t, "dev1"), acc.handle)
	t.Cleanup(unblock)

	start := time.Now()
	c, err := open(t, w, "dev1", "ssh")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Read(make([]byte, 1))
	el := time.Since(start)
	var se *hubclient.StreamEndError
	if !errors.As(err, &se) || se.Code != int(hub.CloseHandshakeTimeout) || !strings.Contains(se.Error(), "handshake deadline") {
		t.Fatalf("service read: %v, want a *StreamEndError for the handshake deadline", err)
	}
	if el < 900*time.Millisecond || el > 4*time.Second {
		t.Errorf("stream ended after %s, want about 1s", el)
	}

	unblock()
	select {
	case err := <-acc.errs:
		t.Logf("late device: %v", err)
	case c := <-acc.conns:
		c.Close()
		t.Fatal("the device joined a stream past its handshake deadline")
	case <-time.After(dsproxytest.WaitTimeout):
		t.Fatal("the late device's Accept did not return")
	}
}

// TestStreamEnds: whichever side closes, the other's reads end within a
// second: io.EOF after a clean close, a *StreamEndError after Abort. A
// half-close ends only one direction.
func TestStreamEnds(t *testing.T) {
	w := dsproxytest.NewHub(t)
	acc := newAccepter()
	startDevice(t, w, w.AddDevice(t, "dev1"), acc.handle)
	t.Run("per-stream", func(t *testing.T) { testStreamEnds(t, w.Service, acc) })
	t.Run("session", func(t *testing.T) { testStreamEnds(t, w.SessionClient(t, w.OwnerConnectionString, nil), acc) })
}

func testStreamEnds(t *testing.T, o opener, acc *accepter) {
	pair := func(t *testing.T) (svc, dev hubclient.Stream) {
		svc, err := openVia(t, o, "dev1", "s")
		if err != nil {
			t.Fatal(err)
		}
		return svc, acc.next(t)
	}
	readEnd := func(t *testing.T, c hubclient.Stream) error {
		t.Helper()
		start := time.Now()
		_, err := io.ReadAll(c)
		if d := time.Since(start); d > time.Second {
			t.Errorf("read ended after %s, want within 1s", d)
		}
		return err
	}

	t.Run("service closes", func(t *testing.T) {
		svc, dev := pair(t)
		svc.Close()
		if err := readEnd(t, dev); err != nil {
			t.Errorf("device read: %v, want EOF", err)
		}
	})
	t.Run("device closes", func(t *testing.T) {
		svc, dev := pair(t)
		dev.Close()
		if err := readEnd(t, svc); err != nil {
			t.Errorf("service read: %v, want EOF", err)
		}
	})
	t.Run("device aborts", func(t *testing.T) {
		svc, dev := pair(t)
		dev.Abort()
		err := readEnd(t, svc)
		var se *hubclient.StreamEndError
		if !errors.As(err, &se) || se.Code != int(hub.ClosePeerLost) {
			t.Errorf("service read: %v, want a *StreamEndError with code %d", err, hub.ClosePeerLost)
		}
	})
	t.Run("half-close", func(t *testing.T) {
		svc, dev := pair(t)
		if _, err := svc.Write([]byte("question")); err != nil {
			t.Fatal(err)
		}
		if err := svc.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if _, err := svc.Write([]byte("more")); !errors.Is(err, hubclient.ErrStreamClosed) {
			t.Errorf("write after CloseWrite: %v, want ErrStreamClosed", err)
		}
		got, err := io.ReadAll(dev)
		if err != nil || string(got) != "question" {
			t.Fatalf("device read %q, %v; want question then EOF", got, err)
		}
		if _, err := dev.Write([]byte("answer")); err != nil {
			t.Fatal(err)
		}
		dev.Close()
		got, err = io.ReadAll(svc)
		if err != nil || string(got) != "answer" {
			t.Fatalf("service read %q, %v; want answer then EOF", got, err)
		}
	})
}

// TestServiceSendsFirst: the service writes into its stream before the
// device has reached the streaming endpoint; once the device joins,
// everything arrives intact.
func TestServiceSendsFirst(t *testing.T) {
	const size = 1 << 20
	var (
		written  atomic.Int64
		first    = make(chan struct{}) // closed after the first write returned
		allSent  = make(chan struct{}) // closed when every byte is written
		atAccept atomic.Int64          // bytes written when the device dialled
	)
	stop := make(chan struct{}) // closed at cleanup, before the device stops
	t.Cleanup(hubclient.SetAcceptedHook(func() {
		select {
		case <-first:
		case <-stop:
		}
		// The relay reads nothing before both sides are there, so the
		// writes may block on flow control before they finish; give them a
		// moment, then let the device in either way.
		select {
		case <-allSent:
		case <-stop:
		case <-time.After(time.Second):
		}
		atAccept.Store(written.Load())
	}))

	w := dsproxytest.NewHub(t)
	target := dsproxytest.Serve(t, func(c *net.TCPConn) {
		h := sha256.New()
		if _, err := io.Copy(h, c); err == nil {
			c.Write(h.Sum(nil))
		}
	})
	w.StartDevice(t, "dev1", target)
	t.Cleanup(func() { close(stop) })

	c, err := open(t, w, "dev1", "hash")
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, size)
	rand.Read(data)
	want := sha256.Sum256(data)
	werr := make(chan error, 1)
	go func() {
		var once sync.Once
		for p := data; len(p) > 0; {
			n := min(len(p), 16<<10)
			if _, err := c.Write(p[:n]); err != nil {
				werr <- err
				return
			}
			written.Add(int64(n))
			p = p[n:]
			once.Do(func() { close(first) })
		}
		close(allSent)
		werr <- c.CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want[:]) {
		t.Fatalf("target hashed %x, want %x", got, want)
	}
	if atAccept.Load() < 16<<10 {
		t.Errorf("only %d bytes were written before the device dialled", atAccept.Load())
	}
	t.Logf("%d of %d bytes written before the device joined", atAccept.Load(), size)
}

// TestRegistry: device CRUD through the REST API, with the permission
// checks of each policy.
func TestRegistry(t *testing.T) {
	w := dsproxytest.NewHub(t)
	sc := w.Service
	ctx := ctxT(t)

	d, err := sc.CreateDevice(ctx, "reg1")
	if err != nil {
		t.Fatal(err)
	}
	if d.ID != "reg1" || d.Status != "enabled" || d.ETag == "" || d.PrimaryKey == "" || d.SecondaryKey == "" || d.PrimaryKey == d.SecondaryKey {
		t.Fatalf("created %+v: want an enabled device with two distinct keys and an etag", d)
	}
	for _, k := range []string{d.PrimaryKey, d.SecondaryKey} {
		if _, err := sas.DecodeKey(k); err != nil {
			t.Errorf("generated key: %v", err)
		}
	}
	if _, err := sc.CreateDevice(ctx, "reg1"); !errors.Is(err, hubclient.ErrExists) {
		t.Errorf("create again: %v, want ErrExists", err)
	}
	got, err := sc.GetDevice(ctx, "reg1")
	if err != nil {
		t.Fatal(err)
	}
	if got.PrimaryKey != d.PrimaryKey || got.ETag != d.ETag || got.ConnectionState != "Disconnected" {
		t.Errorf("get %+v, want the created device, disconnected", got)
	}
	list, err := sc.ListDevices(ctx)
	if err != nil || len(list) != 1 || list[0].ID != "reg1" {
		t.Errorf("list: %+v, %v; want reg1 alone", list, err)
	}

	upd := d
	upd.Status = "disabled"
	u, err := sc.UpdateDevice(ctx, upd)
	if err != nil {
		t.Fatal(err)
	}
	if u.Status != "disabled" || u.ETag == d.ETag || u.PrimaryKey != d.PrimaryKey {
		t.Errorf("updated %+v: want disabled, a new etag, the same keys", u)
	}
	stale := d // still carries the first etag
	stale.Status = "enabled"
	_, err = sc.UpdateDevice(ctx, stale)
	var he *hubclient.HubError
	if !errors.As(err, &he) || he.StatusCode != http.StatusPreconditionFailed {
		t.Errorf("update with a stale etag: %v, want 412", err)
	}

	if err := sc.DeleteDevice(ctx, "reg1"); err != nil {
		t.Fatal(err)
	}
	if _, err := sc.GetDevice(ctx, "reg1"); !errors.Is(err, hubclient.ErrNotFound) {
		t.Errorf("get after delete: %v, want ErrNotFound", err)
	}
	if err := sc.DeleteDevice(ctx, "reg1"); !errors.Is(err, hubclient.ErrNotFound) {
		t.Errorf("delete again: %v, want ErrNotFound", err)
	}

	policy := func(name string) *hubclient.ServiceClient {
		p, err := w.Server.Registry().GetPolicy(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		return w.ServiceClient(t, sas.ConnectionString{HostName: w.Server.Addr(), SharedAccessKeyName: name, SharedAccessKey: p.PrimaryKey}.String())
	}
	if _, err := sc.CreateDevice(ctx, "reg2"); err != nil {
		t.Fatal(err)
	}
	ro := policy("registryRead")
	if _, err := ro.ListDevices(ctx); err != nil {
		t.Errorf("registryRead lists: %v", err)
	}
	if _, err := ro.GetDevice(ctx, "reg2"); err != nil {
		t.Errorf("registryRead gets: %v", err)
	}
	if _, err := ro.CreateDevice(ctx, "reg3"); !errors.Is(err, hubclient.ErrForbidden) {
		t.Errorf("registryRead creates: %v, want ErrForbidden", err)
	}
	if err := ro.DeleteDevice(ctx, "reg2"); !errors.Is(err, hubclient.ErrForbidden) {
		t.Errorf("registryRead deletes: %v, want ErrForbidden", err)
	}
	if _, err := policy("registryReadWrite").CreateDevice(ctx, "reg3"); err != nil {
		t.Errorf("registryReadWrite creates: %v", err)
	}
	if _, err := policy("service").ListDevices(ctx); !errors.Is(err, hubclient.ErrForbidden) {
		t.Errorf("service lists devices: %v, want ErrForbidden", err)
	}
}

// TestOddDeviceIDs: device IDs with every odd character Azure allows work
// end to end: registry, control session, stream. Each must travel as one
// path segment and match its SAS token's resource.
func TestOddDeviceIDs(t *testing.T) {
	w := dsproxytest.NewHub(t)
	echo := dsproxytest.Echo(t)
	for _, id := range []string{"a#b?c$d=e@f", "x+y%z", "%41", "o'k(1)*!,_-.x"} {
		t.Run(id, func(t *testing.T) {
			w.StartDevice(t, id, "echo="+echo)
			d, err := w.Service.GetDevice(ctxT(t), id)
			if err != nil || d.ID != id || d.ConnectionState != "Connected" {
				t.Fatalf("get device: %+v, %v; want %q connected", d, err, id)
			}
			c, err := open(t, w, id, "echo")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Write([]byte(id)); err != nil {
				t.Fatal(err)
			}
			c.CloseWrite()
			got, err := io.ReadAll(c)
			if err != nil || string(got) != id {
				t.Fatalf("echo %q, %v; want %q", got, err, id)
			}
		})
	}
	list, err := w.Service.ListDevices(ctxT(t))
	if err != nil || len(list) != 4 {
		t.Errorf("list: %d devices, %v; want 4", len(list), err)
	}
}
