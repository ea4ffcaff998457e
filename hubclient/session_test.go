package hubclient_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/dsproxy/dsproxy/hub"
	"github.com/dsproxy/dsproxy/hubclient"
	"github.com/dsproxy/dsproxy/internal/dsproxytest"
	"github.com/dsproxy/dsproxy/internal/sas"
	"github.com/dsproxy/dsproxy/internal/wire"
)

// opener opens streams: a ServiceClient or a SessionClient.
type opener interface {
	OpenStream(ctx context.Context, deviceID, name string) (hubclient.Stream, error)
}

// openVia opens a stream with o; it is closed at cleanup.
func openVia(t *testing.T, o opener, id, name string) (hubclient.Stream, error) {
	t.Helper()
	c, err := o.OpenStream(ctxT(t), id, name)
	if err == nil {
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
	}
	return c, err
}

// handshake waits for a session stream's answer; a per-stream one has it.
func handshake(c hubclient.Stream) error {
	if h, ok := c.(interface{ Handshake() error }); ok {
		return h.Handshake()
	}
	return nil
}

// TestSessionRefusals: over a session, the device's rejection, an unknown
// device and an offline one come back as the same errors as per-stream,
// from the stream's handshake (or first read), and the session goes on.
func TestSessionRefusals(t *testing.T) {
	w := dsproxytest.NewHub(t)
	startDevice(t, w, w.AddDevice(t, "dev1"), func(ctx context.Context, req *hubclient.StreamRequest) {
		req.Reject("no target named " + req.Name)
	})
	w.AddDevice(t, "offline")
	sc := w.SessionClient(t, w.OwnerConnectionString, nil)

	c, err := openVia(t, sc, "dev1", "rdp")
	if err != nil {
		t.Fatal(err)
	}
	err = handshake(c)
	var re *hubclient.RejectedError
	if !errors.As(err, &re) || re.Reason != "no target named rdp" || !errors.Is(err, hubclient.ErrRejected) {
		t.Errorf("handshake: %v, want the device's rejection", err)
	}
	if _, err := c.Read(make([]byte, 1)); !errors.As(err, &re) {
		t.Errorf("read after a rejection: %v, want the rejection again", err)
	}
	for _, id := range []string{"nobody", "offline"} {
		c, err := openVia(t, sc, id, "ssh")
		if err != nil {
			t.Fatal(err)
		}
		// Data written before the answer is dropped with the stream.
		if _, err := c.Write([]byte("hello")); err != nil {
			t.Fatalf("%s: write before the answer: %v", id, err)
		}
		_, err = c.Read(make([]byte, 1))
		if !errors.Is(err, hubclient.ErrDeviceUnavailable) {
			t.Errorf("%s: read: %v, want ErrDeviceUnavailable", id, err)
		}
	}
}

// TestSessionCredentials: a policy without ServiceConnect cannot hold a
// session, and Run says so instead of retrying.
func TestSessionCredentials(t *testing.T) {
	w := dsproxytest.NewHub(t)
	cs, err := sas.ParseConnectionString(w.OwnerConnectionString)
	if err != nil {
		t.Fatal(err)
	}
	pol, err := w.Server.Registry().GetPolicy(ctxT(t), "registryRead")
	if err != nil {
		t.Fatal(err)
	}
	cs.SharedAccessKeyName, cs.SharedAccessKey = pol.Name, pol.PrimaryKey
	sc, err := hubclient.NewSessionClient(hubclient.ServiceConfig{ConnectionString: cs.String(), TLSConfig: w.ClientTLS})
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.Run(ctxT(t)); !errors.Is(err, hubclient.ErrForbidden) {
		t.Errorf("Run: %v, want ErrForbidden", err)
	}
	if _, err := sc.OpenStream(ctxT(t), "dev1", "ssh"); err == nil {
		t.Error("OpenStream after Run gave up: want an error")
	}
}

