package hub_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/dsproxy/dsproxy/hub"
	"github.com/dsproxy/dsproxy/internal/dsproxytest"
)

// TestHandshakeDeadline: a side whose peer never reaches the streaming
// endpoint is closed with CloseHandshakeTimeout at the (shortened)
// handshake deadline, and the stream's tokens are dead afterwards.
func TestHandshakeDeadline(t *testing.T) {
	const deadline = time.Second
	w := dsproxytest.NewHub(t, func(c *hub.Config) { c.HandshakeTimeout = deadline })
	key := addDevice(t, w, "dev1")
	d := connectRawDevice(t, w, "dev1", deviceToken(t, w, "dev1", key))

	for _, tc := range []struct {
		name    string
		joiner  func(rawStream) string // the token of the side that joins
		unused  func(rawStream) string // the token of the side that never joins
		joinURL func(rawStream) string
	}{
		{"device never joins",
			func(s rawStream) string { return s.serviceToken },
			func(s rawStream) string { return s.deviceToken },
			func(s rawStream) string { return s.url }},
		{"service never joins",
			func(s rawStream) string { return s.deviceToken },
			func(s rawStream) string { return s.serviceToken },
			func(s rawStream) string { return s.deviceURL }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openRaw(t, w, d, "dev1", "ssh")
			c := dialStream(t, w, tc.joinURL(s), tc.joiner(s))
			err := readClose(t, c)
			elapsed := time.Since(s.initiatedFrom)
			if got := websocket.CloseStatus(err); got != hub.CloseHandshakeTimeout {
				t.Errorf("waiting side ended with %v, want close code %d", err, hub.CloseHandshakeTimeout)
			}
			// The deadline runs from the initiation, which started after
			// initiatedFrom; allow for timer and scheduling slack on a
			// loaded machine (the default deadline is a minute).
			if elapsed < deadline-50*time.Millisecond || elapsed > deadline+2*time.Second {
				t.Errorf("waiting side closed %s after initiation, want about %s", elapsed, deadline)
			}
			if st := dialStreamStatus(t, w, s.url, tc.unused(s)); !isRefused(st) {
				t.Errorf("unused token after the deadline: status %d, want 401 or 404", st)
			}
			if st := dialStreamStatus(t, w, s.url, tc.joiner(s)); !isRefused(st) {
				t.Errorf("used token after the deadline: status %d, want 401 or 404", st)
			}
		})
	}
}

// TestStreamTokens: each token joins its own side once; reuse, random
// tokens, no token and another stream's token are refused.
func TestStreamTokens(t *testing.T) {
	w := dsproxytest.NewHub(t)
	key := addDevice(t, w, "dev1")
	d := connectRawDevice(t, w, "dev1", deviceToken(t, w, "dev1", key))

	a := openRaw(t, w, d, "dev1", "ssh")
	b := openRaw(t, w, d, "dev1", "ssh")
	if a.id == b.id || a.serviceToken == b.serviceToken || a.deviceToken == b.deviceToken {
		t.Fatalf("two streams share an ID or a token: %+v %+v", a, b)
	}
	if !strings.HasSuffix(a.url, "/streams/"+a.id) || strings.Contains(a.url, "?") {
		t.Errorf("stream URL %q: want wss://host:port/streams/{id} without a query", a.url)
	}

	svc := dialStream(t, w, a.url, a.serviceToken)

	for _, tc := range []struct {
		name  string
		token string
	}{
		{"service token again", a.serviceToken},
		{"no token", ""},
		{"random token", "Zm9vYmFyYmF6cXV4cXV1eGZvb2Jhcg"},
		{"stream B's service token", b.serviceToken},
		{"stream B's device token", b.deviceToken},
	} {
		if st := dialStreamStatus(t, w, a.url, tc.token); st != http.StatusUnauthorized {
			t.Errorf("%s on stream A: status %d, want 401", tc.name, st)
		}
	}
	// The refusals did not spoil stream A: its device side still joins and
	// the two sides are paired.
	dev := dialStream(t, w, a.url, a.deviceToken)
	writeMessage(t, svc, []byte("ping"))
	if _, got := readMessage(t, dev); string(got) != "ping" {
		t.Fatalf("device read %q, want ping", got)
	}
	writeMessage(t, dev, []byte("pong"))
	if _, got := readMessage(t, svc); string(got) != "pong" {
		t.Fatalf("service read %q, want pong", got)
	}
	for _, tok := range []string{a.serviceToken, a.deviceToken} {
		if st := dialStreamStatus(t, w, a.url, tok); !isRefused(st) {
			t.Errorf("token of a paired stream reused: status %d, want 401 or 404", st)
		}
	}

	// Stream B: the device joins first, so its token is the used one.
	bdev := dialStream(t, w, b.url, b.deviceToken)
	if st := dialStreamStatus(t, w, b.url, b.deviceToken); st != http.StatusUnauthorized {
		t.Errorf("device token reused: status %d, want 401", st)
	}
	if st := dialStreamStatus(t, w, b.url, a.deviceToken); st != http.StatusUnauthorized {
		t.Errorf("stream A's device token on stream B: status %d, want 401", st)
	}
	bsvc := dialStream(t, w, b.url, b.serviceToken)
	writeMessage(t, bsvc, []byte("b"))
	if _, got := readMessage(t, bdev); string(got) != "b" {
		t.Fatalf("stream B: device read %q, want b", got)
	}
}

