package batch_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dsproxy/dsproxy/internal/batch"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorder is a net.Conn that records each write it is given and can be
// made to block them.
type recorder struct {
	net.Conn // nil: only Write and Close are used

	mu     sync.Mutex
	writes [][]byte
	gate   chan struct{} // when not nil, each write waits for a receive
	closed chan struct{}
	once   sync.Once
}

func newRecorder() *recorder { return &recorder{closed: make(chan struct{})} }

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	gate := r.gate
	r.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-r.closed:
			return 0, net.ErrClosed
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.writes = append(r.writes, bytes.Clone(p))
	return len(p), nil
}

func (r *recorder) Close() error {
	r.once.Do(func() { close(r.closed) })
	return nil
}

// SetWriteDeadline makes a write blocked at the gate give up at t.
func (r *recorder) SetWriteDeadline(t time.Time) error {
	time.AfterFunc(time.Until(t), func() { r.Close() })
	return nil
}

func (r *recorder) got() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.writes
}

func (r *recorder) all() []byte { return bytes.Join(r.got(), nil) }

func TestWritesGoStraightThroughOutsideAHold(t *testing.T) {
	r := newRecorder()
	c := batch.New(r)
	for _, s := range []string{"a", "bc", "def"} {
		if n, err := c.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	if got := len(r.got()); got != 3 {
		t.Fatalf("%d writes reached the connection, want 3", got)
	}
}

func TestHoldGathersWritesIntoOne(t *testing.T) {
	r := newRecorder()
	c := batch.New(r)
	c.Hold()
	c.Hold() // holds nest
	for _, s := range []string{"a", "bc", "def"} {
		if n, err := c.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	if err := c.Release(); err != nil {
		t.Fatal(err)
	}
	if got := len(r.got()); got != 0 {
		t.Fatalf("inner Release sent %d writes; only the outer one may", got)
	}
	if err := c.Release(); err != nil {
		t.Fatal(err)
	}
	if got := r.got(); len(got) != 1 || string(got[0]) != "abcdef" {
		t.Fatalf("writes = %q, want one %q", got, "abcdef")
	}
}

func TestHoldIsBounded(t *testing.T) {
	r := newRecorder()
	c := batch.New(r)
	c.Hold()
	chunk := bytes.Repeat([]byte{1}, 4<<10)
	total := 0
	for total < 3*batch.MaxQueued {
		c.Write(chunk)
		total += len(chunk)
	}
	big := bytes.Repeat([]byte{2}, batch.MaxQueued+1)
	c.Write(big)
	total += len(big)
	if err := c.Release(); err != nil {
		t.Fatal(err)
	}
	for _, w := range r.got() {
		if len(w) > batch.MaxQueued && !bytes.Equal(w, big) {
			t.Fatalf("a write of %d bytes: the queue outgrew MaxQueued", len(w))
		}
	}
	if got := len(r.all()); got != total {
		t.Fatalf("%d bytes sent, want %d", got, total)
	}
}

// A write made while another is blocked in the connection (a slow peer)
// is queued and returns at once, and goes out after the blocked one, in
// order: a pong must not block behind a message waiting for the peer.
func TestWriteBehindABlockedOneIsQueued(t *testing.T) {
	r := newRecorder()
	r.gate = make(chan struct{})
	c := batch.New(r)
	c.Hold()
	c.Write([]byte("message"))
	released := make(chan error, 1)
	go func() { released <- c.Release() }() // blocks at the gate

	// Wait until the release is blocked in the connection: then a write
	// queues instead of becoming the flush.
	waitFor(t, func() bool { return c.Flushing() })
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Write([]byte("pong"))
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("a write behind a blocked one blocked")
	}
	r.gate <- struct{}{} // the message
	r.gate <- struct{}{} // the pong: the releaser sends it after the message
	if err := <-released; err != nil {
		t.Fatal(err)
	}
	if got := r.got(); len(got) != 2 || string(got[0]) != "message" || string(got[1]) != "pong" {
		t.Fatalf("writes = %q, want the message, then the pong", got)
	}
}

// While a hold is open, writes from other goroutines (pongs) join it and
// go out with it, after what was held before them.
func TestWritesDuringAHoldJoinIt(t *testing.T) {
	r := newRecorder()
	c := batch.New(r)
	c.Hold()
	c.Write([]byte("head"))
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Write([]byte("+pong"))
	}()
	<-done
	c.Write([]byte("+tail"))
	if err := c.Release(); err != nil {
		t.Fatal(err)
	}
	if got := r.got(); len(got) != 1 || string(got[0]) != "head+pong+tail" {
		t.Fatalf("writes = %q", got)
	}
}

