package hub_test

// GET /metrics, scraped over HTTPS from a real hub while a real device,
// service proxy and echo target carry a stream through it.

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dsproxy/dsproxy/internal/dsproxytest"
	"github.com/dsproxy/dsproxy/internal/sas"
)

// scrape fetches GET /metrics without credentials and returns its body and
// its samples, keyed by series as written ("name" or `name{label="v"}`).
func scrape(t *testing.T, w *dsproxytest.Hub) (string, map[string]float64) {
	t.Helper()
	resp, err := httpClient(w.ClientTLS).Get("https://" + w.Addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s: %s", resp.Status, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("GET /metrics Content-Type %q, want text/plain", ct)
	}
	samples := make(map[string]float64)
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			t.Fatalf("bad metrics line %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad metrics line %q: %v", line, err)
		}
		samples[line[:i]] = v
	}
	return string(body), samples
}

// sample returns one series' value, failing the test when it is absent.
func sample(t *testing.T, samples map[string]float64, series string) float64 {
	t.Helper()
	v, ok := samples[series]
	if !ok {
		t.Fatalf("no series %s in /metrics", series)
	}
	return v
}

func TestMetricsStream(t *testing.T) {
	const deviceID = "metrics-device-5c1e"
	w := dsproxytest.NewHub(t)
	echo := dsproxytest.Echo(t)
	devConnStr := w.AddDevice(t, deviceID)
	w.RunDevice(t, devConnStr, nil, "ssh="+echo)
	addr := w.StartService(t, deviceID, "ssh")

	_, m := scrape(t, w)
	if v := sample(t, m, "dsproxy_hub_connected_devices"); v != 1 {
		t.Errorf("connected_devices = %v, want 1", v)
	}
	if v := sample(t, m, `dsproxy_hub_control_sessions_total{event="connected"}`); v < 1 {
		t.Errorf(`control_sessions_total{event="connected"} = %v, want ≥ 1`, v)
	}

	const n = 100_000
	payload := bytes.Repeat([]byte("metrics!"), n/8)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
	writeErr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		writeErr <- err
	}()
	got, err := io.ReadAll(c) // the echo half-closes after echoing everything
	if err != nil {
		t.Fatal(err)
	}
	if err := <-writeErr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echoed %d bytes, want the %d sent", len(got), len(payload))
	}
	c.Close()

	var body string
	dsproxytest.Eventually(t, "a stream ended in /metrics", func() bool {
		body, m = scrape(t, w)
		return m[`dsproxy_hub_streams_ended_total{result="ended"}`] >= 1
	})
	for series, min := range map[string]float64{
		"dsproxy_hub_streams_started_total":                 1,
		`dsproxy_hub_relayed_bytes_total{direction="up"}`:   n,
		`dsproxy_hub_relayed_bytes_total{direction="down"}`: n,
		"dsproxy_hub_handshake_seconds_count":               1,
		"dsproxy_hub_initiate_seconds_count":                1,
	} {
		if v := sample(t, m, series); v < min {
			t.Errorf("%s = %v, want ≥ %v", series, v, min)
		}
	}
	for _, series := range []string{"dsproxy_hub_active_streams", "dsproxy_hub_pending_handshakes"} {
		if v := sample(t, m, series); v != 0 {
			t.Errorf("%s = %v after the stream ended, want 0", series, v)
		}
	}

	// Counts only: nothing that names or unlocks a device or the hub.
	devCS, err := sas.ParseConnectionString(devConnStr)
	if err != nil {
		t.Fatal(err)
	}
	for what, secret := range map[string]string{
		"device ID":  deviceID,
		"device key": devCS.SharedAccessKey,
		"owner key":  ownerKey(t, w),
	} {
		if strings.Contains(body, secret) {
			t.Errorf("/metrics reveals the %s", what)
		}
	}
}

func TestMetricsRejectedRequests(t *testing.T) {
	w := dsproxytest.NewHub(t)
	other := dsproxytest.NewHub(t)
	const series = `dsproxy_hub_rejected_requests_total{cause="unauthorized"}`
	_, before := scrape(t, w)

	resp, err := httpClient(w.ClientTLS).Get("https://" + w.Addr + "/devices")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("GET /devices without a token: %s, want 401", resp.Status)
	}

	_, after := scrape(t, w)
	if got, want := sample(t, after, series), sample(t, before, series)+1; got != want {
		t.Errorf("%s = %v, want %v", series, got, want)
	}
	// Each hub has its own registry.
	if _, m := scrape(t, other); sample(t, m, series) != 0 {
		t.Errorf("another hub's %s = %v, want 0", series, m[series])
	}
}

// The hub's process and Go runtime series, which the scale benchmarks
// (docs/scale-benchmarks.md) read to measure the hub's memory per device
// and per stream.
func TestMetricsRuntime(t *testing.T) {
	w := dsproxytest.NewHub(t)
	runtime.GC() // the hub runs in this process: go_gc_heap_live_bytes needs one GC
	_, m := scrape(t, w)
	for _, series := range []string{
		"go_goroutines",
		"go_memstats_heap_inuse_bytes",
		"go_memstats_stack_inuse_bytes",
		"go_memstats_sys_bytes",
		"go_gc_heap_live_bytes",
		"process_resident_memory_bytes",
	} {
		if v := sample(t, m, series); v <= 0 {
			t.Errorf("%s = %v, want > 0", series, v)
		}
	}
	// The scrape's own connection is past its handshake: none runs, none
	// was refused.
	for _, series := range []string{"dsproxy_hub_tls_handshakes_refused_total", "dsproxy_hub_tls_handshakes_in_progress", "dsproxy_hub_nats_connected"} {
		if v := sample(t, m, series); v != 0 {
			t.Errorf("%s = %v, want 0", series, v)
		}
	}
}

// TestMetricsTLSResumption: the hub counts the TLS handshakes that
// resumed a session apart from the full ones (issue 6: after a restart
// the fleet's reconnects should resume), and the wait for a slot.
func TestMetricsTLSResumption(t *testing.T) {
	w := dsproxytest.NewHub(t)
	_, before := scrape(t, w)
	cache := tls.NewLRUClientSessionCache(4)
	if healthzResumed(t, w.Addr, w.ClientTLS, cache) {
		t.Error("first connection resumed a session")
	}
	if !healthzResumed(t, w.Addr, w.ClientTLS, cache) {
		t.Error("second connection did not resume")
	}
	_, after := scrape(t, w) // a full handshake of its own
	delta := func(series string) float64 { return sample(t, after, series) - sample(t, before, series) }
	if d := delta("dsproxy_hub_tls_handshakes_full_total"); d != 2 {
		t.Errorf("full handshakes counted %v, want 2 (the first healthz, the scrape)", d)
	}
	if d := delta("dsproxy_hub_tls_handshakes_resumed_total"); d != 1 {
		t.Errorf("resumed handshakes counted %v, want 1", d)
	}
	if v := sample(t, after, "dsproxy_hub_tls_handshake_wait_seconds_total"); v < 0 {
		t.Errorf("handshake wait %v, want ≥ 0", v)
	}
}
