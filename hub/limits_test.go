package hub_test

// Tests of the hub's limits (issue #4, "Limits"): concurrent streams per
// device and per hub, pending handshakes, the initiation rate per policy,
// the idle stream timeout and the HTTP header limits. The message size
// limit is TestMessageSize in streams_test.go; memory under a stalled
// reader is TestBackpressure in backpressure_test.go.

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/dsproxy/dsproxy/hub"
	"github.com/dsproxy/dsproxy/hub/registry"
	"github.com/dsproxy/dsproxy/hubclient"
	"github.com/dsproxy/dsproxy/internal/dsproxytest"
	"github.com/dsproxy/dsproxy/internal/wire"
)

// TestTokenBucket: a full bucket gives its burst at once, then one token
// per 1/rate; a long pause refills it to the burst and no further; an
// empty bucket says how long until the next token.
func TestTokenBucket(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	b := hub.NewTokenBucket(2, 3, t0) // 2 per second, bursts of 3
	take := func(at time.Duration, wantOK bool, wantWait time.Duration) {
		t.Helper()
		wait, ok := b.Take(t0.Add(at))
		if ok != wantOK || wait != wantWait {
			t.Fatalf("take at +%s = %s, %v; want %s, %v", at, wait, ok, wantWait, wantOK)
		}
	}
	for range 3 {
		take(0, true, 0)
	}
	take(0, false, 500*time.Millisecond)
	take(250*time.Millisecond, false, 250*time.Millisecond) // half a token back
	take(500*time.Millisecond, true, 0)
	take(500*time.Millisecond, false, 500*time.Millisecond)
	take(-time.Minute, false, 500*time.Millisecond) // a clock stepping back adds nothing

	for range 3 {
		take(time.Hour, true, 0)
	}
	take(time.Hour, false, 500*time.Millisecond) // an hour's pause refilled 3, not 7200
}

// TestLimitsConfig: the defaults are valid and Validate refuses limits
// that would refuse everything or never refill.
func TestLimitsConfig(t *testing.T) {
	def := hub.DefaultConfig()
	def.DataDir = t.TempDir()
	if err := def.Validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
	if def.MaxStreams != 10000 || def.MaxStreamsPerDevice != 256 || def.MaxPendingHandshakes != 1024 ||
		def.StreamRate != 1000 || def.StreamBurst != 2000 || def.IdleStreamTimeout != 0 {
		t.Errorf("defaults changed: %+v; update the Config docs and this test together", def)
	}
	for _, tc := range []struct {
		name string
		set  func(*hub.Config)
	}{
		{"MaxStreams 0", func(c *hub.Config) { c.MaxStreams = 0 }},
		{"MaxStreamsPerDevice -1", func(c *hub.Config) { c.MaxStreamsPerDevice = -1 }},
		{"MaxPendingHandshakes 0", func(c *hub.Config) { c.MaxPendingHandshakes = 0 }},
		{"StreamRate 0", func(c *hub.Config) { c.StreamRate = 0 }},
		{"StreamBurst 0", func(c *hub.Config) { c.StreamBurst = 0 }},
		{"IdleStreamTimeout negative", func(c *hub.Config) { c.IdleStreamTimeout = -time.Second }},
	} {
		c := def
		tc.set(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate accepted it", tc.name)
		}
	}
}

// tryOpen initiates a stream named "ssh" to id, served by d, with the
// Authorization value auth. When the hub asks d, d accepts and tryOpen
// returns the stream. When the hub answers without asking d, tryOpen
// returns that answer.
func tryOpen(t *testing.T, w *dsproxytest.Hub, d *rawDevice, id, auth string) (rawStream, *initiation) {
	t.Helper()
	type result struct {
		in  initiation
		err error
	}
	answered := make(chan result, 1)
	go func() {
		in, err := postInitiate(w, auth, id, "ssh", nil)
		answered <- result{in, err}
	}()
	select {
	case res := <-answered:
		if res.err != nil {
			t.Fatal(res.err)
		}
		if res.in.status == http.StatusOK {
			t.Fatalf("hub answered 200 without asking device %q", id)
		}
		return rawStream{}, &res.in
	case req := <-d.reqs:
		req.answer(t, true, "")
		res := <-answered
		if res.err != nil {
			t.Fatal(res.err)
		}
		in := res.in
		if in.status != http.StatusOK || in.header.Get(wire.HeaderIsAccepted) != wire.Accepted {
			t.Fatalf("initiation the device accepted: %d %+v", in.status, in.err)
		}
		return rawStream{
			id:           in.body.StreamID,
			url:          in.header.Get(wire.HeaderURL),
			serviceToken: in.header.Get(wire.HeaderAuthToken),
			deviceToken:  req.AuthToken,
			deviceURL:    req.URL,
		}, nil
	case <-time.After(dsproxytest.WaitTimeout):
		t.Fatal("the initiation was neither answered nor delivered")
		return rawStream{}, nil
	}
}

