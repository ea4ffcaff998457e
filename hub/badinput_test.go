package hub_test

// Tests of hostile and broken input (issue #4, "Bad input"): garbage and
// truncated frames on the control session and the streaming endpoint,
// wrong subprotocols, stream names and device IDs with path tricks, huge
// headers, malformed and misused SAS tokens, and TLS clients that never
// finish their handshake. Each bad input must get a clear error, and the
// hub must go on serving everyone else: every test ends its cases with
// stillServes, a normal device and stream through the same hub.
//
// The hostile peers here are written by hand on purpose: they are the
// attackers, not stand-ins for dsproxy's own parts, which are always the
// real ones.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"

	"github.com/dsproxy/dsproxy/hub"
	"github.com/dsproxy/dsproxy/internal/dsproxytest"
	"github.com/dsproxy/dsproxy/internal/sas"
	"github.com/dsproxy/dsproxy/internal/wire"
)

// healthyDevices numbers the devices stillServes starts, so each is new.
var healthyDevices atomic.Int64

// stillServes proves that the hub goes on serving everyone else after a
// bad input: a new device connects with the real device agent, and a
// stream opened to it by the owner's service client echoes bytes.
func stillServes(t *testing.T, w *dsproxytest.Hub) {
	t.Helper()
	id := fmt.Sprintf("healthy-%d", healthyDevices.Add(1))
	w.StartDevice(t, id, "echo="+dsproxytest.Echo(t))
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	c, err := w.Service.OpenStream(ctx, id, "echo")
	if err != nil {
		t.Fatalf("after the bad input, a normal stream cannot open: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
	msg := []byte("still serving " + id)
	if _, err := c.Write(msg); err != nil {
		t.Fatalf("after the bad input, a normal stream: write: %v", err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatalf("after the bad input, a normal stream: half-close: %v", err)
	}
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("after the bad input, a normal stream echoed %q, %v; want %q", got, err, msg)
	}
}

// logBuffer collects a logger's JSON lines; safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// logger returns a debug-level JSON logger writing to b with a role field.
func (b *logBuffer) logger(role string) zerolog.Logger {
	return zerolog.New(b).Level(zerolog.DebugLevel).With().Timestamp().Str("role", role).Logger()
}

// lines returns the JSON lines written so far, decoded.
func (b *logBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for l := range strings.SplitSeq(strings.TrimSpace(b.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q is not JSON: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

// deviceState returns the connectionState the registry API shows for id.
func deviceState(t *testing.T, w *dsproxytest.Hub, id string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	d, err := w.Service.GetDevice(ctx, id)
	if err != nil {
		t.Fatalf("get device %q: %v", id, err)
	}
	return d.ConnectionState
}

// yamuxHeader encodes a yamux frame header (version 0).
func yamuxHeader(typ, flags uint16, stream, length uint32) []byte {
	h := make([]byte, 12)
	h[0], h[1] = 0, byte(typ)
	binary.BigEndian.PutUint16(h[2:], flags)
	binary.BigEndian.PutUint32(h[4:], stream)
	binary.BigEndian.PutUint32(h[8:], length)
	return h
}

// TestControlSessionGarbage: a device that authenticates, upgrades with
// the control subprotocol and then sends what is not yamux, or a yamux
// frame it never finishes, loses its session: the hub closes it (at once,
// or within the shortened keepalive window when the device just goes
// quiet), logs why at debug or warn level (yamux's own words), and shows
// the device disconnected. Nothing else is affected.
func TestControlSessionGarbage(t *testing.T) {
	var logs logBuffer
	w := dsproxytest.NewHub(t, func(c *hub.Config) {
		c.KeepAliveInterval = 200 * time.Millisecond
		c.ConnectionWriteTimeout = time.Second
		c.Logger = logs.logger("hub")
	})
	random := make([]byte, 256)
	for i := range random {
		random[i] = byte(mrand.N(256))
	}
	random[0] = 0xff // never yamux's version 0

	for _, tc := range []struct {
		name string
		send func(ctx context.Context, ws *websocket.Conn) error
		why  string // what the hub's log must say; alternatives split by |
	}{
		{"random binary messages", func(ctx context.Context, ws *websocket.Conn) error {
			for i := 0; i < len(random); i += 64 {
				if err := ws.Write(ctx, websocket.MessageBinary, random[i:i+64]); err != nil {
					return err
				}
			}
			return nil
		}, "protocol version"},
		{"yamux header then nothing", func(ctx context.Context, ws *websocket.Conn) error {
			// Data for the hub's SessionReady stream, announcing 100 bytes
			// that never come: the hub's reader waits, its pings go
			// unanswered.
			return ws.Write(ctx, websocket.MessageBinary, yamuxHeader(0, 0, 1, 100))
		}, "keepalive"},
		{"device opens a stream and stalls", func(ctx context.Context, ws *websocket.Conn) error {
			// Only the hub may open streams (TestControlStreamFromDevice),
			// but yamux may hold the stream back from the hub while it
			// waits for the 100 bytes: then the keepalive ends it.
			return ws.Write(ctx, websocket.MessageBinary, yamuxHeader(0, 1, 2, 100))
		}, "control stream|keepalive"},
		{"truncated yamux header", func(ctx context.Context, ws *websocket.Conn) error {
			return ws.Write(ctx, websocket.MessageBinary, yamuxHeader(0, 1, 2, 100)[:5])
		}, "keepalive"},
		{"yamux data frame of 1 GiB", func(ctx context.Context, ws *websocket.Conn) error {
			// On the hub's SessionReady stream, far past its window: the
			// hub must refuse it rather than make room for it.
			return ws.Write(ctx, websocket.MessageBinary, yamuxHeader(0, 0, 1, 1<<30))
		}, "window exceeded"},
		{"text message", func(ctx context.Context, ws *websocket.Conn) error {
			return ws.Write(ctx, websocket.MessageText, []byte("hello, is this yamux?"))
		}, "MessageText"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := "bad-" + strings.ReplaceAll(tc.name, " ", "-")
			key := addDevice(t, w, id)
			ws, status := dialWS(t, w, "/devices/"+id+"/control", http.Header{"Authorization": {deviceToken(t, w, id, key)}}, wire.ControlSubprotocol)
			if ws == nil {
				t.Fatalf("control session refused with %d", status)
			}
			dsproxytest.Eventually(t, "the device to show connected", func() bool { return deviceState(t, w, id) == "Connected" })
			ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
			defer cancel()
			if err := tc.send(ctx, ws.Conn); err != nil {
				t.Fatalf("send: %v", err)
			}
			start := time.Now()
			err := readClose(t, ws) // fails the test if the hub keeps the session
			t.Logf("session ended after %s: %v", time.Since(start).Round(time.Millisecond), err)
			dsproxytest.Eventually(t, "the device to show disconnected", func() bool { return deviceState(t, w, id) == "Disconnected" })

			// The hub said why, at debug or warn level, on the device's
			// session logger.
			var why []string
			for _, l := range logs.lines(t) {
				if l["device"] == id && (l["level"] == "debug" || l["level"] == "warn") {
					line := fmt.Sprint(l["message"])
					for _, k := range []string{"detail", "error"} {
						if v, ok := l[k]; ok {
							line += ": " + fmt.Sprint(v)
						}
					}
					why = append(why, line)
				}
			}
			said := false
			for _, alt := range strings.Split(tc.why, "|") {
				said = said || strings.Contains(strings.Join(why, "\n"), alt)
			}
			if !said {
				t.Errorf("the hub did not log at debug or warn level why %s's session ended (%q); log:\n%s", id, tc.why, logs.String())
			}
			t.Logf("hub log: %q", why)
			stillServes(t, w)
		})
	}
}

// TestControlStreamFromDevice: only the hub opens yamux streams on a
// control session. A device that opens one (and could otherwise queue up
// hundreds, each holding a window of data the hub never reads) loses its
// session, with a warning in the hub's log; it may connect again, and
// nobody else is affected.
func TestControlStreamFromDevice(t *testing.T) {
	var logs logBuffer
	w := dsproxytest.NewHub(t, func(c *hub.Config) { c.Logger = logs.logger("hub") })
	key := addDevice(t, w, "opener")
	d := connectRawDevice(t, w, "opener", deviceToken(t, w, "opener", key))
	// The hub may end the session before OpenStream has returned.
	if st, err := d.mux.OpenStream(); err == nil {
		st.Write(make([]byte, 128<<10))
	} else if !errors.Is(err, yamux.ErrSessionShutdown) {
		t.Fatal(err)
	}
	select {
	case <-d.mux.CloseChan():
	case <-time.After(dsproxytest.WaitTimeout):
		t.Fatal("the hub kept the session of a device that opened a stream")
	}
	dsproxytest.Eventually(t, "the device to show disconnected", func() bool { return deviceState(t, w, "opener") == "Disconnected" })
	warned := false
	for _, l := range logs.lines(t) {
		if l["device"] == "opener" && l["level"] == "warn" {
			warned = true
			t.Logf("hub: %v", l["message"])
		}
	}
	if !warned {
		t.Errorf("no warning about the device in the hub's log:\n%s", logs.String())
	}
	// The device may come back, and its new session works.
	d = connectRawDevice(t, w, "opener", deviceToken(t, w, "opener", key))
	answered := make(chan initiation, 1)
	auth := ownerToken(t, w)
	go func() {
		in, err := postInitiate(w, auth, "opener", "ssh", nil)
		if err != nil {
			t.Error(err)
		}
		answered <- in
	}()
	d.next(t).answer(t, false, "back")
	if in := <-answered; in.status != http.StatusOK || in.body.Reason != "back" {
		t.Errorf("initiation to the reconnected device: %d %+v %+v", in.status, in.body, in.err)
	}
	stillServes(t, w)
}

// TestControlMessageGarbage: a device whose yamux is sound but whose
// answer to a stream request is not a StreamResponse gets that initiation
// failed with a clear error naming the bad answer, keeps its session, and
// answers the next request normally.
func TestControlMessageGarbage(t *testing.T) {
	w := dsproxytest.NewHub(t)
	key := addDevice(t, w, "garbler")
	d := connectRawDevice(t, w, "garbler", deviceToken(t, w, "garbler", key))
	huge := make([]byte, 4)
	binary.BigEndian.PutUint32(huge, 0xffffffff)
	over := make([]byte, 4)
	binary.BigEndian.PutUint32(over, wire.MaxMessageSize+1)
	longReason, _ := json.Marshal(wire.StreamResponse{Reason: strings.Repeat("x", wire.MaxReasonLen+1)})
	frame := func(body []byte) []byte {
		return binary.BigEndian.AppendUint32(nil, uint32(len(body))) // followed by body
	}
	for _, tc := range []struct {
		name   string
		answer []byte
	}{
		{"garbage length prefix", append(huge, "{}"...)},
		{"length over the limit", append(over, "{}"...)},
		{"invalid JSON", append(frame([]byte("{accepted: yes}")), "{accepted: yes}"...)},
		{"wrong JSON type", append(frame([]byte(`{"accepted":"True"}`)), `{"accepted":"True"}`...)},
		{"overlong reason", append(frame(longReason), longReason...)},
		{"truncated", append(frame([]byte(`{"accepted":true}`)), `{"acc`...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			answered := make(chan initiation, 1)
			auth := ownerToken(t, w)
			go func() {
				in, err := postInitiate(w, auth, "garbler", "ssh", nil)
				if err != nil {
					t.Error(err)
				}
				answered <- in
			}()
			r := d.next(t)
			r.ctl.Write(tc.answer)
			r.ctl.Close()
			in := <-answered
			if in.status == http.StatusOK {
				t.Fatalf("initiation answered 200 %+v after a garbage answer from the device", in.body)
			}
			if !strings.Contains(in.err.Detail, "invalid answer") {
				t.Errorf("initiation: %d %q, want an error saying the device sent an invalid answer", in.status, in.err.Detail)
			}
			t.Logf("initiation: %d %s", in.status, in.err.Detail)

			// Same session, next request: answered normally.
			go func() {
				in, err := postInitiate(w, auth, "garbler", "ssh", nil)
				if err != nil {
					t.Error(err)
				}
				answered <- in
			}()
			d.next(t).answer(t, false, "fine again")
			if in := <-answered; in.status != http.StatusOK || in.body.Reason != "fine again" {
				t.Errorf("next initiation: %d %+v %+v, want 200 rejected with our reason", in.status, in.body, in.err)
			}
		})
	}
	stillServes(t, w)
}

// rawUpgrade dials the hub over TLS and upgrades path to a WebSocket by
// hand, with hdr added to the request, so that the test can then write
// any bytes as frames. It fails the test unless the hub answers 101.
func rawUpgrade(t *testing.T, w *dsproxytest.Hub, path string, hdr http.Header) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: dsproxytest.WaitTimeout}, "tcp", w.Addr, w.ClientTLS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
	req, err := http.NewRequest(http.MethodGet, "https://"+w.Addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	key := make([]byte, 16)
	rand.Read(key)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", base64.StdEncoding.EncodeToString(key))
	if err := req.Write(c); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("upgrade %s: %d %s", path, resp.StatusCode, body)
	}
	return c, br
}

// clientFrame encodes one WebSocket frame as a client sends it: first is
// the FIN/RSV/opcode byte; masked says whether to mask the payload, as
// clients must.
func clientFrame(first byte, payload []byte, masked bool) []byte {
	b := []byte{first}
	maskBit := byte(0)
	if masked {
		maskBit = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		b = append(b, maskBit|byte(n))
	case n < 1<<16:
		b = append(b, maskBit|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, maskBit|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if !masked {
		return append(b, payload...)
	}
	mask := [4]byte{0x12, 0x34, 0x56, 0x78}
	b = append(b, mask[:]...)
	for i, c := range payload {
		b = append(b, c^mask[i%4])
	}
	return b
}

// readServerClose reads server frames from br until a close frame and
// returns its status code; -1 if the connection ended without one.
func readServerClose(br *bufio.Reader) int {
	for {
		var h [2]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return -1
		}
		n := uint64(h[1] & 0x7f)
		switch n {
		case 126:
			var l [2]byte
			if _, err := io.ReadFull(br, l[:]); err != nil {
				return -1
			}
			n = uint64(binary.BigEndian.Uint16(l[:]))
		case 127:
			var l [8]byte
			if _, err := io.ReadFull(br, l[:]); err != nil {
				return -1
			}
			n = binary.BigEndian.Uint64(l[:])
		}
		payload := make([]byte, min(n, 1<<20))
		if _, err := io.ReadFull(br, payload); err != nil {
			return -1
		}
		if h[0]&0x0f == 0x8 { // close
			if len(payload) < 2 {
				return int(websocket.StatusNoStatusRcvd)
			}
			return int(binary.BigEndian.Uint16(payload))
		}
	}
}

// TestStreamingEndpointGarbage: bytes that are not TLS, TLS that is not
// HTTP, and WebSocket frames that break RFC 6455 on a stream. The first
// two get the connection closed (with a 400 when the hub can still say
// it); a bad frame gets that side closed with 1002 and its peer closed at
// once, and a frame cut off by the connection's end never reaches the peer
// as a whole message.
func TestStreamingEndpointGarbage(t *testing.T) {
	w := dsproxytest.NewHub(t)

	t.Run("raw TCP garbage", func(t *testing.T) {
		for _, junk := range [][]byte{
			bytes.Repeat([]byte{0, 0xff, 0x13, 0x37}, 1024),
			[]byte("\x16\x03\x01\xff\xff" + strings.Repeat("\x00", 100)), // a TLS record header promising 64 KiB
		} {
			c, err := net.DialTimeout("tcp", w.Addr, dsproxytest.WaitTimeout)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
			c.Write(junk)
			// The TLS record header check or the handshake timeout ends it;
			// either way the hub closes, and a read deadline would be a hang.
			_, err = io.Copy(io.Discard, c)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Errorf("hub kept a connection that sent %q... open", junk[:8])
			}
			c.Close()
		}
		stillServes(t, w)
	})

	t.Run("plain HTTP to the TLS port", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", w.Addr, dsproxytest.WaitTimeout)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
		io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "HTTPS") {
			t.Errorf("plain HTTP: %d %q, want 400 saying to use HTTPS", resp.StatusCode, body)
		}
		stillServes(t, w)
	})

	t.Run("TLS then garbage", func(t *testing.T) {
		for _, tc := range []struct {
			junk string
			want int
		}{
			{"\x00\x01\x02garbage\r\n\r\n", http.StatusBadRequest},
			{"GET / HTTP/9.9\r\n\r\n", http.StatusHTTPVersionNotSupported},
			{"GET /healthz HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n", http.StatusBadRequest},
			{"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", http.StatusBadRequest},
			{"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", http.StatusBadRequest},
			{"GET /healthz HTTP/1.1\r\n\r\n", http.StatusBadRequest}, // no Host
		} {
			junk := tc.junk
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: dsproxytest.WaitTimeout}, "tcp", w.Addr, w.ClientTLS)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
			io.WriteString(c, junk)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("after %q: %v", junk, err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("after %q: %d, want %d", junk, resp.StatusCode, tc.want)
			}
			c.Close()
		}
		stillServes(t, w)
	})

	key := addDevice(t, w, "dev1")
	d := connectRawDevice(t, w, "dev1", deviceToken(t, w, "dev1", key))
	for _, tc := range []struct {
		name  string
		frame []byte
		code  websocket.StatusCode // the close code the bad side gets
	}{
		{"unknown opcode", clientFrame(0x83, []byte("x"), true), websocket.StatusProtocolError},
		{"reserved bits", clientFrame(0xa2, []byte("x"), true), websocket.StatusProtocolError},
		{"RSV1 without compression", clientFrame(0xc2, []byte("x"), true), websocket.StatusProtocolError},
		{"control frame over 125 bytes", clientFrame(0x89, make([]byte, 126), true), websocket.StatusProtocolError},
		{"fragmented control frame", clientFrame(0x09, []byte("x"), true), websocket.StatusProtocolError},
		{"continuation with no message", clientFrame(0x80, []byte("x"), true), websocket.StatusProtocolError},
		{"bad close code", clientFrame(0x88, []byte{0x03, 0xe7}, true), websocket.StatusProtocolError},
		// coder/websocket drops an unmasked client frame without a close
		// frame of its own; the relay then closes that side like a lost
		// one.
		{"unmasked frame", clientFrame(0x82, []byte("x"), false), hub.ClosePeerLost},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openRaw(t, w, d, "dev1", "ssh")
			dev := dialStream(t, w, s.deviceURL, s.deviceToken)
			c, br := rawUpgrade(t, w, "/streams/"+s.id, bearer(s.serviceToken))
			// One good message first: the pair is relaying.
			c.Write(clientFrame(0x82, []byte("ok"), true))
			if _, b := readMessage(t, dev); string(b) != "ok" {
				t.Fatalf("relayed %q, want ok", b)
			}
			c.Write(tc.frame)
			start := time.Now()
			if got := readServerClose(br); got != int(tc.code) {
				t.Errorf("bad side closed with %d, want %d", got, tc.code)
			}
			err := readClose(t, dev)
			if d := time.Since(start); d > time.Second {
				t.Errorf("peer closed %s after the bad frame, want within 1s", d)
			}
			t.Logf("peer: %v", err)
			if websocket.CloseStatus(err) == -1 {
				t.Errorf("peer ended without a close frame: %v", err)
			}
		})
	}

	t.Run("frame cut off by the connection's end", func(t *testing.T) {
		s := openRaw(t, w, d, "dev1", "ssh")
		dev := dialStream(t, w, s.deviceURL, s.deviceToken)
		c, _ := rawUpgrade(t, w, "/streams/"+s.id, bearer(s.serviceToken))
		c.Write(clientFrame(0x82, []byte("ok"), true))
		if _, b := readMessage(t, dev); string(b) != "ok" {
			t.Fatalf("relayed %q, want ok", b)
		}
		whole := clientFrame(0x82, bytes.Repeat([]byte("y"), 1000), true)
		c.Write(whole[:100])
		c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
		defer cancel()
		typ, b, err := dev.Read(ctx)
		if err == nil {
			t.Fatalf("peer read a %v message of %d bytes from a cut-off frame", typ, len(b))
		}
		if got := websocket.CloseStatus(err); got != hub.ClosePeerLost {
			t.Errorf("peer ended with %v, want close code %d", err, hub.ClosePeerLost)
		}
	})
	stillServes(t, w)
}

