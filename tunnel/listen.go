package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// Listen opens the local listening socket of a service proxy. addr is
// "[host:]port"; without a host it binds loopback only, 127.0.0.1 and ::1
// (where the machine has IPv6), like `ssh -L` without GatewayPorts. Other
// interfaces must be named ("0.0.0.0:2222").
func Listen(addr string) (net.Listener, error) {
	host, port, err := splitListen(addr)
	if err != nil {
		return nil, err
	}
	if host != "" {
		ln, err := listenTCP(host, port)
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", addr, err)
		}
		return ln, nil
	}
	v4, err := listenTCP("127.0.0.1", port)
	if err != nil {
		return nil, fmt.Errorf("listen on 127.0.0.1:%s: %w", port, err)
	}
	if port == "0" {
		// A random port: a second family would get a different one.
		return v4, nil
	}
	v6, err := listenTCP("::1", port)
	if err != nil {
		// No IPv6 loopback here: IPv4 alone is fine.
		return v4, nil
	}
	return newMultiListener(v4, v6), nil
}

// listenTCP listens on host:port. Connections accepted on a loopback
// address get no TCP keepalive: the kernel ends them when the peer's
// process goes, and the four socket options per connection are a share of
// a stream's setup (issue 7).
func listenTCP(host, port string) (net.Listener, error) {
	var lc net.ListenConfig
	lc.KeepAlive = keepAliveFor(host)
	return lc.Listen(context.Background(), "tcp", net.JoinHostPort(host, port))
}

// keepAliveFor is the TCP keepalive period for connections to or from
// host: off (-1) for a loopback address or "localhost", Go's default (0)
// otherwise.
func keepAliveFor(host string) time.Duration {
	if host == "localhost" {
		return -1
	}
	if a, err := netip.ParseAddr(host); err == nil && a.Unmap().IsLoopback() {
		return -1
	}
	return 0
}

// splitListen parses "[host:]port".
func splitListen(addr string) (host, port string, err error) {
	port = addr
	if h, p, err := net.SplitHostPort(addr); err == nil {
		host, port = h, p
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return "", "", fmt.Errorf("listen address %q: want [host:]port, e.g. 2222 or 0.0.0.0:2222", addr)
	}
	return host, port, nil
}

// multiListener accepts on several listeners as one. Its first listener's
// address is its Addr.
type multiListener struct {
	lns   []net.Listener
	conns chan net.Conn
	errc  chan error
	done  chan struct{}
	wg    sync.WaitGroup
	once  sync.Once
}

func newMultiListener(lns ...net.Listener) *multiListener {
	m := &multiListener{
		lns:   lns,
		conns: make(chan net.Conn),
		errc:  make(chan error, len(lns)),
		done:  make(chan struct{}),
	}
	for _, ln := range lns {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					m.errc <- err
					return
				}
				select {
				case m.conns <- c:
				case <-m.done:
					c.Close()
					return
				}
			}
		}()
	}
	return m
}

// Accept returns the next connection from any of the listeners.
func (m *multiListener) Accept() (net.Conn, error) {
	select {
	case c := <-m.conns:
		return c, nil
	case err := <-m.errc:
		return nil, err
	case <-m.done:
		return nil, net.ErrClosed
	}
}

// Close closes every listener and waits for their accept loops.
func (m *multiListener) Close() error {
	var err error
	m.once.Do(func() {
		close(m.done)
		for _, ln := range m.lns {
			err = errors.Join(err, ln.Close())
		}
		m.wg.Wait()
	})
	return err
}

// Addr is the first listener's address.
func (m *multiListener) Addr() net.Addr { return m.lns[0].Addr() }

// Addrs lists every address listened on.
func (m *multiListener) Addrs() []net.Addr {
	out := make([]net.Addr, len(m.lns))
	for i, ln := range m.lns {
		out[i] = ln.Addr()
	}
	return out
}