// mustOpen is tryOpen for a stream the hub must admit.
func mustOpen(t *testing.T, w *dsproxytest.Hub, d *rawDevice, id string) rawStream {
	t.Helper()
	s, refused := tryOpen(t, w, d, id, ownerToken(t, w))
	if refused != nil {
		t.Fatalf("stream to %q refused: %d %s", id, refused.status, refused.err.Detail)
	}
	return s
}

// wantThrottled checks that the hub refused an initiation with 429, the
// Azure error code, a Retry-After of whole seconds between lo and hi, and a
// message that contains each of words.
func wantThrottled(t *testing.T, in *initiation, lo, hi int, words ...string) {
	t.Helper()
	if in == nil {
		t.Fatal("the hub admitted the stream; want 429")
	}
	if in.status != http.StatusTooManyRequests || in.err.ErrorCode != wire.CodeTooManyRequests {
		t.Fatalf("refusal %d with error code %d (%s); want 429 with %d", in.status, in.err.ErrorCode, in.err.Detail, wire.CodeTooManyRequests)
	}
	ra := in.header.Get("Retry-After")
	if n, err := strconv.Atoi(ra); err != nil || n < lo || n > hi {
		t.Errorf("Retry-After %q; want whole seconds in [%d, %d]", ra, lo, hi)
	}
	for _, word := range words {
		if !strings.Contains(in.err.Detail, word) {
			t.Errorf("message %q does not mention %q", in.err.Detail, word)
		}
	}
}

// noRequest checks that no stream request reached d.
func noRequest(t *testing.T, d *rawDevice) {
	t.Helper()
	select {
	case r := <-d.reqs:
		t.Errorf("device was asked for stream %s although the hub refused it", r.StreamID)
		r.answer(t, false, "unexpected")
	default:
	}
}

// pairAndClose joins both sides of s, shows they relay, and closes the
// service side; it returns when the device side has seen the end.
func pairAndClose(t *testing.T, w *dsproxytest.Hub, s rawStream) {
	t.Helper()
	svc := dialStream(t, w, s.url, s.serviceToken)
	dev := dialStream(t, w, s.deviceURL, s.deviceToken)
	writeMessage(t, svc, []byte("x"))
	readMessage(t, dev)
	svc.Close(websocket.StatusNormalClosure, "")
	readClose(t, dev)
}

