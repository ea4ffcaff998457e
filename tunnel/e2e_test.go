package tunnel_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dsproxy/dsproxy/internal/dsproxytest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, dsproxytest.WaitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
	return c.(*net.TCPConn)
}

// modes are the two ways a service proxy carries connections: a
// WebSocket per stream, and streams over one session.
var modes = []struct {
	name  string
	start func(w *dsproxytest.Hub, t testing.TB, deviceID, name string) string
}{
	{"per-stream", (*dsproxytest.Hub).StartService},
	{"session", (*dsproxytest.Hub).StartSessionService},
}

// eachMode runs f as a subtest per mode.
func eachMode(t *testing.T, f func(t *testing.T, start func(w *dsproxytest.Hub, t testing.TB, deviceID, name string) string)) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) { f(t, m.start) })
	}
}

func TestEcho(t *testing.T) {
	eachMode(t, testEcho)
}

func testEcho(t *testing.T, start func(w *dsproxytest.Hub, t testing.TB, deviceID, name string) string) {
	w := dsproxytest.NewHub(t)
	w.StartDevice(t, "dev1", "ssh="+dsproxytest.Echo(t))
	addr := start(w, t, "dev1", "ssh")

	c := dial(t, addr)
	msg := []byte("hello through the hub")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("got %q, want %q", got, msg)
	}
}

// TestHalfClose: the client shuts its write side, the target reads to EOF,
// then answers, and the answer arrives.
func TestHalfClose(t *testing.T) {
	eachMode(t, testHalfClose)
}

func testHalfClose(t *testing.T, start func(w *dsproxytest.Hub, t testing.TB, deviceID, name string) string) {
	w := dsproxytest.NewHub(t)
	target := dsproxytest.Serve(t, func(c *net.TCPConn) {
		data, err := io.ReadAll(c) // to EOF: needs the half-close to arrive
		if err != nil {
			return
		}
		sum := sha256.Sum256(data)
		c.Write(sum[:])
		c.CloseWrite()
	})
	w.StartDevice(t, "dev1", target)
	addr := start(w, t, "dev1", "anything")

	c := dial(t, addr)
	data := make([]byte, 3<<20)
	rand.Read(data)
	if _, err := c.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(data)
	if !bytes.Equal(got, want[:]) {
		t.Fatalf("answer %x, want %x", got, want)
	}
}

// TestConcurrentStreams: 100 streams at once, each moving 4 MiB each way.
func TestConcurrentStreams(t *testing.T) {
	eachMode(t, testConcurrentStreams)
}

func testConcurrentStreams(t *testing.T, start func(w *dsproxytest.Hub, t testing.TB, deviceID, name string) string) {
	const streams = 100
	size := 4 << 20
	if testing.Short() {
		size = 256 << 10
	}
	w := dsproxytest.NewHub(t)
	w.StartDevice(t, "dev1", dsproxytest.Echo(t))
	addr := start(w, t, "dev1", "ssh")

	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- echoRoundTrip(addr, size, int64(i))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

// echoRoundTrip sends size random bytes through addr to an echo target
// while reading the echo, and compares hashes.
func echoRoundTrip(addr string, size int, seed int64) error {
	c, err := net.DialTimeout("tcp", addr, dsproxytest.WaitTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	data := make([]byte, size)
	rand.Read(data)
	want := sha256.Sum256(data)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if e := <-werr; e != nil {
		return e
	}
	if err != nil {
		return err
	}
	if n != int64(size) || !bytes.Equal(h.Sum(nil), want[:]) {
		return errors.New("echo differs from what was sent")
	}
	return nil
}