// TestStreamEnds: when either side ends, the hub ends the other at once,
// with the same close code, or ClosePeerLost when the side vanished
// without a close frame.
func TestStreamEnds(t *testing.T) {
	w := dsproxytest.NewHub(t)
	key := addDevice(t, w, "dev1")
	d := connectRawDevice(t, w, "dev1", deviceToken(t, w, "dev1", key))

	pair := func(t *testing.T) (svc, dev *wsConn) {
		s := openRaw(t, w, d, "dev1", "ssh")
		svc = dialStream(t, w, s.url, s.serviceToken)
		dev = dialStream(t, w, s.deviceURL, s.deviceToken)
		writeMessage(t, svc, []byte("x")) // proves the pair is relaying
		readMessage(t, dev)
		return svc, dev
	}

	t.Run("service closes", func(t *testing.T) {
		svc, dev := pair(t)
		if err := svc.Close(websocket.StatusNormalClosure, ""); err != nil {
			t.Fatal(err)
		}
		expectClose(t, dev, websocket.StatusNormalClosure, time.Second)
	})
	t.Run("device closes with a code", func(t *testing.T) {
		svc, dev := pair(t)
		start := time.Now()
		if err := dev.Close(4321, "device says bye"); err != nil {
			t.Fatal(err)
		}
		err := readClose(t, svc)
		var ce websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != 4321 || ce.Reason != "device says bye" {
			t.Errorf("service side ended with %v, want close 4321 \"device says bye\"", err)
		}
		if time.Since(start) > time.Second {
			t.Errorf("service side ended after %s", time.Since(start))
		}
	})
	t.Run("device vanishes", func(t *testing.T) {
		svc, dev := pair(t)
		dev.tcp.Close() // no close frame: a crash or network loss
		expectClose(t, svc, hub.ClosePeerLost, time.Second)
	})
	t.Run("service vanishes", func(t *testing.T) {
		svc, dev := pair(t)
		svc.tcp.Close()
		expectClose(t, dev, hub.ClosePeerLost, time.Second)
	})
	t.Run("half-close is relayed", func(t *testing.T) {
		svc, dev := pair(t)
		writeMessage(t, dev, nil)
		typ, b := readMessage(t, svc)
		if typ != websocket.MessageBinary || len(b) != 0 {
			t.Fatalf("service read a %v message of %d bytes, want an empty binary one", typ, len(b))
		}
		// After its half-close the device still reads.
		writeMessage(t, svc, []byte("after"))
		if _, b := readMessage(t, dev); string(b) != "after" {
			t.Fatalf("device read %q after half-close, want after", b)
		}
	})
}

