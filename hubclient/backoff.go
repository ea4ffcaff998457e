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
// (hubAway), the wait is drawn from the whole of a window (full jitter),
// and it does not grow, so that a device that tries while the hub is still
// down is not pushed later and later by its own failed attempts (issue 6:
// all devices back within 30 s of a restart). The window depends on what
// the attempt cost the hub:
//   - nothing, or next to nothing: the hub closed a session that had been
//     up a while (longer than MaxBackoff) with a close frame, or nothing
//     listens while it restarts (the kernel refuses the connection). The
//     window is awayFirst: one device, or a small fleet, is back within a
//     second of the hub.
//   - the hub was busy: it answered 503, or its handshake admission
//     refused the attempt with a TLS alert after it waited in line
//     (hub/handshake.go). The window is awayWindow (or MaxBackoff, when
//     smaller): a large fleet that came back in one wave and found the
//     hub at capacity spreads the rest of its reconnects over it, while
//     the hub works through the ones in line at its own pace.
// Any other failure while the hub is away in this sense (a handshake cut
// short or timed out, a session torn down before it was ready) is the
// fleet's return: the short window, without growth, the away time going
// on.
// After awayFor of such failures in a row the hub is taken to be down for
// good, and the waits grow again.

// awayWindow is the window a client's reconnects spread over while the
// hub turns them away as busy: with a hub that takes a few thousand
// handshakes a second, it spreads 20,000 devices to a rate the hub serves.
const awayWindow = 10 * time.Second

// awayFirst is the window a client's reconnects spread over while the hub
// is away (closed the session, or refuses connections as it restarts).
const awayFirst = time.Second

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
	// Only a session that was up starts over: an attempt that failed
	// after a long time (a handshake or upgrade that dragged on in a
	// reconnect storm) is no sign that the hub is back, and starting over
	// sent such devices straight back into the storm (issue 6).
	wasUp := errors.Is(err, errHubClosed) || errors.Is(err, errSessionLost) || errors.Is(err, ErrSessionLost)
	upAWhile := wasUp && now.Sub(start) > b.max
	if upAWhile {
		b.cur = b.min // the session was up a while: start over
		b.awaySince = time.Time{}
	}
	away := hubAway(err)
	if errors.Is(err, errHubClosed) && !upAWhile {
		// The hub closed a session soon after it began: most likely
		// another agent with the same device identity took its place
		// (the newest session wins). Backing off as usual keeps two such
		// agents from taking turns every second.
		away = false
	}
	if away {
		if b.awaySince.IsZero() || errors.Is(err, errHubClosed) {
			b.awaySince = now // a session that was up: a new absence
		}
		if now.Sub(b.awaySince) < awayFor {
			window := min(awayWindow, b.max)
			if !hubBusy(err) {
				window = min(awayFirst, window)
			}
			return retryAfterOf(err) + rand.N(window+1)
		}
	} else if !b.awaySince.IsZero() && now.Sub(b.awaySince) < awayFor && !errors.Is(err, errHubClosed) {
		// Any other failure while the fleet comes back to a hub that
		// went away (a handshake or upgrade cut short or timed out, a
		// session torn down before it was ready): the reconnect storm.
		// Such an attempt has paced the device already (it failed after
		// seconds in the hub's queue, not at once), so the short window
		// follows, and it does not grow: growing it pushed the devices
		// that failed a few times a minute or more behind the others,
		// and ending the away time on such a failure sent them back
		// into the storm at once (issue 6: the restart's tail); the busy
		// window after it left the last devices up to 10 s behind a
		// hub that had room again.
		return max(rand.N(min(awayFirst, b.max)+1), retryAfterOf(err))
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

// errSessionLost marks a device's control session that was up and ended
// without the hub's close frame (ErrSessionLost is a service session's).
var errSessionLost = errors.New("session lost")

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
	// crypto/tls reports an alert from the peer as a *net.OpError with
	// Op "remote error".
	return hubBusy(err)
}

// hubBusy reports whether err is the hub turning an attempt away because
// it is busy: a 503, or its handshake admission's TLS alert. hubAway
// holds for it too.
func hubBusy(err error) bool {
	if he := (*HubError)(nil); errors.As(err, &he) {
		return he.StatusCode == http.StatusServiceUnavailable
	}
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
