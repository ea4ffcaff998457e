package hub

import "time"

// TokenBucket exposes the hub's per-policy initiation meter to the tests.
type TokenBucket struct{ b *tokenBucket }

// NewTokenBucket returns a full bucket.
func NewTokenBucket(rate float64, burst int, now time.Time) TokenBucket {
	return TokenBucket{newTokenBucket(rate, burst, now)}
}

// Take removes one token at now, or reports how long until one is there.
func (b TokenBucket) Take(now time.Time) (time.Duration, bool) { return b.b.take(now) }
