package hubclient

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/dsproxy/dsproxy/internal/wire"
)

// HubInfo describes a hub's endpoints, like `az iot hub devicestream show`.
type HubInfo = wire.Hub

// ActiveStream is a stream running on the hub: accepted by its device and
// not ended yet.
type ActiveStream struct {
	StreamID  string    `json:"streamId"`
	DeviceID  string    `json:"deviceId"`
	Name      string    `json:"name"`
	Policy    string    `json:"policy"` // the policy that initiated it
	State     string    `json:"state"`  // "waiting" (for a side) or "relaying"
	Mode      string    `json:"mode"`   // "session" or "per-stream"
	StartedAt time.Time `json:"startedAt"`
	// Age is how long the stream had run when the hub answered.
	Age       time.Duration `json:"-"`
	BytesUp   int64         `json:"bytesUp"`   // service → device so far
	BytesDown int64         `json:"bytesDown"` // device → service so far
}

// StreamEvent is one stored stream event: a stream that ended, or an
// initiation that did not get one (see the result list in hub/events.go).
type StreamEvent struct {
	StreamID  string        `json:"streamId,omitempty"`
	DeviceID  string        `json:"deviceId"`
	Policy    string        `json:"policy"`
	Name      string        `json:"name"`
	Result    string        `json:"result"` // "ended", "rejected", "unavailable", ...
	Reason    string        `json:"reason,omitempty"`
	BytesUp   int64         `json:"bytesUp"`
	BytesDown int64         `json:"bytesDown"`
	StartedAt time.Time     `json:"startedAt"`
	Duration  time.Duration `json:"-"`
}

// EventQuery selects stream events. Zero fields select everything.
type EventQuery struct {
	DeviceID string    // only this device
	Since    time.Time // only events that started at or after Since
	Limit    int       // at most this many; 0 leaves the hub's default (1000)
}

// Hub returns the hub's endpoints. Any valid credential may read them.
func (c *ServiceClient) Hub(ctx context.Context) (HubInfo, error) {
	var h HubInfo
	err := c.get(ctx, "show hub", "/hub", nil, &h)
	return h, err
}

// Streams returns the streams running on the hub, oldest first (needs
// RegistryRead).
func (c *ServiceClient) Streams(ctx context.Context) ([]ActiveStream, error) {
	var in []struct {
		ActiveStream
		AgeSeconds float64 `json:"ageSeconds"`
	}
	if err := c.get(ctx, "list streams", "/streams", nil, &in); err != nil {
		return nil, err
	}
	out := make([]ActiveStream, len(in))
	for i, s := range in {
		out[i] = s.ActiveStream
		out[i].Age = fromSeconds(s.AgeSeconds)
	}
	return out, nil
}

// Events returns the stored stream events that match q, newest first
// (needs RegistryRead).
func (c *ServiceClient) Events(ctx context.Context, q EventQuery) ([]StreamEvent, error) {
	v := url.Values{}
	if q.DeviceID != "" {
		v.Set("deviceId", q.DeviceID)
	}
	if !q.Since.IsZero() {
		v.Set("since", q.Since.UTC().Format(time.RFC3339Nano))
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	var in []struct {
		StreamEvent
		DurationSeconds float64 `json:"durationSeconds"`
	}
	if err := c.get(ctx, "list stream events", "/events", v, &in); err != nil {
		return nil, err
	}
	out := make([]StreamEvent, len(in))
	for i, e := range in {
		out[i] = e.StreamEvent
		out[i].Duration = fromSeconds(e.DurationSeconds)
	}
	return out, nil
}

func fromSeconds(s float64) time.Duration {
	return time.Duration(s * float64(time.Second)).Round(time.Millisecond)
}

// get sends a GET with query parameters and decodes the JSON answer into
// out.
func (c *ServiceClient) get(ctx context.Context, op, path string, query url.Values, out any) error {
	auth, err := c.authorization()
	if err != nil {
		return err
	}
	if query == nil {
		query = url.Values{}
	}
	query.Set("api-version", "2020-09-30")
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url("https", path+"?"+query.Encode()), nil)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	req.Header.Set("Authorization", auth)
	resp, err := c.roundTrip(req)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return hubError(op, resp)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s: decode answer: %w", op, err)
	}
	return nil
}