// upgradeStatus sends a WebSocket upgrade request for path with hdr and
// returns the status and, for a refusal, the hub's error message.
func upgradeStatus(t *testing.T, w *dsproxytest.Hub, path string, hdr http.Header) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+w.Addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	key := make([]byte, 16)
	rand.Read(key)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", base64.StdEncoding.EncodeToString(key))
	resp, err := httpClient(w.ClientTLS).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e wire.Error
	body, _ := io.ReadAll(resp.Body)
	json.Unmarshal(body, &e)
	return resp.StatusCode, e.Detail
}

// TestControlSubprotocol: a control session without the subprotocol
// dsproxy.control.v1 is refused with 400 and a message naming it; among
// other offers it is picked.
func TestControlSubprotocol(t *testing.T) {
	w := dsproxytest.NewHub(t)
	key := addDevice(t, w, "dev1")
	auth := deviceToken(t, w, "dev1", key)
	for _, offer := range []string{"", "dsproxy.control.v2", "DSPROXY.CONTROL.V1", "dsproxy.control.v1x", "chat, superchat"} {
		hdr := http.Header{"Authorization": {auth}}
		if offer != "" {
			hdr.Set("Sec-WebSocket-Protocol", offer)
		}
		status, msg := upgradeStatus(t, w, "/devices/dev1/control", hdr)
		if status != http.StatusBadRequest || !strings.Contains(msg, wire.ControlSubprotocol) {
			t.Errorf("subprotocol %q: %d %q, want 400 naming %s", offer, status, msg, wire.ControlSubprotocol)
		}
	}
	ws, status := dialWS(t, w, "/devices/dev1/control", http.Header{"Authorization": {auth}}, "chat", wire.ControlSubprotocol)
	if ws == nil || ws.Subprotocol() != wire.ControlSubprotocol {
		t.Fatalf("offering chat and %s: status %d, want the upgrade with %s", wire.ControlSubprotocol, status, wire.ControlSubprotocol)
	}
	ws.Close(websocket.StatusNormalClosure, "")
	stillServes(t, w)
}

