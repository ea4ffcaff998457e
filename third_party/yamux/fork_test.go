package yamux

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"
)

// Tests of the dsproxy fork's changes (third_party/README.md).

func TestRefuseStream(t *testing.T) {
	refused := make(chan struct{}, 4)
	serverConf := testConfNoKeepAlive()
	serverConf.RefuseStream = func() { refused <- struct{}{} }
	clientConn, serverConn := testConnPipe(t)
	client, server := testClientServerConfig(t, clientConn, serverConn, testConfNoKeepAlive(), serverConf)

	st, err := client.OpenStream()
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	// The reset may come back before the write goes out.
	if _, err := st.Write([]byte("hello")); err != nil && !errors.Is(err, ErrConnectionReset) {
		t.Fatalf("write: %v", err)
	}
	select {
	case <-refused:
	case <-time.After(5 * time.Second):
		t.Fatal("RefuseStream not called")
	}
	// The opener sees its stream reset.
	_ = st.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := st.Read(make([]byte, 1)); !errors.Is(err, ErrConnectionReset) {
		t.Fatalf("read of a refused stream: %v, want %v", err, ErrConnectionReset)
	}
	if n := server.NumStreams(); n != 0 {
		t.Fatalf("server holds %d streams, want 0", n)
	}
	// The session goes on: streams the refusing side opens work.
	go func() {
		s, err := client.AcceptStream()
		if err == nil {
			_, _ = io.Copy(s, s)
			s.Close()
		}
	}()
	out, err := server.OpenStream()
	if err != nil {
		t.Fatalf("open from the refusing side: %v", err)
	}
	defer out.Close()
	if _, err := out.Write([]byte("x")); err != nil {
		t.Fatalf("write: %v", err)
	}
	_ = out.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(out, make([]byte, 1)); err != nil {
		t.Fatalf("echo: %v", err)
	}
	// Accept waits for the session's end.
	accepted := make(chan error, 1)
	go func() {
		_, err := server.AcceptStream()
		accepted <- err
	}()
	server.Close()
	select {
	case err := <-accepted:
		if !errors.Is(err, ErrSessionShutdown) {
			t.Fatalf("accept: %v, want %v", err, ErrSessionShutdown)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("accept did not return at the session's end")
	}
}

func TestOnClose(t *testing.T) {
	for _, tc := range []struct {
		name  string
		close func(client, server *Session)
		want  error
	}{
		{"Close", func(_, server *Session) { server.Close() }, ErrSessionShutdown},
		{"peer", func(client, _ *Session) { client.Close() }, io.EOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			closed := make(chan error, 2)
			serverConf := testConfNoKeepAlive()
			serverConf.OnClose = func(err error) { closed <- err }
			clientConn, serverConn := testConnPipe(t)
			client, server := testClientServerConfig(t, clientConn, serverConn, testConfNoKeepAlive(), serverConf)
			tc.close(client, server)
			select {
			case err := <-closed:
				if !errors.Is(err, tc.want) {
					t.Fatalf("OnClose(%v), want %v", err, tc.want)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("OnClose not called")
			}
			if !server.IsClosed() {
				t.Fatal("OnClose called before the session is closed")
			}
			server.Close() // again: no second call
			select {
			case err := <-closed:
				t.Fatalf("OnClose called twice, again with %v", err)
			case <-time.After(50 * time.Millisecond):
			}
		})
	}
}

// TestOnCloseMayClose: OnClose runs once Close's locks are released, so
// it may call Close (or anything else on the session) itself.
func TestOnCloseMayClose(t *testing.T) {
	done := make(chan struct{})
	conf := testConfNoKeepAlive()
	var server *Session
	conf.OnClose = func(error) {
		server.Close()
		_, _ = server.AcceptStream()
		close(done)
	}
	clientConn, serverConn := testConnPipe(t)
	_, server = testClientServerConfig(t, clientConn, serverConn, testConfNoKeepAlive(), conf)
	server.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("OnClose did not return")
	}
}

