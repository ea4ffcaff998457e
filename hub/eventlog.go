package hub

import (
	"context"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/dsproxy/dsproxy/hub/registry"
)

// Stream events are written in the background, many per transaction: a
// store that syncs its disk on every commit takes about a millisecond per
// event, which would cap a hub at about a thousand short streams a second
// and leave their handlers waiting. Events queue up to eventQueue; beyond
// that, adding one waits, so memory stays bounded and nothing is dropped.
const (
	eventQueue = 8192
	eventBatch = 512
	// eventWriteTimeout bounds one batch's write.
	eventWriteTimeout = 10 * time.Second
)

// eventLog is the background writer of stream events.
type eventLog struct {
	reg registry.Store
	log zerolog.Logger
	in  chan registry.StreamEvent

	mu     sync.RWMutex // held for reading while an event is queued
	closed bool
	done   chan struct{}
}

// newEventLog starts the writer; close stops it.
func newEventLog(reg registry.Store, log zerolog.Logger) *eventLog {
	l := &eventLog{reg: reg, log: log, in: make(chan registry.StreamEvent, eventQueue), done: make(chan struct{})}
	go l.run()
	return l
}

// add queues e, waiting while the queue is full. After close it logs e
// instead: the store is gone.
func (l *eventLog) add(e registry.StreamEvent) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		l.log.Warn().Str(fieldStream, e.StreamID).Str(fieldDevice, e.DeviceID).Str("result", e.Result).
			Msg("stream event not recorded: the hub has stopped")
		return
	}
	l.in <- e
}

// close writes what is queued and stops the writer. It is idempotent.
func (l *eventLog) close() {
	l.mu.Lock()
	if !l.closed {
		l.closed = true
		close(l.in)
	}
	l.mu.Unlock()
	<-l.done
}

func (l *eventLog) run() {
	defer close(l.done)
	batch := make([]registry.StreamEvent, 0, eventBatch)
	for e := range l.in {
		batch = append(batch[:0], e)
	more:
		for len(batch) < eventBatch {
			select {
			case e, ok := <-l.in:
				if !ok {
					break more
				}
				batch = append(batch, e)
			default:
				break more
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), eventWriteTimeout)
		err := l.reg.AddStreamEvents(ctx, batch)
		cancel()
		if err != nil {
			l.log.Warn().Err(err).Int("events", len(batch)).Msg("stream events not recorded")
		}
	}
}