// rawRequestStatus sends method rawPath (written as is, escapes and all)
// with auth and returns the status and the decoded JSON body.
func rawRequestStatus(t *testing.T, w *dsproxytest.Hub, method, rawPath, auth string) (int, []byte) {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: dsproxytest.WaitTimeout}, "tcp", w.Addr, w.ClientTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
	fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: %s\r\nAuthorization: %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", method, rawPath, w.Addr, auth)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%s %s: %v", method, rawPath, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

// TestPathTricks: device IDs with the characters Azure allows, stream
// names with slashes and dots, and paths with dot segments and encoded
// slashes reach exactly the device their one path segment names, once
// percent-decoded, or are refused with 400 or 404. Never another device,
// never a redirect.
func TestPathTricks(t *testing.T) {
	w := dsproxytest.NewHub(t)
	ids := []string{"dev1", "dev1#x", "dev1?x", "a$b=c@d", "a+b", "a%2Fb", "%2e%2e", "victim"}
	devs := map[string]*rawDevice{}
	for _, id := range ids {
		devs[id] = connectRawDevice(t, w, id, deviceToken(t, w, id, addDevice(t, w, id)))
	}
	owner := ownerToken(t, w)

	// whoGets POSTs a stream initiation to rawPath and reports which
	// device got the request ("" for none) and the status.
	whoGets := func(t *testing.T, rawPath string) (int, string, string) {
		t.Helper()
		type result struct {
			status int
			body   []byte
		}
		done := make(chan result, 1)
		go func() {
			st, b := rawRequestStatus(t, w, http.MethodPost, rawPath, owner)
			done <- result{st, b}
		}()
		cases := []reflect.SelectCase{{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(done)}}
		order := []string{""}
		for id, d := range devs {
			cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(d.reqs)})
			order = append(order, id)
		}
		i, v, _ := reflect.Select(cases)
		if i == 0 {
			r := v.Interface().(result)
			return r.status, "", string(r.body)
		}
		v.Interface().(*rawRequest).answer(t, false, "reached "+order[i])
		r := <-done
		return r.status, order[i], string(r.body)
	}

	for _, tc := range []struct {
		seg  string // the device ID segment, raw
		want string // the device it must reach; "" for a refusal
	}{
		{"dev1", "dev1"},
		{"%64ev1", "dev1"},
		{"dev1%23x", "dev1#x"},
		{"dev1%3Fx", "dev1?x"},
		{"a$b=c@d", "a$b=c@d"},
		{"a%24b%3Dc%40d", "a$b=c@d"},
		{"a+b", "a+b"},
		{"a%2Bb", "a+b"},
		{"a%252Fb", "a%2Fb"},
		{"%252e%252e", "%2e%2e"},
		{"a%2Fb", ""},
		{"a%2fb", ""},
		{"..", ""},
		{".", ""},
		{"%2e%2e", ""},
		{"%2E%2E", ""},
		{"%2e", ""},
		{"..%2Fvictim", ""},
		{"x%2F..%2Fvictim", ""},
		{"dev1/../victim", ""},
		{"dev1%2F%2E%2E%2Fvictim", ""},
		{"victim%00", ""},
		{"victim%20", ""},
		{"victim;x", ""},
		{"VICTIM", ""},
		{"", ""},
		{"%", ""},
		{"dev1%", ""},
		{strings.Repeat("v", 129), ""},
	} {
		t.Run("initiate "+tc.seg, func(t *testing.T) {
			status, got, body := whoGets(t, "/twins/"+tc.seg+"/streams/ssh?api-version=2020-09-30")
			switch {
			case tc.want != "" && got != tc.want:
				t.Errorf("reached %q (%d %s), want %q", got, status, body, tc.want)
			case tc.want == "" && got != "":
				t.Errorf("reached device %q, want a refusal", got)
			case tc.want == "" && status != http.StatusBadRequest && status != http.StatusNotFound:
				t.Errorf("status %d %s, want 400 or 404", status, body)
			}
			if got == "" {
				t.Logf("%d %s", status, body)
			}
		})
		t.Run("get "+tc.seg, func(t *testing.T) {
			status, body := rawRequestStatus(t, w, http.MethodGet, "/devices/"+tc.seg, owner)
			var d hub.DeviceJSON
			json.Unmarshal(body, &d)
			switch {
			case tc.want != "" && (status != http.StatusOK || d.DeviceID != tc.want):
				t.Errorf("%d device %q, want 200 device %q", status, d.DeviceID, tc.want)
			case tc.want == "" && status != http.StatusBadRequest && status != http.StatusNotFound:
				t.Errorf("%d %s, want 400 or 404", status, body)
			}
		})
	}

	// Paths that name no device at all.
	for _, tc := range []struct {
		path string
		want int
	}{
		{"/", http.StatusNotFound},
		{"/devices/", http.StatusNotFound},
		{"/devices/dev1/", http.StatusNotFound},
		{"//devices", http.StatusBadRequest},
		{"/devices//dev1", http.StatusBadRequest},
		{"/./devices", http.StatusBadRequest},
		{"/devices/./dev1", http.StatusBadRequest},
	} {
		if status, body := rawRequestStatus(t, w, http.MethodGet, tc.path, owner); status != tc.want {
			t.Errorf("GET %s: %d %s, want %d", tc.path, status, body, tc.want)
		}
	}

	// Deletes with tricks delete nothing.
	for _, seg := range []string{"dev1/../victim", "x%2F..%2Fvictim", "%2e%2e", "..", "victim%2F"} {
		if status, body := rawRequestStatus(t, w, http.MethodDelete, "/devices/"+seg, owner); status != http.StatusBadRequest && status != http.StatusNotFound {
			t.Errorf("DELETE /devices/%s: %d %s, want 400 or 404", seg, status, body)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	list, err := w.Service.ListDevices(ctx)
	if err != nil || len(list) != len(ids) {
		t.Errorf("after the tricks: %d devices, %v; want all %d", len(list), err, len(ids))
	}

	// Stream names: slashes, backslashes and dot segments are refused.
	for _, name := range []string{"a%2Fb", "a%2fb", "%2F", "a%5Cb", "..", "%2e%2e", ".", "a/b", "%00", strings.Repeat("n", wire.MaxStreamNameLen+1)} {
		status, got, body := whoGets(t, "/twins/dev1/streams/"+name)
		if got != "" || status != http.StatusBadRequest && status != http.StatusNotFound {
			t.Errorf("stream name %q: %d, reached %q, %s; want 400 or 404", name, status, got, body)
		}
		t.Logf("stream name %q: %d %s", name, status, body)
	}
	// A name with a slash gets a message that says so.
	if status, _, body := whoGets(t, "/twins/dev1/streams/a%2Fb"); status != http.StatusBadRequest || !strings.Contains(body, "slash") {
		t.Errorf("stream name a/b: %d %s, want 400 about slashes", status, body)
	}
	stillServes(t, w)
}

// TestHugeHeaders: a request with 1 MiB of headers is answered 431 and
// the hub keeps serving.
func TestHugeHeaders(t *testing.T) {
	w := dsproxytest.NewHub(t)
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: dsproxytest.WaitTimeout}, "tcp", w.Addr, w.ClientTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
	// Write while reading: the hub answers before the headers end, and
	// stops reading.
	go func() {
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: %s\r\nX-Big: %s\r\n\r\n", w.Addr, strings.Repeat("a", 1<<20))
	}()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("1 MiB of headers: %d, want 431", resp.StatusCode)
	}
	c.Close()
	stillServes(t, w)
}

