package hub

// The hub's Prometheus metrics (issue #5, "GET /metrics"), served at
// GET /metrics in the Prometheus text format. Each Server has its own
// registry, so several hubs in one process (tests) do not collide.
//
// The endpoint is unauthenticated, like /healthz, so a load balancer or a
// Prometheus server can reach it without a key. It reveals counts only:
// no label carries a device ID, stream ID, policy name, key or token. A
// device ID as a label would also give every device of the fleet its own
// time series (unbounded cardinality). Every label takes its value from a
// small fixed set. docs/metrics.md lists the metrics.
//
// Where each one is counted:
//
//	connected_devices, active_streams, pending_handshakes
//	    read at scrape time from the hub's state (sessions, limiter)
//	streams_started_total     handleInitiate, when the device accepted
//	streams_ended_total       addEvent: one per stored stream event
//	relayed_bytes_total       addEvent: a relayed stream's bytes, added
//	                          when it ends (not while it runs)
//	handshake_seconds         handleStream, when the second side connects
//	initiate_seconds          handleInitiate, when deliver returns
//	rejected_requests_total   writeError: every HTTP error response
//	control_sessions_total    addSession and handleControl

import (
	"net/http"
	"regexp"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/dsproxy/dsproxy/hub/registry"
)

// metricsPrefix is the namespace and subsystem of every hub metric.
const (
	metricsNamespace = "dsproxy"
	metricsSubsystem = "hub"
)

// Values of the labels; every label takes its value from one of these
// sets, never from a request.
const (
	causeUnauthorized = "unauthorized"
	causeForbidden    = "forbidden"
	causeBadRequest   = "bad_request"
	causeNotFound     = "not_found"
	causeThrottled    = "throttled"
	causeUnavailable  = "unavailable"
	causeTimeout      = "timeout"
	causeError        = "error"
	causeOther        = "other"

	sessionConnected = "connected"
	sessionReplaced  = "replaced"
	sessionLost      = "lost"
	sessionTakenOver = "taken_over"
)

// Outcomes of requests routed between replicas (cluster.go).
const (
	routeSent    = "sent"     // to the replica that holds the device
	routeServed  = "served"   // for another replica
	routeNoRoute = "no_route" // no replica holds the device
	routeFailed  = "failed"   // NATS unavailable, or no answer
)

// streamResults are the results of stream events (events.go); an unknown
// one is counted as "error" so the label set stays fixed.
var streamResults = []string{
	"ended", resultLost, "idle", resultRevoked, resultShutdown, "expired",
	"rejected", "unavailable", "timeout", "throttled", "canceled", "error",
}

// metrics holds the hub's collectors. Its methods are safe for concurrent
// use and never take Server.mu, so they may be called with it held; the
// gauges take Server.mu at scrape time.
type metrics struct {
	reg *prometheus.Registry

	started     prometheus.Counter
	ended       *prometheus.CounterVec
	bytes       *prometheus.CounterVec
	handshake   prometheus.Histogram
	initiate    prometheus.Histogram
	rejected    *prometheus.CounterVec
	controlSess *prometheus.CounterVec
	routed      *prometheus.CounterVec

	// The children counted for every stream, looked up once rather than
	// by their labels per stream (issue 7).
	endedBy            map[string]prometheus.Counter // by result
	bytesUp, bytesDown prometheus.Counter
}

// liveHeapMetric selects the runtime/metrics sample exported as
// go_gc_heap_live_bytes.
var liveHeapMetric = regexp.MustCompile(`^/gc/heap/live:bytes$`)

// latencyBuckets span a loopback handshake (about a millisecond) to a
// device that takes most of a minute to answer.
var latencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