// admittedEventually retries an initiation to id until the hub admits it
// (the slot that frees up is released when the stream's end is handled,
// which may trail what the test saw by a moment).
func admittedEventually(t *testing.T, w *dsproxytest.Hub, d *rawDevice, id string) rawStream {
	t.Helper()
	deadline := time.Now().Add(dsproxytest.WaitTimeout)
	for {
		s, refused := tryOpen(t, w, d, id, ownerToken(t, w))
		if refused == nil {
			return s
		}
		if refused.status != http.StatusTooManyRequests || time.Now().After(deadline) {
			t.Fatalf("stream to %q still refused: %d %s", id, refused.status, refused.err.Detail)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestStreamsPerDevice: with MaxStreamsPerDevice 2, a device's third
// active stream, pending or relaying, is refused with 429 before the device
// is asked, while another device is served; closing a stream frees its
// slot.
func TestStreamsPerDevice(t *testing.T) {
	w := dsproxytest.NewHub(t, func(c *hub.Config) { c.MaxStreamsPerDevice = 2 })
	d1 := connectRawDevice(t, w, "dev1", deviceToken(t, w, "dev1", addDevice(t, w, "dev1")))
	d2 := connectRawDevice(t, w, "dev2", deviceToken(t, w, "dev2", addDevice(t, w, "dev2")))

	a := mustOpen(t, w, d1, "dev1")
	mustOpen(t, w, d1, "dev1") // stays pending: its sides never join
	_, refused := tryOpen(t, w, d1, "dev1", ownerToken(t, w))
	wantThrottled(t, refused, 1, 1, "dev1", "MaxStreamsPerDevice")
	noRequest(t, d1)
	mustOpen(t, w, d2, "dev2")

	// A relaying stream counts as much as a pending one.
	svc := dialStream(t, w, a.url, a.serviceToken)
	dev := dialStream(t, w, a.deviceURL, a.deviceToken)
	writeMessage(t, svc, []byte("x"))
	readMessage(t, dev)
	_, refused = tryOpen(t, w, d1, "dev1", ownerToken(t, w))
	wantThrottled(t, refused, 1, 1, "MaxStreamsPerDevice")

	svc.Close(websocket.StatusNormalClosure, "")
	readClose(t, dev)
	admittedEventually(t, w, d1, "dev1")
}

// TestMaxStreams: with MaxStreams 3, the hub's fourth active stream is
// refused whichever device it is for, and a slot freed on one device
// serves another.
func TestMaxStreams(t *testing.T) {
	w := dsproxytest.NewHub(t, func(c *hub.Config) { c.MaxStreams = 3 })
	d1 := connectRawDevice(t, w, "dev1", deviceToken(t, w, "dev1", addDevice(t, w, "dev1")))
	d2 := connectRawDevice(t, w, "dev2", deviceToken(t, w, "dev2", addDevice(t, w, "dev2")))

	a := mustOpen(t, w, d1, "dev1")
	mustOpen(t, w, d1, "dev1")
	mustOpen(t, w, d2, "dev2")
	for _, tc := range []struct {
		id string
		d  *rawDevice
	}{{"dev1", d1}, {"dev2", d2}} {
		_, refused := tryOpen(t, w, tc.d, tc.id, ownerToken(t, w))
		wantThrottled(t, refused, 1, 1, "MaxStreams")
		noRequest(t, tc.d)
	}
	pairAndClose(t, w, a)
	admittedEventually(t, w, d2, "dev2")
}

// TestPendingHandshakes: with MaxPendingHandshakes 2, a third stream whose
// sides have not both joined is refused; a stream counts as pending while
// only one side has joined, and stops counting once both have, although
// it stays active.
func TestPendingHandshakes(t *testing.T) {
	w := dsproxytest.NewHub(t, func(c *hub.Config) { c.MaxPendingHandshakes = 2 })
	d := connectRawDevice(t, w, "dev1", deviceToken(t, w, "dev1", addDevice(t, w, "dev1")))

	a := mustOpen(t, w, d, "dev1")
	b := mustOpen(t, w, d, "dev1")
	_, refused := tryOpen(t, w, d, "dev1", ownerToken(t, w))
	wantThrottled(t, refused, 1, 1, "handshakes", "MaxPendingHandshakes")
	noRequest(t, d)

	dialStream(t, w, b.url, b.serviceToken) // one side: still pending
	_, refused = tryOpen(t, w, d, "dev1", ownerToken(t, w))
	wantThrottled(t, refused, 1, 1, "MaxPendingHandshakes")

	svc := dialStream(t, w, a.url, a.serviceToken)
	dev := dialStream(t, w, a.deviceURL, a.deviceToken)
	writeMessage(t, svc, []byte("x"))
	readMessage(t, dev)
	// a relays, b is half-joined: three active streams with two pending
	// after this one.
	mustOpen(t, w, d, "dev1")
	_, refused = tryOpen(t, w, d, "dev1", ownerToken(t, w))
	wantThrottled(t, refused, 1, 1, "MaxPendingHandshakes")
}

// TestLimitSlotsFreed: with one stream allowed per device, or one pending
// handshake per hub, every way a stream ends gives its slot back:
// rejection by the device, expiry with no side joined, expiry with one side
// joined. A relayed stream holds its per-device slot, even past the
// handshake deadline, until it ends; it gives its handshake slot back as
// soon as both sides have joined.
func TestLimitSlotsFreed(t *testing.T) {
	const handshake = time.Second
	for _, tc := range []struct {
		limit     string
		configure func(*hub.Config)
		relayed   bool // whether a relayed stream holds the slot
	}{
		{"MaxStreamsPerDevice", func(c *hub.Config) { c.MaxStreamsPerDevice = 1 }, true},
		{"MaxPendingHandshakes", func(c *hub.Config) { c.MaxPendingHandshakes = 1 }, false},
	} {
		t.Run(tc.limit, func(t *testing.T) {
			w := dsproxytest.NewHub(t, tc.configure, func(c *hub.Config) { c.HandshakeTimeout = handshake })
			d := connectRawDevice(t, w, "dev1", deviceToken(t, w, "dev1", addDevice(t, w, "dev1")))
			full := func(why string) {
				t.Helper()
				_, refused := tryOpen(t, w, d, "dev1", ownerToken(t, w))
				if refused == nil {
					t.Fatalf("%s: a second stream was admitted", why)
				}
				wantThrottled(t, refused, 1, 1, tc.limit)
			}

			// Rejections: each initiation reaches the device.
			for i := range 3 {
				answered := make(chan error, 1)
				go func() {
					in, err := postInitiate(w, ownerToken(t, w), "dev1", "ssh", nil)
					if err == nil && (in.status != http.StatusOK || in.header.Get(wire.HeaderIsAccepted) != wire.NotAccepted) {
						err = fmt.Errorf("initiation %d answered %d (%s), want a rejection", i+1, in.status, in.err.Detail)
					}
					answered <- err
				}()
				select {
				case r := <-d.reqs:
					r.answer(t, false, "no such target")
					if err := <-answered; err != nil {
						t.Fatal(err)
					}
				case err := <-answered:
					t.Fatalf("the device was not asked: %v", err)
				case <-time.After(dsproxytest.WaitTimeout):
					t.Fatal("initiation neither answered nor delivered")
				}
			}

			mustOpen(t, w, d, "dev1") // no side ever joins
			full("unjoined stream")
			s := admittedEventually(t, w, d, "dev1") // once the first expired

			c := dialStream(t, w, s.url, s.serviceToken) // one side joins
			full("half-joined stream")
			expectClose(t, c, hub.CloseHandshakeTimeout, handshake+2*time.Second)
			s = admittedEventually(t, w, d, "dev1")

			svc := dialStream(t, w, s.url, s.serviceToken)
			dev := dialStream(t, w, s.deviceURL, s.deviceToken)
			writeMessage(t, svc, []byte("x"))
			readMessage(t, dev)
			if !tc.relayed {
				pairAndClose(t, w, mustOpen(t, w, d, "dev1"))
				return
			}
			time.Sleep(handshake + 200*time.Millisecond)
			full("relayed stream past its handshake deadline")
			svc.Close(websocket.StatusNormalClosure, "")
			readClose(t, dev)
			pairAndClose(t, w, admittedEventually(t, w, d, "dev1"))
		})
	}
}

// TestStreamRate: with a rate of one initiation per 5 s and bursts of 3, a
// policy's fourth initiation in a row is refused with 429 and a
// Retry-After of about 5 s before the device is asked; hubclient reports it
// as ErrRateLimited with RetryAfter; another policy has its own budget;
// the refusal is recorded as a stream event.
func TestStreamRate(t *testing.T) {
	w := dsproxytest.NewHub(t, func(c *hub.Config) {
		c.StreamRate = 0.2
		c.StreamBurst = 3
	})
	d := connectRawDevice(t, w, "dev1", deviceToken(t, w, "dev1", addDevice(t, w, "dev1")))

	// The owner's client registered dev1: registry calls are not metered.
	for range 3 {
		mustOpen(t, w, d, "dev1")
	}
	_, refused := tryOpen(t, w, d, "dev1", ownerToken(t, w))
	wantThrottled(t, refused, 4, 5, `"iothubowner"`, "per second")
	noRequest(t, d)

	// hubclient surfaces the same refusal.
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	_, err := w.Service.OpenStream(ctx, "dev1", "ssh")
	var he *hubclient.HubError
	if !errors.Is(err, hubclient.ErrRateLimited) || !errors.As(err, &he) {
		t.Fatalf("OpenStream over the rate: %v; want a *HubError matching ErrRateLimited", err)
	}
	if he.StatusCode != http.StatusTooManyRequests || he.Code != wire.CodeTooManyRequests ||
		he.RetryAfter < 4*time.Second || he.RetryAfter > 5*time.Second {
		t.Errorf("HubError status %d, code %d, RetryAfter %s; want 429, %d, 4-5s", he.StatusCode, he.Code, he.RetryAfter, wire.CodeTooManyRequests)
	}
	noRequest(t, d)

	// The service policy has a budget of its own.
	svcAuth := policyToken(t, w, "service", policyKey(t, w, "service"), time.Now().Add(time.Hour))
	if _, refused := tryOpen(t, w, d, "dev1", svcAuth); refused != nil {
		t.Fatalf("service policy refused: %d %s", refused.status, refused.err.Detail)
	}

	// Events are written in the background: poll until they are in.
	ectx, ecancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer ecancel()
	var (
		es        []registry.StreamEvent
		throttled int
	)
	for {
		var err error
		es, err = w.Server.Registry().StreamEvents(ectx, registry.EventFilter{DeviceID: "dev1"})
		if err != nil {
			t.Fatal(err)
		}
		throttled = 0
		for _, e := range es {
			if e.Result == "throttled" && e.Policy == "iothubowner" {
				throttled++
			}
		}
		if throttled >= 2 || ectx.Err() != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if throttled != 2 {
		t.Errorf("%d throttled events recorded for iothubowner, want 2: %+v", throttled, es)
	}
}

// TestIdleStreamTimeout: with IdleStreamTimeout 1 s, a stream that carries
// messages in one direction only, or one message trickling in, stays up;
// once both directions are quiet, the hub closes both sides with
// CloseIdleTimeout a second after the last message and records why.
// Without the setting, a quiet stream stays up. (Activity every 100 ms
// leaves a wide margin for a loaded machine running -race.)
func TestIdleStreamTimeout(t *testing.T) {
	const idle = time.Second
	w := dsproxytest.NewHub(t, func(c *hub.Config) { c.IdleStreamTimeout = idle })
	d := connectRawDevice(t, w, "dev1", deviceToken(t, w, "dev1", addDevice(t, w, "dev1")))

	t.Run("quiet from the start", func(t *testing.T) {
		s := mustOpen(t, w, d, "dev1")
		svc := dialStream(t, w, s.url, s.serviceToken)
		start := time.Now()
		dev := dialStream(t, w, s.deviceURL, s.deviceToken)
		expectClose(t, svc, hub.CloseIdleTimeout, idle+2*time.Second)
		expectClose(t, dev, hub.CloseIdleTimeout, time.Second)
		if d := time.Since(start); d < idle-50*time.Millisecond {
			t.Errorf("closed %s after pairing, before the idle timeout of %s", d, idle)
		}
	})
	t.Run("one direction keeps it up", func(t *testing.T) {
		s := mustOpen(t, w, d, "dev1")
		svc := dialStream(t, w, s.url, s.serviceToken)
		dev := dialStream(t, w, s.deviceURL, s.deviceToken)
		// Two idle periods of device → service messages every 100 ms.
		var last time.Time
		for i := range 20 {
			if i > 0 {
				time.Sleep(100 * time.Millisecond)
			}
			writeMessage(t, dev, []byte{byte(i)})
			if _, b := readMessage(t, svc); len(b) != 1 || b[0] != byte(i) {
				t.Fatalf("message %d: read %v", i, b)
			}
			last = time.Now()
		}
		expectClose(t, svc, hub.CloseIdleTimeout, idle+2*time.Second)
		expectClose(t, dev, hub.CloseIdleTimeout, time.Second)
		if d := time.Since(last); d < idle-50*time.Millisecond {
			t.Errorf("closed %s after the last message, before the idle timeout of %s", d, idle)
		}
		e := streamEvent(t, w.Server.Registry(), s.id)
		if e.Result != "idle" || !strings.Contains(e.Reason, "idle timeout") || e.BytesDown != 20 {
			t.Errorf("stream event %+v; want result idle, an idle timeout reason and 20 bytes down", e)
		}
	})
	t.Run("a slow message keeps it up", func(t *testing.T) {
		s := mustOpen(t, w, d, "dev1")
		svc := dialStream(t, w, s.url, s.serviceToken)
		dev := dialStream(t, w, s.deviceURL, s.deviceToken)
		// One message, written 8 KiB every 100 ms for two idle periods:
		// the hub relays it chunk by chunk and counts each as activity.
		ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
		defer cancel()
		mw, err := svc.Writer(ctx, websocket.MessageBinary)
		if err != nil {
			t.Fatal(err)
		}
		const chunk, chunks = 8 << 10, 20
		for i := range chunks {
			if i > 0 {
				time.Sleep(100 * time.Millisecond)
			}
			if _, err := mw.Write(make([]byte, chunk)); err != nil {
				t.Fatalf("chunk %d: %v", i, err)
			}
		}
		if err := mw.Close(); err != nil {
			t.Fatal(err)
		}
		if _, b := readMessage(t, dev); len(b) != chunk*chunks {
			t.Fatalf("device read %d bytes, want %d", len(b), chunk*chunks)
		}
		expectClose(t, svc, hub.CloseIdleTimeout, idle+2*time.Second)
	})
	t.Run("off by default", func(t *testing.T) {
		w := dsproxytest.NewHub(t)
		d := connectRawDevice(t, w, "dev1", deviceToken(t, w, "dev1", addDevice(t, w, "dev1")))
		s := mustOpen(t, w, d, "dev1")
		svc := dialStream(t, w, s.url, s.serviceToken)
		dev := dialStream(t, w, s.deviceURL, s.deviceToken)
		time.Sleep(1500 * time.Millisecond)
		writeMessage(t, svc, []byte("still there"))
		if _, b := readMessage(t, dev); string(b) != "still there" {
			t.Fatalf("device read %q", b)
		}
	})
}

// TestHeaderLimits: with ReadHeaderTimeout 1 s, clients that send their
// headers one byte every 200 ms are cut off after about a second; a
// request with 1 MiB of headers is answered 431; meanwhile, and after,
// ordinary requests and streams are served.
func TestHeaderLimits(t *testing.T) {
	const (
		headerTimeout = time.Second
		slowClients   = 8
	)
	w := dsproxytest.NewHub(t, func(c *hub.Config) { c.ReadHeaderTimeout = headerTimeout })
	w.StartDevice(t, "dev1", "echo="+dsproxytest.Echo(t))
	tlsDial := func(t *testing.T) *tls.Conn {
		t.Helper()
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: dsproxytest.WaitTimeout}, "tcp", w.Addr, w.ClientTLS)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	served := func(t *testing.T) {
		t.Helper()
		if st := getStatus(t, w, "/healthz", ""); st != http.StatusOK {
			t.Errorf("GET /healthz: %d", st)
		}
		if err := openStream(t, w.Service, "dev1", "echo"); err != nil {
			t.Errorf("stream: %v", err)
		}
	}

	// The slow clients: each sends a request line and then one header
	// byte every 200 ms until the hub hangs up.
	type cutoff struct {
		after time.Duration
		sent  int
	}
	results := make(chan cutoff, slowClients)
	var wg sync.WaitGroup
	for range slowClients {
		c := tlsDial(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			closed := make(chan struct{})
			go func() {
				defer close(closed)
				io.Copy(io.Discard, c) // returns when the hub closes
			}()
			sent := 0
			_, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: hub\r\nX-Slow: ")
			tick := time.NewTicker(200 * time.Millisecond)
			defer tick.Stop()
			giveUp := time.After(dsproxytest.WaitTimeout)
			for err == nil {
				select {
				case <-closed:
					results <- cutoff{time.Since(start), sent}
					return
				case <-tick.C:
					_, err = c.Write([]byte{'a'})
					sent++
				case <-giveUp:
					c.Close()
					<-closed
					results <- cutoff{-1, sent}
					return
				}
			}
			<-closed
			results <- cutoff{time.Since(start), sent}
		}()
	}

	t.Run("served meanwhile", served)
	t.Run("1 MiB of headers", func(t *testing.T) {
		c := tlsDial(t)
		c.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
		wrote := make(chan error, 1)
		go func() {
			bw := bufio.NewWriter(c)
			fmt.Fprintf(bw, "GET /healthz HTTP/1.1\r\nHost: hub\r\n")
			pad := strings.Repeat("p", 1000)
			for i := range 1024 {
				fmt.Fprintf(bw, "X-Pad-%04d: %s\r\n", i, pad)
			}
			bw.WriteString("\r\n")
			wrote <- bw.Flush() // fails once the hub gives up on the request
		}()
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("read answer: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("status %d, want 431", resp.StatusCode)
		}
		c.Close()
		<-wrote
	})

	wg.Wait()
	close(results)
	for r := range results {
		switch {
		case r.after < 0:
			t.Errorf("slow client not cut off within %s (sent %d bytes)", dsproxytest.WaitTimeout, r.sent)
		case r.after < headerTimeout-100*time.Millisecond || r.after > headerTimeout+2*time.Second:
			t.Errorf("slow client cut off after %s (sent %d bytes); want about %s", r.after, r.sent, headerTimeout)
		}
	}
	t.Run("served after", served)
}
