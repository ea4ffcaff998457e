package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParseVmRSS(t *testing.T) {
	status := "Name:\tdsproxy\nVmPeak:\t  999 kB\nVmRSS:\t   12345 kB\nThreads:\t7\n"
	got, err := parseVmRSS(strings.NewReader(status))
	if err != nil || got != 12345*1024 {
		t.Fatalf("parseVmRSS = %d, %v; want %d", got, err, 12345*1024)
	}
	for name, in := range map[string]string{
		"missing":   "Name:\tx\nThreads:\t1\n",
		"unit":      "VmRSS:\t12 MB\n",
		"negative":  "VmRSS:\t-1 kB\n",
		"not digit": "VmRSS:\tlots kB\n",
		"no value":  "VmRSS:\n",
	} {
		if _, err := parseVmRSS(strings.NewReader(in)); err == nil {
			t.Errorf("%s: parseVmRSS(%q) succeeded", name, in)
		}
	}
}

func TestParseStatCPU(t *testing.T) {
	// Field 2 may hold spaces and parentheses; utime 150 and stime 50
	// ticks are 2 s.
	stat := "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 7 0 100 0 0\n"
	got, err := parseStatCPU(stat)
	if err != nil || got != 2*time.Second {
		t.Fatalf("parseStatCPU = %v, %v; want 2s", got, err)
	}
	for _, bad := range []string{"", "1234 (x) S 1 2", "1234 (x) S 1 1234 1234 0 -1 4194560 100 0 0 0 x 50 0"} {
		if _, err := parseStatCPU(bad); err == nil {
			t.Errorf("parseStatCPU(%q) succeeded", bad)
		}
	}
	if cpu, err := readCPU(os.Getpid()); err != nil || cpu < 0 {
		t.Errorf("readCPU(self) = %v, %v", cpu, err)
	}
}

func TestReadRSSSelf(t *testing.T) {
	rss, err := readRSS(os.Getpid())
	if err != nil || rss <= 0 {
		t.Fatalf("readRSS(self) = %d, %v", rss, err)
	}
}

func TestParseMetrics(t *testing.T) {
	in := `# HELP go_goroutines Number of goroutines.
# TYPE go_goroutines gauge
go_goroutines 42

dsproxy_hub_streams_ended_total{result="ended"} 7
weird{path="a b}c"} 1.5e+06 1700000000000
go_memstats_last_gc_time_seconds 1.7000000001e+09
`
	m, err := parseMetrics(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{
		"go_goroutines": 42,
		`dsproxy_hub_streams_ended_total{result="ended"}`: 7,
		`weird{path="a b}c"}`:                             1.5e6,
		"go_memstats_last_gc_time_seconds":                1.7000000001e9,
	}
	if len(m) != len(want) {
		t.Errorf("got %d samples, want %d: %v", len(m), len(want), m)
	}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %v, want %v", k, m[k], v)
		}
	}
	for _, bad := range []string{"novalue", "x{a=\"b\"}", "x notanumber", "x 1 2 3"} {
		if _, err := parseMetrics(strings.NewReader(bad + "\n")); err == nil {
			t.Errorf("parseMetrics(%q) succeeded", bad)
		}
	}
}

func TestHubGoMemory(t *testing.T) {
	m := map[string]float64{
		"go_gc_heap_live_bytes": 1, "go_memstats_heap_inuse_bytes": 2, "go_memstats_stack_inuse_bytes": 3,
		"go_memstats_sys_bytes": 4, "go_goroutines": 5, "go_memstats_last_gc_time_seconds": 1.5e9,
	}
	g, err := hubGoMemory(m)
	if err != nil {
		t.Fatal(err)
	}
	if g.HeapLive != 1 || g.HeapInuse != 2 || g.StackInuse != 3 || g.Sys != 4 || g.Goroutines != 5 {
		t.Errorf("hubGoMemory = %+v", g)
	}
	if want := time.Unix(1_500_000_000, 0); !g.LastGC.Equal(want) {
		t.Errorf("LastGC = %v, want %v", g.LastGC, want)
	}
	delete(m, "go_gc_heap_live_bytes")
	if _, err := hubGoMemory(m); err == nil {
		t.Error("hubGoMemory without go_gc_heap_live_bytes succeeded")
	}
}

