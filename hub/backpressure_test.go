package hub_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"io"
	"net"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dsproxy/dsproxy/internal/dsproxytest"
)

// raceEnabled reports whether the test binary was built with -race.
func raceEnabled() bool {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "-race" {
				return s.Value == "true"
			}
		}
	}
	return false
}

// heapInUse returns the bytes in in-use heap spans after a full GC.
func heapInUse() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse)
}

// pattern writes size bytes of 64 KiB chunks, each a fixed random block
// stamped with its index (so a lost, repeated or reordered chunk changes
// the hash), without holding more than one chunk in memory.
type pattern struct {
	size     int64
	block    []byte
	sum      hash.Hash
	accepted atomic.Int64 // bytes the destination's Write has returned for
}

func newPattern(size int64) *pattern {
	p := &pattern{size: size, block: make([]byte, 64<<10), sum: sha256.New()}
	rand.Read(p.block)
	return p
}

// writeTo writes the pattern to c and then half-closes c.
func (p *pattern) writeTo(c *net.TCPConn) error {
	for i := int64(0); p.accepted.Load() < p.size; i++ {
		chunk := p.block[:min(int64(len(p.block)), p.size-p.accepted.Load())]
		binary.BigEndian.PutUint64(p.block, uint64(i))
		p.sum.Write(chunk)
		n, err := c.Write(chunk)
		p.accepted.Add(int64(n))
		if err != nil {
			return err
		}
	}
	return c.CloseWrite()
}