// TestMalformedSASTokens: SAS tokens that are not well formed are refused
// with 401 and a message saying what is wrong, on every endpoint that
// takes one, and never crash the hub.
func TestMalformedSASTokens(t *testing.T) {
	w := dsproxytest.NewHub(t)
	key := addDevice(t, w, "dev1")
	connectRawDevice(t, w, "dev1", deviceToken(t, w, "dev1", key))
	good, err := sas.ParseToken(ownerToken(t, w))
	if err != nil {
		t.Fatal(err)
	}
	sr, sig, se := "sr="+good.RawResource, "sig="+strings.ReplaceAll(good.Signature, "=", "%3D"), "se="+fmt.Sprint(good.Expiry.Unix())
	sig = strings.ReplaceAll(strings.ReplaceAll(sig, "+", "%2B"), "/", "%2F")
	skn := "skn=iothubowner"
	tok := func(fields ...string) string { return "SharedAccessSignature " + strings.Join(fields, "&") }
	if st := getStatus(t, w, "/devices", tok(sr, sig, se, skn)); st != http.StatusOK {
		t.Fatalf("the well-formed token the cases start from: status %d", st)
	}
	for _, tc := range []struct {
		name, auth, says string
	}{
		{"no prefix", strings.Join([]string{sr, sig, se, skn}, "&"), "SharedAccessSignature"},
		{"lower-case prefix", "sharedaccesssignature " + strings.Join([]string{sr, sig, se, skn}, "&"), "SharedAccessSignature"},
		{"Bearer", "Bearer " + strings.Join([]string{sr, sig, se, skn}, "&"), "SharedAccessSignature"},
		{"no sr", tok(sig, se, skn), "no sr"},
		{"no sig", tok(sr, se, skn), "no sig"},
		{"no se", tok(sr, sig, skn), "no se"},
		{"only the prefix", "SharedAccessSignature ", "malformed"},
		{"duplicate sr", tok(sr, sr, sig, se, skn), "twice"},
		{"duplicate sig", tok(sr, sig, sig, se, skn), "twice"},
		{"duplicate se", tok(sr, sig, se, se, skn), "twice"},
		{"duplicate skn", tok(sr, sig, se, skn, skn), "twice"},
		{"unknown field", tok(sr, sig, se, skn, "foo=bar"), "unknown"},
		{"empty se", tok(sr, sig, "se=", skn), "empty"},
		{"field without =", tok(sr, sig, se, "skn"), "name=value"},
		{"trailing &", tok(sr, sig, se, skn) + "&", "name=value"},
		{"non-numeric se", tok(sr, sig, "se=soon", skn), "se"},
		{"negative se", tok(sr, sig, "se=-1", skn), "se"},
		{"hex se", tok(sr, sig, "se=0x7fffffff", skn), "se"},
		{"float se", tok(sr, sig, "se=1e12", skn), "se"},
		{"se past year 9999", tok(sr, sig, "se=99999999999999999999", skn), "se"},
		{"sig not base64", tok(sr, "sig=!!!!", se, skn), "sig"},
		{"sig too short", tok(sr, "sig=AAAA", se, skn), "sig"},
		{"sig base64url", tok(sr, "sig="+base64.URLEncoding.EncodeToString(make([]byte, 32)), se, skn), "sig"},
		{"sig bad escape", tok(sr, "sig=%zz", se, skn), "sig"},
		{"sr bad escape", tok("sr=%zz", sig, se, skn), "sr"},
		{"10 KB token", tok("sr="+strings.Repeat("h", 10<<10), sig, se, skn), "longer"},
		{"unknown policy", tok(sr, sig, se, "skn=nobody"), "nobody"},
		{"signature of another key", tok(sr, "sig="+strings.Repeat("A", 43)+"%3D", se, skn), "signature"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, call := range []struct {
				what string
				do   func() (int, string)
			}{
				{"list devices", func() (int, string) {
					st, b := rawRequestStatus(t, w, http.MethodGet, "/devices", tc.auth)
					var e wire.Error
					json.Unmarshal(b, &e)
					return st, e.Detail
				}},
				{"initiate", func() (int, string) {
					in := initiate(t, w, tc.auth, "dev1", "ssh", nil)
					return in.status, in.err.Detail
				}},
				{"control session", func() (int, string) {
					return upgradeStatus(t, w, "/devices/dev1/control", http.Header{
						"Authorization": {tc.auth}, "Sec-WebSocket-Protocol": {wire.ControlSubprotocol}})
				}},
			} {
				status, msg := call.do()
				if status != http.StatusUnauthorized || !strings.Contains(msg, tc.says) {
					t.Errorf("%s: %d %q, want 401 saying %q", call.what, status, msg, tc.says)
				}
			}
		})
	}
	stillServes(t, w)
}

