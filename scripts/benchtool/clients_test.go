package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// serve runs handle on a listener on 127.0.0.1:0 until the test ends and
// returns its address.
func serve(t *testing.T, handle func(context.Context, *net.TCPConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				handle(ctx, c.(*net.TCPConn))
			})
		}
	})
	t.Cleanup(func() {
		cancel()
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func TestTransfer(t *testing.T) {
	sinkAddr := serve(t, func(_ context.Context, c *net.TCPConn) { sink(c) })
	sourceAddr := serve(t, func(_ context.Context, c *net.TCPConn) { source(c) })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tc := range []struct {
		addr    string
		dir     direction
		streams int
	}{{sinkAddr, up, 1}, {sourceAddr, down, 1}, {sinkAddr, up, 4}, {sourceAddr, down, 3}} {
		secs, err := parallelTransfer(ctx, tc.addr, tc.dir, 10<<20+7, tc.streams)
		if err != nil || secs <= 0 {
			t.Errorf("%s with %d streams: %v seconds, %v", tc.dir, tc.streams, secs, err)
		}
	}
}

func TestSetups(t *testing.T) {
	addr := serve(t, func(_ context.Context, c *net.TCPConn) { echo(c) })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := setups(ctx, addr, 1, 20, 0, 5*time.Second)
	if err != nil || len(res.ms) != 20 || res.errors != 0 {
		t.Errorf("20 sequential setups: %d made, %d errors, %v", len(res.ms), res.errors, err)
	}
	res, err = setups(ctx, addr, 8, 0, 200*time.Millisecond, 5*time.Second)
	if err != nil || len(res.ms) == 0 || res.errors != 0 || res.secs < 0.2 {
		t.Errorf("8 clients for 200 ms: %d made, %d errors in %v s, %v", len(res.ms), res.errors, res.secs, err)
	}

	// A closed port: every setup fails, and sequential runs stop at the first.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	res, _ = setups(ctx, closed, 1, 5, 0, time.Second)
	if len(res.ms) != 0 || res.errors != 1 || res.firstErr == nil {
		t.Errorf("sequential setups to a closed port: %d made, %d errors, first %v; want 0, 1 and an error", len(res.ms), res.errors, res.firstErr)
	}
}

func TestStallA(t *testing.T) {
	holdAddr := serve(t, func(ctx context.Context, c *net.TCPConn) { hold(ctx, c, time.Minute) })
	sourceAddr := serve(t, func(_ context.Context, c *net.TCPConn) { source(c) })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, n, err := stallA(ctx, holdAddr, up, 0)
	if err != nil {
		t.Fatalf("stall up: %v", err)
	}
	c.Close()
	if n <= 0 {
		t.Errorf("stall up: the path took %d bytes", n)
	}
	c, _, err = stallA(ctx, sourceAddr, down, 50*time.Millisecond)
	if err != nil {
		t.Fatalf("stall down: %v", err)
	}
	c.Close()
}

func TestSampleMetricPrefix(t *testing.T) {
	c := &common{row: "setup-parallel", path: "ssh", round: 2}
	s := c.sample(map[string]float64{"per_s": 5})
	if s.Metrics["setup_parallel_per_s"] != 5 || len(s.Metrics) != 1 || s.Row != "setup-parallel" || s.Path != "ssh" || s.Round != 2 {
		t.Errorf("sample = %+v", s)
	}
}

func TestParseIperf3(t *testing.T) {
	ok := `{"start":{},"intervals":[],"end":{"sum_sent":{"seconds":3,"bytes":3000000000,"bits_per_second":8e9,"retransmits":2},
		"sum_received":{"seconds":3.0004,"bytes":2990000000,"bits_per_second":7.97e9}}}`
	r, err := parseIperf3([]byte(ok))
	if err != nil || r.bitsPerSecond != 7.97e9 || r.bytes != 2.99e9 || r.retransmits != 2 || r.seconds != 3.0004 {
		t.Errorf("parseIperf3(ok) = %+v, %v", r, err)
	}
	for name, in := range map[string]string{
		"error":       `{"start":{},"intervals":[],"end":{},"error":"unable to connect to server: Connection refused"}`,
		"no end":      `{"start":{}}`,
		"zero":        `{"end":{"sum_received":{"seconds":0,"bytes":0,"bits_per_second":0}}}`,
		"not JSON":    `iperf3: error - unable to connect`,
		"empty input": ``,
	} {
		if _, err := parseIperf3([]byte(in)); err == nil {
			t.Errorf("parseIperf3(%s) succeeded, want an error", name)
		}
	}
	_, err = parseIperf3([]byte(`{"start":{},"end":{},"error":"the server is busy running a test. try again later"}`))
	if !errors.Is(err, errIperf3Busy) {
		t.Errorf("parseIperf3(busy) = %v, want errIperf3Busy", err)
	}
	_, err = parseIperf3([]byte(`{"error":"unable to connect to server"}`))
	if err == nil || !strings.Contains(err.Error(), "unable to connect") {
		t.Errorf("parseIperf3 error = %v, want iperf3's reason", err)
	}
}

func TestReport(t *testing.T) {
	var samples []Sample
	for round, v := range []float64{1, 3, 2} {
		samples = append(samples,
			Sample{Row: "upload", Path: "ssh", Round: round + 1, Metrics: map[string]float64{"upload_gbps": 4 * v}},
			Sample{Row: "upload", Path: "dsproxy", Round: round + 1, Metrics: map[string]float64{"upload_gbps": 2 * v}},
			Sample{Row: "upload", Path: "dsproxy-session", Round: round + 1, Metrics: map[string]float64{"upload_gbps": 3 * v}},
		)
	}
	paths := []string{"direct", "ssh", "dsproxy", "dsproxy-session"}
	r := Results{Paths: paths, Samples: samples, Rounds: 3,
		Params: map[string]string{"bytes": "1GiB", "zz-extra": "x", "rows": "upload"},
		Notes:  []string{"iperf3 rows skipped: iperf3 not installed"}}
	r.Summary = summarize(samples, paths)
	if len(r.Summary) != 3 {
		t.Fatalf("summary has %d entries, want 3 (direct has no samples): %+v", len(r.Summary), r.Summary)
	}
	if s := r.Summary[0]; s.Path != "ssh" || s.Median != 8 || s.Min != 4 || s.Max != 12 || s.N != 3 {
		t.Errorf("ssh summary = %+v, want median 8 (4–12) of 3", s)
	}
	var b bytes.Buffer
	writeTable(&b, r, "/tmp/x.json")
	out := b.String()
	for _, want := range []string{
		"| row | direct TCP | `ssh -L` (aes128-gcm) | dsproxy per-stream (TLS both legs) | dsproxy session (TLS both legs) | dsproxy ÷ ssh | dsproxy-session ÷ ssh |",
		"| upload, 1 stream, Gbit/s ↑ | — | 8.00 (4.00–12.00) | 4.00 (2.00–6.00) | 6.00 (3.00–9.00) | 0.50× | 0.75× |",
		"- **note:** iperf3 rows skipped",
		"- rows: upload\n- bytes: 1GiB\n- zz-extra: x\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "download") {
		t.Errorf("table has a row without samples:\n%s", out)
	}
	if _, err := json.Marshal(r); err != nil {
		t.Error(err)
	}
}

func TestParamList(t *testing.T) {
	p := paramList{}
	if err := p.Set("rtt=50 ms"); err != nil || p["rtt"] != "50 ms" {
		t.Errorf("Set(rtt=50 ms): %v, %v", p, err)
	}
	for _, bad := range []string{"novalue", "=x"} {
		if err := p.Set(bad); err == nil {
			t.Errorf("Set(%q) succeeded, want an error", bad)
		}
	}
}

// TestDelayLine runs the delay line over a real packet socket pair
// (SOCK_SEQPACKET keeps packet boundaries, as a TUN device does).
func TestDelayLine(t *testing.T) {
	pair := func() (*os.File, *os.File) {
		fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Skipf("no SOCK_SEQPACKET: %v", err)
		}
		for _, fd := range fds {
			syscall.SetNonblock(fd, true)
		}
		return os.NewFile(uintptr(fds[0]), "a"), os.NewFile(uintptr(fds[1]), "b")
	}
	inW, inR := pair()   // the test writes inW; the line reads inR
	outW, outR := pair() // the line writes outW; the test reads outR
	defer inW.Close()
	defer outW.Close()
	defer outR.Close()
	const d = 30 * time.Millisecond
	var wg sync.WaitGroup
	wg.Go(func() { delayLine(inR, outW, d) })

	sent := make([]time.Time, 5)
	for i := range sent {
		sent[i] = time.Now()
		if _, err := inW.Write(bytes.Repeat([]byte{byte(i)}, 100+i)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	outR.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 1000)
	for i := range sent {
		n, err := outR.Read(buf)
		if err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
		if n != 100+i || buf[0] != byte(i) {
			t.Errorf("packet %d: %d bytes starting %d, want %d bytes of %d", i, n, buf[0], 100+i, i)
		}
		if took := time.Since(sent[i]); took < d {
			t.Errorf("packet %d arrived after %v, want at least %v", i, took, d)
		}
	}
	inR.Close()
	wg.Wait()
}
