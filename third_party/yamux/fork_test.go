package yamux

import (
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
