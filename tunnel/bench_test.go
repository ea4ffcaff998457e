package tunnel_test

import (
	"io"
	"net"
	"testing"

	"github.com/dsproxy/dsproxy/internal/dsproxytest"
)

// sink is a TCP target that reads everything and then answers with one
// byte, so the sender knows all its bytes arrived.
func sink(b *testing.B) string {
	return dsproxytest.Serve(b, func(c *net.TCPConn) {
		if _, err := io.Copy(io.Discard, c); err == nil {
			c.Write([]byte{1})
		}
	})
}

// pushThrough sends b.N chunks of 64 KiB to addr, half-closes and waits for
// the sink's answer. Besides MB/s it reports the CPU time the whole test
// process spent per GB moved (cpu-s/GB: sender, proxies, hub and sink
// together), which a busy machine disturbs much less than the wall time.
func pushThrough(b *testing.B, addr string) {
	buf := make([]byte, 64<<10)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.ResetTimer()
	cpu0 := processCPU(b)
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.(*net.TCPConn).CloseWrite()
	if _, err := io.ReadFull(c, buf[:1]); err != nil {
		b.Fatal(err)
	}
	gb := float64(b.N) * float64(len(buf)) / 1e9
	b.ReportMetric((processCPU(b)-cpu0).Seconds()/gb, "cpu-s/GB")
}

// BenchmarkThroughputDirect is the baseline: straight to the sink over
// loopback.
func BenchmarkThroughputDirect(b *testing.B) {
	pushThrough(b, sink(b))
}

// BenchmarkThroughputStream goes service proxy → hub → device proxy → sink,
// with TLS on both legs.
func BenchmarkThroughputStream(b *testing.B) {
	w := dsproxytest.NewHub(b)
	w.StartDevice(b, "bench", sink(b))
	pushThrough(b, w.StartService(b, "bench", "bench"))
}

// BenchmarkThroughputSession is BenchmarkThroughputStream over a held
// session (the fast path).
func BenchmarkThroughputSession(b *testing.B) {
	w := dsproxytest.NewHub(b)
	w.StartDevice(b, "bench", sink(b))
	pushThrough(b, w.StartSessionService(b, "bench", "bench"))
}

// BenchmarkSetup opens a stream, echoes one byte through it and closes it.
func BenchmarkSetup(b *testing.B) {
	w := dsproxytest.NewHub(b)
	w.StartDevice(b, "bench", dsproxytest.Echo(b))
	setups(b, w.StartService(b, "bench", "bench"))
}

// BenchmarkSetupSession is BenchmarkSetup over a held session.
func BenchmarkSetupSession(b *testing.B) {
	w := dsproxytest.NewHub(b)
	w.StartDevice(b, "bench", dsproxytest.Echo(b))
	setups(b, w.StartSessionService(b, "bench", "bench"))
}

// setups dials addr b.N times, echoes one byte and closes.
func setups(b *testing.B, addr string) {
	buf := []byte{7}
	b.ResetTimer()
	for range b.N {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}
