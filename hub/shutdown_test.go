package hub_test

// Graceful shutdown (issue #4): when Run's context ends the hub refuses new
// streams and control sessions, closes control sessions, lets relayed
// streams run for up to ShutdownGrace, then closes the rest with 1001.
// goleak (TestMain) checks that nothing outlives Run.

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/dsproxy/dsproxy/hub/registry"
	"github.com/dsproxy/dsproxy/hubclient"
	"github.com/dsproxy/dsproxy/internal/dsproxytest"
	"github.com/dsproxy/dsproxy/internal/sas"
	"github.com/dsproxy/dsproxy/internal/wire"
)

// shutdownWorld is a hub with a device serving an echo target, run so that
// the test can stop the hub and still read its stream events.
type shutdownWorld struct {
	*hubProc
	dev *dsproxytest.Device
	key string // dev1's primary key
}

func newShutdownWorld(t *testing.T, grace time.Duration) *shutdownWorld {
	t.Helper()
	dir := t.TempDir()
	cfg := hubConfig(t, dir)
	cfg.ShutdownGrace = grace
	cfg.Registry = sharedRegistry(t, dir)
	h := startHub(t, cfg, "127.0.0.1:0")
	connStr := h.AddDevice(t, "dev1")
	w := &shutdownWorld{hubProc: h, key: keyOf(t, connStr)}
	w.dev = h.RunDevice(t, connStr, func(*hubclient.DeviceConfig) {}, "echo="+dsproxytest.Echo(t))
	return w
}

func keyOf(t *testing.T, connStr string) string {
	t.Helper()
	cs, err := sas.ParseConnectionString(connStr)
	if err != nil {
		t.Fatal(err)
	}
	return cs.SharedAccessKey
}

// beginShutdown tells the hub to stop without waiting for it, and waits
// until it has started to (its control sessions are closed at once).
func (w *shutdownWorld) beginShutdown(t *testing.T) time.Time {
	t.Helper()
	start := time.Now()
	w.cancel()
	within(t, "the hub to close the device's control session", func() bool { return !connected(w.dev) })
	return start
}

// waitRun waits for Run to return and reports after how long since from.
func (w *shutdownWorld) waitRun(t *testing.T, from time.Time) time.Duration {
	t.Helper()
	select {
	case <-w.done:
		if w.err != nil {
			t.Errorf("Run returned %v", w.err)
		}
	case <-time.After(dsproxytest.WaitTimeout):
		t.Fatal("Run did not return")
	}
	return time.Since(from)
}

// checkRefused checks that the hub refuses new streams and control
// sessions with 503 and a clear message.
func (w *shutdownWorld) checkRefused(t *testing.T) {
	t.Helper()
	// Over the network: the listener is closed, or the request is answered
	// 503.
	_, err := w.ServiceClient(t, w.OwnerConnectionString).OpenStream(ctxFor(t), "dev1", "echo")
	var he *hubclient.HubError
	switch {
	case errors.As(err, &he) && he.StatusCode == http.StatusServiceUnavailable:
	case errors.Is(err, syscall.ECONNREFUSED):
	default:
		t.Errorf("new stream during shutdown: %v, want 503 or connection refused", err)
	}
	// The handler itself, for requests on connections already open.
	for _, tc := range []struct {
		what string
		req  *http.Request
	}{
		{"stream initiation", httptest.NewRequest(http.MethodPost, "/twins/dev1/streams/echo", nil)},
		{"control session", httptest.NewRequest(http.MethodGet, "/devices/dev1/control", nil)},
	} {
		if tc.what == "control session" {
			tc.req.Header.Set("Authorization", deviceToken(t, w.Hub, "dev1", w.key))
			tc.req.Header.Set("Sec-WebSocket-Protocol", wire.ControlSubprotocol)
		} else {
			tc.req.Header.Set("Authorization", ownerToken(t, w.Hub))
		}
		rec := httptest.NewRecorder()
		w.Server.Handler().ServeHTTP(rec, tc.req)
		var body wire.Error
		_ = json.Unmarshal(rec.Body.Bytes(), &body)
		if rec.Code != http.StatusServiceUnavailable || body.ErrorCode != wire.CodeServiceUnavailable {
			t.Errorf("%s during shutdown: %d %s, want 503 %d", tc.what, rec.Code, rec.Body.Bytes(), wire.CodeServiceUnavailable)
		}
	}
}

