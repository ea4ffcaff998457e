package batch

// Flushing reports whether a write to the wrapped connection is in
// progress.
func (c *Conn) Flushing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flushing
}
