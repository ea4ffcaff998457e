package hubclient_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"

	"github.com/dsproxy/dsproxy/hubclient"
	"github.com/dsproxy/dsproxy/internal/dsproxytest"
	"github.com/dsproxy/dsproxy/internal/sas"
	"github.com/dsproxy/dsproxy/internal/wire"
)

// hostileHub is a hand-written "hub" that misbehaves on purpose: it takes
// any device's control session, sends SessionReady, and then lets the test
// write whatever bytes it likes on control streams. It plays the attacker
// (or a broken hub), not a stand-in for dsproxy's hub, which the other
// tests run for real.
type hostileHub struct {
	srv      *httptest.Server
	sessions chan *yamux.Session
	dials    atomic.Int64
	wg       sync.WaitGroup
	stop     chan struct{}
}

func newHostileHub(t *testing.T) *hostileHub {
	h := &hostileHub{sessions: make(chan *yamux.Session, 8), stop: make(chan struct{})}
	h.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.dials.Add(1)
		ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{wire.ControlSubprotocol}})
		if err != nil {
			return
		}
		h.wg.Add(1)
		defer h.wg.Done()
		defer ws.CloseNow()
		cfg := yamux.DefaultConfig()
		cfg.LogOutput = io.Discard
		mux, err := yamux.Client(websocket.NetConn(context.Background(), ws, websocket.MessageBinary), cfg)
		if err != nil {
			return
		}
		defer mux.Close()
		st, err := mux.OpenStream()
		if err != nil {
			return
		}
		err = wire.WriteMessage(st, &wire.SessionReady{DeviceID: "dev1"})
		st.Close()
		if err != nil {
			return
		}
		h.sessions <- mux
		select {
		case <-mux.CloseChan():
		case <-h.stop:
		}
	}))
	h.srv.StartTLS()
	t.Cleanup(func() {
		close(h.stop)
		h.srv.Close()
		h.wg.Wait()
	})
	return h
}

// connString is a device connection string for the hostile hub.
func (h *hostileHub) connString() string {
	return sas.ConnectionString{
		HostName:        strings.TrimPrefix(h.srv.URL, "https://"),
		DeviceID:        "dev1",
		SharedAccessKey: sas.NewKey(),
	}.String()
}

// syncBuffer is a bytes.Buffer safe for concurrent writes and reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestMalformedStreamRequests: a hub that sends a malformed StreamRequest
// (a garbage or oversized length prefix, invalid JSON, missing fields, a
// message cut short) gets that control stream closed without an answer
// and a warning in the device's log; the device keeps its session, never
// calls its handler for the bad request, and answers the next good one.
func TestMalformedStreamRequests(t *testing.T) {
	h := newHostileHub(t)
	var logs syncBuffer
	handled := make(chan string, 16)
	dc, err := hubclient.NewDeviceClient(hubclient.DeviceConfig{
		ConnectionString:       h.connString(),
		TLSConfig:              h.srv.Client().Transport.(*http.Transport).TLSClientConfig,
		ConnectionWriteTimeout: 300 * time.Millisecond, // how long a request may take to arrive
		MinBackoff:             20 * time.Millisecond,
		MaxBackoff:             200 * time.Millisecond,
		Logger:                 zerolog.New(&logs).Level(zerolog.DebugLevel),
	}, func(ctx context.Context, req *hubclient.StreamRequest) {
		handled <- req.Name
		req.Reject("handled " + req.Name)
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- dc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("device stopped with: %v", err)
		}
	})
	var mux *yamux.Session
	select {
	case mux = <-h.sessions:
	case <-time.After(dsproxytest.WaitTimeout):
		t.Fatal("the device did not connect")
	}
	select {
	case <-dc.Connected():
	case <-time.After(dsproxytest.WaitTimeout):
		t.Fatal("the device did not take the session as up")
	}

	frame := func(body string) []byte {
		return append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...)
	}
	good := `{"streamId":"s1","name":"ssh","url":"wss://127.0.0.1:1/streams/s1","authToken":"TOKEN-e4f1c","deadline":"2030-01-01T00:00:00Z"}`
	for _, tc := range []struct {
		name string
		msg  []byte
		fin  bool // close the stream after the message
	}{
		{"garbage length prefix", append([]byte{0xff, 0xff, 0xff, 0xff}, good...), true},
		{"length over the limit", append(binary.BigEndian.AppendUint32(nil, wire.MaxMessageSize+1), good...), true},
		{"empty message", frame(""), true},
		{"invalid JSON", frame(`{"streamId": s1}`), true},
		{"not an object", frame(`["ssh"]`), true},
		{"wrong field type", frame(`{"streamId":1,"name":"ssh"}`), true},
		{"missing fields", frame(`{"streamId":"s1","name":"ssh"}`), true},
		{"no token", frame(strings.Replace(good, `"authToken":"TOKEN-e4f1c"`, `"authToken":""`, 1)), true},
		{"name too long", frame(strings.Replace(good, `"ssh"`, `"`+strings.Repeat("n", wire.MaxStreamNameLen+1)+`"`, 1)), true},
		{"cut short, stream closed", frame(good)[:20], true},
		{"cut short, stream left open", frame(good)[:20], false},
		{"length prefix only, stream left open", frame(good)[:4], false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			warnings := strings.Count(logs.String(), "bad stream request from hub")
			st, err := mux.OpenStream()
			if err != nil {
				t.Fatalf("open control stream: %v", err)
			}
			defer st.Close()
			st.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
			if _, err := st.Write(tc.msg); err != nil {
				t.Fatal(err)
			}
			if tc.fin {
				st.Close() // yamux: a half-close, the stream still reads
			}
			// The device closes the stream without answering.
			got, err := io.ReadAll(st)
			var ne interface{ Timeout() bool }
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("the device kept the control stream open")
			}
			if len(got) != 0 {
				t.Errorf("the device answered %q", got)
			}
			dsproxytest.Eventually(t, "a warning in the device's log", func() bool {
				return strings.Count(logs.String(), "bad stream request from hub") > warnings
			})
			select {
			case name := <-handled:
				t.Errorf("the handler got stream request %q", name)
			default:
			}

			// The session is intact: the next good request is answered.
			st2, err := mux.OpenStream()
			if err != nil {
				t.Fatalf("open control stream after the bad one: %v", err)
			}
			defer st2.Close()
			st2.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
			if err := wire.WriteMessage(st2, &wire.StreamRequest{StreamID: "s2", Name: "ok", URL: "wss://127.0.0.1:1/streams/s2", AuthToken: "t", Deadline: time.Now().Add(time.Minute)}); err != nil {
				t.Fatal(err)
			}
			var resp wire.StreamResponse
			if err := wire.ReadMessage(st2, &resp); err != nil || resp.Accepted || resp.Reason != "handled ok" {
				t.Fatalf("answer to the next request: %+v, %v; want rejected as handled", resp, err)
			}
			<-handled
		})
	}
	if n := h.dials.Load(); n != 1 {
		t.Errorf("the device dialled the hub %d times, want once: it dropped its session", n)
	}
	select {
	case <-dc.Connected():
	default:
		t.Error("the device's session is down")
	}
	// The log says what was wrong, not what was sent.
	if strings.Contains(logs.String(), "TOKEN-e4f1c") {
		t.Errorf("the device's log quotes a request:\n%s", logs.String())
	}
}
