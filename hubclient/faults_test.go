package hubclient_test

import (
	"errors"
	"io"
	"testing"
	"time"

	"github.com/dsproxy/dsproxy/hubclient"
	"github.com/dsproxy/dsproxy/internal/dsproxytest"
	"github.com/dsproxy/dsproxy/internal/sas"
)

// TestDeviceNoticesSilentHub: when the device's control session stops
// answering (the connection to the hub frozen, packets neither delivered
// nor refused), the device notices within its own keepalive window, long
// before the hub does (its keepalive is the default 15 s + 10 s here). It
// ends the streams that session delivered, whose connections are likely
// just as dead, and redials; after the thaw it is back.
func TestDeviceNoticesSilentHub(t *testing.T) {
	const keepAlive, timeout = 100 * time.Millisecond, 300 * time.Millisecond
	w := dsproxytest.NewHub(t)
	f := dsproxytest.NewFreezer(t, w.Addr)
	cs, err := sas.ParseConnectionString(w.AddDevice(t, "dev1"))
	if err != nil {
		t.Fatal(err)
	}
	cs.HostName = f.Addr // the control session goes through the freezer
	d := w.RunDevice(t, cs.String(), func(c *hubclient.DeviceConfig) {
		c.KeepAliveInterval, c.ConnectionWriteTimeout = keepAlive, timeout
	}, "echo="+dsproxytest.Echo(t))

	// The stream's own connections go straight to the hub: nothing but the
	// device's verdict on its session can end it.
	c, err := open(t, w, "dev1", "echo")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}

	frozen := time.Now()
	f.Freeze()
	_, err = io.Copy(io.Discard, c)
	el := time.Since(frozen)
	var se *hubclient.StreamEndError
	if !errors.As(err, &se) || se.Code != 4001 {
		t.Errorf("stream ended with %v, want close code 4001 (the device aborted it)", err)
	}
	select {
	case <-d.Client.Connected():
		t.Error("the device still counts itself connected")
	default:
	}
	t.Logf("window %s: the device ended the stream %s after the freeze", keepAlive+timeout, el.Round(time.Millisecond))
	if limit := keepAlive + timeout + 2*time.Second; el > limit {
		t.Errorf("stream ended %s after the freeze, want within %s", el, limit)
	}

	f.Thaw()
	select {
	case <-d.Client.Connected():
	case <-time.After(dsproxytest.WaitTimeout):
		t.Fatal("the device did not reconnect after the thaw")
	}
	c2, err := open(t, w, "dev1", "echo")
	if err != nil {
		t.Fatalf("after the thaw: %v", err)
	}
	c2.Close()
}