// TestBodyWrittenInPlace: a writer may reuse its buffer as soon as Write
// returns (the send loop wrote the body from it, with no copy of its
// own), and the peer reads every frame as it was written.
func TestBodyWrittenInPlace(t *testing.T) {
	clientConn, serverConn := testConnPipe(t)
	client, server := testClientServerConfig(t, clientConn, serverConn, testConfNoKeepAlive(), testConfNoKeepAlive())
	const frames, size = 16, 256 << 10
	got := make(chan error, 1)
	go func() {
		st, err := server.AcceptStream()
		if err != nil {
			got <- err
			return
		}
		defer st.Close()
		b := make([]byte, size)
		for i := 0; i < frames; i++ {
			if _, err := io.ReadFull(st, b); err != nil {
				got <- err
				return
			}
			for j, c := range b {
				if c != byte(i) {
					got <- fmt.Errorf("frame %d byte %d: %d, want %d", i, j, c, byte(i))
					return
				}
			}
		}
		got <- nil
	}()
	st, err := client.OpenStream()
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer st.Close()
	buf := make([]byte, size)
	for i := 0; i < frames; i++ {
		for j := 0; j < len(buf); j++ {
			buf[j] = byte(i) // overwrites what the previous Write sent
		}
		if _, err := st.Write(buf); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the reader did not finish")
	}
}

// TestNextConsume: Next hands out each received frame's body as it
// arrived, Consume takes it (in parts too), Read and Next mix, and the
// stream ends with io.EOF once everything was taken.
func TestNextConsume(t *testing.T) {
	clientConn, serverConn := testConnPipe(t)
	conf := testConfNoKeepAlive()
	conf.MaxStreamWindowSize = 4 << 20 // every frame fits: none is split
	client, server := testClientServerConfig(t, clientConn, serverConn, conf, conf)
	sizes := []int{1, 100, 511, 512, 4 << 10, 64<<10 + 5, 200 << 10}
	st, err := client.OpenStream()
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	go func() {
		for i, n := range sizes {
			b := make([]byte, n)
			for j := range b {
				b[j] = byte(i)
			}
			if _, err := st.Write(b); err != nil {
				return
			}
		}
		st.Close()
	}()
	peer, err := server.AcceptStream()
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	defer peer.Close()
	_ = peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	for i, n := range sizes {
		got := 0
		for got < n {
			p, err := peer.Next()
			if err != nil {
				t.Fatalf("frame %d: next: %v", i, err)
			}
			if got == 0 && len(p) < n {
				// The whole frame, unless a part was read already.
				t.Fatalf("frame %d: next returned %d bytes, want %d", i, len(p), n)
			}
			p = p[:minInt(len(p), n-got)]
			for j, c := range p {
				if c != byte(i) {
					t.Fatalf("frame %d byte %d: %d", i, got+j, c)
				}
			}
			if i%2 == 1 && len(p) > 1 {
				// Take half, then read the rest through Read.
				half := len(p) / 2
				if err := peer.Consume(half); err != nil {
					t.Fatalf("consume: %v", err)
				}
				rest := make([]byte, len(p)-half)
				if _, err := io.ReadFull(peer, rest); err != nil {
					t.Fatalf("read: %v", err)
				}
				got += len(p)
				continue
			}
			if err := peer.Consume(len(p)); err != nil {
				t.Fatalf("consume: %v", err)
			}
			got += len(p)
		}
	}
	if p, err := peer.Next(); err != io.EOF {
		t.Fatalf("next after the last frame: %d bytes, %v; want io.EOF", len(p), err)
	}
}