// TestShutdownLetsStreamsFinish: once shutdown starts, a running stream
// keeps flowing while new streams and control sessions are refused; when
// it ends on its own, well within the grace period, Run returns at once.
func TestShutdownLetsStreamsFinish(t *testing.T) {
	const grace = 10 * time.Second
	w := newShutdownWorld(t, grace)
	c, err := openEcho(t, w.Service, "dev1")
	if err != nil {
		t.Fatal(err)
	}
	if err := echoOnce(c, "before"); err != nil {
		t.Fatal(err)
	}

	start := w.beginShutdown(t)
	w.checkRefused(t)
	for i := range 5 {
		if err := echoOnce(c, "during"); err != nil {
			t.Fatalf("round trip %d during shutdown: %v", i, err)
		}
	}
	select {
	case <-w.done:
		t.Fatal("Run returned while a stream was still running")
	default:
	}
	closed := time.Now()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	total := w.waitRun(t, start)
	t.Logf("Run returned %s after the stream closed, %s after shutdown began (grace %s)",
		time.Since(closed).Round(time.Millisecond), total.Round(time.Millisecond), grace)
	if time.Since(closed) > time.Second {
		t.Errorf("Run returned %s after the last stream ended, want at once", time.Since(closed))
	}
	e := lastEvent(t, w.Config.Registry, "dev1", func(e registry.StreamEvent) bool { return e.Result == "ended" })
	checkEvent(t, e, "ended", "service closed the stream")
}

// TestShutdownGraceOver: a stream still running when the grace period is
// over is closed with 1001 "hub shutting down" on both sides: the client
// sees an error naming it, and the event says shutdown. A stream whose
// second side never came is ended at once when shutdown starts.
func TestShutdownGraceOver(t *testing.T) {
	const grace = 500 * time.Millisecond
	w := newShutdownWorld(t, grace)
	c, err := openEcho(t, w.Service, "dev1")
	if err != nil {
		t.Fatal(err)
	}
	if err := echoOnce(c, "before"); err != nil {
		t.Fatal(err)
	}
	// A stream whose device side never joins (a raw device that accepts
	// and stays away).
	key := addDevice(t, w.Hub, "raw")
	raw := connectRawDevice(t, w.Hub, "raw", deviceToken(t, w.Hub, "raw", key))
	s := openRaw(t, w.Hub, raw, "raw", "ssh")
	waiting := dialStream(t, w.Hub, s.url, s.serviceToken)

	start := w.beginShutdown(t)
	expectClose(t, waiting, websocket.StatusGoingAway, time.Second)
	checkEvent(t, streamEvent(t, w.Config.Registry, s.id), "shutdown", "before both sides connected")

	if err := echoOnce(c, "during"); err != nil {
		t.Fatalf("round trip during the grace period: %v", err)
	}
	err, _ = streamEnd(t, c, grace+5*time.Second)
	at := time.Since(start)
	var se *hubclient.StreamEndError
	if !errors.As(err, &se) || se.Code != int(websocket.StatusGoingAway) || se.Reason != "hub shutting down" {
		t.Errorf("stream ended with %v, want close 1001 \"hub shutting down\"", err)
	}
	if at < grace-50*time.Millisecond || at > grace+2*time.Second {
		t.Errorf("stream closed %s after shutdown began, want about the grace period, %s", at, grace)
	}
	total := w.waitRun(t, start)
	t.Logf("the stream was closed %s after shutdown began; Run returned after %s (grace %s)",
		at.Round(time.Millisecond), total.Round(time.Millisecond), grace)
	e := lastEvent(t, w.Config.Registry, "dev1", func(e registry.StreamEvent) bool { return e.Result == "shutdown" })
	checkEvent(t, e, "shutdown", "outlived the shutdown grace period")
}

// TestShutdownNoGrace: with ShutdownGrace zero, running streams are closed
// with 1001 as soon as shutdown starts.
func TestShutdownNoGrace(t *testing.T) {
	w := newShutdownWorld(t, 0)
	c, err := openEcho(t, w.Service, "dev1")
	if err != nil {
		t.Fatal(err)
	}
	if err := echoOnce(c, "before"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	w.cancel()
	err, el := streamEnd(t, c, 5*time.Second)
	if closeCode(err) != int(websocket.StatusGoingAway) {
		t.Errorf("stream ended with %v, want close code 1001", err)
	}
	if el > time.Second {
		t.Errorf("stream closed %s after shutdown began, want at once", el)
	}
	w.waitRun(t, start)
}

// TestShutdownWhileInitiating: streams opened one after another by
// several clients while the hub starts to shut down either work or are
// refused (503 or connection refused); none hangs, and Run returns with
// nothing left running (goleak).
func TestShutdownWhileInitiating(t *testing.T) {
	w := newShutdownWorld(t, 200*time.Millisecond)
	const workers = 8
	var ok atomic.Int64
	errs := make(chan error, workers)
	for range workers {
		go func() {
			for {
				if err := echoStream(t, w.Service, "dev1", "x"); err != nil {
					errs <- err
					return
				}
				ok.Add(1)
			}
		}()
	}
	dsproxytest.Eventually(t, "streams to flow", func() bool { return ok.Load() >= 20 })
	start := time.Now()
	w.cancel()
	for range workers {
		select {
		case err := <-errs:
			var he *hubclient.HubError
			if !(errors.As(err, &he) && he.StatusCode == http.StatusServiceUnavailable) && !errors.Is(err, syscall.ECONNREFUSED) {
				t.Logf("a stream racing the shutdown failed with: %v", err)
			}
		case <-time.After(dsproxytest.WaitTimeout):
			t.Fatal("a client hung while the hub shut down")
		}
	}
	w.waitRun(t, start)
	t.Logf("%d streams worked before the shutdown refused them", ok.Load())
}
