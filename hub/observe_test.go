package hub_test

import (
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dsproxy/dsproxy/hub"
	"github.com/dsproxy/dsproxy/hubclient"
	"github.com/dsproxy/dsproxy/internal/dsproxytest"
)

// streamsNow lists the hub's active streams with sc.
func streamsNow(t *testing.T, sc *hubclient.ServiceClient) []hubclient.ActiveStream {
	t.Helper()
	ss, err := sc.Streams(ctxFor(t))
	if err != nil {
		t.Fatalf("list streams: %v", err)
	}
	return ss
}

// echoed writes msg on c and reads it back.
func echoed(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo: got %q, %v", buf, err)
	}
}

// TestActiveStreams: a relayed stream shows up in GET /streams with its
// device, name, policy and byte counts, which grow as bytes flow, and is
// gone once it is closed.
func TestActiveStreams(t *testing.T) {
	w := dsproxytest.NewHub(t)
	w.StartDevice(t, "dev1", "ssh="+dsproxytest.Echo(t))
	addr := w.StartService(t, "dev1", "ssh")

	if ss := streamsNow(t, w.Service); len(ss) != 0 {
		t.Fatalf("streams before any was opened: %+v", ss)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echoed(t, c, "hello")

	var s hubclient.ActiveStream
	dsproxytest.Eventually(t, "the stream relaying with 5 bytes each way", func() bool {
		ss := streamsNow(t, w.Service)
		if len(ss) != 1 {
			return false
		}
		s = ss[0]
		return s.State == hub.StreamRelaying && s.BytesUp == 5 && s.BytesDown == 5
	})
	if s.DeviceID != "dev1" || s.Name != "ssh" || s.Policy != "iothubowner" || s.StreamID == "" {
		t.Errorf("stream %+v: want device dev1, name ssh, policy iothubowner and an ID", s)
	}
	if s.StartedAt.IsZero() || time.Since(s.StartedAt) > time.Minute || s.Age < 0 {
		t.Errorf("stream started at %v, age %v", s.StartedAt, s.Age)
	}

	echoed(t, c, strings.Repeat("x", 1000))
	dsproxytest.Eventually(t, "the byte counts to grow", func() bool {
		ss := streamsNow(t, w.Service)
		return len(ss) == 1 && ss[0].StreamID == s.StreamID && ss[0].BytesUp == 1005 && ss[0].BytesDown == 1005
	})

	c.Close()
	dsproxytest.Eventually(t, "the stream to leave the list", func() bool {
		return len(streamsNow(t, w.Service)) == 0
	})
}

// TestWaitingStream: an accepted stream whose sides have not both
// connected is listed as waiting until its handshake deadline ends it.
func TestWaitingStream(t *testing.T) {
	w := dsproxytest.NewHub(t, func(c *hub.Config) { c.HandshakeTimeout = time.Second })
	key := addDevice(t, w, "dev1")
	d := connectRawDevice(t, w, "dev1", deviceToken(t, w, "dev1", key))
	rs := openRaw(t, w, d, "dev1", "rdp")

	ss := streamsNow(t, w.Service)
	if len(ss) != 1 || ss[0].StreamID != rs.id || ss[0].State != hub.StreamWaiting || ss[0].Name != "rdp" {
		t.Fatalf("streams after an accepted initiation: %+v, want %s waiting", ss, rs.id)
	}
	dsproxytest.Eventually(t, "the expired stream to leave the list", func() bool {
		return len(streamsNow(t, w.Service)) == 0
	})
}

// TestEventsQuery: GET /events returns the stored events newest first,
// filtered by device, start time and count, and refuses malformed
// parameters with 400.
func TestEventsQuery(t *testing.T) {
	w := dsproxytest.NewHub(t)
	w.StartDevice(t, "dev1", "ssh="+dsproxytest.Echo(t))
	addr := w.StartService(t, "dev1", "ssh")

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	echoed(t, c, "hello")
	c.Close()
	var first []hubclient.StreamEvent
	dsproxytest.Eventually(t, "the stream's event", func() bool {
		first, err = w.Service.Events(ctxFor(t), hubclient.EventQuery{DeviceID: "dev1"})
		return err == nil && len(first) == 1
	})
	// Stored start times have microsecond precision; the next event
	// starts after this stream has run.
	between := first[0].StartedAt.Add(time.Microsecond)
	if err := openStream(t, w.Service, "ghost", "ssh"); err == nil {
		t.Fatal("stream to an unregistered device opened")
	}

	// Events are written in the background: the refusal's comes soon after.
	var all []hubclient.StreamEvent
	dsproxytest.Eventually(t, "the refusal's event", func() bool {
		all, err = w.Service.Events(ctxFor(t), hubclient.EventQuery{})
		return err == nil && len(all) == 2
	})
	if len(all) != 2 || all[0].DeviceID != "ghost" || all[1].DeviceID != "dev1" {
		t.Fatalf("events %+v: want ghost's then dev1's", all)
	}
	if all[0].Result != "unavailable" || all[1].Result != "ended" {
		t.Errorf("results %q, %q: want unavailable, ended", all[0].Result, all[1].Result)
	}
	if e := all[1]; e.BytesUp != 5 || e.BytesDown != 5 || e.Name != "ssh" || e.Policy != "iothubowner" || e.StreamID == "" || e.Duration <= 0 {
		t.Errorf("dev1's event %+v: want 5 bytes each way, name, policy, stream ID and a duration", e)
	}

	for _, tc := range []struct {
		name string
		q    hubclient.EventQuery
		want []string // device IDs, newest first
	}{
		{"device", hubclient.EventQuery{DeviceID: "dev1"}, []string{"dev1"}},
		{"since", hubclient.EventQuery{Since: between}, []string{"ghost"}},
		{"limit", hubclient.EventQuery{Limit: 1}, []string{"ghost"}},
		{"nothing", hubclient.EventQuery{DeviceID: "dev2"}, nil},
	} {
		es, err := w.Service.Events(ctxFor(t), tc.q)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		var got []string
		for _, e := range es {
			got = append(got, e.DeviceID)
		}
		if strings.Join(got, ",") != strings.Join(tc.want, ",") {
			t.Errorf("%s: events of %v, want %v", tc.name, got, tc.want)
		}
	}

	auth := ownerToken(t, w)
	for _, q := range []string{"since=yesterday", "since=2024-05-01", "limit=0", "limit=-1", "limit=abc", "limit=10001", "deviceId=a%20b"} {
		status, body := rawRequestStatus(t, w, http.MethodGet, "/events?"+q, auth)
		if status != http.StatusBadRequest {
			t.Errorf("GET /events?%s: status %d, want 400 (%s)", q, status, body)
		}
	}
}

// TestObserveNeedsRegistryRead: GET /streams and /events show who
// reaches which device, so a policy that may only open streams is
// refused; GET /hub answers any valid credential.
func TestObserveNeedsRegistryRead(t *testing.T) {
	w := dsproxytest.NewHub(t)
	svc := w.ServiceClient(t, w.Server.ServiceConnectionString())
	if _, err := svc.Streams(ctxFor(t)); !errors.Is(err, hubclient.ErrForbidden) {
		t.Errorf("streams with the service policy: %v, want ErrForbidden", err)
	}
	if _, err := svc.Events(ctxFor(t), hubclient.EventQuery{}); !errors.Is(err, hubclient.ErrForbidden) {
		t.Errorf("events with the service policy: %v, want ErrForbidden", err)
	}
	h, err := svc.Hub(ctxFor(t))
	if err != nil {
		t.Fatalf("hub with the service policy: %v", err)
	}
	if h.HostName != w.Server.Addr() || len(h.StreamingEndpoints) != 1 || h.StreamingEndpoints[0] != "https://"+w.Server.Addr() {
		t.Errorf("hub info %+v", h)
	}
	for _, path := range []string{"/streams", "/events"} {
		if status, _ := rawRequestStatus(t, w, http.MethodGet, path, ""); status != http.StatusUnauthorized {
			t.Errorf("GET %s without a credential: status %d, want 401", path, status)
		}
	}
}
