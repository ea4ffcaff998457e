package main

import (
	"bufio"
	"cmp"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

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
	Date    string            `json:"date"`
	Machine Machine           `json:"machine"`
	Go      string            `json:"go"`
	Commit  string            `json:"commit"`
	Rounds  int               `json:"rounds"`
	Params  map[string]string `json:"params"` // the options of the run, as bench.sh passed them
	Notes   []string          `json:"notes"`  // rows or paths left out, and why
	Paths   []string          `json:"paths"`
	Summary []Summary         `json:"summary"`
	Samples []Sample          `json:"samples"`
}

// pathTitles are the column heads of the known paths.
var pathTitles = map[string]string{
	"direct":          "direct TCP",
	"ssh":             "`ssh -L` (aes128-gcm)",
	"dsproxy":         "dsproxy per-stream (TLS both legs)",
	"dsproxy-session": "dsproxy session (TLS both legs)",
}

// rowSpec is one line of the table: a metric, its label and how many
// decimals it shows.
type rowSpec struct {
	metric, label string
	decimals      int
}

// rows are the table's rows in order. The arrow says which way is better.
var rows = []rowSpec{
	{"upload_gbps", "upload, 1 stream, Gbit/s ↑", 2},
	{"upload_cpu_s_per_gb", "upload, 1 stream: CPU-s per GB ↓", 2},
	{"upload_cpu_kernel_s_per_gb", "upload, 1 stream: … of which in the kernel (--perf) ↓", 2},
	{"upload_cpu_crypto_s_per_gb", "upload, 1 stream: … in the cipher (--perf) ↓", 2},
	{"upload_cpu_other_s_per_gb", "upload, 1 stream: … elsewhere in user space (--perf) ↓", 2},
	{"download_gbps", "download, 1 stream, Gbit/s ↑", 2},
	{"download_cpu_s_per_gb", "download, 1 stream: CPU-s per GB ↓", 2},
	{"download_cpu_kernel_s_per_gb", "download, 1 stream: … of which in the kernel (--perf) ↓", 2},
	{"download_cpu_crypto_s_per_gb", "download, 1 stream: … in the cipher (--perf) ↓", 2},
	{"download_cpu_other_s_per_gb", "download, 1 stream: … elsewhere in user space (--perf) ↓", 2},
	{"parallel_gbps", "upload, 4 streams (sum), Gbit/s ↑", 2},
	{"parallel_cpu_s_per_gb", "upload, 4 streams: CPU-s per GB ↓", 2},
	{"parallel_cpu_kernel_s_per_gb", "upload, 4 streams: … of which in the kernel (--perf) ↓", 2},
	{"parallel_cpu_crypto_s_per_gb", "upload, 4 streams: … in the cipher (--perf) ↓", 2},
	{"parallel_cpu_other_s_per_gb", "upload, 4 streams: … elsewhere in user space (--perf) ↓", 2},
	{"iperf3_up_gbps", "iperf3 upload, Gbit/s ↑", 2},
	{"iperf3_up_cpu_s_per_gb", "iperf3 upload: CPU-s per GB ↓", 2},
	{"iperf3_down_gbps", "iperf3 -R download, Gbit/s ↑", 2},
	{"iperf3_down_cpu_s_per_gb", "iperf3 -R download: CPU-s per GB ↓", 2},
	{"iperf3_p4_gbps", "iperf3 -P 4 upload (sum), Gbit/s ↑", 2},
	{"iperf3_p4_cpu_s_per_gb", "iperf3 -P 4 upload: CPU-s per GB ↓", 2},
	{"setup_p50_ms", "setup p50, ms ↓", 3},
	{"setup_p90_ms", "setup p90, ms ↓", 3},
	{"setup_p99_ms", "setup p99, ms ↓", 3},
	{"setup_cpu_ms_per_setup", "CPU-ms per setup ↓", 2},
	{"setup_parallel_per_s", "setups/s, parallel clients ↑", 0},
	{"setup_parallel_p50_ms", "setup p50 under parallel load, ms ↓", 2},
	{"setup_parallel_p99_ms", "setup p99 under parallel load, ms ↓", 2},
	{"setup_parallel_cpu_ms_per_setup", "CPU-ms per setup under parallel load ↓", 2},
	{"stall_up_alone_gbps", "stalled reader, upload: B alone, Gbit/s ↑", 2},
	{"stall_up_stalled_gbps", "stalled reader, upload: B beside stalled A, Gbit/s ↑", 2},
	{"stall_up_ratio", "stalled reader, upload: beside ÷ alone ↑", 2},
	{"stall_down_alone_gbps", "stalled reader, download: B alone, Gbit/s ↑", 2},
	{"stall_down_stalled_gbps", "stalled reader, download: B beside stalled A, Gbit/s ↑", 2},
	{"stall_down_ratio", "stalled reader, download: beside ÷ alone ↑", 2},
	{"rtt_p50_ms", "setup p50 over the long link, ms ↓", 1},
	{"rtt_p90_ms", "setup p90 over the long link, ms ↓", 1},
	{"rtt_p50_rtts", "setup p50 over the long link, RTTs ↓", 2},
}