// TestNextHoldsWindow: bytes Next returned stay counted against the
// receive window until they are consumed, so a reader that holds them
// (a stalled destination) holds the sender at exactly the window.
func TestNextHoldsWindow(t *testing.T) {
	clientConn, serverConn := testConnPipe(t)
	conf := testConfNoKeepAlive()
	conf.ConnectionWriteTimeout = 10 * time.Second
	client, server := testClientServerConfig(t, clientConn, serverConn, conf, conf)
	window := int(conf.MaxStreamWindowSize)
	st, err := client.OpenStream()
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer st.Close()
	written := make(chan int, 1)
	go func() {
		n, _ := st.Write(make([]byte, 2*window))
		written <- n
	}()
	peer, err := server.AcceptStream()
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	defer peer.Close()
	_ = peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	p, err := peer.Next()
	if err != nil {
		t.Fatalf("next: %v", err)
	}
	if len(p) != window {
		t.Fatalf("next: %d bytes, want the whole window, %d", len(p), window)
	}
	// Held, not consumed: the sender gets no more window.
	select {
	case n := <-written:
		t.Fatalf("the writer finished (%d bytes) past a full window", n)
	case <-time.After(200 * time.Millisecond):
	}
	if q, err := peer.Next(); err != nil || &q[0] != &p[0] {
		t.Fatalf("next again: %v, or other bytes", err)
	}
	if err := peer.Consume(len(p)); err != nil {
		t.Fatalf("consume: %v", err)
	}
	if _, err := io.ReadFull(peer, make([]byte, window)); err != nil {
		t.Fatalf("read the rest: %v", err)
	}
	select {
	case n := <-written:
		if n != 2*window {
			t.Fatalf("wrote %d, want %d", n, 2*window)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the writer did not finish once the window was read")
	}
}

// TestWriteTo: io.Copy from a stream goes through WriteTo, which ends at
// the peer's close with nil and moves every byte.
func TestWriteTo(t *testing.T) {
	clientConn, serverConn := testConnPipe(t)
	client, server := testClientServerConfig(t, clientConn, serverConn, testConfNoKeepAlive(), testConfNoKeepAlive())
	data := make([]byte, 3<<20+7)
	for i := range data {
		data[i] = byte(i % 251)
	}
	st, err := client.OpenStream()
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	go func() {
		for p := data; len(p) > 0; {
			k := minInt(len(p), 100<<10)
			if _, err := st.Write(p[:k]); err != nil {
				return
			}
			p = p[k:]
		}
		st.Close()
	}()
	peer, err := server.AcceptStream()
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	defer peer.Close()
	var got bytes.Buffer
	n, err := peer.WriteTo(&got)
	if err != nil || n != int64(len(data)) {
		t.Fatalf("WriteTo: %d, %v; want %d, nil", n, err, len(data))
	}
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatal("WriteTo: other bytes than were sent")
	}
}

// TestRecvClass: a pooled receive buffer is at least the body's size and
// less than twice it, and a power of two behind a small header takes
// little more than its size.
func TestRecvClass(t *testing.T) {
	for n := 1; n <= 1<<maxPooledLog+1; n += 1 + n/7 {
		class, size := recvClass(n)
		if class < 0 {
			if n >= 1<<minPooledLog && n <= 1<<maxPooledLog {
				t.Fatalf("%d not pooled", n)
			}
			continue
		}
		if size < n || size >= 2*n {
			t.Fatalf("recvClass(%d) = %d bytes", n, size)
		}
		if c2, s2 := recvClass(size); c2 != class || s2 != size {
			t.Fatalf("a buffer of %d bytes (for %d) goes back to class %d, not %d", size, n, c2, class)
		}
	}
	if _, size := recvClass(256<<10 + 5); size != 256<<10+recvSlack {
		t.Fatalf("256 KiB + 5: %d bytes", size)
	}
}

// BenchmarkStreamCopy moves 256 KiB frames through a session over a pipe
// and out to io.Discard, by Read (a copy per frame) or by WriteTo (none),
// the sender handing each frame to the send loop or, with WriteInPlace,
// writing it itself.
func BenchmarkStreamCopy(b *testing.B) {
	for _, mode := range []string{"Read", "WriteTo", "WriteTo+InPlace"} {
		b.Run(mode, func(b *testing.B) {
			clientConn, serverConn := testConnPipe(b)
			conf := testConfNoKeepAlive()
			conf.MaxStreamWindowSize = 4 << 20
			conf.WriteInPlace = mode == "WriteTo+InPlace"
			client, server := testClientServerConfig(b, clientConn, serverConn, conf, conf)
			st, err := client.OpenStream()
			if err != nil {
				b.Fatal(err)
			}
			buf := make([]byte, 256<<10)
			b.SetBytes(int64(len(buf)))
			go func() {
				for i := 0; i < b.N; i++ {
					if _, err := st.Write(buf); err != nil {
						return
					}
				}
				st.Close()
			}()
			peer, err := server.AcceptStream()
			if err != nil {
				b.Fatal(err)
			}
			defer peer.Close()
			if mode == "Read" {
				_, err = io.Copy(io.Discard, struct{ io.Reader }{peer})
			} else {
				_, err = peer.WriteTo(io.Discard)
			}
			if err != nil {
				b.Fatal(err)
			}
		})
	}
}

func minInt(a, b int) int {
	if a < b {
		return a
	}
	return b
}

