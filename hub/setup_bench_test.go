package hub_test

import (
	"io"
	"net"
	"sync/atomic"
	"testing"

	"github.com/dsproxy/dsproxy/internal/dsproxytest"
)

// BenchmarkParallelSessionSetups: what scripts/bench.sh's setup-parallel
// row asks of a hub, in one process: parallel loops (GOMAXPROCS × -cpu ×
// SetParallelism) each dial a session-mode service proxy, echo one byte
// through a device and close. For a profile of the hub's share of a
// setup (a failed setup, such as a dial reset while the listener's
// backlog is full, is counted in failed/op, as the bench row counts it):
//
//	go test -run '^$' -bench ParallelSessionSetups -cpuprofile cpu.out ./hub
func BenchmarkParallelSessionSetups(b *testing.B) {
	w := dsproxytest.NewHub(b)
	w.StartDevice(b, "bench", "echo="+dsproxytest.Echo(b))
	parallelSetups(b, w.StartSessionService(b, "bench", "echo"))
}

// BenchmarkParallelStreamSetups is BenchmarkParallelSessionSetups through
// a per-stream service proxy: a POST and two stream WebSockets per setup.
func BenchmarkParallelStreamSetups(b *testing.B) {
	w := dsproxytest.NewHub(b)
	w.StartDevice(b, "bench", "echo="+dsproxytest.Echo(b))
	parallelSetups(b, w.StartService(b, "bench", "echo"))
}

// parallelSetups runs the setup loops against the proxy listening on addr.
func parallelSetups(b *testing.B, addr string) {
	b.SetParallelism(32)
	var failed atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		buf := []byte{7}
		for pb.Next() {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				failed.Add(1)
				continue
			}
			if _, err := c.Write(buf); err == nil {
				_, err = io.ReadFull(c, buf)
			}
			c.Close()
			if err != nil {
				failed.Add(1)
			}
		}
	})
	if n := failed.Load(); n == int64(b.N) {
		b.Fatalf("all %d setups failed", n)
	}
	b.ReportMetric(float64(failed.Load())/float64(b.N), "failed/op")
}