// TestCapturedDeviceToken: a SAS token is a bearer credential until its
// expiry, as in Azure IoT Hub, so "replaying" one means using it where it
// was never meant to go. A token captured from device A's control session
// opens A's control session and nothing else: not another device's
// session, not a stream initiation, not the registry (even A's own
// entry), not the streaming endpoint. It may read GET /hub, which every
// valid credential may. A service policy's token likewise opens streams
// and nothing else.
func TestCapturedDeviceToken(t *testing.T) {
	w := dsproxytest.NewHub(t)
	keyA := addDevice(t, w, "devA")
	keyB := addDevice(t, w, "devB")
	connectRawDevice(t, w, "devB", deviceToken(t, w, "devB", keyB))
	a := deviceToken(t, w, "devA", keyA)

	// What the token is for: A's control session.
	dA := connectRawDevice(t, w, "devA", a)
	s := openRaw(t, w, dA, "devA", "ssh")
	refused := func(st int) bool { return st == http.StatusUnauthorized || st == http.StatusForbidden }
	for _, tc := range []struct {
		method, path string
	}{
		{http.MethodGet, "/devices"},
		{http.MethodGet, "/devices/devA"},
		{http.MethodGet, "/devices/devB"},
		{http.MethodPut, "/devices/devA"},
		{http.MethodPut, "/devices/devC"},
		{http.MethodDelete, "/devices/devA"},
		{http.MethodDelete, "/devices/devB"},
		{http.MethodPost, "/twins/devA/streams/ssh"},
		{http.MethodPost, "/twins/devB/streams/ssh"},
		{http.MethodGet, "/streams/" + s.id},
	} {
		if st, body := rawRequestStatus(t, w, tc.method, tc.path, a); !refused(st) {
			t.Errorf("%s %s with devA's token: %d %s, want 401 or 403", tc.method, tc.path, st, body)
		}
	}
	// Not another device's control session.
	if st, msg := upgradeStatus(t, w, "/devices/devB/control", http.Header{"Authorization": {a}, "Sec-WebSocket-Protocol": {wire.ControlSubprotocol}}); !refused(st) {
		t.Errorf("devB's control session with devA's token: %d %q", st, msg)
	}
	// Not a stream token, in either header form.
	if st := dialStreamStatus(t, w, s.url, a); st != http.StatusUnauthorized {
		t.Errorf("streaming endpoint with devA's SAS token as Bearer: %d, want 401", st)
	}
	if st, _ := upgradeStatus(t, w, "/streams/"+s.id, http.Header{"Authorization": {a}}); st != http.StatusUnauthorized {
		t.Errorf("streaming endpoint with devA's SAS token: %d, want 401", st)
	}
	// The stream those refusals tried to steal is intact: both sides join.
	dev := dialStream(t, w, s.deviceURL, s.deviceToken)
	svc := dialStream(t, w, s.url, s.serviceToken)
	writeMessage(t, svc, []byte("intact"))
	if _, b := readMessage(t, dev); string(b) != "intact" {
		t.Errorf("relayed %q, want intact", b)
	}
	// GET /hub is open to any valid credential.
	if st := getStatus(t, w, "/hub", a); st != http.StatusOK {
		t.Errorf("GET /hub with devA's token: %d, want 200", st)
	}

	// The service policy's token opens streams, and nothing else.
	svcTok := policyToken(t, w, "service", policyKey(t, w, "service"), time.Now().Add(time.Hour))
	for _, tc := range []struct{ method, path string }{
		{http.MethodGet, "/devices"},
		{http.MethodGet, "/devices/devA"},
		{http.MethodPut, "/devices/devC"},
		{http.MethodDelete, "/devices/devA"},
	} {
		if st, body := rawRequestStatus(t, w, tc.method, tc.path, svcTok); st != http.StatusForbidden {
			t.Errorf("%s %s with the service policy's token: %d %s, want 403", tc.method, tc.path, st, body)
		}
	}
	if st, msg := upgradeStatus(t, w, "/devices/devA/control", http.Header{"Authorization": {svcTok}, "Sec-WebSocket-Protocol": {wire.ControlSubprotocol}}); st != http.StatusForbidden {
		t.Errorf("devA's control session with the service policy's token: %d %q, want 403", st, msg)
	}
	stillServes(t, w)
}

