package hub_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"

	"github.com/dsproxy/dsproxy/internal/dsproxytest"
	"github.com/dsproxy/dsproxy/internal/wire"
)

// connectRawSession opens a service session with the owner's credential,
// announcing features (wire.HeaderFeatures), and runs its yamux client by
// hand, as a service proxy of another build would. It is closed at
// cleanup.
func connectRawSession(t *testing.T, w *dsproxytest.Hub, features ...string) *yamux.Session {
	t.Helper()
	hdr := http.Header{"Authorization": {ownerToken(t, w)}}
	if len(features) > 0 {
		hdr.Set(wire.HeaderFeatures, strings.Join(features, ","))
	}
	ws, status := dialWS(t, w, "/service/session?api-version=2020-09-30", hdr, wire.SessionSubprotocol)
	if ws == nil {
		t.Fatalf("service session refused with %d", status)
	}
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	mux, err := yamux.Client(websocket.NetConn(context.Background(), ws.Conn, websocket.MessageBinary), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		mux.Close()
		ws.CloseNow()
	})
	return mux
}

// openRawStream opens a stream to device id on a raw session: it writes
// the OpenStream and, when answered, reads the hub's OpenResult.
func openRawStream(t *testing.T, mux *yamux.Session, id, name string) (*yamux.Stream, func() wire.OpenResult) {
	t.Helper()
	st, err := mux.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	st.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
	if err := wire.WriteMessage(st, &wire.OpenStream{DeviceID: id, Name: name}); err != nil {
		t.Fatal(err)
	}
	return st, func() wire.OpenResult {
		t.Helper()
		var res wire.OpenResult
		if err := wire.ReadMessage(st, &res); err != nil {
			t.Fatalf("no OpenResult: %v", err)
		}
		if res.Status != http.StatusOK || !res.Accepted {
			t.Fatalf("stream not accepted: %+v", res)
		}
		return res
	}
}

// acceptRaw answers a raw device's inline request with acceptance and
// keeps its control stream open for the data.
func acceptRaw(t *testing.T, r *rawRequest) net.Conn {
	t.Helper()
	t.Cleanup(func() { r.ctl.Close() })
	r.ctl.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
	if !r.Inline {
		t.Fatalf("stream request %+v is not inline", r.StreamRequest)
	}
	if err := wire.WriteMessage(r.ctl, &wire.StreamResponse{Accepted: true}); err != nil {
		t.Fatal(err)
	}
	return r.ctl
}

// sendFrames writes p as data frames of size bytes, then a fin frame.
func sendFrames(w io.Writer, p []byte, size int) error {
	var h [wire.FrameHeaderSize]byte
	for len(p) > 0 {
		k := min(len(p), size)
		wire.PutFrameHeader(h[:], wire.FrameData, k)
		if _, err := w.Write(append(h[:], p[:k]...)); err != nil {
			return err
		}
		p = p[k:]
	}
	wire.PutFrameHeader(h[:], wire.FrameFin, 0)
	_, err := w.Write(h[:])
	return err
}

// frames is what a side of a session stream received: the data, the
// largest data frame, and how it ended (a fin, or a close frame's code
// and reason).
type frames struct {
	data    bytes.Buffer
	largest int
	fin     bool
	code    int
	reason  string
}

