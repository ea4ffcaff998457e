package wsmux

import "net"

// Queued reports how many bytes nc (from Conn) has queued and not yet
// handed to its flusher.
func Queued(nc net.Conn) int {
	c := nc.(*conn)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.q == nil {
		return 0
	}
	return len(c.q.buf)
}

// MaxQueued is maxQueued.
const MaxQueued = maxQueued

// DirectMin is directMin.
const DirectMin = directMin
