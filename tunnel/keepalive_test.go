package tunnel

import (
	"testing"
	"time"
)

// TestKeepAliveFor: connections over loopback get no TCP keepalive, all
// others Go's default.
func TestKeepAliveFor(t *testing.T) {
	for host, want := range map[string]time.Duration{
		"localhost":        -1,
		"127.0.0.1":        -1,
		"127.1.2.3":        -1,
		"::1":              -1,
		"::ffff:127.0.0.1": -1,
		"0.0.0.0":          0,
		"192.168.1.10":     0,
		"fe80::1":          0,
		"sshd.example":     0,
		"":                 0,
	} {
		if got := keepAliveFor(host); got != want {
			t.Errorf("keepAliveFor(%q) = %v, want %v", host, got, want)
		}
	}
}
