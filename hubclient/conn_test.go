package hubclient_test

import (
	"bytes"
	"crypto/rand"
	"io"
	"testing"

	"github.com/dsproxy/dsproxy/hubclient"
	"github.com/dsproxy/dsproxy/internal/dsproxytest"
)

// TestWriteTo: Conn.WriteTo delivers every message, small, exactly 64 KiB
// and larger (Write splits those), in order, returns nil at the peer's
// half-close, and leaves the other direction open.
func TestWriteTo(t *testing.T) {
	w := dsproxytest.NewHub(t)
	acc := newAccepter()
	startDevice(t, w, w.AddDevice(t, "dev1"), acc.handle)
	s, err := open(t, w, "dev1", "x")
	if err != nil {
		t.Fatal(err)
	}
	svc, ok := s.(*hubclient.Conn)
	if !ok {
		t.Fatalf("OpenStream returned a %T, want a *hubclient.Conn", s)
	}
	dev := acc.next(t)

	var want bytes.Buffer
	werr := make(chan error, 1)
	go func() {
		for _, n := range []int{1, hubclient.MaxWriteMessage, 200 << 10, 3} {
			p := make([]byte, n)
			rand.Read(p)
			want.Write(p)
			if _, err := dev.Write(p); err != nil {
				werr <- err
				return
			}
		}
		werr <- dev.CloseWrite()
	}()
	var got bytes.Buffer
	n, err := svc.WriteTo(&got)
	if err != nil {
		t.Fatalf("WriteTo: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if n != int64(want.Len()) || !bytes.Equal(got.Bytes(), want.Bytes()) {
		t.Fatalf("WriteTo copied %d bytes (%d buffered), want the %d sent", n, got.Len(), want.Len())
	}
	if _, err := svc.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("Read after the half-close = %v, want io.EOF", err)
	}
	if _, err := svc.Write([]byte("back")); err != nil {
		t.Fatalf("write after the peer's half-close: %v", err)
	}
	svc.CloseWrite()
	back, err := io.ReadAll(dev)
	if err != nil || string(back) != "back" {
		t.Fatalf("device read %q, %v; want \"back\"", back, err)
	}
}
