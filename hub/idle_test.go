package hub_test

import (
	"bytes"
	"fmt"
	"runtime"
	"testing"

	"github.com/dsproxy/dsproxy/internal/dsproxytest"
)

// TestIdleSessionGoroutines: an idle device's control session costs the
// hub no goroutine of its own (issue 6: the hub's memory per idle
// device), only yamux's two loops; its end is noticed from yamux's
// OnClose, the device's streams are refused from yamux's RefuseStream
// (TestControlStreamFromDevice) and the keepalive runs on timers.
func TestIdleSessionGoroutines(t *testing.T) {
	w := dsproxytest.NewHub(t)
	const n = 8
	before := hubGoroutines()
	for i := range n {
		id := fmt.Sprintf("idle-%d", i)
		connectRawDevice(t, w, id, deviceToken(t, w, id, addDevice(t, w, id)))
	}
	// The upgrade handlers return once the sessions are set up.
	dsproxytest.Eventually(t, "no hub goroutine per idle session", func() bool { return hubGoroutines()-before < n })
	for i := range n {
		if id := fmt.Sprintf("idle-%d", i); !w.Server.Connected(id) {
			t.Errorf("device %s not connected", id)
		}
	}
}

// hubGoroutines counts the goroutines that run code of package hub.
func hubGoroutines() int { return goroutinesIn("github.com/dsproxy/dsproxy/hub.") }

// goroutinesIn counts the goroutines with a frame whose function name
// starts with prefix (a frame of the code itself, not of the one that
// created the goroutine).
func goroutinesIn(prefix string) int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for g := range bytes.SplitSeq(buf, []byte("\n\n")) {
		for line := range bytes.SplitSeq(g, []byte("\n")) {
			if bytes.HasPrefix(line, []byte(prefix)) {
				count++
				break
			}
		}
	}
	return count
}