// readFrames reads frames from r until a fin or a close frame.
func readFrames(t *testing.T, r io.Reader) *frames {
	t.Helper()
	var f frames
	var h [wire.FrameHeaderSize]byte
	for {
		if _, err := io.ReadFull(r, h[:]); err != nil {
			t.Fatalf("read frame after %d bytes: %v", f.data.Len(), err)
		}
		typ, n, err := wire.ParseFrameHeader(h[:])
		if err != nil {
			t.Fatal(err)
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(r, p); err != nil {
			t.Fatalf("read frame payload: %v", err)
		}
		switch typ {
		case wire.FrameFin:
			f.fin = true
			return &f
		case wire.FrameClose:
			if f.code, f.reason, err = wire.ParseClose(p); err != nil {
				t.Fatal(err)
			}
			return &f
		}
		f.data.Write(p)
		f.largest = max(f.largest, n)
	}
}

func randomBytes(n int) []byte {
	p := make([]byte, n)
	rand.Read(p)
	return p
}

// TestSessionFramesLegacyDevice: a device that does not announce large
// frames (a build before them) gets none over wire.LegacyFramePayload from
// a service that does, and 1 MiB arrives intact; the device may send the
// service frames of wire.MaxFramePayload, as the request said.
func TestSessionFramesLegacyDevice(t *testing.T) {
	w := dsproxytest.NewHub(t)
	key := addDevice(t, w, "old")
	d := connectRawDevice(t, w, "old", deviceToken(t, w, "old", key), wire.FeatureInline)
	sc := w.SessionClient(t, w.OwnerConnectionString, nil)
	c, err := sc.OpenStream(ctxFor(t), "old", "x")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
	up := randomBytes(1 << 20)
	sent := make(chan error, 1)
	go func() {
		_, err := c.Write(up)
		if err == nil {
			err = c.CloseWrite()
		}
		sent <- err
	}()

	req := d.next(t)
	if req.MaxFrame != wire.MaxFramePayload {
		t.Errorf("request MaxFrame %d, want %d: the service announced large frames", req.MaxFrame, wire.MaxFramePayload)
	}
	ctl := acceptRaw(t, req)
	got := readFrames(t, ctl)
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if !got.fin || !bytes.Equal(got.data.Bytes(), up) {
		t.Fatalf("device got %d bytes (fin %v, close %d %q), want the %d sent", got.data.Len(), got.fin, got.code, got.reason, len(up))
	}
	if got.largest > wire.LegacyFramePayload {
		t.Errorf("device got a %d-byte frame; it accepts %d", got.largest, wire.LegacyFramePayload)
	}

	down := randomBytes(1 << 20)
	go func() { sent <- sendFrames(ctl, down, wire.MaxFramePayload) }()
	back, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(back, down) {
		t.Fatalf("service read %d bytes, %v; want the %d sent", len(back), err, len(down))
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
}

// TestSessionFramesLegacyService: a service that does not announce large
// frames gets none over wire.LegacyFramePayload from a device that does
// (an echo through it), 1 MiB arrives intact, and the hub tells the
// service the device takes wire.MaxFramePayload.
func TestSessionFramesLegacyService(t *testing.T) {
	w := dsproxytest.NewHub(t)
	w.StartDevice(t, "dev1", "echo="+dsproxytest.Echo(t))
	mux := connectRawSession(t, w)
	st, answer := openRawStream(t, mux, "dev1", "echo")
	if res := answer(); res.MaxFrame != wire.MaxFramePayload {
		t.Errorf("OpenResult MaxFrame %d, want %d: the device announced large frames", res.MaxFrame, wire.MaxFramePayload)
	}
	up := randomBytes(1 << 20)
	sent := make(chan error, 1)
	go func() { sent <- sendFrames(st, up, wire.LegacyFramePayload) }()
	got := readFrames(t, st)
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if !got.fin || !bytes.Equal(got.data.Bytes(), up) {
		t.Fatalf("service got %d bytes back (fin %v, close %d %q), want the %d sent", got.data.Len(), got.fin, got.code, got.reason, len(up))
	}
	if got.largest > wire.LegacyFramePayload {
		t.Errorf("service got a %d-byte frame; it accepts %d", got.largest, wire.LegacyFramePayload)
	}
}

// TestSessionFrameOverLimit: a side that sends a data frame larger than
// the other accepts (more than was negotiated) ends the stream: the hub
// does not relay the frame, both sides get close code 1002 with a reason
// that names the sizes, and the stream event says why.
func TestSessionFrameOverLimit(t *testing.T) {
	const size = wire.LegacyFramePayload + 1
	for _, c := range []struct {
		name     string
		features []string // the device's; the service announces none
		fromDev  bool     // the device sends the frame, else the service
		want     string
	}{
		{"service to legacy device", []string{wire.FeatureInline}, false, "service sent a 65537-byte frame; the device accepts 65536"},
		{"device to legacy service", []string{wire.FeatureInline, wire.FeatureLargeFrames}, true, "device sent a 65537-byte frame; the service accepts 65536"},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := dsproxytest.NewHub(t)
			key := addDevice(t, w, "dev1")
			d := connectRawDevice(t, w, "dev1", deviceToken(t, w, "dev1", key), c.features...)
			mux := connectRawSession(t, w)
			st, answer := openRawStream(t, mux, "dev1", "x")
			req := d.next(t)
			if req.MaxFrame != 0 {
				t.Errorf("request MaxFrame %d, want 0: the service announced nothing", req.MaxFrame)
			}
			ctl := acceptRaw(t, req)
			res := answer()
			var from, to io.ReadWriter = st, ctl
			if c.fromDev {
				from, to = ctl, st
			}
			// The frame goes without its fin: the hub ends the stream at
			// the header.
			var h [wire.FrameHeaderSize]byte
			wire.PutFrameHeader(h[:], wire.FrameData, size)
			if _, err := from.Write(append(h[:], randomBytes(size)...)); err != nil {
				t.Fatal(err)
			}
			for _, side := range []struct {
				name string
				r    io.Reader
			}{{"receiver", to}, {"sender", from}} {
				got := readFrames(t, side.r)
				if got.data.Len() != 0 || got.code != int(websocket.StatusProtocolError) || got.reason != c.want {
					t.Errorf("%s got %d bytes and close %d %q, want none and %d %q",
						side.name, got.data.Len(), got.code, got.reason, websocket.StatusProtocolError, c.want)
				}
			}
			checkEvent(t, streamEvent(t, w.Server.Registry(), res.StreamID), "error", "protocol error: "+c.want)
		})
	}
}