func TestPer(t *testing.T) {
	before := memory{RSS: 1000, Go: &goMemory{HeapLive: 100, Goroutines: 10}}
	after := memory{RSS: 5000, Go: &goMemory{HeapLive: 500, Goroutines: 50}}
	p := per(before, after, 4)
	if p.RSS != 1000 || p.HeapLive != 100 || p.Goroutines != 10 {
		t.Errorf("per = %+v", p)
	}
	if p := per(memory{RSS: 1}, memory{RSS: 3}, 2); p.RSS != 1 || p.HeapLive != 0 {
		t.Errorf("per without Go figures = %+v", p)
	}
	if p := per(before, after, 0); p != (perUnit{}) {
		t.Errorf("per over 0 = %+v", p)
	}
}

func TestSummarize(t *testing.T) {
	var xs []float64
	for i := 100; i >= 1; i-- {
		xs = append(xs, float64(i))
	}
	s := summarize(xs)
	want := summary{N: 100, Min: 1, P50: 50, P90: 90, P99: 99, Max: 100}
	if s != want {
		t.Errorf("summarize(1..100) = %+v, want %+v", s, want)
	}
	if s := summarize([]float64{7}); s.P50 != 7 || s.P99 != 7 || s.N != 1 {
		t.Errorf("summarize([7]) = %+v", s)
	}
	if s := summarize(nil); s != (summary{}) {
		t.Errorf("summarize(nil) = %+v", s)
	}
}

func TestHistogram(t *testing.T) {
	got := histogram([]float64{0.1, 0.9, 1.0, 3.5, -0.2}, 1)
	if want := []int{3, 1, 0, 1}; !slices.Equal(got, want) {
		t.Errorf("histogram = %v, want %v", got, want)
	}
	if histogram(nil, 1) != nil || histogram([]float64{1}, 0) != nil {
		t.Error("histogram of nothing, or of width 0, is not nil")
	}
	if s := histString([]int{3, 0, 2}, 1); s != "0s:3 2s:2" {
		t.Errorf("histString = %q", s)
	}
	if got, want := rebucket([]int{1, 2, 3, 4, 5, 6, 7}, 5), []int{15, 13}; !slices.Equal(got, want) {
		t.Errorf("rebucket = %v, want %v", got, want)
	}
	if s := histString(rebucket([]int{0, 0, 0, 0, 0, 1, 2}, 5), 5); s != "5s:3" {
		t.Errorf("histString of 5 s buckets = %q", s)
	}
}

func TestFailureClass(t *testing.T) {
	for msg, want := range map[string]string{
		`connect control session: dial tcp 127.0.0.1:1: connect: connection refused`:                                                                                  "refused",
		`connect control session: the hub is shutting down (503)`:                                                                                                     "unavailable",
		`connect control session: too many requests (429)`:                                                                                                            "throttled",
		`connect control session: read tcp ...: read: connection reset by peer`:                                                                                       "reset",
		`connect control session: context deadline exceeded`:                                                                                                          "timeout",
		`control session: no ready message from the hub: i/o timeout`:                                                                                                 "timeout",
		`connect control session: failed to WebSocket dial: unexpected EOF`:                                                                                           "eof",
		`connect control session: tls: failed to verify certificate: x509: expired`:                                                                                   "tls",
		`connect control session: failed to WebSocket dial: failed to send handshake request: Get "https://h/devices/d/control": http: server closed idle connection`: "closed",
		`something new`: "other",
	} {
		if got := failureClass(msg); got != want {
			t.Errorf("failureClass(%q) = %s, want %s", msg, got, want)
		}
	}
}