// TestStalledSessionStream: on one session, a stream whose reader stops
// reading holds back only itself: a second stream moves 8 MiB both ways
// meanwhile, and the stalled one still delivers everything once read.
func TestStalledSessionStream(t *testing.T) {
	w := dsproxytest.NewHub(t)
	w.StartDevice(t, "dev1", "echo="+dsproxytest.Echo(t))
	acc := newAccepter()
	startDevice(t, w, w.AddDevice(t, "pusher"), acc.handle)
	sc := w.SessionClient(t, w.OwnerConnectionString, nil)

	// The stalled stream: the device pushes 48 MiB, far more than the
	// windows (4 MiB each way) and socket buffers on the way, and the
	// service reads none of it yet.
	stalled, err := openVia(t, sc, "pusher", "s")
	if err != nil {
		t.Fatal(err)
	}
	dev := acc.next(t)
	const pushed = 48 << 20
	payload := make([]byte, pushed)
	rand.Read(payload)
	pushDone := make(chan error, 1)
	go func() {
		_, err := dev.Write(payload)
		if err == nil {
			err = dev.CloseWrite()
		}
		pushDone <- err
	}()
	time.Sleep(200 * time.Millisecond)
	select {
	case err := <-pushDone:
		t.Fatalf("the device wrote 48 MiB to a reader that reads nothing (%v): where did it go?", err)
	default:
	}

	busy, err := openVia(t, sc, "dev1", "echo")
	if err != nil {
		t.Fatal(err)
	}
	const size = 8 << 20
	data := make([]byte, size)
	rand.Read(data)
	go func() {
		busy.Write(data)
		busy.CloseWrite()
	}()
	got, err := io.ReadAll(busy)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("busy stream: %d bytes, %v; want its 8 MiB back", len(got), err)
	}

	got, err = io.ReadAll(stalled)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("stalled stream: %d bytes, %v; want all 48 MiB once read", len(got), err)
	}
	if err := <-pushDone; err != nil {
		t.Fatal(err)
	}
}

// TestSessionLost: when the session's connection freezes, the client
// notices within its keepalive window, its running stream fails with
// ErrSessionLost, the hub ends the device's side as lost, and after the
// thaw the client redials and streams work again.
func TestSessionLost(t *testing.T) {
	const keepAlive, timeout = 100 * time.Millisecond, 300 * time.Millisecond
	w := dsproxytest.NewHub(t)
	acc := newAccepter()
	startDevice(t, w, w.AddDevice(t, "dev1"), acc.handle)
	f := dsproxytest.NewFreezer(t, w.Addr)
	cs, err := sas.ParseConnectionString(w.OwnerConnectionString)
	if err != nil {
		t.Fatal(err)
	}
	cs.HostName = f.Addr
	sc := w.SessionClient(t, cs.String(), func(c *hubclient.ServiceConfig) {
		c.KeepAliveInterval, c.ConnectionWriteTimeout = keepAlive, timeout
	})

	svc, err := openVia(t, sc, "dev1", "s")
	if err != nil {
		t.Fatal(err)
	}
	dev := acc.next(t)
	if _, err := svc.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(dev, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}

	frozen := time.Now()
	f.Freeze()
	_, err = io.Copy(io.Discard, svc)
	el := time.Since(frozen)
	if !errors.Is(err, hubclient.ErrSessionLost) && !errors.Is(err, net.ErrClosed) {
		t.Errorf("service read: %v, want ErrSessionLost", err)
	}
	t.Logf("window %s: the service's stream failed %s after the freeze", keepAlive+timeout, el.Round(time.Millisecond))
	if limit := keepAlive + timeout + 2*time.Second; el > limit {
		t.Errorf("stream failed %s after the freeze, want within %s", el, limit)
	}
	// The hub's keepalive is the default (15 s + 10 s) here: the device's
	// side ends when the client's dropped connection reaches the hub.
	f.Thaw()
	_, err = io.Copy(io.Discard, dev)
	var se *hubclient.StreamEndError
	if !errors.As(err, &se) || se.Code != int(hub.ClosePeerLost) {
		t.Errorf("device read: %v, want close code %d", err, hub.ClosePeerLost)
	}

	dsproxytest.Eventually(t, "a stream over a new session", func() bool {
		c, err := sc.OpenStream(ctxT(t), "dev1", "s")
		if err != nil {
			return false
		}
		defer c.Close()
		return handshake(c) == nil
	})
}

// sizeWriter records the size of each Write.
type sizeWriter struct {
	bytes.Buffer
	sizes []int
}

func (w *sizeWriter) Write(p []byte) (int, error) {
	w.sizes = append(w.sizes, len(p))
	return w.Buffer.Write(p)
}