// TestMessageSize: with MaxMessageSize at 64 KiB, messages of exactly 64 KiB
// are relayed whole both ways, and a larger one ends the stream with 1009
// on both sides, whichever side sent it.
func TestMessageSize(t *testing.T) {
	const max = 64 << 10
	w := dsproxytest.NewHub(t, func(c *hub.Config) { c.MaxMessageSize = max })
	key := addDevice(t, w, "dev1")
	d := connectRawDevice(t, w, "dev1", deviceToken(t, w, "dev1", key))

	for _, sender := range []string{"service", "device"} {
		t.Run(sender+" sends too much", func(t *testing.T) {
			s := openRaw(t, w, d, "dev1", "ssh")
			svc := dialStream(t, w, s.url, s.serviceToken)
			dev := dialStream(t, w, s.deviceURL, s.deviceToken)

			full := make([]byte, max)
			rand.Read(full)
			writeMessage(t, svc, full)
			if _, got := readMessage(t, dev); !bytes.Equal(got, full) {
				t.Fatalf("device read %d bytes, want the %d sent", len(got), len(full))
			}
			writeMessage(t, dev, full)
			if _, got := readMessage(t, svc); !bytes.Equal(got, full) {
				t.Fatalf("service read %d bytes, want the %d sent", len(got), len(full))
			}

			from, to := svc, dev
			if sender == "device" {
				from, to = dev, svc
			}
			writeMessage(t, from, make([]byte, max+1))
			expectClose(t, to, websocket.StatusMessageTooBig, time.Second)
			expectClose(t, from, websocket.StatusMessageTooBig, time.Second)
		})
	}
}

// TestProxiedStreamEnds: through the real service proxy, hub, device agent
// and a TCP target, closing either end closes the other within a second,
// and so does stopping the device agent mid-stream.
func TestProxiedStreamEnds(t *testing.T) {
	w := dsproxytest.NewHub(t)
	type end struct {
		err error
		at  time.Time
	}
	var (
		reading  = make(chan struct{}, 1) // the target got "read"
		ends     = make(chan end, 1)      // how its reading ended
		closedAt = make(chan time.Time, 1)
	)
	// The target obeys the first four bytes: "read" reads to the end and
	// reports; "quit" says bye and closes.
	target := dsproxytest.Serve(t, func(c *net.TCPConn) {
		cmd := make([]byte, 4)
		if _, err := io.ReadFull(c, cmd); err != nil {
			return
		}
		switch string(cmd) {
		case "read":
			reading <- struct{}{}
			_, err := io.Copy(io.Discard, c)
			ends <- end{err, time.Now()}
		case "quit":
			c.Write([]byte("bye"))
			closedAt <- time.Now()
		}
	})
	waitFor := func(t *testing.T, what string, ch <-chan struct{}) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(dsproxytest.WaitTimeout):
			t.Fatalf("timed out waiting for %s", what)
		}
	}
	client := func(t *testing.T, addr, cmd string) net.Conn {
		t.Helper()
		c, err := net.DialTimeout("tcp", addr, dsproxytest.WaitTimeout)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
		if _, err := c.Write([]byte(cmd)); err != nil {
			t.Fatal(err)
		}
		return c
	}

	w.StartDevice(t, "dev1", target)
	addr := w.StartService(t, "dev1", "any")

	t.Run("client closes", func(t *testing.T) {
		c := client(t, addr, "read")
		waitFor(t, "the target", reading)
		closed := time.Now()
		c.Close()
		select {
		case e := <-ends:
			if d := e.at.Sub(closed); d > time.Second {
				t.Errorf("target saw the end %s after the client closed, want within 1s", d)
			}
		case <-time.After(dsproxytest.WaitTimeout):
			t.Fatal("the target never saw the client close")
		}
	})
	t.Run("target closes", func(t *testing.T) {
		c := client(t, addr, "quit")
		got, err := io.ReadAll(c)
		at := time.Now()
		if err != nil || string(got) != "bye" {
			t.Fatalf("client read %q, %v; want bye then EOF", got, err)
		}
		if d := at.Sub(<-closedAt); d > time.Second {
			t.Errorf("client saw EOF %s after the target closed, want within 1s", d)
		}
	})
	t.Run("device agent stops", func(t *testing.T) {
		dev := w.StartDevice(t, "dev2", target)
		c := client(t, w.StartService(t, "dev2", "any"), "read")
		waitFor(t, "the target", reading)
		stopped := time.Now()
		dev.Stop(t)
		_, err := io.ReadAll(c)
		if d := time.Since(stopped); d > time.Second {
			t.Errorf("client connection ended %s after the device stopped, want within 1s", d)
		}
		t.Logf("client read ended with %v", err)
		select {
		case e := <-ends:
			if d := e.at.Sub(stopped); d > time.Second {
				t.Errorf("target connection ended %s after the device stopped, want within 1s", d)
			}
		case <-time.After(dsproxytest.WaitTimeout):
			t.Fatal("the target connection outlived the device agent")
		}
	})
}
