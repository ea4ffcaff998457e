package hubclient

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// sessionCache is a client's TLS session cache: crypto/tls's, except that
// a session ticket survives a handshake that broke on the way.
//
// crypto/tls drops the ticket a client offered whenever the handshake
// fails (RFC 5077 §3.2: a ticket the server rejected must not be offered
// again), however it failed. In a reconnect storm after a hub restart a
// handshake often fails only because a side ran out of time (issue 6:
// devices whose handshake the busy hub, or their own timeout, cut short);
// the ticket is as good as before, but the next attempt, without it, is a
// full handshake: the hub's certificate and signature, the client's
// verification, on both sides' CPUs exactly when they are short of it.
// So a ticket that a failed handshake removed is put back when the
// failure says that the connection broke or timed out, or that the hub's
// admission turned the handshake away before reading it (restore); never
// when the hub answered with another alert, which may be about the
// ticket.
// TLS 1.3 resumption keeps its fresh key exchange, so a ticket offered
// again costs no forward secrecy.
type sessionCache struct {
	tls.ClientSessionCache

	mu      sync.Mutex
	dropped map[string]*tls.ClientSessionState // removed by a failed handshake, by cache key
}

var _ tls.ClientSessionCache = (*sessionCache)(nil)

func newSessionCache(inner tls.ClientSessionCache) *sessionCache {
	return &sessionCache{ClientSessionCache: inner, dropped: make(map[string]*tls.ClientSessionState)}
}

// Put stores cs under key; a nil cs (crypto/tls dropping a ticket after a
// failed handshake) keeps the ticket aside for restore.
func (c *sessionCache) Put(key string, cs *tls.ClientSessionState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cs == nil {
		if old, ok := c.ClientSessionCache.Get(key); ok && old != nil {
			c.dropped[key] = old
		}
	} else {
		delete(c.dropped, key)
	}
	c.ClientSessionCache.Put(key, cs)
}

// restore puts back the ticket under key that the handshake failing with
// err removed, when err says the connection broke or timed out or the hub
// turned the handshake away unread (turnedAway), and no other handshake
// has stored one since. Either way the ticket set aside
// is forgotten.
func (c *sessionCache) restore(key string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	old, ok := c.dropped[key]
	if !ok {
		return
	}
	delete(c.dropped, key)
	if _, held := c.ClientSessionCache.Get(key); !held && (brokeOnTheWay(err) || turnedAway(err)) {
		c.ClientSessionCache.Put(key, old)
	}
}

// brokeOnTheWay reports whether a handshake error says only that the
// connection ended or ran out of time: EOF, a reset, a timeout, a
// cancelled context. An alert from the hub, or anything this client found
// wrong with the hub's messages, is not.
func brokeOnTheWay(err error) bool {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "remote error" {
		return false // the hub's alert
	}
	var ne net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, context.Canceled) || errors.As(err, &ne) && ne.Timeout()
}

// turnedAway reports whether err is the hub's "internal error" alert:
// crypto/tls's answer when the hub's handshake admission refuses a
// handshake from GetConfigForClient (hub/handshake.go), before the hub
// has looked at the ticket. A server that rejects a ticket never says so
// with an alert (it falls back to a full handshake), so offering it again
// is sound; without this, every device the admission turned away in a
// reconnect storm paid a full handshake on its next attempt (issue 6).
func turnedAway(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "remote error" && oe.Err != nil && oe.Err.Error() == "tls: internal error"
}

// restoreTicket is restore for the cache of cfg, when it is a
// sessionCache; key is the cache key crypto/tls used (the server name).
func restoreTicket(cfg *tls.Config, key string, err error) {
	if c, ok := cfg.ClientSessionCache.(*sessionCache); ok {
		c.restore(key, err)
	}
}
