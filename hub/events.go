package hub

import (
	"context"
	"sync/atomic"
	"time"
)

// The stream event log is the hub's audit trail (issue #4, "Security").
// Every stream initiation that gets as far as naming a device (a caller
// with ServiceConnect, a valid device ID and stream name) ends in one
// stored event, and so does every stream the device accepted, whichever
// way it ends. Each event says who asked (the policy), the device, the
// stream name, the result and a reason; a relayed stream adds its bytes
// each way and its duration. The results:
//
//	throttled    over a limit (429, limits.go)
//	unavailable  device not registered, disabled, not connected, or its
//	             session dropped before it answered (404)
//	error        the registry failed (500), or the device's answer was not
//	             a StreamResponse (502)
//	timeout      no answer in time, or an acceptance that came after the
//	             handshake deadline (504)
//	canceled     the service went away before the device answered
//	shutdown     the hub was stopping
//	rejected     the device refused, with its reason
//	expired      accepted, but a side did not connect before the handshake
//	             deadline (also when neither did)
//	ended, lost, idle, revoked, shutdown
//	             a relayed stream's end (faults.go, relay.go)
//
// Requests refused before that point (no or bad credential, 401; no
// ServiceConnect, 403; a malformed path or name, 400) are logged at debug
// level, not stored: their caller is not known to be anyone, and storing
// them would let anyone fill the log.
//
// The log is bounded by Config.EventRetention and Config.MaxEvents: Run
// prunes it when it starts and every pruneInterval.

// pruneInterval is how often Run prunes the stream event log; tests shorten
// it (export_events_test.go).
var pruneInterval atomic.Int64

func init() { pruneInterval.Store(int64(5 * time.Minute)) }

// startPruning prunes the stream event log now and then every
// pruneInterval, in a goroutine, until the returned function is called;
// that function waits for the goroutine. It does nothing when neither
// bound is set.
func (s *Server) startPruning() (stop func()) {
	if s.cfg.EventRetention <= 0 && s.cfg.MaxEvents <= 0 {
		return func() {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(time.Duration(pruneInterval.Load()))
		defer t.Stop()
		for {
			s.pruneEvents(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// pruneEvents deletes the stream events beyond the configured bounds.
func (s *Server) pruneEvents(ctx context.Context) {
	var olderThan time.Time
	if s.cfg.EventRetention > 0 {
		olderThan = time.Now().Add(-s.cfg.EventRetention)
	}
	n, err := s.reg.PruneStreamEvents(ctx, olderThan, s.cfg.MaxEvents)
	switch {
	case err != nil && ctx.Err() == nil:
		s.log.Warn().Err(err).Msg("stream events not pruned")
	case n > 0:
		s.log.Info().Int("events", n).Msg("old stream events pruned")
	}
}
