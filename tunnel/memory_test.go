package tunnel_test

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/dsproxy/dsproxy/hub"
	"github.com/dsproxy/dsproxy/internal/dsproxytest"
)

// BenchmarkIdleStreamMemory opens DSPROXY_IDLE_STREAMS (default 1,000)
// streams through one hub, service proxy → hub → device proxy → echo,
// leaves them open and idle, and reports what the hub holds per stream:
//
//   - hub-heap-B/stream: live heap allocated by the hub (allocations whose
//     stack has a hub frame or net/http's server connection), from an
//     exact heap profile after GC, minus the same before the streams;
//   - hub-goroutines/stream, from the goroutine profile;
//   - stack-B/goroutine: the growth of the stack memory of the whole
//     process per goroutine added, so that hub goroutines × this estimates
//     the hub's stacks (hub-total-B/stream adds it to the heap).
//
// Everything runs in one process, so the proxies' share is told apart by
// the stacks that allocated it. Run it alone:
//
//	go test -run x -bench IdleStreamMemory -benchtime 1x ./tunnel
//
// With DSPROXY_HEAP_PROFILE=file it also writes the heap profile taken
// with the streams open, for go tool pprof -sample_index=inuse_space.
func BenchmarkIdleStreamMemory(b *testing.B) {
	n := 1000
	if v := os.Getenv("DSPROXY_IDLE_STREAMS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			b.Fatalf("DSPROXY_IDLE_STREAMS: %v", err)
		}
	}
	runtime.MemProfileRate = 1
	defer func() { runtime.MemProfileRate = 512 * 1024 }()
	w := dsproxytest.NewHub(b, func(c *hub.Config) {
		c.MaxStreams = n + 10
		c.MaxStreamsPerDevice = n + 10
		c.StreamBurst = n + 10
	})
	w.StartDevice(b, "mem", dsproxytest.Echo(b))
	addr := w.StartService(b, "mem", "mem")
	openIdle(b, addr, 10) // warm up pools and one-time allocations

	heap0, g0, stack0, all0 := hubFootprint(b)
	conns := openIdle(b, addr, n)
	heap1, g1, stack1, all1 := hubFootprint(b)
	if name := os.Getenv("DSPROXY_HEAP_PROFILE"); name != "" {
		f, err := os.Create(name)
		if err != nil {
			b.Fatal(err)
		}
		if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
	for _, c := range conns {
		c.Close()
	}
	perGoroutine := float64(stack1-stack0) / float64(all1-all0)
	heap := float64(heap1-heap0) / float64(n)
	gs := float64(g1-g0) / float64(n)
	b.ReportMetric(heap, "hub-heap-B/stream")
	b.ReportMetric(gs, "hub-goroutines/stream")
	b.ReportMetric(perGoroutine, "stack-B/goroutine")
	b.ReportMetric(heap+gs*perGoroutine, "hub-total-B/stream")
}

// openIdle opens n streams through the service proxy at addr, each proven
// up by one echoed byte, and returns them open. They close at cleanup.
func openIdle(b *testing.B, addr string, n int) []net.Conn {
	conns := make([]net.Conn, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 32)
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := net.DialTimeout("tcp", addr, dsproxytest.WaitTimeout)
			if err != nil {
				errs <- err
				return
			}
			conns[i] = c
			buf := []byte{byte(i)}
			if _, err := c.Write(buf); err != nil {
				errs <- err
				return
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	b.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	})
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	return conns
}

// hubFootprint collects garbage and returns the hub's live heap bytes and
// goroutines, the process's stack bytes and its goroutines.
func hubFootprint(b *testing.B) (heap, goroutines int64, stack uint64, all int) {
	runtime.GC()
	runtime.GC()
	var buf bytes.Buffer
	if err := pprof.Lookup("heap").WriteTo(&buf, 1); err != nil {
		b.Fatal(err)
	}
	forEachRecord(&buf, func(header string, frames []string) {
		// "inuse_objects: inuse_bytes [allocs: alloc_bytes] @ ..."
		f := strings.Fields(header)
		if len(f) < 2 || !isHub(frames) {
			return
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		heap += v
	})
	buf.Reset()
	if err := pprof.Lookup("goroutine").WriteTo(&buf, 1); err != nil {
		b.Fatal(err)
	}
	forEachRecord(&buf, func(header string, frames []string) {
		// "count @ ..."
		f := strings.Fields(header)
		if len(f) < 1 || !isHub(frames) {
			return
		}
		v, _ := strconv.ParseInt(f[0], 10, 64)
		goroutines += v
	})
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return heap, goroutines, ms.StackInuse, runtime.NumGoroutine()
}

// isHub reports whether a stack is the hub's: a frame of package hub or of
// net/http's server side.
func isHub(frames []string) bool {
	for _, fr := range frames {
		if strings.HasPrefix(fr, "github.com/dsproxy/dsproxy/hub.") ||
			strings.HasPrefix(fr, "net/http.(*conn).") ||
			strings.HasPrefix(fr, "net/http.(*Server).") {
			return true
		}
	}
	return false
}

// forEachRecord calls f with each record of a debug=1 profile: its header
// line and the function names of its frames.
func forEachRecord(r io.Reader, f func(header string, frames []string)) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var header string
	var frames []string
	flush := func() {
		if header != "" {
			f(header, frames)
		}
		header, frames = "", nil
	}
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "#\t0x"):
			// "#\t0xaddr\tfunc+0xoff\tfile:line"
			if p := strings.Split(line, "\t"); len(p) >= 3 {
				frames = append(frames, p[2])
			}
		case strings.Contains(line, " @ 0x"):
			flush()
			header = line
		case line == "":
			flush()
		}
	}
	flush()
}
