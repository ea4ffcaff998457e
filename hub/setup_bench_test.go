package hub_test

import (
	"io"
	"net"
	"testing"

	"github.com/dsproxy/dsproxy/internal/dsproxytest"
)

// BenchmarkParallelSessionSetups: what scripts/bench.sh's setup-parallel
// row asks of a hub, in one process: parallel loops (GOMAXPROCS × -cpu ×
// SetParallelism) each dial a session-mode service proxy, echo one byte
// through a device and close. For a profile of the hub's share of a
// setup:
//
//	go test -run '^$' -bench ParallelSessionSetups -cpuprofile cpu.out ./hub
func BenchmarkParallelSessionSetups(b *testing.B) {
	w := dsproxytest.NewHub(b)
	w.StartDevice(b, "bench", "echo="+dsproxytest.Echo(b))
	addr := w.StartSessionService(b, "bench", "echo")
	b.SetParallelism(32)
	b.RunParallel(func(pb *testing.PB) {
		buf := []byte{7}
		for pb.Next() {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Error(err)
				return
			}
			if _, err := c.Write(buf); err == nil {
				_, err = io.ReadFull(c, buf)
			}
			c.Close()
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
}
