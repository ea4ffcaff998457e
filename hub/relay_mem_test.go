package hub_test

import (
	"fmt"
	"testing"

	"github.com/dsproxy/dsproxy/hubclient"
	"github.com/dsproxy/dsproxy/internal/dsproxytest"
)

// TestPairedStreamGoroutines: a stream relayed over two WebSockets costs
// the hub two goroutines, its pumps (issue 6: the hub's memory per open
// stream), and nothing else: the relay has no goroutine of its own, its
// ends come as callbacks (faults, shutdown, idle and liveness timers), and
// neither side keeps its upgrade handler. When the streams end, the pumps
// go too.
func TestPairedStreamGoroutines(t *testing.T) {
	w := dsproxytest.NewHub(t)
	w.StartDevice(t, "dev1", dsproxytest.Echo(t))
	if err := echoStream(t, w.Service, "dev1", "warm up"); err != nil {
		t.Fatal(err)
	}
	dsproxytest.Eventually(t, "no relay left from the warm-up", func() bool { return relayGoroutines() == 0 })
	before := hubGoroutines()

	const n = 8
	streams := make([]hubclient.Stream, n)
	for i := range streams {
		c, err := openEcho(t, w.Service, "dev1")
		if err != nil {
			t.Fatal(err)
		}
		if err := echoOnce(c, fmt.Sprintf("stream %d", i)); err != nil {
			t.Fatal(err)
		}
		streams[i] = c
	}
	dsproxytest.Eventually(t, "two hub goroutines per open stream", func() bool {
		return relayGoroutines() == 2*n && hubGoroutines()-before <= 2*n
	})
	for _, c := range streams {
		c.Close()
	}
	dsproxytest.Eventually(t, "no pump left after the streams end", func() bool {
		return relayGoroutines() == 0 && hubGoroutines() <= before
	})
}

// relayGoroutines counts the goroutines that run a relay's code.
func relayGoroutines() int { return goroutinesIn("github.com/dsproxy/dsproxy/hub.(*relayRun).") }
