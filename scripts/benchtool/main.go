// Command benchtool does the measuring for scripts/bench.sh: the targets
// (a sink and an echo server), the clients (a throughput writer and a
// setup-latency dialer) and the report (a Markdown table and raw JSON).
//
// scripts/bench.sh starts the paths under test (direct TCP, ssh -L through a
// private sshd, dsproxy service → hub → device) and calls benchtool once per
// path, row and round; each client run prints one JSON sample line, and
// "benchtool report" turns the collected lines into the table. See
// docs/benchmarks.md.
//
// Subcommands:
//
//	benchtool sink --listen 127.0.0.1:0      read everything, then answer one byte
//	benchtool echo --listen 127.0.0.1:0      write back what is read
//	benchtool throughput --addr A --bytes N  write N bytes, half-close, wait for the ack
//	benchtool setup --addr A --conns N       N sequential dial/echo-one-byte/close
//	benchtool report --samples F --json OUT  aggregate the sample lines
//	benchtool size 1GiB                      print a size in bytes (for bench.sh)
//
// The servers print their address on the first line of stdout and run until
// SIGINT or SIGTERM.
package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: benchtool sink|echo|throughput|setup|report|size [flags]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "sink":
		err = serveCmd(ctx, cmd, args, sink)
	case "echo":
		err = serveCmd(ctx, cmd, args, echo)
	case "throughput":
		err = throughputCmd(ctx, args)
	case "setup":
		err = setupCmd(ctx, args)
	case "report":
		err = reportCmd(args)
	case "size":
		err = sizeCmd(args)
	default:
		err = fmt.Errorf("unknown subcommand %q", cmd)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "benchtool %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

// ---------------------------------------------------------------- servers

// bufSize is the read and write size of the sink and the throughput client:
// large enough that syscalls are not what is measured.
const bufSize = 256 << 10

// sink reads until EOF and then writes one byte, so the writer knows every
// byte arrived. It reads with its own large buffer: io.Copy to io.Discard
// would read 8 KiB at a time.
func sink(c *net.TCPConn) {
	buf := make([]byte, bufSize)
	for {
		_, err := c.Read(buf)
		if errors.Is(err, io.EOF) {
			c.Write([]byte{1})
			return
		}
		if err != nil {
			return
		}
	}
}

// echo writes back what it reads and, at EOF, half-closes.
func echo(c *net.TCPConn) {
	if _, err := io.Copy(c, c); err == nil {
		c.CloseWrite()
	}
}

// serveCmd runs handle for every connection on --listen until ctx ends, then
// closes the listener and the open connections and waits for the handlers.
func serveCmd(ctx context.Context, name string, args []string, handle func(*net.TCPConn)) error {
	fs := flag.NewFlagSet(name, flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
	fs.Parse(args)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr().String())
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
	)
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			wg.Wait()
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		mu.Lock()
		conns[c] = true
		mu.Unlock()
		wg.Go(func() {
			defer func() {
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
				c.Close()
			}()
			handle(c.(*net.TCPConn))
		})
	}
}

// ---------------------------------------------------------------- clients

// Sample is one measurement of one path in one round: a line of the samples
// file, and an element of the JSON results.
type Sample struct {
	Row     string             `json:"row"` // "throughput" or "setup"
	Path    string             `json:"path"`
	Round   int                `json:"round"`
	Metrics map[string]float64 `json:"metrics"`
}

// Metric names, also the rows of the table.
const (
	mGbps     = "throughput_gbps"
	mCPU      = "cpu_s_per_gb"
	mSetupP50 = "setup_p50_ms"
	mSetupP90 = "setup_p90_ms"
	mSetupP99 = "setup_p99_ms"
)

func sampleFlags(fs *flag.FlagSet) (addr, path *string, round *int, timeout *time.Duration) {
	addr = fs.String("addr", "", "entry address of the path")
	path = fs.String("path", "", "name of the path, recorded in the sample")
	round = fs.Int("round", 0, "round number, recorded in the sample")
	timeout = fs.Duration("timeout", 5*time.Minute, "give up after this long")
	return
}

func printSample(s Sample) error {
	return json.NewEncoder(os.Stdout).Encode(s)
}