func newMetrics(s *Server) *metrics {
	opts := func(name, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: name, Help: help}
	}
	hopts := func(name, help string) prometheus.HistogramOpts {
		return prometheus.HistogramOpts{Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: name, Help: help, Buckets: latencyBuckets}
	}
	m := &metrics{
		reg: prometheus.NewRegistry(),
		started: prometheus.NewCounter(prometheus.CounterOpts(opts("streams_started_total",
			"Stream initiations the device accepted."))),
		ended: prometheus.NewCounterVec(prometheus.CounterOpts(opts("streams_ended_total",
			"Stream events stored, by result: how an initiation or a relayed stream ended.")), []string{"result"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts(opts("relayed_bytes_total",
			"Bytes relayed by streams that have ended; up is service to device, down is device to service.")), []string{"direction"}),
		handshake: prometheus.NewHistogram(hopts("handshake_seconds",
			"Time from a stream's admission to both of its sides connected to the streaming endpoint, or for a session stream to the device's acceptance.")),
		initiate: prometheus.NewHistogram(hopts("initiate_seconds",
			"Time from a stream's admission to the device's answer, or to the failure of the request to the device.")),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts(opts("rejected_requests_total",
			"HTTP requests answered with an error, by cause.")), []string{"cause"}),
		controlSess: prometheus.NewCounterVec(prometheus.CounterOpts(opts("control_sessions_total",
			"Device control session events: connected, replaced by a newer session, lost without a close, taken over by a newer session on another replica.")), []string{"event"}),
		routed: prometheus.NewCounterVec(prometheus.CounterOpts(opts("routed_requests_total",
			"Stream requests routed between hub replicas over NATS: sent to the replica holding the device, served for another replica, sent when no replica held the device, failed.")), []string{"outcome"}),
		endedBy: make(map[string]prometheus.Counter, len(streamResults)),
	}
	gauge := func(name, help string, f func() int) prometheus.GaugeFunc {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts(opts(name, help)), func() float64 { return float64(f()) })
	}
	// handshakeCounter reads a count of the TLS handshake admission
	// (handshake.go); 0 before Run starts it.
	handshakeCounter := func(name, help string, f func(*handshakeListener) float64) prometheus.CounterFunc {
		return prometheus.NewCounterFunc(prometheus.CounterOpts(opts(name, help)), func() float64 {
			if hl := s.handshakes.Load(); hl != nil {
				return f(hl)
			}
			return 0
		})
	}
	m.reg.MustRegister(
		m.started, m.ended, m.bytes, m.handshake, m.initiate, m.rejected, m.controlSess, m.routed,
		handshakeCounter("tls_handshakes_refused_total",
			"TLS handshakes refused because they waited too long for a slot (the hub was busy with others, as in a reconnect storm); clients retry.",
			func(hl *handshakeListener) float64 { return float64(hl.shed.Load()) }),
		handshakeCounter("tls_handshakes_full_total",
			"TLS handshakes done with a full key exchange and the hub's certificate.",
			func(hl *handshakeListener) float64 { return float64(hl.full.Load()) }),
		handshakeCounter("tls_handshakes_resumed_total",
			"TLS handshakes that resumed a session from a ticket (no certificate): after a restart, the fleet's reconnects should be these.",
			func(hl *handshakeListener) float64 { return float64(hl.resumed.Load()) }),
		handshakeCounter("tls_handshake_wait_seconds_total",
			"Time the admitted TLS handshakes waited for a slot, summed.",
			func(hl *handshakeListener) float64 { return time.Duration(hl.waited.Load()).Seconds() }),
		gauge("tls_handshakes_in_progress", "TLS handshakes running now; at most a few per core run at once, the rest wait for a slot.", func() int {
			if hl := s.handshakes.Load(); hl != nil {
				return len(hl.slots)
			}
			return 0
		}),
		gauge("nats_connected", "1 while a hub replica is connected to NATS, 0 while it reconnects or on a single hub.", func() int {
			if s.cluster != nil && s.cluster.nc.IsConnected() {
				return 1
			}
			return 0
		}),
		gauge("connected_devices", "Devices holding a control session.", func() int {
			s.mu.Lock()
			defer s.mu.Unlock()
			return len(s.sessions)
		}),
		gauge("service_sessions", "Service proxies holding a session, over which they open session streams.", func() int {
			return int(s.svcSessions.Load())
		}),
		gauge("active_streams", "Streams admitted and not yet ended (see Config.MaxStreams).", func() int {
			s.lim.mu.Lock()
			defer s.lim.mu.Unlock()
			return s.lim.streams
		}),
		gauge("pending_handshakes", "Active streams whose two sides have not both connected (see Config.MaxPendingHandshakes).", func() int {
			s.lim.mu.Lock()
			defer s.lim.mu.Unlock()
			return s.lim.pending
		}),
		// The standard go_* (go_goroutines, go_memstats_*) and process_*
		// (process_resident_memory_bytes) series, plus go_gc_heap_live_bytes:
		// the heap the last GC found live. The memstats figures include
		// garbage not yet collected; the live heap is what a connection
		// really costs (docs/scale-benchmarks.md).
		collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(
			collectors.GoRuntimeMetricsRule{Matcher: liveHeapMetric})),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	// Every series exists from the start, at zero, so rate() and alerts
	// work before the first event.
	for _, r := range streamResults {
		m.endedBy[r] = m.ended.WithLabelValues(r)
	}
	m.bytesUp, m.bytesDown = m.bytes.WithLabelValues("up"), m.bytes.WithLabelValues("down")
	for _, c := range []string{causeUnauthorized, causeForbidden, causeBadRequest, causeNotFound,
		causeThrottled, causeUnavailable, causeTimeout, causeError, causeOther} {
		m.rejected.WithLabelValues(c)
	}
	for _, e := range []string{sessionConnected, sessionReplaced, sessionLost, sessionTakenOver} {
		m.controlSess.WithLabelValues(e)
	}
	for _, o := range []string{routeSent, routeServed, routeNoRoute, routeFailed} {
		m.routed.WithLabelValues(o)
	}
	return m
}

