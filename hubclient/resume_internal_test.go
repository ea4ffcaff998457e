package hubclient

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
)

// TestSessionCacheRestore: a ticket that crypto/tls dropped after a failed
// handshake is put back when the connection only broke or timed out or
// the hub's admission turned the handshake away (a real refusal from
// GetConfigForClient), and stays dropped when the hub answered with
// another alert or a newer ticket came meanwhile.
func TestSessionCacheRestore(t *testing.T) {
	const key = "hub.example"
	alert := &net.OpError{Op: "remote error", Err: fmt.Errorf("tls: decrypt error")}
	for _, tc := range []struct {
		name    string
		err     error
		restore bool
	}{
		{"eof", fmt.Errorf("tls handshake: %w", io.EOF), true},
		{"reset", &net.OpError{Op: "read", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, true},
		{"deadline", &net.OpError{Op: "read", Err: os.ErrDeadlineExceeded}, true},
		{"alert", alert, false},
		{"admission's alert", tlsRefusal(t), true},
		{"other", fmt.Errorf("tls: server selected unadvertised ALPN protocol"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newSessionCache(tls.NewLRUClientSessionCache(4))
			s := &tls.ClientSessionState{}
			c.Put(key, s)
			c.Put(key, nil) // the failed handshake
			if _, ok := c.Get(key); ok {
				t.Fatal("dropped ticket still in the cache")
			}
			c.restore(key, tc.err)
			got, ok := c.Get(key)
			if tc.restore && got != s {
				t.Errorf("after %v: ticket %v, %v, want it back", tc.err, got, ok)
			}
			if !tc.restore && ok {
				t.Errorf("after %v: ticket put back, want it dropped", tc.err)
			}
			c.restore(key, io.EOF) // set aside once only
			if _, ok := c.Get(key); ok != tc.restore {
				t.Errorf("a second restore changed the cache")
			}
		})
	}
	t.Run("newer ticket", func(t *testing.T) {
		c := newSessionCache(tls.NewLRUClientSessionCache(4))
		s, newer := &tls.ClientSessionState{}, &tls.ClientSessionState{}
		c.Put(key, s)
		c.Put(key, nil)
		c.Put(key, newer) // another handshake succeeded meanwhile
		c.restore(key, io.EOF)
		if got, _ := c.Get(key); got != newer {
			t.Errorf("ticket %p, want the newer %p", got, newer)
		}
	})
}
