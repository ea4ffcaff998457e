package registry_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/dsproxy/dsproxy/hub/registry"
)

// BenchmarkStore measures what the hub asks of its store on every stream
// (a device lookup to check a token, an event when the stream ends) and on
// registry writes, for each implementation, from parallel goroutines as
// the hub's requests are:
//
//	go test -run '^$' -bench Store -benchtime 2s ./hub/registry
//
// The PostgreSQL half needs DSPROXY_TEST_POSTGRES (scripts/lib/postgres.sh).
func BenchmarkStore(b *testing.B) {
	for _, impl := range []struct {
		name  string
		fresh func(t testing.TB) opener
	}{
		{"sqlite", freshSQLite},
		{"postgres", freshPostgres},
	} {
		b.Run(impl.name, func(b *testing.B) {
			benchStore(b, mustOpen(b, impl.fresh(b)))
		})
	}
}

func benchStore(b *testing.B, s registry.Store) {
	ctx := b.Context()
	const devices = 1000
	for i := range devices {
		if _, err := s.CreateDevice(ctx, registry.Device{ID: fmt.Sprintf("dev-%04d", i)}); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("GetDevice", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				if _, err := s.GetDevice(ctx, fmt.Sprintf("dev-%04d", i%devices)); err != nil {
					b.Error(err)
					return
				}
				i++
			}
		})
	})
	b.Run("AddStreamEvent", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := s.AddStreamEvent(ctx, registry.StreamEvent{StreamID: "s", DeviceID: "dev-0001", Started: time.Now()}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	// The hub's event writer (hub/eventlog.go) adds events in batches of
	// whatever queued while the previous batch was written.
	for _, n := range []int{1, 8, 64, 512} {
		b.Run(fmt.Sprintf("AddStreamEvents/%d", n), func(b *testing.B) {
			es := make([]registry.StreamEvent, n)
			for i := range es {
				es[i] = registry.StreamEvent{StreamID: fmt.Sprintf("stream-%d", i), DeviceID: "dev-0001",
					Policy: "service", Name: "ssh", Result: "ended", Reason: "closed by the service",
					BytesUp: 1, BytesDown: 1, Started: time.Now(), Duration: time.Millisecond}
			}
			for b.Loop() {
				if err := s.AddStreamEvents(ctx, es); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/event")
		})
	}
	b.Run("UpdateDevice", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				if _, err := s.UpdateDevice(ctx, registry.Device{ID: fmt.Sprintf("dev-%04d", i%devices)}, "*"); err != nil {
					b.Error(err)
					return
				}
				i++
			}
		})
	})
}
