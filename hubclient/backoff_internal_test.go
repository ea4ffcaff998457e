package hubclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/dsproxy/dsproxy/hub/certs"
)

// refused is the error of a dial to a port where nothing listens, as
// net.Dial wraps it.
var refused = &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}

// TestBackoffAway: while the hub is away on purpose, the waits are drawn
// from the whole of a window (full jitter: short ones too) and do not
// grow, however many attempts fail: a window of awayFirst while it closed
// the session or refuses connections (it costs the hub nothing), of
// awayWindow while it turns attempts away as busy. A Retry-After is
// waited on top. After awayFor of them, or after a failure that says
// nothing about the hub, the waits grow as usual.
func TestBackoffAway(t *testing.T) {
	const minB, maxB = 100 * time.Millisecond, 30 * time.Second
	window := min(awayWindow, maxB)
	busyAlert := &net.OpError{Op: "remote error", Err: errors.New("tls: internal error")}
	b := newBackoff(minB, maxB)
	now := time.Now()
	// A session that was up an hour ends with the hub's close frame,
	// then the hub's port refuses for a while, then its handshake
	// admission turns attempts away.
	start := now.Add(-time.Hour)
	spread := func(what string, first int, err func(i int) error, window time.Duration) {
		t.Helper()
		var short, long int
		for i := range 2000 {
			w := b.next(err(i), start, now)
			if w < 0 || w > window {
				t.Fatalf("%s, attempt %d: wait %s, want within [0, %s]", what, first+i, w, window)
			}
			if w < window/10 {
				short++
			}
			if w > window*9/10 {
				long++
			}
			start = now
			now = now.Add(time.Millisecond) // well within awayFor
		}
		// 2,000 draws, about 200 expected in each tenth.
		if short < 100 || long < 100 {
			t.Errorf("%s: waits in the first tenth of the window: %d, in the last: %d; want about 200 each (full jitter)", what, short, long)
		}
	}
	spread("closed, then refused", 0, func(i int) error {
		if i == 0 {
			return fmt.Errorf("control session ended: %w: %w", errHubClosed, io.EOF)
		}
		return refused
	}, awayFirst)
	spread("turned away by the handshake admission", 2000, func(int) error { return busyAlert }, window)
	if b.cur != minB {
		t.Errorf("backoff grew to %s while the hub was away", b.cur)
	}

	// A 503 with Retry-After: the wait is the hint plus the window's draw.
	busy := &HubError{Op: "connect control session", StatusCode: http.StatusServiceUnavailable, RetryAfter: 3 * time.Second}
	if w := b.next(busy, now, now); w < 3*time.Second || w > 3*time.Second+window {
		t.Errorf("after a 503 with Retry-After 3s: wait %s, want within [3s, %s]", w, 3*time.Second+window)
	}

	// Away for longer than awayFor: the hub is down, back off as usual.
	later := now.Add(awayFor)
	for i := range 4 {
		w := b.next(refused, later, later)
		if lo := minB << i / 2; w < lo || w > minB<<i {
			t.Errorf("refused after %s away, attempt %d: wait %s, want within [%s, %s]", awayFor, i, w, lo, minB<<i)
		}
	}

	// A failure that says nothing about the hub grows the backoff at once.
	b = newBackoff(minB, maxB)
	for i := range 4 {
		w := b.next(io.ErrUnexpectedEOF, now, now)
		if lo := minB << i / 2; w < lo || w > minB<<i {
			t.Errorf("EOF attempt %d: wait %s, want within [%s, %s]", i, w, lo, minB<<i)
		}
	}
}

// TestBackoffCutShortWhileAway: after the hub went away on purpose,
// attempts cut short (EOF, a reset, a timeout, a session torn down before
// it was ready: the reconnect storm) wait within the short window, without
// growing, for up to awayFor.
func TestBackoffCutShortWhileAway(t *testing.T) {
	const minB, maxB = 100 * time.Millisecond, 30 * time.Second
	window := min(awayFirst, maxB)
	b := newBackoff(minB, maxB)
	now := time.Now()
	b.next(fmt.Errorf("control session ended: %w: %w", errHubClosed, io.EOF), now.Add(-time.Hour), now)
	cut := []error{
		fmt.Errorf("connect control session: %w", io.EOF),
		&net.OpError{Op: "read", Err: os.NewSyscallError("read", syscall.ECONNRESET)},
		fmt.Errorf("tls handshake with hub: %w", context.DeadlineExceeded),
		fmt.Errorf("control session: no ready message from the hub: %w", errors.New("session shutdown")),
	}
	var long int
	for i := range 300 {
		now = now.Add(100 * time.Millisecond) // 30 s in all, within awayFor
		w := b.next(cut[i%len(cut)], now, now)
		if w < 0 || w > window {
			t.Fatalf("cut short %d (%v): wait %s, want within [0, %s]", i, cut[i%len(cut)], w, window)
		}
		if w > window/2 {
			long++
		}
	}
	if long < 100 || long > 200 {
		t.Errorf("%d of 300 waits in the upper half of the window, want about 150", long)
	}
	if b.cur != minB {
		t.Errorf("backoff grew to %s in the storm", b.cur)
	}
	// An attempt that dragged on for longer than MaxBackoff before it was
	// cut short is no session that was up: the away time goes on.
	since := b.awaySince
	if w := b.next(io.EOF, now.Add(-2*maxB), now); w > window {
		t.Errorf("after an attempt of %s cut short: wait %s, want within [0, %s]", 2*maxB, w, window)
	}
	if b.awaySince != since {
		t.Errorf("a long failed attempt started the away time over")
	}
	// Past awayFor, cut-short attempts back off as usual.
	later := now.Add(awayFor)
	for i := range 3 {
		w := b.next(io.EOF, later, later)
		if lo := minB << i / 2; w < lo || w > minB<<i {
			t.Errorf("EOF after %s away, attempt %d: wait %s, want within [%s, %s]", awayFor, i, w, lo, minB<<i)
		}
	}

	// A session the hub closed soon after it began (replaced by another
	// agent) is no storm: the usual backoff, for it and what follows.
	b = newBackoff(minB, maxB)
	for i := range 4 {
		err := io.ErrUnexpectedEOF
		if i == 0 {
			err = fmt.Errorf("control session ended: %w: %w", errHubClosed, io.EOF)
		}
		w := b.next(err, now, now)
		if lo := minB << i / 2; w < lo || w > minB<<i {
			t.Errorf("replaced, attempt %d (%v): wait %s, want within [%s, %s]", i, err, w, lo, minB<<i)
		}
	}
}