// throughputCmd writes --bytes to --addr, half-closes, waits for the sink's
// ack and reports Gbit/s (10^9 bits) and, with --pids, the CPU seconds the
// processes and their descendants used per GB (10^9 bytes).
func throughputCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("throughput", flag.ExitOnError)
	addr, path, round, timeout := sampleFlags(fs)
	size := fs.String("bytes", "1GiB", "bytes to send")
	pids := fs.String("pids", "", "comma-separated PIDs whose CPU time (with their descendants') to measure")
	fs.Parse(args)
	n, err := parseSize(*size)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", *addr)
	if err != nil {
		return err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()

	procs, err := processTree(*pids)
	if err != nil {
		return err
	}
	cpu0, err := cpuSeconds(procs)
	if err != nil {
		return err
	}
	buf := make([]byte, bufSize)
	t0 := time.Now()
	for left := n; left > 0; {
		k := min(left, int64(len(buf)))
		if _, err := c.Write(buf[:k]); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		left -= k
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return fmt.Errorf("half-close: %w", err)
	}
	if _, err := io.ReadFull(c, buf[:1]); err != nil {
		return fmt.Errorf("read the sink's ack: %w", err)
	}
	secs := time.Since(t0).Seconds()
	cpu1, err := cpuSeconds(procs)
	if err != nil {
		return err
	}
	m := map[string]float64{
		mGbps:     float64(n) * 8 / secs / 1e9,
		"seconds": secs,
		"bytes":   float64(n),
	}
	if len(procs) > 0 {
		m[mCPU] = (cpu1 - cpu0) / (float64(n) / 1e9)
		m["cpu_seconds"] = cpu1 - cpu0
		m["processes"] = float64(len(procs))
	}
	return printSample(Sample{Row: "throughput", Path: *path, Round: *round, Metrics: m})
}

// setupCmd makes --conns sequential connections to an echo server behind
// --addr, each: dial, write one byte, read it back, close. It reports the
// percentiles of the time each took.
func setupCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("setup", flag.ExitOnError)
	addr, path, round, timeout := sampleFlags(fs)
	conns := fs.Int("conns", 1000, "connections to make")
	fs.Parse(args)
	if *conns < 1 {
		return fmt.Errorf("--conns %d: want at least 1", *conns)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	var d net.Dialer
	ms := make([]float64, 0, *conns)
	for i := range *conns {
		t0 := time.Now()
		if err := echoOne(ctx, &d, *addr); err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		ms = append(ms, float64(time.Since(t0).Nanoseconds())/1e6)
	}
	slices.Sort(ms)
	m := map[string]float64{
		mSetupP50: percentile(ms, 50),
		mSetupP90: percentile(ms, 90),
		mSetupP99: percentile(ms, 99),
		"min_ms":  ms[0],
		"max_ms":  ms[len(ms)-1],
		"conns":   float64(len(ms)),
	}
	return printSample(Sample{Row: "setup", Path: *path, Round: *round, Metrics: m})
}

func echoOne(ctx context.Context, d *net.Dialer, addr string) error {
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	b := []byte{7}
	if _, err := c.Write(b); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if _, err := io.ReadFull(c, b); err != nil {
		return fmt.Errorf("read the echo: %w", err)
	}
	return nil
}

// ---------------------------------------------------------------- statistics

// percentile returns the p-th percentile (0 < p ≤ 100) of sorted by the
// nearest-rank method: the smallest value with at least p % of the values at
// or below it. It returns NaN for no values.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// median returns the median of vs (the mean of the middle two for an even
// count), without reordering vs; NaN for no values.
func median(vs []float64) float64 {
	if len(vs) == 0 {
		return math.NaN()
	}
	s := slices.Sorted(slices.Values(vs))
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// ---------------------------------------------------------------- CPU time

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat. It
// is 100 on every Linux architecture Go supports (sysconf needs cgo).
const clockTicks = 100

// processTree returns the PIDs in list (comma-separated) and all their
// descendants now living: sshd serves a connection in forked children.
func processTree(list string) ([]int, error) {
	if list == "" {
		return nil, nil
	}
	var roots []int
	for f := range strings.SplitSeq(list, ",") {
		pid, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, fmt.Errorf("--pids: %w", err)
		}
		roots = append(roots, pid)
	}
	children := map[int][]int{}
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	for _, e := range dirs {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := procStat(pid)
		if err != nil {
			continue // gone meanwhile
		}
		ppid, _ := strconv.Atoi(st[1])
		children[ppid] = append(children[ppid], pid)
	}
	var out []int
	seen := map[int]bool{}
	for len(roots) > 0 {
		pid := roots[0]
		roots = roots[1:]
		if seen[pid] {
			continue
		}
		seen[pid] = true
		out = append(out, pid)
		roots = append(roots, children[pid]...)
	}
	return out, nil
}

// procStat returns the fields of /proc/PID/stat after the command name: [0]
// is the state (field 3 in proc(5)), [11] utime, [12] stime.
func procStat(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return nil, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	return f, nil
}

// cpuSeconds sums utime and stime of pids.
func cpuSeconds(pids []int) (float64, error) {
	var ticks int64
	for _, pid := range pids {
		f, err := procStat(pid)
		if err != nil {
			return 0, err
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		s, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += u + s
	}
	return float64(ticks) / clockTicks, nil
}

// ---------------------------------------------------------------- sizes

// parseSize reads a byte count: a plain number, or one with a binary suffix
// K, M, G (or KiB, MiB, GiB).
func parseSize(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSpace(s), "iB")
	mult := int64(1)
	if t != "" {
		switch t[len(t)-1] {
		case 'K', 'k':
			mult = 1 << 10
		case 'M', 'm':
			mult = 1 << 20
		case 'G', 'g':
			mult = 1 << 30
		}
		if mult > 1 {
			t = t[:len(t)-1]
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 1 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("size %q: want a positive number of bytes, e.g. 1073741824, 512M or 1GiB", s)
	}
	return n * mult, nil
}

func sizeCmd(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: benchtool size SIZE")
	}
	n, err := parseSize(args[0])
	if err != nil {
		return err
	}
	fmt.Println(n)
	return nil
}

// humanSize prints n in the largest binary unit that divides it.
func humanSize(n int64) string {
	for _, u := range []struct {
		name string
		v    int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n%u.v == 0 {
			return fmt.Sprintf("%d %s", n/u.v, u.name)
		}
	}
	return fmt.Sprintf("%d B", n)
}

// ---------------------------------------------------------------- report

// Machine describes where a run happened.
type Machine struct {
	CPUs     int    `json:"cpus"`
	CPUModel string `json:"cpu_model"`
	Kernel   string `json:"kernel"`
	Arch     string `json:"arch"`
}

// Summary aggregates one metric of one path over the rounds.
type Summary struct {
	Metric string  `json:"metric"`
	Path   string  `json:"path"`
	N      int     `json:"n"`
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// Results is the JSON file that report writes.
type Results struct {
	Date    string    `json:"date"`
	Machine Machine   `json:"machine"`
	Go      string    `json:"go"`
	Commit  string    `json:"commit"`
	Rounds  int       `json:"rounds"`
	Bytes   int64     `json:"bytes"`
	Conns   int       `json:"conns"`
	Paths   []string  `json:"paths"`
	Summary []Summary `json:"summary"`
	Samples []Sample  `json:"samples"`
}

// pathTitles are the column heads of the known paths.
var pathTitles = map[string]string{
	"direct":  "direct TCP",
	"ssh":     "`ssh -L` (aes128-gcm)",
	"dsproxy": "dsproxy (TLS both legs)",
}

// rows are the table's rows in order: the metric, its label and how many
// decimals it shows.
var rows = []struct {
	metric, label string
	decimals      int
}{
	{mGbps, "throughput upload, Gbit/s ↑", 2},
	{mCPU, "CPU-s per GB, tunnel processes ↓", 2},
	{mSetupP50, "setup p50, ms ↓", 3},
	{mSetupP90, "setup p90, ms ↓", 3},
	{mSetupP99, "setup p99, ms ↓", 3},
}

func reportCmd(args []string) error {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	samples := fs.String("samples", "", "file of sample lines (JSON, one a line)")
	out := fs.String("json", "bench-results.json", "file to write the raw results to")
	goVersion := fs.String("go", runtime.Version(), "Go version")
	commit := fs.String("commit", "", "commit of the code under test")
	rounds := fs.Int("rounds", 0, "rounds run")
	size := fs.String("bytes", "0", "bytes per throughput run")
	conns := fs.Int("conns", 0, "connections per setup run")
	paths := fs.String("paths", "direct,ssh,dsproxy", "paths, in column order")
	fs.Parse(args)
	n, err := parseSize(*size)
	if err != nil {
		return err
	}
	r := Results{
		Date:    time.Now().UTC().Format(time.RFC3339),
		Machine: machine(),
		Go:      *goVersion,
		Commit:  *commit,
		Rounds:  *rounds,
		Bytes:   n,
		Conns:   *conns,
		Paths:   strings.Split(*paths, ","),
	}
	if r.Samples, err = readSamples(*samples); err != nil {
		return err
	}
	r.Summary = summarize(r.Samples, r.Paths)
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(*out, append(b, '\n'), 0o644); err != nil {
		return err
	}
	abs, _ := filepath.Abs(*out)
	writeTable(os.Stdout, r, abs)
	return nil
}

func readSamples(name string) ([]Sample, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Sample
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var s Sample
		if err := json.Unmarshal(sc.Bytes(), &s); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, line, err)
		}
		out = append(out, s)
	}
	return out, sc.Err()
}

// summarize returns, for every row metric and path that has samples, the
// median, min and max over the rounds.
func summarize(samples []Sample, paths []string) []Summary {
	var out []Summary
	for _, row := range rows {
		for _, p := range paths {
			var vs []float64
			for _, s := range samples {
				if v, ok := s.Metrics[row.metric]; ok && s.Path == p {
					vs = append(vs, v)
				}
			}
			if len(vs) == 0 {
				continue
			}
			out = append(out, Summary{Metric: row.metric, Path: p, N: len(vs),
				Median: median(vs), Min: slices.Min(vs), Max: slices.Max(vs)})
		}
	}
	return out
}

func writeTable(w io.Writer, r Results, jsonFile string) {
	fmt.Fprintf(w, "## dsproxy benchmarks, %s\n\n", r.Date)
	fmt.Fprintf(w, "- machine: %d CPUs, %s, %s, Linux %s\n", r.Machine.CPUs, r.Machine.CPUModel, r.Machine.Arch, r.Machine.Kernel)
	fmt.Fprintf(w, "- %s, commit %s\n", r.Go, r.Commit)
	ran := map[string]bool{}
	for _, s := range r.Samples {
		ran[s.Row] = true
	}
	fmt.Fprintf(w, "- %d rounds, path order alternating", r.Rounds)
	if ran["throughput"] {
		fmt.Fprintf(w, "; throughput: %s upload, single stream", humanSize(r.Bytes))
	}
	if ran["setup"] {
		fmt.Fprintf(w, "; setup: %d sequential connections (dial, echo 1 byte, close)", r.Conns)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "- each cell: median (min–max) over the rounds; raw results: %s\n\n", jsonFile)

	find := func(metric, path string) (Summary, bool) {
		for _, s := range r.Summary {
			if s.Metric == metric && s.Path == path {
				return s, true
			}
		}
		return Summary{}, false
	}
	head := []string{"row"}
	for _, p := range r.Paths {
		head = append(head, cmp.Or(pathTitles[p], p))
	}
	ratio := slices.Contains(r.Paths, "ssh") && slices.Contains(r.Paths, "dsproxy")
	if ratio {
		head = append(head, "dsproxy ÷ ssh")
	}
	fmt.Fprintf(w, "| %s |\n|%s\n", strings.Join(head, " | "), strings.Repeat(" --- |", len(head)))
	for _, row := range rows {
		cells := []string{row.label}
		have := false
		for _, p := range r.Paths {
			s, ok := find(row.metric, p)
			if !ok {
				cells = append(cells, "—")
				continue
			}
			have = true
			f := "%." + strconv.Itoa(row.decimals) + "f"
			cells = append(cells, fmt.Sprintf(f+" ("+f+"–"+f+")", s.Median, s.Min, s.Max))
		}
		if !have {
			continue
		}
		if ratio {
			ssh, ok1 := find(row.metric, "ssh")
			ds, ok2 := find(row.metric, "dsproxy")
			if ok1 && ok2 && ssh.Median > 0 {
				cells = append(cells, fmt.Sprintf("%.2f×", ds.Median/ssh.Median))
			} else {
				cells = append(cells, "—")
			}
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(cells, " | "))
	}
	if !ran["throughput"] {
		return
	}
	fmt.Fprintf(w, "\nGbit/s is 10^9 bit/s and GB 10^9 bytes. CPU-s per GB: utime+stime from /proc/PID/stat over the throughput run, "+
		"of hub + device + service proxy (dsproxy) and of the ssh client + sshd with its children (ssh); the benchtool "+
		"client and sink are not counted. Only ratios within one run mean anything.\n")
}

// machine reads the CPU count, model and kernel from /proc.
func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Arch: runtime.GOARCH, CPUModel: "unknown", Kernel: "unknown"}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}
