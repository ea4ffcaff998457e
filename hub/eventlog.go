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
//
// A transaction costs the hub some 0.2 ms of CPU whatever it holds (a
// sqlite commit: its WAL write and sync), ten times an event's own share,
// so a busy hub that wrote whatever had queued during the previous write
// spent much of a stream's setup on commits of a few events each (issue
// 7). The writer therefore starts a batch at most every eventInterval,
// unless the previous one was full: an event on an idle hub is written at
// once, and under load an event waits at most eventInterval more.
const (
	eventQueue    = 8192
	eventBatch    = 512
	eventInterval = 10 * time.Millisecond
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
	var last time.Time // when the previous batch started, unless it was full
	for e := range l.in {
		batch = append(batch[:0], e)
		if wait := eventInterval - time.Since(last); wait > 0 {
			batch = l.gather(batch, time.NewTimer(wait))
		}
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
		last = time.Now()
		if len(batch) == eventBatch {
			last = time.Time{}
		}
		ctx, cancel := context.WithTimeout(context.Background(), eventWriteTimeout)
		err := l.reg.AddStreamEvents(ctx, batch)
		cancel()
		if err != nil {
			l.log.Warn().Err(err).Int("events", len(batch)).Msg("stream events not recorded")
		}
	}
}

// gather appends queued events to batch until it is full, the queue is
// closed, or t fires; it stops t.
func (l *eventLog) gather(batch []registry.StreamEvent, t *time.Timer) []registry.StreamEvent {
	defer t.Stop()
	for len(batch) < eventBatch {
		select {
		case e, ok := <-l.in:
			if !ok {
				return batch
			}
			batch = append(batch, e)
		case <-t.C:
			return batch
		}
	}
	return batch
}
