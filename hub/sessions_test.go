package hub_test

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/dsproxy/dsproxy/hubclient"
	"github.com/dsproxy/dsproxy/internal/dsproxytest"
)

// sayer is a TCP target that writes word and closes.
func sayer(t *testing.T, word string) string {
	return dsproxytest.Serve(t, func(c *net.TCPConn) { c.Write([]byte(word)) })
}

// who opens a stream named "who" to id and returns what the target said.
func who(w *dsproxytest.Hub, id string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	c, err := w.Service.OpenStream(ctx, id, "who")
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
	b, err := io.ReadAll(c)
	return string(b), err
}

func connected(d *dsproxytest.Device) bool {
	select {
	case <-d.Client.Connected():
		return true
	default:
		return false
	}
}

// TestNewestSessionWins: a second control session for a device replaces
// the first; stream requests go to the newest, and the older session's
// end does not unroute the newer one.
func TestNewestSessionWins(t *testing.T) {
	w := dsproxytest.NewHub(t)
	connStr := w.AddDevice(t, "dev1")
	// A waits a minute before redialling, so B stays the newest session
	// for the rest of the test.
	a := w.RunDevice(t, connStr, func(c *hubclient.DeviceConfig) {
		c.MinBackoff, c.MaxBackoff = time.Minute, time.Minute
	}, "who="+sayer(t, "A"))
	if got, err := who(w, "dev1"); got != "A" || err != nil {
		t.Fatalf("first session: %q, %v; want A", got, err)
	}

	b := w.RunDevice(t, connStr, func(*hubclient.DeviceConfig) {}, "who="+sayer(t, "B"))
	dsproxytest.Eventually(t, "the older session to be dropped", func() bool { return !connected(a) })
	for i := range 5 {
		if got, err := who(w, "dev1"); got != "B" || err != nil {
			t.Fatalf("stream %d after the newer session: %q, %v; want B", i, got, err)
		}
	}
	if !connected(b) {
		t.Fatal("the newer session is down")
	}

	b.Stop(t)
	dsproxytest.Eventually(t, "the device to be unavailable", func() bool {
		_, err := who(w, "dev1")
		return errors.Is(err, hubclient.ErrDeviceUnavailable)
	})
}

// TestSessionFlapping: two agents with the same credential and short
// backoffs replace each other over and over ("newest wins"). Streams keep
// reaching one of them, nothing deadlocks, and when one agent stops the
// other settles as the device's session.
func TestSessionFlapping(t *testing.T) {
	w := dsproxytest.NewHub(t)
	connStr := w.AddDevice(t, "dev1")
	fast := func(c *hubclient.DeviceConfig) { c.MinBackoff, c.MaxBackoff = 10*time.Millisecond, 50*time.Millisecond }
	a := w.RunDevice(t, connStr, fast, "who="+sayer(t, "A"))
	w.RunDevice(t, connStr, fast, "who="+sayer(t, "B"))

	seen := map[string]int{}
	for range 40 {
		got, err := who(w, "dev1")
		switch {
		case err == nil && (got == "A" || got == "B"):
			seen[got]++
		case errors.Is(err, hubclient.ErrDeviceUnavailable):
			seen["unavailable"]++
		default:
			// The session that took the request was replaced after it
			// accepted: the stream can end before any byte.
			seen["other"]++
		}
	}
	t.Logf("while flapping: %v", seen)
	if seen["A"]+seen["B"] == 0 {
		t.Errorf("no stream reached either agent: %v", seen)
	}

	a.Stop(t)
	// A session of A's that the hub was still setting up when A stopped
	// may replace B's once more; B then takes it back. Settled means
	// three streams in a row reach B.
	dsproxytest.Eventually(t, "B to be the device's session for three streams in a row", func() bool {
		for range 3 {
			if got, err := who(w, "dev1"); err != nil || got != "B" {
				return false
			}
		}
		return true
	})
}
