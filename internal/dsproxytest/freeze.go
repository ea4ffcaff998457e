package dsproxytest

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
)

// Freezer is a TCP proxy on 127.0.0.1:0 in front of one address that a
// test can freeze: it then stops forwarding in both directions without
// closing anything, as a peer that is stopped (SIGSTOP) or cut off by a
// network that drops its packets looks from the other end. Bytes sent
// meanwhile pile up in socket buffers and in the proxy (one buffer per
// direction) and flow on after Thaw. Connections accepted while frozen are
// frozen too.
//
// Point a client at Addr, or give an http.Transport its Dial, which
// reaches the target through the proxy whatever address it is asked for.
type Freezer struct {
	// Addr is where the proxy listens.
	Addr string

	target string
	ln     net.Listener
	done   chan struct{}
	wg     sync.WaitGroup

	mu    sync.Mutex
	gate  chan struct{} // closed while thawed
	conns map[net.Conn]struct{}
}

// NewFreezer starts a thawed proxy to target; it stops at cleanup, closing
// every connection.
func NewFreezer(t testing.TB, target string) *Freezer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &Freezer{
		Addr:   ln.Addr().String(),
		target: target,
		ln:     ln,
		done:   make(chan struct{}),
		gate:   make(chan struct{}),
		conns:  make(map[net.Conn]struct{}),
	}
	close(f.gate)
	f.wg.Add(1)
	go f.accept()
	t.Cleanup(f.close)
	return f
}

// Freeze stops forwarding. It is idempotent.
func (f *Freezer) Freeze() {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.gate:
		f.gate = make(chan struct{})
	default:
	}
}

// Thaw resumes forwarding. It is idempotent.
func (f *Freezer) Thaw() {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.gate:
	default:
		close(f.gate)
	}
}

// Dial connects to the proxy; its signature is http.Transport.DialContext's.
func (f *Freezer) Dial(ctx context.Context, _, _ string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", f.Addr)
}

// wait blocks while the proxy is frozen. It reports false when the proxy
// is closing.
func (f *Freezer) wait() bool {
	f.mu.Lock()
	gate := f.gate
	f.mu.Unlock()
	select {
	case <-gate:
		return true
	case <-f.done:
		return false
	}
}

func (f *Freezer) accept() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.forward(c)
		}()
	}
}

// forward carries one connection to the target until either end closes
// or the proxy stops.
func (f *Freezer) forward(c net.Conn) {
	defer c.Close()
	if !f.wait() {
		return
	}
	up, err := net.Dial("tcp", f.target)
	if err != nil {
		return
	}
	defer up.Close()
	if !f.track(c, up) {
		return
	}
	defer f.untrack(c, up)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		f.copy(up, c)
	}()
	go func() {
		defer wg.Done()
		f.copy(c, up)
	}()
	wg.Wait()
}

// copy forwards src to dst, holding each chunk while frozen, then passes
// EOF on as a half-close; an error closes both.
func (f *Freezer) copy(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !f.wait() {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				src.Close()
				return
			}
		}
		if err == io.EOF {
			if f.wait() {
				dst.(*net.TCPConn).CloseWrite()
			}
			return
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

func (f *Freezer) track(cs ...net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.done:
		return false
	default:
	}
	for _, c := range cs {
		f.conns[c] = struct{}{}
	}
	return true
}

func (f *Freezer) untrack(cs ...net.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range cs {
		delete(f.conns, c)
	}
}

func (f *Freezer) close() {
	f.mu.Lock()
	close(f.done)
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.ln.Close()
	f.wg.Wait()
}