// partialClientHello returns the first bytes of a real TLS ClientHello.
func partialClientHello(t *testing.T) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer b.Close()
	go func() {
		tls.Client(a, &tls.Config{ServerName: "x"}).Handshake()
		a.Close()
	}()
	buf := make([]byte, 4096)
	n, err := io.ReadAtLeast(b, buf, 40)
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	return buf[:n/2]
}

// TestStalledTLSHandshakes: 200 clients that connect and send nothing, or
// half a ClientHello, do not keep a normal client from being served, and
// each is cut off after the (shortened) ReadHeaderTimeout, which bounds
// the TLS handshake too.
func TestStalledTLSHandshakes(t *testing.T) {
	const timeout = 3 * time.Second
	w := dsproxytest.NewHub(t, func(c *hub.Config) { c.ReadHeaderTimeout = timeout })
	hello := partialClientHello(t)
	const n = 200
	conns := make([]net.Conn, 0, n)
	start := time.Now()
	for i := range n {
		c, err := net.DialTimeout("tcp", w.Addr, dsproxytest.WaitTimeout)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		t.Cleanup(func() { c.Close() })
		if i%2 == 1 {
			if _, err := c.Write(hello); err != nil {
				t.Fatal(err)
			}
		}
		conns = append(conns, c)
	}
	stillServes(t, w)
	if d := time.Since(start); d >= timeout {
		t.Logf("the normal client was served %s after the stalled ones connected, after their cut-off: the test proved less than it should", d)
	}

	var wg sync.WaitGroup
	var late atomic.Int64
	for _, c := range conns {
		wg.Go(func() {
			c.SetReadDeadline(start.Add(timeout + 5*time.Second))
			_, err := io.Copy(io.Discard, c)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				late.Add(1)
			}
		})
	}
	wg.Wait()
	if n := late.Load(); n > 0 {
		t.Errorf("%d of %d stalled connections still open %s after they connected (read header timeout %s)", n, len(conns), timeout+5*time.Second, timeout)
	}
	// The last one went at the timeout, not before: it is the timeout
	// that cuts them off.
	if d := time.Since(start); d < timeout-100*time.Millisecond {
		t.Errorf("all stalled connections cut off within %s, before the %s timeout", d, timeout)
	}
	stillServes(t, w)
}
