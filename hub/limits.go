package hub

// The hub's limits on streams (issue #4, "Limits"). Concurrency limits and
// the per-policy rate are checked when a stream is initiated, before the
// device is asked, and answered with 429 and Retry-After; the idle timeout
// is watched by the relay. The HTTP-level limits (header read timeout and
// size) are the http.Server's, set in Run; the WebSocket message size is
// the relay's read limit.

import (
	"fmt"
	"math"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dsproxy/dsproxy/internal/wire"
)

// busyRetryAfter is the Retry-After sent when a concurrency limit refuses a
// stream: slots free up as streams end, which the hub cannot predict, and
// a handshake lasts seconds at most.
const busyRetryAfter = time.Second

// limitError is an initiation refused by a limit: a 429 with the time the
// caller should wait.
type limitError struct {
	msg        string
	retryAfter time.Duration
}

// limiter counts the hub's streams and meters initiations per policy. It
// is safe for concurrent use; it never calls out while holding its lock,
// so callers may hold Server.mu.
type limiter struct {
	maxStreams   int
	maxPerDevice int
	maxPending   int
	rate         float64
	burst        int

	mu        sync.Mutex
	streams   int            // admitted and not yet ended
	pending   int            // admitted and not yet paired or ended
	perDevice map[string]int // streams by device; no zero entries
	buckets   map[string]*tokenBucket
}

func newLimiter(cfg *Config) *limiter {
	return &limiter{
		maxStreams:   cfg.MaxStreams,
		maxPerDevice: cfg.MaxStreamsPerDevice,
		maxPending:   cfg.MaxPendingHandshakes,
		rate:         cfg.StreamRate,
		burst:        cfg.StreamBurst,
		perDevice:    make(map[string]int),
		buckets:      make(map[string]*tokenBucket),
	}
}

// allow takes one initiation from policy's budget at now.
func (l *limiter) allow(policy string, now time.Time) *limitError {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[policy]
	if b == nil {
		// Policies are few and created by the hub's owner, so the map
		// stays small without eviction.
		b = newTokenBucket(l.rate, l.burst, now)
		l.buckets[policy] = b
	}
	if wait, ok := b.take(now); !ok {
		return &limitError{
			msg: fmt.Sprintf("policy %q opens streams faster than this hub allows (%g per second, bursts of %d); retry later",
				policy, l.rate, l.burst),
			retryAfter: wait,
		}
	}
	return nil
}

// admit counts a new stream to deviceID, or refuses it when it would pass
// a concurrency limit. An admitted stream must be ended with release.
func (l *limiter) admit(deviceID string) *limitError {
	l.mu.Lock()
	defer l.mu.Unlock()
	var msg string
	switch {
	case l.streams >= l.maxStreams:
		msg = fmt.Sprintf("this hub has %d active streams, its limit (MaxStreams); retry later", l.maxStreams)
	case l.perDevice[deviceID] >= l.maxPerDevice:
		msg = fmt.Sprintf("device %q has %d active streams, the limit per device (MaxStreamsPerDevice); retry later", deviceID, l.maxPerDevice)
	case l.pending >= l.maxPending:
		msg = fmt.Sprintf("this hub has %d stream handshakes in progress, its limit (MaxPendingHandshakes); retry later", l.maxPending)
	default:
		l.streams++
		l.pending++
		l.perDevice[deviceID]++
		return nil
	}
	return &limitError{msg: msg, retryAfter: busyRetryAfter}
}

// paired records that both sides of an admitted stream have connected: its
// handshake is no longer pending.
func (l *limiter) paired() {
	l.mu.Lock()
	l.pending--
	l.mu.Unlock()
}

// release ends an admitted stream; wasPaired tells whether paired was
// called for it.
func (l *limiter) release(deviceID string, wasPaired bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.streams--
	if !wasPaired {
		l.pending--
	}
	if n := l.perDevice[deviceID] - 1; n > 0 {
		l.perDevice[deviceID] = n
	} else {
		delete(l.perDevice, deviceID)
	}
}

// errThrottled is the 429 of an initiation a limit refused; the caller
// sends Retry-After in whole seconds (at least one).
func errThrottled(le *limitError) *apiError {
	return &apiError{http.StatusTooManyRequests, wire.CodeTooManyRequests, "ThrottlingException", le.msg}
}

// tokenBucket is a token bucket: it holds at most burst tokens and gains
// rate tokens per second. Not safe for concurrent use.
type tokenBucket struct {
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

// newTokenBucket returns a full bucket.
func newTokenBucket(rate float64, burst int, now time.Time) *tokenBucket {
	return &tokenBucket{rate: rate, burst: float64(burst), tokens: float64(burst), last: now}
}

// take removes one token at now. When the bucket is empty it removes
// nothing and reports how long until a token will be there.
func (b *tokenBucket) take(now time.Time) (wait time.Duration, ok bool) {
	if now.After(b.last) {
		b.tokens = math.Min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return 0, true
	}
	return time.Duration((1 - b.tokens) / b.rate * float64(time.Second)), false
}

// idleWatch ends a relayed stream that has moved no message for timeout.
// The relay touches it for every message and chunk; a timer checks the
// last touch and re-arms itself for when the stream would next be idle, so
// a quiet stream costs no goroutine and a busy one one timer callback per
// timeout. A nil *idleWatch (timeout off) does nothing and never fires.
type idleWatch struct {
	timeout time.Duration
	start   time.Time    // monotonic origin of last
	last    atomic.Int64 // time.Since(start) at the last touch
	fired   chan struct{}
	onIdle  func() // when not nil, called once, on the timer's goroutine, after fired closes

	mu      sync.Mutex
	timer   *time.Timer
	stopped bool
}

// watchIdle starts an idle watch for a stream that begins relaying now,
// or returns nil when IdleStreamTimeout is off. onIdle, when not nil, is
// called once the stream has been idle for the timeout, for a relay with
// no goroutine to wait on expired.
func (s *Server) watchIdle(onIdle func()) *idleWatch {
	if s.cfg.IdleStreamTimeout <= 0 {
		return nil
	}
	w := &idleWatch{timeout: s.cfg.IdleStreamTimeout, start: time.Now(), fired: make(chan struct{}), onIdle: onIdle}
	w.mu.Lock()
	w.timer = time.AfterFunc(w.timeout, w.check)
	w.mu.Unlock()
	return w
}

// touch records activity.
func (w *idleWatch) touch() {
	if w != nil {
		w.last.Store(int64(time.Since(w.start)))
	}
}

// expired is closed when the stream has been idle for the timeout.
func (w *idleWatch) expired() <-chan struct{} {
	if w == nil {
		return nil
	}
	return w.fired
}

// stop disarms the watch. After it returns the watch neither fires nor
// re-arms.
func (w *idleWatch) stop() {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
	w.timer.Stop()
}

// check fires the watch when the stream has been idle for the timeout and
// re-arms it otherwise. onIdle runs after w.mu is released: the relay's
// end takes its own lock, then stops the watch.
func (w *idleWatch) check() {
	if w.fire() && w.onIdle != nil {
		w.onIdle()
	}
}

// fire closes fired and reports true when the stream has been idle for the
// timeout; otherwise it re-arms the timer for when it would next be.
func (w *idleWatch) fire() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return false
	}
	quiet := time.Since(w.start) - time.Duration(w.last.Load())
	if quiet >= w.timeout {
		w.stopped = true
		close(w.fired)
		return true
	}
	w.timer.Reset(w.timeout - quiet)
	return false
}
