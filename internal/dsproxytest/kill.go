package dsproxytest

import (
	"net"
	"sync"
)

// Kill cuts the hub off as a crash would: its listener closes, so new
// connections are refused, and every connection it accepted is closed
// without a WebSocket close frame. The hub's own outbound connections
// (registry, NATS) stay up, and Run goes on until cleanup.
func (h *Hub) Kill() { h.ln.kill() }

// killableListener is a listener whose connections a test can cut.
type killableListener struct {
	net.Listener

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	killed bool
	closed chan struct{} // closed by Close
	once   sync.Once
}

func newKillableListener(ln net.Listener) *killableListener {
	return &killableListener{Listener: ln, conns: make(map[net.Conn]struct{}), closed: make(chan struct{})}
}

// Accept accepts as the listener does. Once killed, it waits for Close
// before it fails, so that the server does not stop serving.
func (l *killableListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		if l.killed {
			l.mu.Unlock()
			<-l.closed
			l.mu.Lock()
		}
		return nil, err
	}
	if l.killed {
		c.Close()
		return c, nil
	}
	tc := &trackedConn{Conn: c, l: l}
	l.conns[tc] = struct{}{}
	return tc, nil
}

// trackedConn leaves its listener's set when closed.
type trackedConn struct {
	net.Conn
	l *killableListener
}

func (c *trackedConn) Close() error {
	c.l.mu.Lock()
	delete(c.l.conns, c)
	c.l.mu.Unlock()
	return c.Conn.Close()
}

func (l *killableListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

func (l *killableListener) kill() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.killed = true
	l.Listener.Close()
	for c := range l.conns {
		c.(*trackedConn).Conn.Close()
	}
	clear(l.conns)
}
