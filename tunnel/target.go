package tunnel

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Target is a local TCP address a device exposes, under a stream name.
type Target struct {
	// Name is the stream name that reaches Addr; "" serves any name.
	Name string
	// Addr is host:port.
	Addr string
}

func (t Target) String() string {
	if t.Name == "" {
		return t.Addr
	}
	return t.Name + "=" + t.Addr
}

// ParseTarget parses "[name=]host:port".
func ParseTarget(s string) (Target, error) {
	var t Target
	addr := s
	if name, rest, ok := strings.Cut(s, "="); ok {
		if name == "" || strings.ContainsAny(name, "/\\ ") {
			return t, fmt.Errorf("target %q: the name before '=' must be a non-empty word without slashes or spaces", s)
		}
		t.Name, addr = name, rest
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return t, fmt.Errorf("target %q: want [name=]host:port, e.g. ssh=localhost:22", s)
	}
	if host == "" {
		host = "localhost"
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return t, fmt.Errorf("target %q: port %q is not a number from 1 to 65535", s, port)
	}
	t.Addr = net.JoinHostPort(host, port)
	return t, nil
}

// lookup finds the target for a stream name: the one with that name, else
// the one without a name.
func lookup(targets []Target, name string) (Target, bool) {
	var any *Target
	for i := range targets {
		switch targets[i].Name {
		case name:
			return targets[i], true
		case "":
			if any == nil {
				any = &targets[i]
			}
		}
	}
	if any != nil {
		return *any, true
	}
	return Target{}, false
}