// TestSessionWriteTo: a session stream's WriteTo delivers every write,
// small, exactly 64 KiB and larger, in order and each 64 KiB frame in one
// Write, returns nil at the peer's half-close and leaves the other
// direction open; a stream the peer aborts ends it with the abort's
// StreamEndError.
func TestSessionWriteTo(t *testing.T) {
	w := dsproxytest.NewHub(t)
	acc := newAccepter()
	startDevice(t, w, w.AddDevice(t, "dev1"), acc.handle)
	sc := w.SessionClient(t, w.OwnerConnectionString, nil)
	svc, err := openVia(t, sc, "dev1", "x")
	if err != nil {
		t.Fatal(err)
	}
	wt, ok := svc.(io.WriterTo)
	if !ok {
		t.Fatalf("a session stream (%T) is no io.WriterTo", svc)
	}
	dev := acc.next(t)

	var want bytes.Buffer
	werr := make(chan error, 1)
	go func() {
		for _, n := range []int{1, 64 << 10, 200 << 10, 3} {
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
	var got sizeWriter
	n, err := wt.WriteTo(&got)
	if err != nil {
		t.Fatalf("WriteTo: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if n != int64(want.Len()) || !bytes.Equal(got.Bytes(), want.Bytes()) {
		t.Fatalf("WriteTo copied %d bytes (%d buffered), want the %d sent", n, got.Len(), want.Len())
	}
	if got.sizes[1] != 64<<10 {
		t.Errorf("write sizes %v: a 64 KiB frame was split", got.sizes)
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

	// An aborted stream: WriteTo reports how it ended.
	svc2, err := openVia(t, sc, "dev1", "y")
	if err != nil {
		t.Fatal(err)
	}
	dev2 := acc.next(t)
	if _, err := dev2.Write([]byte("partial")); err != nil {
		t.Fatal(err)
	}
	dev2.Abort()
	var got2 bytes.Buffer
	_, err = svc2.(io.WriterTo).WriteTo(&got2)
	var se *hubclient.StreamEndError
	if !errors.As(err, &se) || got2.String() != "partial" {
		t.Fatalf("WriteTo of an aborted stream: %q, %v; want \"partial\" and a StreamEndError", got2.String(), err)
	}
}

// burstReader is what tunnel uses of a session stream to read a burst
// from a TCP connection into frames.
type burstReader interface {
	ReadBurst(src io.Reader) (n int64, done bool, err error)
}

// TestSessionReadBurst: ReadBurst sends what its source has, before the
// hub's answer and after it, stops at a short read or reports the
// source's EOF, and the device receives it all, in order, a whole frame
// (wire.MaxFramePayload) per Write of its WriteTo.
func TestSessionReadBurst(t *testing.T) {
	w := dsproxytest.NewHub(t)
	acc := newAccepter()
	startDevice(t, w, w.AddDevice(t, "dev1"), acc.handle)
	sc := w.SessionClient(t, w.OwnerConnectionString, nil)
	svc, err := openVia(t, sc, "dev1", "x")
	if err != nil {
		t.Fatal(err)
	}
	br, ok := svc.(burstReader)
	if !ok {
		t.Fatalf("a session stream (%T) has no ReadBurst", svc)
	}
	var want bytes.Buffer
	burst := func(size int) (int64, bool) {
		t.Helper()
		p := make([]byte, size)
		rand.Read(p)
		want.Write(p)
		n, done, err := br.ReadBurst(bytes.NewReader(p))
		if err != nil || n != int64(size) {
			t.Fatalf("ReadBurst of %d bytes: %d, %v", size, n, err)
		}
		return n, done
	}
	if _, done := burst(1000); done { // before the answer: through Write
		t.Fatal("ReadBurst reported EOF after a short read")
	}
	if err := handshake(svc); err != nil {
		t.Fatal(err)
	}
	dev := acc.next(t)
	got := make(chan *sizeWriter, 1)
	go func() {
		var sw sizeWriter
		_, err := dev.(io.WriterTo).WriteTo(&sw)
		if err != nil {
			t.Errorf("device WriteTo: %v", err)
		}
		got <- &sw
	}()
	burst(2*wire.MaxFramePayload + 5000)
	if n, done, err := br.ReadBurst(bytes.NewReader(nil)); n != 0 || !done || err != nil {
		t.Fatalf("ReadBurst of an empty source: %d, %v, %v; want 0, true, nil", n, done, err)
	}
	if err := svc.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	sw := <-got
	if !bytes.Equal(sw.Bytes(), want.Bytes()) {
		t.Fatalf("the device got %d bytes, want the %d sent, in order", sw.Len(), want.Len())
	}
	full := 0
	for _, n := range sw.sizes {
		if n == wire.MaxFramePayload {
			full++
		}
	}
	if full < 2 {
		t.Errorf("write sizes %v: want two whole %d-byte frames", sw.sizes, wire.MaxFramePayload)
	}
}