// TestWriteInPlace: with WriteInPlace on both ends, streams written at
// once from many goroutines, while pings and window updates go through
// the send loop, arrive whole and in order, echoed back through WriteTo.
func TestWriteInPlace(t *testing.T) {
	conf := testConfNoKeepAlive()
	conf.WriteInPlace = true
	conf.ConnectionWriteTimeout = 10 * time.Second
	for _, transport := range []struct {
		name string
		pair func(testing.TB) (io.ReadWriteCloser, io.ReadWriteCloser)
	}{{"pipe", testConnPipe}, {"tcp", testConnTCP}} {
		t.Run(transport.name, func(t *testing.T) {
			clientConn, serverConn := transport.pair(t)
			client, server := testClientServerConfig(t, clientConn, serverConn, conf, conf)
			const streams, size = 6, 3<<20 + 11
			go func() {
				for {
					st, err := server.AcceptStream()
					if err != nil {
						return
					}
					go func() {
						defer st.Close()
						_, _ = st.WriteTo(st) // echo
					}()
				}
			}()
			errs := make(chan error, streams+1)
			stop := make(chan struct{})
			go func() { // control frames through the send loop meanwhile
				for {
					select {
					case <-stop:
						errs <- nil
						return
					default:
					}
					if _, err := client.Ping(); err != nil {
						errs <- fmt.Errorf("ping: %w", err)
						return
					}
				}
			}()
			for i := 0; i < streams; i++ {
				go func(i int) {
					errs <- echoOnce(client, i, size)
				}(i)
			}
			for i := 0; i < streams; i++ {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
			close(stop)
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
			if n := client.queued.Load(); n != 0 {
				t.Fatalf("%d frames still counted as queued", n)
			}
		})
	}
}

// echoOnce sends size bytes on a new stream of s in writes of varied
// sizes and checks that the same bytes come back.
func echoOnce(s *Session, id, size int) error {
	st, err := s.OpenStream()
	if err != nil {
		return err
	}
	defer st.Close()
	data := make([]byte, size)
	for j := range data {
		data[j] = byte(id*31 + j*7)
	}
	werr := make(chan error, 1)
	go func() {
		for p, k := data, 1; len(p) > 0; k = k*3 + 1 {
			n := minInt(len(p), k%(300<<10)+1)
			if _, err := st.Write(p[:n]); err != nil {
				werr <- err
				return
			}
			p = p[n:]
		}
		werr <- nil
	}()
	_ = st.SetReadDeadline(time.Now().Add(30 * time.Second))
	got := make([]byte, size)
	if _, err := io.ReadFull(st, got); err != nil {
		return fmt.Errorf("stream %d: read: %w", id, err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("stream %d: write: %w", id, err)
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("stream %d: other bytes came back", id)
	}
	return nil
}

// failingWrites is a connection whose writes fail once fail is set, while
// its reads go on.
type failingWrites struct {
	io.ReadWriteCloser
	fail chan struct{}
}

func (c *failingWrites) Write(p []byte) (int, error) {
	select {
	case <-c.fail:
		return 0, errors.New("connection broke")
	default:
		return c.ReadWriteCloser.Write(p)
	}
}

// TestReadWindowUpdateFails: a read of data already received returns it
// without an error when the window update it sends cannot be written
// because the connection broke; the session ends, and a later read
// reports that. (Upstream passed the write's error on with the data: a
// sender that closed its session right after its last frame made the
// receiver's last read fail, as in TestHalfCloseSessionShutdown.)
func TestReadWindowUpdateFails(t *testing.T) {
	clientConn, serverConn := testConnPipe(t)
	fw := &failingWrites{ReadWriteCloser: serverConn, fail: make(chan struct{})}
	client, server := testClientServerConfig(t, clientConn, fw, testConfNoKeepAlive(), testConfNoKeepAlive())

	st, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	size := int(client.config.MaxStreamWindowSize) // enough for an update
	data := bytes.Repeat([]byte{7}, size)
	if _, err := st.Write(data); err != nil {
		t.Fatal(err)
	}
	st2, err := server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	waitBuffered(t, st2, size)
	close(fw.fail)
	buf := make([]byte, size)
	n, err := st2.Read(buf)
	if n != size || err != nil {
		t.Fatalf("read: %d bytes, %v; want %d, nil", n, err, size)
	}
	select {
	case <-server.CloseChan():
	case <-time.After(5 * time.Second):
		t.Fatal("the server's session did not end after its connection broke")
	}
}

// waitBuffered waits until st holds size bytes received and not yet read.
func waitBuffered(t *testing.T, st *Stream, size int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st.recvLock.Lock()
		n := st.recvLen
		st.recvLock.Unlock()
		if n == size {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d bytes buffered", n, size)
		}
		time.Sleep(time.Millisecond)
	}
}
