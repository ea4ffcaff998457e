package hub

import (
	"fmt"
	"math"
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/dsproxy/dsproxy/hub/registry"
)

// Watching the hub (issue #5): GET /streams lists the streams running now,
// GET /events the stored stream events (events.go). Both need RegistryRead,
// like the device registry: they show who reaches which device.

// Stream states in [ActiveStreamJSON].
const (
	StreamWaiting  = "waiting"  // accepted by the device; a side has not connected yet
	StreamRelaying = "relaying" // both sides connected; the hub relays
)

// Stream modes in [ActiveStreamJSON]: how the stream is carried.
const (
	StreamModeSession   = "session"    // over the service's session and the device's control session
	StreamModePerStream = "per-stream" // over a WebSocket per side
)

// ActiveStreamJSON is a stream GET /streams shows: one the device accepted
// and that has not ended yet.
type ActiveStreamJSON struct {
	StreamID   string  `json:"streamId"`
	DeviceID   string  `json:"deviceId"`
	Name       string  `json:"name"`
	Policy     string  `json:"policy"` // the policy that initiated it
	State      string  `json:"state"`  // StreamWaiting or StreamRelaying
	Mode       string  `json:"mode"`   // StreamModeSession or StreamModePerStream
	StartedAt  string  `json:"startedAt"`
	AgeSeconds float64 `json:"ageSeconds"`
	BytesUp    int64   `json:"bytesUp"`   // service → device so far
	BytesDown  int64   `json:"bytesDown"` // device → service so far
}

// StreamEventJSON is a stored stream event as GET /events shows it.
type StreamEventJSON struct {
	StreamID        string  `json:"streamId,omitempty"` // empty when no stream was minted
	DeviceID        string  `json:"deviceId"`
	Policy          string  `json:"policy"`
	Name            string  `json:"name"`
	Result          string  `json:"result"`
	Reason          string  `json:"reason,omitempty"`
	BytesUp         int64   `json:"bytesUp"`
	BytesDown       int64   `json:"bytesDown"`
	StartedAt       string  `json:"startedAt"`
	DurationSeconds float64 `json:"durationSeconds"`
}

// MaxEventsPerRequest bounds the limit parameter of GET /events.
const MaxEventsPerRequest = 10000

// defaultEventsPerRequest is GET /events' limit when none is given.
const defaultEventsPerRequest = 1000

// secondsOf rounds d to milliseconds and returns it in seconds.
func secondsOf(d time.Duration) float64 {
	return math.Round(float64(d)/float64(time.Millisecond)) / 1000
}

// activeStreams returns the streams accepted and not yet ended, oldest
// first. A stream is in s.streams until both sides connect and in s.relays
// from then until its relay ends (streams.go); endLocked removes it from
// both, so the two maps under s.mu are the registry of active streams.
func (s *Server) activeStreams(now time.Time) []ActiveStreamJSON {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ActiveStreamJSON, 0, len(s.streams)+len(s.relays))
	add := func(st *stream, state string) {
		out = append(out, ActiveStreamJSON{
			StreamID:   st.id,
			DeviceID:   st.deviceID,
			Name:       st.name,
			Policy:     st.policy,
			State:      state,
			Mode:       StreamModePerStream,
			StartedAt:  st.created.UTC().Format(time.RFC3339),
			AgeSeconds: secondsOf(now.Sub(st.created)),
			BytesUp:    st.bytesUp.Load(),
			BytesDown:  st.bytesDown.Load(),
		})
	}
	for _, st := range s.streams {
		// Not accepted yet: the device is still deciding, and a
		// rejection is an event, not a stream.
		if st.accepted && !st.closed {
			add(st, StreamWaiting)
		}
	}
	for st := range s.relays {
		if !st.closed {
			add(st, StreamRelaying)
			if st.inline {
				out[len(out)-1].Mode = StreamModeSession
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].AgeSeconds != out[j].AgeSeconds {
			return out[i].AgeSeconds > out[j].AgeSeconds
		}
		return out[i].StreamID < out[j].StreamID
	})
	return out
}

func (s *Server) handleActiveStreams(w http.ResponseWriter, r *http.Request) {
	if _, ok := s.require(w, r, "", registry.RegistryRead); !ok {
		return
	}
	writeJSON(w, http.StatusOK, s.activeStreams(time.Now()))
}

// eventFilter reads GET /events' query: deviceId (exact), since (RFC 3339)
// and limit (1 to MaxEventsPerRequest).
func eventFilter(r *http.Request) (registry.EventFilter, *apiError) {
	q := r.URL.Query()
	f := registry.EventFilter{Limit: defaultEventsPerRequest}
	if id := q.Get("deviceId"); id != "" {
		if aerr := checkDeviceID(id); aerr != nil {
			return f, aerr
		}
		f.DeviceID = id
	}
	if v := q.Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return f, errBadRequest(fmt.Sprintf("since %q: want an RFC 3339 time such as 2024-05-01T12:00:00Z", v))
		}
		f.Since = t
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxEventsPerRequest {
			return f, errBadRequest(fmt.Sprintf("limit %q: want a number from 1 to %d", v, MaxEventsPerRequest))
		}
		f.Limit = n
	}
	return f, nil
}

func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	if _, ok := s.require(w, r, "", registry.RegistryRead); !ok {
		return
	}
	f, aerr := eventFilter(r)
	if aerr != nil {
		s.writeError(w, r, aerr.status, aerr)
		return
	}
	es, err := s.reg.StreamEvents(r.Context(), f)
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	out := make([]StreamEventJSON, len(es))
	for i, e := range es {
		out[i] = StreamEventJSON{
			StreamID:        e.StreamID,
			DeviceID:        e.DeviceID,
			Policy:          e.Policy,
			Name:            e.Name,
			Result:          e.Result,
			Reason:          e.Reason,
			BytesUp:         e.BytesUp,
			BytesDown:       e.BytesDown,
			StartedAt:       e.Started.UTC().Format(time.RFC3339Nano),
			DurationSeconds: secondsOf(e.Duration),
		}
	}
	writeJSON(w, http.StatusOK, out)
}