// TestBackpressure: a stream whose target stops reading while the client
// pushes (up to) 1 GiB into it is held back, not buffered: the client's
// writes block after a bounded number of bytes, and the heap does not grow
// with what the client tries to push. Meanwhile a second stream through the
// same hub and device moves 64 MiB intact. When the target reads again,
// everything the client wrote arrives intact.
//
// The hub, the device proxy and the service proxy all run in this process,
// so the heap measured is theirs together: none of them may buffer the
// stalled stream. The bytes the client gets to write before it blocks sit
// in kernel socket buffers (four TCP hops, each with a send and a receive
// buffer that loopback autotuning grows) and a few relay and TLS buffers.
func TestBackpressure(t *testing.T) {
	const (
		// stalled is how long the client's writes must make no progress to
		// count as blocked.
		stalled = time.Second
		// maxAccepted bounds what the client writes before it blocks:
		// socket buffers along the path and the proxies' copy buffers
		// (about 18 MiB on a Linux box with tcp_rmem's maximum at 32 MiB),
		// far below what it tries to push.
		maxAccepted = 64 << 20
		// maxHeapGrowth bounds the heap growth of the hub and both proxies
		// while the stream is stalled, and while the second stream runs.
		maxHeapGrowth = 64 << 20
		otherSize     = 64 << 20
	)
	// What the client tries to push. Less under -short and -race (where
	// every byte that flows after the stall costs), but still more than
	// maxAccepted: a path that buffered everything would take all of it
	// without blocking, and one that buffered more than maxAccepted would
	// block too late.
	total := int64(1 << 30)
	switch {
	case raceEnabled():
		total = 128 << 20
	case testing.Short():
		total = 256 << 20
	}

	w := dsproxytest.NewHub(t)
	var (
		release     = make(chan struct{}) // the stalled target reads again
		releaseOnce sync.Once
		stop        = make(chan struct{}) // the test is over
	)
	unstall := func() { releaseOnce.Do(func() { close(release) }) }
	// The target reads a 4-byte command: "stal" waits for release before
	// reading on; then it hashes everything to EOF and answers with the
	// SHA-256.
	target := dsproxytest.Serve(t, func(c *net.TCPConn) {
		cmd := make([]byte, 4)
		if _, err := io.ReadFull(c, cmd); err != nil {
			return
		}
		if string(cmd) == "stal" {
			select {
			case <-release:
			case <-stop:
				return
			}
		}
		h := sha256.New()
		if _, err := io.Copy(h, c); err != nil {
			return
		}
		c.Write(h.Sum(nil))
	})
	t.Cleanup(func() { close(stop) }) // runs before Serve's cleanup waits for the handler
	w.StartDevice(t, "dev1", target)
	addr := w.StartService(t, "dev1", "data")

	// The stream whose target stalls.
	base := heapInUse()
	a := dialTCP(t, addr)
	a.SetDeadline(time.Now().Add(5 * time.Minute))
	if _, err := a.Write([]byte("stal")); err != nil {
		t.Fatal(err)
	}
	pa := newPattern(total)
	var werr error
	wdone := make(chan struct{})
	go func() {
		defer close(wdone)
		werr = pa.writeTo(a)
	}()
	t.Cleanup(func() {
		unstall()
		a.Close()
		<-wdone
	})

	// Wait until the client's writes have made no progress for a while.
	deadline := time.Now().Add(dsproxytest.WaitTimeout)
	last, lastChange := int64(-1), time.Now()
	for {
		select {
		case <-wdone:
			t.Fatalf("the client wrote all %d bytes (%v) although the target read none: the path buffers the stream", total, werr)
		case <-time.After(50 * time.Millisecond):
		}
		n := pa.accepted.Load()
		if n != last {
			last, lastChange = n, time.Now()
		} else if time.Since(lastChange) >= stalled {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the client's writes never blocked: %d bytes accepted", n)
		}
	}
	blockedAt := pa.accepted.Load()
	growth := heapInUse() - base
	t.Logf("client blocked after %.1f MiB of %d MiB; heap grew by %.1f MiB", mib(blockedAt), total>>20, mib(growth))
	if blockedAt > maxAccepted {
		t.Errorf("the client wrote %.1f MiB before blocking, want at most %d MiB", mib(blockedAt), maxAccepted>>20)
	}
	if growth > maxHeapGrowth {
		t.Errorf("heap grew by %.1f MiB with the stream stalled, want at most %d MiB", mib(growth), maxHeapGrowth>>20)
	}

	// A second stream through the same hub and device moves its data
	// while the first stays stalled.
	b := dialTCP(t, addr)
	b.SetDeadline(time.Now().Add(2 * time.Minute))
	if _, err := b.Write([]byte("sink")); err != nil {
		t.Fatal(err)
	}
	pb := newPattern(otherSize)
	berr := make(chan error, 1)
	go func() { berr <- pb.writeTo(b) }()
	got, err := io.ReadAll(b)
	if err := <-berr; err != nil {
		t.Fatalf("second stream: write: %v", err)
	}
	if err != nil || !bytes.Equal(got, pb.sum.Sum(nil)) {
		t.Fatalf("second stream: target's hash %x, %v; want %x", got, err, pb.sum.Sum(nil))
	}
	growth = heapInUse() - base
	t.Logf("second stream moved %d MiB intact; heap grew by %.1f MiB", otherSize>>20, mib(growth))
	if growth > maxHeapGrowth {
		t.Errorf("heap grew by %.1f MiB after the second stream, want at most %d MiB", mib(growth), maxHeapGrowth>>20)
	}
	if n := pa.accepted.Load(); n != blockedAt {
		t.Errorf("the stalled stream moved on from %d to %d bytes while its target read nothing", blockedAt, n)
	}

	// The target reads again: everything the client writes arrives.
	unstall()
	got, err = io.ReadAll(a)
	<-wdone
	if werr != nil {
		t.Fatalf("stalled stream: write after the stall: %v", werr)
	}
	if err != nil || !bytes.Equal(got, pa.sum.Sum(nil)) {
		t.Fatalf("stalled stream: target's hash %x, %v; want %x", got, err, pa.sum.Sum(nil))
	}
}

// dialTCP connects to addr; the connection is closed at cleanup.
func dialTCP(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, dsproxytest.WaitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }
