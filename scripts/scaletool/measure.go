package main

// Reading a process's memory: its RSS from /proc, and for the hub its Go
// runtime figures from GET /metrics.

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// readRSS returns the resident set size of process pid, from
// /proc/PID/status.
func readRSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read RSS of pid %d: %w", pid, err)
	}
	defer f.Close()
	rss, err := parseVmRSS(f)
	if err != nil {
		return 0, fmt.Errorf("read RSS of pid %d: %w", pid, err)
	}
	return rss, nil
}

// loadAverage returns the machine's 1-minute load average from
// /proc/loadavg (0 when unreadable): how busy the shared machine was.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	var l float64
	if _, err := fmt.Sscan(string(b), &l); err != nil {
		return 0
	}
	return l
}

// clockTicks is the unit of the CPU times in /proc/PID/stat (USER_HZ,
// 100 on every Linux architecture Go supports).
const clockTicks = 100

// readCPU returns the user + system CPU time process pid has used, from
// /proc/PID/stat.
func readCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read CPU time of pid %d: %w", pid, err)
	}
	d, err := parseStatCPU(string(b))
	if err != nil {
		return 0, fmt.Errorf("read CPU time of pid %d: %w", pid, err)
	}
	return d, nil
}

// parseStatCPU reads utime + stime (fields 14 and 15) from a
// /proc/PID/stat line. The command name (field 2) is in parentheses and
// may hold spaces and parentheses, so fields are counted after the last
// ')'.
func parseStatCPU(stat string) (time.Duration, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("malformed stat line: no command name")
	}
	f := strings.Fields(stat[i+1:]) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0, errors.New("malformed stat line: too few fields")
	}
	var ticks int64
	for _, s := range f[11:13] { // fields 14 and 15
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("malformed stat line: CPU time %q", s)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// parseVmRSS reads the VmRSS line ("VmRSS:	  123456 kB") of a
// /proc/PID/status file and returns it in bytes.
func parseVmRSS(r io.Reader) (int64, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("malformed VmRSS line %q", sc.Text())
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || kb < 0 {
			return 0, fmt.Errorf("malformed VmRSS line %q", sc.Text())
		}
		return kb << 10, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("no VmRSS line (a kernel thread, or the process has exited)")
}

// parseMetrics reads the Prometheus text format into samples keyed by
// series as written: "name" or `name{label="v"}`. Comments and blank lines
// are skipped; a line without a value is an error.
func parseMetrics(r io.Reader) (map[string]float64, error) {
	samples := make(map[string]float64)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		// A sample is "series value [timestamp]"; label values may hold
		// spaces, so split after the closing brace when there is one.
		seriesEnd := strings.IndexByte(line, ' ')
		if i := strings.LastIndexByte(line, '}'); i >= 0 {
			seriesEnd = i + 1
		}
		if seriesEnd <= 0 || seriesEnd >= len(line) {
			return nil, fmt.Errorf("malformed metrics line %q", line)
		}
		fields := strings.Fields(line[seriesEnd:])
		if len(fields) == 0 || len(fields) > 2 {
			return nil, fmt.Errorf("malformed metrics line %q", line)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return nil, fmt.Errorf("malformed metrics line %q: %w", line, err)
		}
		samples[line[:seriesEnd]] = v
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return samples, nil
}

// hubMetrics scrapes a hub's GET /metrics over HTTPS.
type hubMetrics struct {
	url    string
	client *http.Client
}

// newHubMetrics returns a scraper of https://addr/metrics that trusts the
// CA in caFile.
func newHubMetrics(addr, caFile string) (*hubMetrics, error) {
	tlsCfg, err := loadCA(caFile)
	if err != nil {
		return nil, err
	}
	return &hubMetrics{
		url: "https://" + addr + "/metrics",
		client: &http.Client{
			Timeout:   20 * time.Second,
			Transport: &http.Transport{TLSClientConfig: tlsCfg, MaxIdleConnsPerHost: 1},
		},
	}, nil
}

// loadCA returns a TLS config that trusts only the PEM certificates in
// caFile.
func loadCA(caFile string) (*tls.Config, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("read CA %s: no PEM certificate", caFile)
	}
	return &tls.Config{RootCAs: pool}, nil
}

func (h *hubMetrics) scrape(ctx context.Context) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape hub metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape hub metrics: %s", resp.Status)
	}
	m, err := parseMetrics(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("scrape hub metrics: %w", err)
	}
	return m, nil
}

// gauge scrapes one series, which must exist.
func (h *hubMetrics) gauge(ctx context.Context, series string) (float64, error) {
	m, err := h.scrape(ctx)
	if err != nil {
		return 0, err
	}
	v, ok := m[series]
	if !ok {
		return 0, fmt.Errorf("hub metrics have no series %s", series)
	}
	return v, nil
}

// goMemory is a Go process's memory as its runtime sees it.
type goMemory struct {
	// HeapLive is the heap the last GC found reachable: what the
	// connections really hold, without uncollected garbage.
	HeapLive   float64 `json:"heapLiveBytes"`
	HeapInuse  float64 `json:"heapInuseBytes"`
	StackInuse float64 `json:"stackInuseBytes"`
	// Sys is all the memory the runtime got from the OS (heap, stacks,
	// runtime structures), a bound on what the RSS can reach from Go.
	Sys        float64   `json:"sysBytes"`
	Goroutines float64   `json:"goroutines"`
	LastGC     time.Time `json:"lastGC"`
}

// memory is one process's memory at one moment.
type memory struct {
	RSS int64     `json:"rssBytes"`
	Go  *goMemory `json:"go,omitempty"` // nil when the process has no metrics
}

// hubGoMemory reads the Go figures from the hub's metrics.
func hubGoMemory(m map[string]float64) (*goMemory, error) {
	g := &goMemory{}
	for series, dst := range map[string]*float64{
		"go_gc_heap_live_bytes":         &g.HeapLive,
		"go_memstats_heap_inuse_bytes":  &g.HeapInuse,
		"go_memstats_stack_inuse_bytes": &g.StackInuse,
		"go_memstats_sys_bytes":         &g.Sys,
		"go_goroutines":                 &g.Goroutines,
	} {
		v, ok := m[series]
		if !ok {
			return nil, fmt.Errorf("hub metrics have no series %s (a hub older than this tool?)", series)
		}
		*dst = v
	}
	if v := m["go_memstats_last_gc_time_seconds"]; v > 0 {
		sec, frac := math.Modf(v)
		g.LastGC = time.Unix(int64(sec), int64(frac*1e9))
	}
	return g, nil
}

// hubMemory reads the hub's RSS and, after waiting for a GC that started
// after since (so that the live heap counts what is there now), its Go
// figures. The runtime forces a GC at least every two minutes, so wait
// bounds the wait; past it the last GC's figures are taken as they are.
func hubMemory(ctx context.Context, pid int, hm *hubMetrics, since time.Time, wait time.Duration) (memory, error) {
	deadline := time.Now().Add(wait)
	for {
		m, err := hm.scrape(ctx)
		if err != nil {
			return memory{}, err
		}
		g, err := hubGoMemory(m)
		if err != nil {
			return memory{}, err
		}
		if g.LastGC.After(since) || time.Now().After(deadline) {
			if wait > 0 && !g.LastGC.After(since) {
				progress("no hub GC since %s within %s: taking the last GC's live heap", since.Format(time.TimeOnly), wait)
			}
			rss, err := readRSS(pid)
			if err != nil {
				return memory{}, err
			}
			return memory{RSS: rss, Go: g}, nil
		}
		select {
		case <-ctx.Done():
			return memory{}, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// selfMemory is this process's memory after a GC.
func selfMemory() memory {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rss, _ := readRSS(os.Getpid())
	return memory{RSS: rss, Go: &goMemory{
		HeapLive:   float64(ms.HeapAlloc), // right after a GC: what is live
		HeapInuse:  float64(ms.HeapInuse),
		StackInuse: float64(ms.StackInuse),
		Sys:        float64(ms.Sys),
		Goroutines: float64(runtime.NumGoroutine()),
		LastGC:     time.Unix(0, int64(ms.LastGC)),
	}}
}

// perUnit is memory per device or per stream: the growth over a baseline
// divided by the count.
type perUnit struct {
	RSS        float64 `json:"rssBytes"`
	HeapLive   float64 `json:"heapLiveBytes,omitempty"`
	HeapInuse  float64 `json:"heapInuseBytes,omitempty"`
	StackInuse float64 `json:"stackInuseBytes,omitempty"`
	Sys        float64 `json:"sysBytes,omitempty"`
	Goroutines float64 `json:"goroutines,omitempty"`
}

// per divides the growth from before to after by n.
func per(before, after memory, n int) perUnit {
	if n <= 0 {
		return perUnit{}
	}
	d := float64(n)
	p := perUnit{RSS: float64(after.RSS-before.RSS) / d}
	if before.Go != nil && after.Go != nil {
		p.HeapLive = (after.Go.HeapLive - before.Go.HeapLive) / d
		p.HeapInuse = (after.Go.HeapInuse - before.Go.HeapInuse) / d
		p.StackInuse = (after.Go.StackInuse - before.Go.StackInuse) / d
		p.Sys = (after.Go.Sys - before.Go.Sys) / d
		p.Goroutines = (after.Go.Goroutines - before.Go.Goroutines) / d
	}
	return p
}

// summary is the distribution of a set of durations, in seconds.
type summary struct {
	N   int     `json:"n"`
	Min float64 `json:"min"`
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// summarize returns the distribution of xs (seconds); percentiles by
// nearest rank. It sorts xs.
func summarize(xs []float64) summary {
	if len(xs) == 0 {
		return summary{}
	}
	slices.Sort(xs)
	return summary{
		N: len(xs), Min: xs[0], Max: xs[len(xs)-1],
		P50: nearestRank(xs, 50), P90: nearestRank(xs, 90), P99: nearestRank(xs, 99),
	}
}

// nearestRank is the p-th percentile of sorted xs by nearest rank.
func nearestRank(sorted []float64, p float64) float64 {
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

// histogram counts xs (seconds) in buckets of width seconds, from 0 up
// to the largest: counts[i] holds those in [i*width, (i+1)*width).
// Negative values count in the first bucket.
func histogram(xs []float64, width float64) []int {
	if len(xs) == 0 || !(width > 0) {
		return nil
	}
	top := slices.Max(xs)
	counts := make([]int, max(int(top/width), 0)+1)
	for _, x := range xs {
		counts[max(int(x/width), 0)]++
	}
	return counts
}
