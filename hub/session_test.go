package hub_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/dsproxy/dsproxy/hub"
	"github.com/dsproxy/dsproxy/hub/registry"
	"github.com/dsproxy/dsproxy/hubclient"
	"github.com/dsproxy/dsproxy/internal/dsproxytest"
)

// sessionEcho opens a session stream to device id's echo target and
// checks one byte goes round.
func sessionEcho(t *testing.T, sc *hubclient.SessionClient, id string) hubclient.Stream {
	t.Helper()
	c, err := sc.OpenStream(ctxFor(t), id, "echo")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
	if err := echoOnce(c, "x"); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestSessionStreamEvents: a session stream is an active stream while it
// runs (GET /streams) and a stream event when it ends, with its bytes, as
// a per-stream one.
func TestSessionStreamEvents(t *testing.T) {
	w := dsproxytest.NewHub(t)
	w.StartDevice(t, "dev1", "echo="+dsproxytest.Echo(t))
	sc := w.SessionClient(t, w.OwnerConnectionString, nil)
	c := sessionEcho(t, sc, "dev1")

	active, err := w.Service.Streams(ctxFor(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(active) != 1 || active[0].DeviceID != "dev1" || active[0].State != hub.StreamRelaying || active[0].Mode != hub.StreamModeSession {
		t.Errorf("active streams %+v, want one relaying to dev1 over the session", active)
	}
	id := active[0].StreamID
	c.Close()
	e := streamEvent(t, w.Server.Registry(), id)
	checkEvent(t, e, "ended", "service closed the stream")
	if e.Policy != "iothubowner" || e.Name != "echo" || e.BytesUp != 1 || e.BytesDown != 1 {
		t.Errorf("event %+v: want policy iothubowner, name echo, 1 byte each way", e)
	}
}

// TestSessionStreamDeviceLost: when the hub loses the device's control
// session, the session streams it carried end with ClosePeerLost at once,
// and are recorded as lost.
func TestSessionStreamDeviceLost(t *testing.T) {
	const keepAlive, timeout = 100 * time.Millisecond, 300 * time.Millisecond
	w := dsproxytest.NewHub(t, func(c *hub.Config) { c.KeepAliveInterval, c.ConnectionWriteTimeout = keepAlive, timeout })
	f := dsproxytest.NewFreezer(t, w.Addr)
	w.RunDevice(t, viaFreezer(t, w.AddDevice(t, "dev1"), f), func(c *hubclient.DeviceConfig) {
		c.KeepAliveInterval, c.ConnectionWriteTimeout = keepAlive, timeout
	}, "echo="+dsproxytest.Echo(t))
	sc := w.SessionClient(t, w.OwnerConnectionString, nil)
	c := sessionEcho(t, sc, "dev1")

	frozen := time.Now()
	f.Freeze()
	err, _ := streamEnd(t, c, dsproxytest.WaitTimeout)
	if closeCode(err) != int(hub.ClosePeerLost) {
		t.Errorf("stream ended with %v, want close code %d", err, hub.ClosePeerLost)
	}
	if el, limit := time.Since(frozen), keepAlive+timeout+2*time.Second; el > limit {
		t.Errorf("stream ended %s after the freeze, want within %s", el, limit)
	}
	checkEvent(t, lastEvent(t, w.Server.Registry(), "dev1", func(e registry.StreamEvent) bool { return e.Result == "lost" }),
		"lost", "device control session lost")
	f.Thaw()
}

// TestSessionStreamRevoked: disabling a device ends its session streams
// with 1008, like its per-stream ones.
func TestSessionStreamRevoked(t *testing.T) {
	w := dsproxytest.NewHub(t)
	a := runAgent(t, w.ClientTLS, w.AddDevice(t, "dev1"), nil, "echo="+dsproxytest.Echo(t))
	a.waitConnected(t)
	sc := w.SessionClient(t, w.OwnerConnectionString, nil)
	c := sessionEcho(t, sc, "dev1")

	dev, err := w.Service.GetDevice(ctxFor(t), "dev1")
	if err != nil {
		t.Fatal(err)
	}
	dev.Status = "disabled"
	if _, err := w.Service.UpdateDevice(ctxFor(t), dev); err != nil {
		t.Fatal(err)
	}
	err, _ = streamEnd(t, c, dsproxytest.WaitTimeout)
	if closeCode(err) != 1008 {
		t.Errorf("stream ended with %v, want close code 1008", err)
	}
	if err := a.waitStopped(t); !errors.Is(err, hubclient.ErrUnauthorized) {
		t.Errorf("agent stopped with %v, want ErrUnauthorized", err)
	}
}

// TestSessionStreamLateAccept: a device that answers after the response
// timeout gets its stream dropped, and the service a 504.
func TestSessionStreamLateAccept(t *testing.T) {
	w := dsproxytest.NewHub(t, func(c *hub.Config) { c.ResponseTimeout = 300 * time.Millisecond })
	acc := make(chan hubclient.Stream, 1)
	w.RunDeviceHandler(t, w.AddDevice(t, "slow"), nil,
		func(ctx context.Context, req *hubclient.StreamRequest) {
			time.Sleep(time.Second)
			if c, err := req.Accept(ctx); err == nil {
				acc <- c
			}
		})
	sc := w.SessionClient(t, w.OwnerConnectionString, nil)

	c, err := sc.OpenStream(ctxFor(t), "slow", "s")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Read(make([]byte, 1))
	var he *hubclient.HubError
	if !errors.As(err, &he) || he.StatusCode != http.StatusGatewayTimeout || !errors.Is(err, hubclient.ErrTimeout) {
		t.Errorf("read: %v, want a 504", err)
	}
	select {
	case dev := <-acc:
		// The device's late acceptance finds the stream gone.
		dev.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
		if _, err := io.ReadAll(dev); err == nil {
			t.Error("the late-accepted stream reads as a clean end, want an error")
		}
		dev.Close()
	case <-time.After(dsproxytest.WaitTimeout):
		t.Error("the device never got to accept")
	}
}

// TestSessionStreamOldDevice: a device whose agent takes no inline
// requests (it does not announce them) is refused with 501 and a reason
// that says what to do, instead of a request it cannot parse.
func TestSessionStreamOldDevice(t *testing.T) {
	w := dsproxytest.NewHub(t)
	key := addDevice(t, w, "old")
	connectRawDevice(t, w, "old", deviceToken(t, w, "old", key))
	sc := w.SessionClient(t, w.OwnerConnectionString, nil)
	c, err := sc.OpenStream(ctxFor(t), "old", "ssh")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Read(make([]byte, 1))
	var he *hubclient.HubError
	if !errors.As(err, &he) || he.StatusCode != http.StatusNotImplemented {
		t.Errorf("read: %v, want a 501 that names per-stream mode", err)
	}
}

// TestSessionMetrics: /metrics counts the service sessions held, and a
// session stream's bytes once it ended.
func TestSessionMetrics(t *testing.T) {
	w := dsproxytest.NewHub(t)
	w.StartDevice(t, "dev1", "echo="+dsproxytest.Echo(t))
	sc := w.SessionClient(t, w.OwnerConnectionString, nil)
	c := sessionEcho(t, sc, "dev1")
	_, m := scrape(t, w)
	if v := sample(t, m, "dsproxy_hub_service_sessions"); v != 1 {
		t.Errorf("service_sessions = %v, want 1", v)
	}
	c.Close()
	dsproxytest.Eventually(t, "the stream's bytes in /metrics", func() bool {
		_, m := scrape(t, w)
		return m[`dsproxy_hub_relayed_bytes_total{direction="up"}`] == 1 && m[`dsproxy_hub_relayed_bytes_total{direction="down"}`] == 1
	})
}