// paramList collects repeated --param key=value flags.
type paramList map[string]string

func (p paramList) String() string { return fmt.Sprint(map[string]string(p)) }
func (p paramList) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q: want key=value", s)
	}
	p[k] = v
	return nil
}

// noteList collects repeated --note flags.
type noteList []string

func (n *noteList) String() string     { return strings.Join(*n, "; ") }
func (n *noteList) Set(s string) error { *n = append(*n, s); return nil }

func reportCmd(args []string) error {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	samples := fs.String("samples", "", "file of sample lines (JSON, one a line)")
	out := fs.String("json", "bench-results.json", "file to write the raw results to")
	goVersion := fs.String("go", runtime.Version(), "Go version")
	commit := fs.String("commit", "", "commit of the code under test")
	rounds := fs.Int("rounds", 0, "rounds run")
	paths := fs.String("paths", "direct,ssh,dsproxy", "paths, in column order")
	params := paramList{}
	fs.Var(params, "param", "key=value: an option of the run, for the header and the JSON (repeatable)")
	var notes noteList
	fs.Var(&notes, "note", "a line for the header: a row or path left out, and why (repeatable)")
	fs.Parse(args)
	r := Results{
		Date:    time.Now().UTC().Format(time.RFC3339),
		Machine: machine(),
		Go:      *goVersion,
		Commit:  *commit,
		Rounds:  *rounds,
		Params:  params,
		Notes:   notes,
		Paths:   strings.Split(*paths, ","),
	}
	var err error
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

// ratioPaths are the paths that get a "÷ ssh" column: every dsproxy mode,
// when the run has ssh as the baseline.
func ratioPaths(paths []string) []string {
	if !slices.Contains(paths, "ssh") {
		return nil
	}
	var out []string
	for _, p := range paths {
		if strings.HasPrefix(p, "dsproxy") {
			out = append(out, p)
		}
	}
	return out
}

// paramOrder lists the known --param keys in the order the header shows them.
var paramOrder = []string{"rows", "bytes", "perf", "stall-bytes", "stall-pairs", "conns", "iperf3-time", "clients", "parallel-time", "rtt", "rtt-link", "rtt-conns", "topology", "hub-limits", "load"}

func writeTable(w io.Writer, r Results, jsonFile string) {
	fmt.Fprintf(w, "## dsproxy benchmarks, %s\n\n", r.Date)
	fmt.Fprintf(w, "- machine: %d CPUs, %s, %s, Linux %s\n", r.Machine.CPUs, r.Machine.CPUModel, r.Machine.Arch, r.Machine.Kernel)
	fmt.Fprintf(w, "- %s, commit %s\n", r.Go, r.Commit)
	rounds := "1 round"
	if r.Rounds != 1 {
		rounds = fmt.Sprintf("%d rounds, path order alternating", r.Rounds)
	}
	fmt.Fprintf(w, "- %s; each cell: median (min–max) over the rounds; raw results: %s\n", rounds, jsonFile)
	keys := slices.Collect(maps.Keys(r.Params))
	slices.SortFunc(keys, func(a, b string) int {
		ia, ib := slices.Index(paramOrder, a), slices.Index(paramOrder, b)
		if ia < 0 {
			ia = len(paramOrder)
		}
		if ib < 0 {
			ib = len(paramOrder)
		}
		return cmp.Or(cmp.Compare(ia, ib), strings.Compare(a, b))
	})
	for _, k := range keys {
		fmt.Fprintf(w, "- %s: %s\n", k, r.Params[k])
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "- **note:** %s\n", n)
	}
	fmt.Fprintln(w)

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
	ratios := ratioPaths(r.Paths)
	for _, p := range ratios {
		head = append(head, p+" ÷ ssh")
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
			cells = append(cells, formatCell(s, row.decimals))
		}
		if !have {
			continue
		}
		ssh, sshOK := find(row.metric, "ssh")
		for _, p := range ratios {
			ds, ok := find(row.metric, p)
			if ok && sshOK && ssh.Median > 0 {
				cells = append(cells, fmt.Sprintf("%.2f×", ds.Median/ssh.Median))
			} else {
				cells = append(cells, "—")
			}
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(cells, " | "))
	}
	fmt.Fprintf(w, "\nGbit/s is 10^9 bit/s and GB 10^9 bytes. CPU-s per GB: utime+stime from /proc/PID/stat over the run, "+
		"of hub + device + service proxy (dsproxy) and of the ssh client + sshd with its children (ssh); the benchmark "+
		"clients and targets are not counted. Only ratios within one run mean anything. What each row measures: docs/benchmarks.md.\n")
}

// formatCell prints "median (min–max)", or only the median for one sample.
func formatCell(s Summary, decimals int) string {
	f := "%." + strconv.Itoa(decimals) + "f"
	if s.N == 1 {
		return fmt.Sprintf(f, s.Median)
	}
	return fmt.Sprintf(f+" ("+f+"–"+f+")", s.Median, s.Min, s.Max)
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