// A fleet of three through a restart, fed the log lines a DeviceClient
// writes.
func TestFleetRestart(t *testing.T) {
	f := newFleet(3)
	t0 := time.Now()
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	up := logLine{Message: "control session up"}
	down := func(err, retry string) logLine {
		return logLine{Message: "control session down", Error: err, RetryIn: retry}
	}
	for i := range 3 {
		f.event(i, up, at(0))
	}
	// A failure before the restart is not the storm's.
	f.event(0, down("control session ended: EOF", "400ms"), at(0.5))
	f.event(0, up, at(1))
	if f.connected() != 3 {
		t.Fatalf("connected = %d, want 3", f.connected())
	}
	f.markRestart()
	f.event(0, down("control session ended: EOF", "300ms"), at(10)) // the drop
	f.event(1, down("control session ended: EOF", "450ms"), at(10.1))
	f.event(2, down("control session ended: EOF", "250ms"), at(10.2))
	if f.connected() != 0 {
		t.Fatalf("connected after the drop = %d, want 0", f.connected())
	}
	f.event(0, down("dial: connection refused", "800ms"), at(10.5))
	f.event(0, down("dial: connection refused", "1.6s"), at(11.5))
	f.event(1, down("the hub is shutting down (503)", "900ms"), at(10.6))
	f.event(0, up, at(13.5))
	f.event(1, up, at(11.6))
	if f.back() != 2 {
		t.Fatalf("back = %d, want 2", f.back())
	}
	resumed, dial, ready := true, 100.0, 50.0
	f.event(2, logLine{Message: "control session up", TLSResumed: &resumed, Dial: &dial, Ready: &ready}, at(10.7))
	rr := f.restartReport(at(10.05), at(11))
	if rr.Back != 3 || f.back() != 3 {
		t.Errorf("back = %d, want 3", rr.Back)
	}
	if !near(rr.AllBackSeconds, 3.5) || !near(rr.HubUpSeconds, 1) || !near(rr.HubDownSeconds, 0.05) {
		t.Errorf("times: all back %v, hub down %v up %v", rr.AllBackSeconds, rr.HubDownSeconds, rr.HubUpSeconds)
	}
	dir := t.TempDir()
	exited, started := filepath.Join(dir, "exited"), filepath.Join(dir, "started")
	os.WriteFile(exited, []byte(strconv.FormatInt(at(10.4).UnixNano(), 10)+"\n"), 0o600)
	os.WriteFile(started, []byte(strconv.FormatInt(at(10.5).UnixNano(), 10)), 0o600)
	if err := rr.addScriptTimes(f.dropTime(), exited, started); err != nil {
		t.Fatal(err)
	}
	if !nearMS(rr.HubExitedSeconds, 0.4) || !nearMS(rr.HubStartedSeconds, 0.5) || !nearMS(rr.AllBackAfterStart, 3) {
		t.Errorf("script times: exited %v, started %v, all back after start %v", rr.HubExitedSeconds, rr.HubStartedSeconds, rr.AllBackAfterStart)
	}
	if err := rr.addScriptTimes(f.dropTime(), filepath.Join(dir, "absent"), ""); err == nil {
		t.Error("addScriptTimes with a missing file succeeded")
	}
	if rr.FailureTotal != 3 || rr.Failures["refused"] != 2 || rr.Failures["unavailable"] != 1 {
		t.Errorf("failures %d %v, want 3: refused 2, unavailable 1", rr.FailureTotal, rr.Failures)
	}
	if rr.Attempts.Max != 2 || rr.Attempts.P50 != 1 {
		t.Errorf("failed attempts per device %+v, want p50 1, max 2", rr.Attempts)
	}
	if rr.RetryWaits.N != 6 || rr.RetryWaits.Min != 0.25 || rr.RetryWaits.Max != 1.6 {
		t.Errorf("retry waits %+v, want 6 from 0.25 to 1.6", rr.RetryWaits)
	}
	if want := []int{1, 1, 0, 1}; !slices.Equal(rr.Histogram, want) {
		t.Errorf("histogram %v, want %v", rr.Histogram, want)
	}
	// Where the time went: device 0 waited 0.3 + 0.8 + 1.6 s, failed
	// twice for 0.2 s each, and its last attempt took 0.4 s; device 1
	// dropped 0.1 s late, waited 0.45 + 0.9 s, failed for 0.05 s, then
	// 0.1 s; device 2 dropped 0.2 s late, waited 0.25 s, then 0.25 s.
	all := rr.Where.All
	want := timeSplit{N: 3, Back: 5.8 / 3, Closing: 0.1, Backoff: 4.3 / 3, Failed: 0.45 / 3, Attempt: 0.25, Dial: 0.1 / 3, Ready: 0.05 / 3}
	if !nearSplit(all, want) {
		t.Errorf("where, all: %+v, want %+v", all, want)
	}
	if s := rr.Where.Slowest; s.N != 1 || !near(s.Back, 3.5) || !near(s.Backoff, 2.7) {
		t.Errorf("where, slowest: %+v, want device 0 alone", s)
	}
	if rr.Late.Failures["refused"] != 2 || rr.Late.MaxWait != 1.6 || len(rr.Late.Timelines) != 1 {
		t.Errorf("late: %+v, want device 0's two refusals, a 1.6 s wait", rr.Late)
	}
	if rr.TLS.ClientResumed != 1 || rr.TLS.ClientFull != 0 {
		t.Errorf("TLS resumed %d, full %d, want 1 and 0 (two devices did not say)", rr.TLS.ClientResumed, rr.TLS.ClientFull)
	}
}

