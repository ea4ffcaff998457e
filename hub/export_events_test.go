package hub

import "time"

// SetPruneInterval makes Run prune the stream event log every d, for the
// hubs started from now on, and returns a function that restores the
// interval.
func SetPruneInterval(d time.Duration) (restore func()) {
	old := pruneInterval.Swap(int64(d))
	return func() { pruneInterval.Store(old) }
}
