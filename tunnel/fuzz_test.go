package tunnel_test

import (
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/dsproxy/dsproxy/tunnel"
)

// FuzzParseTarget feeds arbitrary strings to ParseTarget, which reads the
// device's --target flags. A target it accepts has a name without slashes
// or spaces, a host:port address with a port from 1 to 65535, and prints
// back to a string that parses to the same target.
func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{"ssh=localhost:22", "localhost:22", ":22", "web=[::1]:8080", "a=b=c:1", "=x:1", "x:0", "x:65536", "x", "ssh=:22", "a b=h:1", "a/b=h:1", "[::1]:22", "h:+22", "h:022"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tg, err := tunnel.ParseTarget(s)
		if err != nil {
			if tg != (tunnel.Target{}) && tg.Name == "" {
				t.Fatalf("ParseTarget(%q) returned %+v with error %v", s, tg, err)
			}
			return
		}
		if strings.ContainsAny(tg.Name, "/\\ ") {
			t.Fatalf("ParseTarget(%q): name %q", s, tg.Name)
		}
		host, port, err := net.SplitHostPort(tg.Addr)
		if err != nil || host == "" {
			t.Fatalf("ParseTarget(%q): address %q: %v", s, tg.Addr, err)
		}
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			t.Fatalf("ParseTarget(%q): port %q", s, port)
		}
		again, err := tunnel.ParseTarget(tg.String())
		if err != nil || again != tg {
			t.Fatalf("ParseTarget(%q) = %+v, whose String %q parses to %+v, %v", s, tg, tg.String(), again, err)
		}
	})
}