func nearSplit(a, b timeSplit) bool {
	return a.N == b.N && near(a.Back, b.Back) && near(a.Closing, b.Closing) && near(a.Backoff, b.Backoff) &&
		near(a.Failed, b.Failed) && near(a.Attempt, b.Attempt) && near(a.Dial, b.Dial) && near(a.Ready, b.Ready)
}

func near(a, b float64) bool { return a-b < 1e-6 && b-a < 1e-6 }

// nearMS compares times that went through Unix nanoseconds and back.
func nearMS(a, b float64) bool { return a-b < 1e-3 && b-a < 1e-3 }

func TestDeviceLogIgnoresGarbage(t *testing.T) {
	f := newFleet(1)
	w := f.logWriter(0)
	for _, line := range []string{"not json", `{"message":"control session up","device":"x"}` + "\n"} {
		if n, err := w.Write([]byte(line)); err != nil || n != len(line) {
			t.Fatalf("Write(%q) = %d, %v", line, n, err)
		}
	}
	if f.connected() != 1 {
		t.Errorf("connected = %d, want 1", f.connected())
	}
}

func TestDeviceID(t *testing.T) {
	if got := deviceID("scale-", 42); got != "scale-00042" {
		t.Errorf("deviceID = %q", got)
	}
	if got := deviceID("s", 123456); got != "s123456" {
		t.Errorf("deviceID = %q", got)
	}
}

func TestReadPIDFile(t *testing.T) {
	dir := t.TempDir()
	for content, want := range map[string]int{"123\n": 123, " 7 ": 7, "x": 0, "-3": 0, "": 0} {
		name := filepath.Join(dir, "pid")
		if err := os.WriteFile(name, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := readPIDFile(name)
		if want == 0 {
			if err == nil {
				t.Errorf("readPIDFile(%q) = %d, want an error", content, got)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("readPIDFile(%q) = %d, %v; want %d", content, got, err, want)
		}
	}
}

func TestTable(t *testing.T) {
	var d devicesResult
	d.N = 100
	d.Hub.PerDevice = perUnit{RSS: 40 << 10, HeapLive: 20 << 10}
	d.Restart = &restartResult{Back: 100, AllBackSeconds: 12.5, Failures: map[string]int{"refused": 3, "eof": 3, "timeout": 9}, FailureTotal: 15}
	var s, s2 streamsResult
	s.N, s.Mode = 50, "per-stream"
	s.Hub.PerStream = perUnit{RSS: 100 << 10}
	s2.N, s2.Mode = 60, "session"
	s2.Hub.PerStream = perUnit{RSS: 30 << 10}
	var buf bytes.Buffer
	writeTable(&buf, scaleRun{Date: "d", Machine: "m", Go: "go", Commit: "c", Devices: &d, Streams: []*streamsResult{&s, &s2}})
	out := buf.String()
	for _, want := range []string{
		"| 100 idle devices | hub RSS per device | 40.0 KiB | ≤ 48.0 KiB | meets |",
		"| | all back after hub restart (from the drop) | 12.5 s | ≤ 30 s | meets |",
		"15 (timeout 9, eof 3, refused 3)",
		"| 50 open streams, per-stream mode | hub RSS per stream | 100.0 KiB | ≤ 64.0 KiB | **misses** |",
		"| 60 open streams, session mode | hub RSS per stream | 30.0 KiB | ≤ 64.0 KiB | meets |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestEcho(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveEcho(ctx, ln) }()
	var conns []net.Conn
	for i := range 3 {
		c, err := openOne(ctx, ln.Addr().String(), i)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	conns = append(conns, nil) // a stream that never opened
	if n := echoAll(ctx, conns, 2); n != 3 {
		t.Errorf("echoAll = %d, want 3", n)
	}
	cancel() // closes the listener and every connection
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serveEcho: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serveEcho did not return after its context ended")
	}
	for _, c := range conns[:3] {
		c.Close()
	}
}
