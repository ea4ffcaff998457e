package hubclient_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dsproxy/dsproxy/hubclient"
	"github.com/dsproxy/dsproxy/internal/dsproxytest"
	"github.com/dsproxy/dsproxy/internal/sas"
)

// dialLog is a "hub" that accepts TCP connections and closes them at once,
// recording when each came: every control session attempt fails and the
// device backs off.
type dialLog struct {
	addr string
	mu   sync.Mutex
	at   []time.Time
}

func newDialLog(t *testing.T) *dialLog {
	l := &dialLog{}
	l.addr = dsproxytest.Serve(t, func(c *net.TCPConn) {
		l.mu.Lock()
		l.at = append(l.at, time.Now())
		l.mu.Unlock()
	})
	return l
}

// gaps returns the times between consecutive attempts once there have
// been n of them.
func (l *dialLog) gaps(t *testing.T, n int) []time.Duration {
	t.Helper()
	dsproxytest.Eventually(t, "attempts", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return len(l.at) >= n
	})
	l.mu.Lock()
	defer l.mu.Unlock()
	var gaps []time.Duration
	for i := 1; i < n; i++ {
		gaps = append(gaps, l.at[i].Sub(l.at[i-1]))
	}
	return gaps
}

// runBackoff runs a device client against l until the test ends.
func runBackoff(t *testing.T, l *dialLog, minB, maxB time.Duration) {
	t.Helper()
	connStr := sas.ConnectionString{HostName: l.addr, DeviceID: "dev1", SharedAccessKey: sas.NewKey()}.String()
	dc, err := hubclient.NewDeviceClient(hubclient.DeviceConfig{
		ConnectionString: connStr,
		MinBackoff:       minB,
		MaxBackoff:       maxB,
		Logger:           dsproxytest.Logger(t),
	}, func(context.Context, *hubclient.StreamRequest) {})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- dc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// slack allows for scheduling on a loaded machine and for the failed
// attempt itself (a dial and a TLS handshake cut short), which the gaps
// include.
const slack = 500 * time.Millisecond

// TestBackoffDefaults: with the default configuration the first retry
// comes within MinBackoff (500 ms), so within 1 s even on a loaded
// machine, and the second within twice that.
func TestBackoffDefaults(t *testing.T) {
	l := newDialLog(t)
	runBackoff(t, l, 0, 0)
	gaps := l.gaps(t, 3)
	t.Logf("gaps between attempts: %v", gaps)
	for i, b := range []time.Duration{500 * time.Millisecond, time.Second} {
		if gaps[i] < b/2-5*time.Millisecond || gaps[i] > b+slack {
			t.Errorf("retry %d came after %s, want between %s and %s", i+1, gaps[i], b/2, b)
		}
	}
}

// TestBackoffCap: waits double from MinBackoff, each jittered over the
// upper half of the current backoff, and stop growing at MaxBackoff:
// without the cap the last of these would be over a minute.
func TestBackoffCap(t *testing.T) {
	const minB, maxB = 10 * time.Millisecond, 80 * time.Millisecond
	l := newDialLog(t)
	runBackoff(t, l, minB, maxB)
	gaps := l.gaps(t, 14)
	t.Logf("gaps between attempts: %v", gaps)
	b := minB
	for i, g := range gaps {
		if g < b/2-5*time.Millisecond || g > b+slack {
			t.Errorf("retry %d came after %s, want between %s and %s", i+1, g, b/2, b)
		}
		b = min(2*b, maxB)
	}
}

// logLines collects a client's JSON log lines.
type logLines struct {
	mu    sync.Mutex
	lines []map[string]any
}

func (l *logLines) Write(p []byte) (int, error) {
	var m map[string]any
	if err := json.Unmarshal(bytes.TrimSpace(p), &m); err == nil {
		l.mu.Lock()
		l.lines = append(l.lines, m)
		l.mu.Unlock()
	}
	return len(p), nil
}

// downs returns the "control session down" lines logged so far.
func (l *logLines) downs() []map[string]any { return l.with("control session down") }

// with returns the lines logged so far with message msg.
func (l *logLines) with(msg string) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, m := range l.lines {
		if m["message"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// TestReconnectAfterHubShutdown: a device whose hub shuts down (its close
// frame, then nothing listening) redials with full jitter over a window
// (MaxBackoff here, being below 10 s) that does not grow: its waits stay
// spread over the whole window however many attempts fail, where the
// exponential backoff would by now wait at least half of MaxBackoff every
// time.
func TestReconnectAfterHubShutdown(t *testing.T) {
	const minB, maxB = 5 * time.Millisecond, 400 * time.Millisecond
	srv, _, waitHub := runHubAt(t, t.TempDir(), "127.0.0.1:0")
	logs, dc := runLoggedDevice(t, srv, func(c *hubclient.DeviceConfig) {
		c.MinBackoff, c.MaxBackoff = minB, maxB
	})
	select {
	case <-dc.Connected():
	case <-time.After(dsproxytest.WaitTimeout):
		t.Fatal("device did not connect")
	}

	waitHub() // the close frame, then connection refused
	const n = 30
	dsproxytest.Eventually(t, "attempts against the stopped hub", func() bool { return len(logs.downs()) >= n })
	downs := logs.downs()[:n]
	if e, _ := downs[0]["error"].(string); !strings.Contains(e, "the hub closed the session") {
		t.Errorf("first failure: %q, want the hub's close", e)
	}
	var waits []time.Duration
	for _, m := range downs {
		w, err := time.ParseDuration(m["retry_in"].(string))
		if err != nil {
			t.Fatal(err)
		}
		waits = append(waits, w)
	}
	t.Logf("waits: %v", waits)
	short := 0
	for i, w := range waits {
		if w > maxB {
			t.Errorf("wait %d: %s, beyond the window %s", i, w, maxB)
		}
		// From the 10th on, exponential backoff from 5 ms would wait at
		// least maxB/2 every time.
		if i >= 10 && w < maxB/2 {
			short++
		}
	}
	// 20 draws, each below maxB/2 with probability 1/2: fewer than 3 has
	// a probability of 2e-4.
	if short < 3 {
		t.Errorf("only %d of the waits from the 10th on were below %s: the backoff grew", short, maxB/2)
	}
}