// handler serves the metrics in the Prometheus exposition format.
func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// streamEvent counts a stored stream event and the bytes its stream relayed.
func (m *metrics) streamEvent(e registry.StreamEvent) {
	ended, ok := m.endedBy[e.Result]
	if !ok {
		ended = m.endedBy[causeError]
	}
	ended.Inc()
	if e.BytesUp > 0 {
		m.bytesUp.Add(float64(e.BytesUp))
	}
	if e.BytesDown > 0 {
		m.bytesDown.Add(float64(e.BytesDown))
	}
}

// streamStarted counts a stream the device accepted.
func (m *metrics) streamStarted() { m.started.Inc() }

// paired observes the handshake of a stream created at created.
func (m *metrics) paired(created time.Time) { m.handshake.Observe(time.Since(created).Seconds()) }

// answered observes the device's answer to a stream created at created.
func (m *metrics) answered(created time.Time) { m.initiate.Observe(time.Since(created).Seconds()) }

// refused counts an HTTP error response by its status.
func (m *metrics) refused(status int) { m.rejected.WithLabelValues(rejectCause(status)).Inc() }

// sessionAdded counts a new control session, and the one it replaced.
func (m *metrics) sessionAdded(replaced bool) {
	m.controlSess.WithLabelValues(sessionConnected).Inc()
	if replaced {
		m.controlSess.WithLabelValues(sessionReplaced).Inc()
	}
}

// sessionLost counts a control session that died without a close.
func (m *metrics) sessionLost() { m.controlSess.WithLabelValues(sessionLost).Inc() }

// takenOver counts a control session ended for a newer one on another
// replica.
func (m *metrics) takenOver() { m.controlSess.WithLabelValues(sessionTakenOver).Inc() }

// route counts a request routed between replicas.
func (m *metrics) route(outcome string) { m.routed.WithLabelValues(outcome).Inc() }

// rejectCause maps an HTTP error status to the cause label.
func rejectCause(status int) string {
	switch status {
	case http.StatusUnauthorized:
		return causeUnauthorized
	case http.StatusForbidden:
		return causeForbidden
	case http.StatusBadRequest:
		return causeBadRequest
	case http.StatusNotFound:
		return causeNotFound
	case http.StatusTooManyRequests:
		return causeThrottled
	case http.StatusServiceUnavailable:
		return causeUnavailable
	case http.StatusGatewayTimeout:
		return causeTimeout
	}
	if status >= 500 {
		return causeError
	}
	return causeOther
}
