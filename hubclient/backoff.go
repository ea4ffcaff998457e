package hubclient

import (
	"errors"
	"math/rand/v2"
	"net"
	"net/http"
	"syscall"
	"time"
)

// How a client waits between attempts to hold its session (redial).
//
// After a failure that says nothing about the hub (a broken connection, a
// handshake cut short or timed out), the wait doubles from MinBackoff up to
// MaxBackoff, drawn from the upper half of the current backoff.
//
// When the hub went away on purpose or turned the attempt away on purpose
// (hubAway: it closed the session with a close frame, nothing listens while
// it restarts, it answered 503, or its handshake admission refused the
// attempt with a TLS alert), the wait is drawn from the whole of a window
// of awayWindow (or MaxBackoff, when smaller), and it does not grow: a
// fleet that loses its hub at the same instant spreads its reconnects over
// the window instead of coming back in one wave, and a device that tries
// while the hub is still down is not pushed later and later by its own
// failed attempts (issue 6: all devices back within 30 s of a restart).
// After awayFor of such failures in a row the hub is taken to be down for
// good, and the waits grow again.

// awayWindow is the window a client's reconnects spread over after the hub
// went away on purpose: with a hub that takes a few thousand handshakes a
// second, it spreads 20,000 devices to a rate the hub serves.
const awayWindow = 10 * time.Second

// awayFor is how long a run of hubAway failures is waited out with the
// window before the waits grow again.
const awayFor = 2 * time.Minute

// backoff chooses the waits between a client's attempts; see above.
type backoff struct {
	min, max time.Duration

	cur       time.Duration // the backoff of the next failure that grows it
	awaySince time.Time     // zero unless the last failure was hubAway
}

func newBackoff(minB, maxB time.Duration) *backoff {
	return &backoff{min: minB, max: maxB, cur: minB}
}

// next returns how long to wait after an attempt that started at start and
// failed (or ended, for a session that was up) with err at now.
func (b *backoff) next(err error, start, now time.Time) time.Duration {
	if now.Sub(start) > b.max {
		b.cur = b.min // the session was up a while: start over
		b.awaySince = time.Time{}
	}
	if hubAway(err) {
		if b.awaySince.IsZero() || errors.Is(err, errHubClosed) {
			b.awaySince = now // a session that was up: a new absence
		}
		if now.Sub(b.awaySince) < awayFor {
			window := min(awayWindow, b.max)
			return retryAfterOf(err) + rand.N(window+1)
		}
	} else {
		b.awaySince = time.Time{}
	}
	wait := b.cur/2 + rand.N(b.cur/2+1)
	b.cur = min(b.cur*2, b.max)
	return max(wait, retryAfterOf(err))
}

// errHubClosed marks a session that the hub ended with a close frame: it
// shut down, or a newer session of the device replaced this one.
var errHubClosed = errors.New("the hub closed the session")

// hubAway reports whether err says that the hub went away or refused the
// attempt on purpose, rather than that something broke: the hub's close
// frame ended the session (errHubClosed), nothing listened at its address
// (it is restarting), it answered 503 Service Unavailable (shutting
// down), or it refused the TLS handshake with an alert (its admission
// turns handshakes away when too many wait).
func hubAway(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, errHubClosed) || errors.Is(err, syscall.ECONNREFUSED) {
		return true
	}
	if he := (*HubError)(nil); errors.As(err, &he) {
		return he.StatusCode == http.StatusServiceUnavailable
	}
	// crypto/tls reports an alert from the peer as a *net.OpError with
	// Op "remote error".
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "remote error"
}

// retryAfterOf is the wait the hub asked for with err (Retry-After), or 0.
func retryAfterOf(err error) time.Duration {
	if he := (*HubError)(nil); errors.As(err, &he) {
		return max(he.RetryAfter, 0)
	}
	return 0
}