// TestBackoffWindowCap: the window is never longer than MaxBackoff.
func TestBackoffWindowCap(t *testing.T) {
	b := newBackoff(time.Millisecond, 50*time.Millisecond)
	now := time.Now()
	for range 200 {
		if w := b.next(refused, now, now); w > 50*time.Millisecond {
			t.Fatalf("wait %s beyond MaxBackoff 50ms", w)
		}
	}
}

// TestHubAway: which failures count as the hub being away on purpose,
// with the errors the real code paths produce where they run here.
func TestHubAway(t *testing.T) {
	// A dial to a port where nothing listens.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, dialErr := net.DialTimeout("tcp", addr, 5*time.Second)

	for _, tc := range []struct {
		name string
		err  error
		want bool
		busy bool // the hub turned the attempt away as busy
	}{
		{"connection refused", fmt.Errorf("connect control session: %w", dialErr), dialErr != nil, false},
		{"hub's close frame", fmt.Errorf("control session ended: %w: %w", errHubClosed, io.EOF), true, false},
		{"503", &HubError{StatusCode: http.StatusServiceUnavailable}, true, true},
		{"TLS alert (handshake admission)", tlsRefusal(t), true, true},
		{"nil", nil, false, false},
		{"EOF before the WebSocket", fmt.Errorf("connect control session: %w", io.EOF), false, false},
		{"session lost", fmt.Errorf("control session ended: %w", io.ErrUnexpectedEOF), false, false},
		{"timeout", fmt.Errorf("connect control session: %w", context.DeadlineExceeded), false, false},
		{"429", &HubError{StatusCode: http.StatusTooManyRequests}, false, false},
		{"500", &HubError{StatusCode: http.StatusInternalServerError}, false, false},
	} {
		if got := hubAway(tc.err); got != tc.want {
			t.Errorf("%s: hubAway(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
		if got, want := hubBusy(tc.err), tc.busy; got != want {
			t.Errorf("%s: hubBusy(%v) = %v, want %v", tc.name, tc.err, got, want)
		}
	}
}

// tlsRefusal runs a TLS handshake against a server that refuses it from
// GetConfigForClient, as the hub's handshake admission does, and returns
// the client's error.
func tlsRefusal(t *testing.T) error {
	t.Helper()
	bundle, err := certs.LoadOrCreate(t.TempDir(), []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		cfg := bundle.Config.Clone()
		cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) { return nil, errors.New("busy") }
		srv := tls.Server(c, cfg)
		_ = srv.Handshake()
	}()
	defer func() { <-done }()
	ccfg, err := certs.ClientConfig(bundle.CAPEM)
	if err != nil {
		t.Fatal(err)
	}
	ccfg.ServerName = "127.0.0.1"
	c, err := tls.Dial("tcp", ln.Addr().String(), ccfg)
	if err == nil {
		c.Close()
		t.Fatal("handshake succeeded; want a refusal")
	}
	return fmt.Errorf("connect control session: %w", err)
}

// TestBackoffReplacedSoon: a session the hub closed soon after it began
// (shorter than MaxBackoff: another agent with the same identity most
// likely took its place) backs off as usual, so that two such agents do
// not take turns within the away window.
func TestBackoffReplacedSoon(t *testing.T) {
	const minB, maxB = 100 * time.Millisecond, 30 * time.Second
	b := newBackoff(minB, maxB)
	now := time.Now()
	closed := fmt.Errorf("control session ended: %w: %w", errHubClosed, io.EOF)
	for i := range 5 {
		w := b.next(closed, now.Add(-time.Second), now)
		if lo := minB << i / 2; w < lo || w > minB<<i {
			t.Errorf("replaced after 1s, attempt %d: wait %s, want within [%s, %s]", i, w, lo, minB<<i)
		}
	}
	// Up longer than MaxBackoff: the hub went away, not a rival.
	if w := b.next(closed, now.Add(-time.Hour), now); w > awayFirst {
		t.Errorf("closed after an hour: wait %s, want within [0, %s]", w, awayFirst)
	}
}