func TestErrorsStick(t *testing.T) {
	r := newRecorder()
	r.gate = make(chan struct{})
	c := batch.New(r)
	c.Hold()
	c.Write([]byte("x"))
	released := make(chan error, 1)
	go func() { released <- c.Release() }()
	waitFor(t, func() bool { return c.Flushing() })
	r.Close()
	if err := <-released; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Release after close = %v, want net.ErrClosed", err)
	}
	if _, err := c.Write([]byte("y")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after a failed flush = %v, want net.ErrClosed", err)
	}
}

// Writers on several goroutines, some holding, keep each write whole and
// each goroutine's writes in order. (A hold does not exclude other
// writers: their writes join it whole, between the holder's, which is what
// TLS records and WebSocket frames, each made by one write, need.)
func TestConcurrentWritersKeepOrder(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	c := batch.New(a)
	const writers, per = 4, 200
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := func(i int) []byte { return []byte{byte(w), byte(i), byte(w), byte(i)} }
			for i := 0; i < per; i++ {
				if w%2 == 0 {
					c.Hold()
					c.Write(msg(i))
					i++
					c.Write(msg(i))
					if err := c.Release(); err != nil {
						t.Error(err)
						return
					}
					continue
				}
				if _, err := c.Write(msg(i)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	got := make(chan []byte, 1)
	go func() {
		all, _ := io.ReadAll(b)
		got <- all
	}()
	wg.Wait()
	a.Close()
	all := <-got
	if len(all) != writers*per*4 {
		t.Fatalf("read %d bytes, want %d", len(all), writers*per*4)
	}
	next := make([]int, writers)
	for i := 0; i < len(all); i += 4 {
		w, n := int(all[i]), int(all[i+1])
		if all[i+2] != all[i] || all[i+3] != all[i+1] {
			t.Fatalf("write torn at %d: % x", i, all[i:i+4])
		}
		if n != next[w]%256 {
			t.Fatalf("writer %d: message %d came where %d was due", w, n, next[w])
		}
		next[w]++
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5 s")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestCloseSendsWhatIsQueued: a write queued inside a hold that nobody
// will release (a WebSocket's close reply behind a message) still goes out
// when the connection closes, before the close.
func TestCloseSendsWhatIsQueued(t *testing.T) {
	r := newRecorder()
	c := batch.New(r)
	c.Hold()
	c.Write([]byte("part of a message"))
	c.Write([]byte("close reply"))
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if got := string(r.all()); got != "part of a messageclose reply" {
		t.Fatalf("sent %q before the close, want the held bytes and the reply", got)
	}
	if _, err := c.Write([]byte("late")); err == nil {
		t.Error("a write after Close succeeded")
	}
}

// TestCloseIsBounded: a peer that reads nothing holds Close up for a
// moment at most.
func TestCloseIsBounded(t *testing.T) {
	r := newRecorder()
	r.gate = make(chan struct{}) // never opened: the peer reads nothing
	c := batch.New(r)
	go c.Write([]byte("stuck")) // becomes the flush and blocks
	waitFor(t, func() bool { return c.Flushing() })
	c.Write([]byte("queued"))
	start := time.Now()
	c.Close()
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("Close took %s with a peer that reads nothing", el)
	}
}
