// Command clusterbench turns the raw results of scripts/bench-cluster.sh
// into its Markdown table and one JSON document (docs/benchmarks.md, "Hub
// replicas").
//
//	clusterbench table --results DIR [--json FILE]
//
// DIR holds what the script wrote: meta.txt (key=value lines),
// setup.jsonl (benchtool setup samples, one per path and round),
// memory-single.json and memory-replica.json (scaletool devices),
// nats-before.txt ("rss1 rss2 rss3") and nats-samples.txt ("connected rss1
// rss2 rss3" every 0.5 s while the replica's devices were up), and
// nats-node.txt (the node the replica was connected to, 1-based; 0:
// unknown), and pg-counts.txt (two lines, before and after:
// device_sessions inserts, device_sessions updates, devices writes,
// committed transactions, session rows, released session rows, sum of
// epochs). Any of
// them may be missing (a row that did not run); the table leaves it out.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

func main() {
	if len(os.Args) < 2 || os.Args[1] != "table" {
		fmt.Fprintln(os.Stderr, "usage: clusterbench table --results DIR [--json FILE]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet("table", flag.ExitOnError)
	dir := fs.String("results", "", "`DIR` of the raw results (required)")
	jsonOut := fs.String("json", "", "write the combined results to `FILE`")
	fs.Parse(os.Args[2:])
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "clusterbench table: --results is required")
		os.Exit(2)
	}
	res, err := load(*dir)
	if err == nil && *jsonOut != "" {
		err = writeJSON(*jsonOut, res)
	}
	if err == nil {
		err = writeTable(os.Stdout, res)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "clusterbench table: %v\n", err)
		os.Exit(1)
	}
}

// sample is one benchtool setup run.
type sample struct {
	Row     string             `json:"row"`
	Path    string             `json:"path"`
	Round   int                `json:"round"`
	Metrics map[string]float64 `json:"metrics"`
}

// perUnit is scaletool's growth per device.
type perUnit struct {
	RSS        float64 `json:"rssBytes"`
	HeapLive   float64 `json:"heapLiveBytes"`
	StackInuse float64 `json:"stackInuseBytes"`
	Goroutines float64 `json:"goroutines"`
}

// devicesDoc is the part of scaletool devices' document the table reads;
// Raw keeps all of it.
type devicesDoc struct {
	N   int `json:"n"`
	Hub struct {
		PerDevice perUnit `json:"perDevice"`
	} `json:"hub"`
	ConnectSeconds float64         `json:"connectSeconds"`
	Raw            json.RawMessage `json:"-"`
}

// natsResult is each NATS node's RSS growth while the replica held its
// devices.
type natsResult struct {
	Connected       int       `json:"connected"`   // the most devices the replica counted
	ReplicaNode     int       `json:"replicaNode"` // the node the replica was connected to (1-based; 0: unknown)
	BeforeBytes     []float64 `json:"beforeRssBytes"`
	PeakBytes       []float64 `json:"peakRssBytes"` // while Connected were up
	PerDeviceBytes  []float64 `json:"perDeviceRssBytes"`
	MedianPerDevice float64   `json:"medianPerDeviceRssBytes"`
}

// pgResult is what PostgreSQL wrote for the replica's devices.
type pgResult struct {
	Rows            float64 `json:"deviceSessionsRows"`     // after the run
	Released        float64 `json:"deviceSessionsReleased"` // rows with no replica, after the run
	Claims          float64 `json:"claims"`                 // growth of the sum of epochs: one per claim
	SessionInserts  float64 `json:"deviceSessionsInserts"`
	SessionUpdates  float64 `json:"deviceSessionsUpdates"`
	DeviceWrites    float64 `json:"devicesWrites"`
	Transactions    float64 `json:"transactions"`
	SessionsPerDev  float64 `json:"deviceSessionsWritesPerDevice"`
	TransactsPerDev float64 `json:"transactionsPerDevice"`
}

// results is the combined document.
type results struct {
	Meta          map[string]string          `json:"meta"`
	Setup         []sample                   `json:"setup,omitempty"`
	SetupSummary  map[string]map[string]stat `json:"setupSummary,omitempty"`
	MemorySingle  json.RawMessage            `json:"memorySingle,omitempty"`
	MemoryReplica json.RawMessage            `json:"memoryReplica,omitempty"`
	NATS          *natsResult                `json:"nats,omitempty"`
	PG            *pgResult                  `json:"postgres,omitempty"`

	single, replica *devicesDoc
}

// stat is a median with its range over rounds.
type stat struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	N      int     `json:"n"`
}

func statOf(vs []float64) stat {
	if len(vs) == 0 {
		return stat{}
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return stat{Median: m, Min: s[0], Max: s[len(s)-1], N: len(s)}
}

func load(dir string) (*results, error) {
	res := &results{Meta: map[string]string{}}
	if err := eachLine(filepath.Join(dir, "meta.txt"), func(l string) error {
		if k, v, ok := strings.Cut(l, "="); ok {
			res.Meta[k] = v
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if err := eachLine(filepath.Join(dir, "setup.jsonl"), func(l string) error {
		var s sample
		if err := json.Unmarshal([]byte(l), &s); err != nil {
			return fmt.Errorf("setup.jsonl: %w", err)
		}
		res.Setup = append(res.Setup, s)
		return nil
	}); err != nil {
		return nil, err
	}
	if len(res.Setup) > 0 {
		res.SetupSummary = summarize(res.Setup)
	}
	var err error
	if res.single, res.MemorySingle, err = loadDevices(filepath.Join(dir, "memory-single.json")); err != nil {
		return nil, err
	}
	if res.replica, res.MemoryReplica, err = loadDevices(filepath.Join(dir, "memory-replica.json")); err != nil {
		return nil, err
	}
	if res.NATS, err = loadNATS(dir); err != nil {
		return nil, err
	}
	if res.PG, err = loadPG(filepath.Join(dir, "pg-counts.txt"), res.replica); err != nil {
		return nil, err
	}
	return res, nil
}

// eachLine calls f with each non-empty line of name; a missing file has
// none.
func eachLine(name string, f func(string) error) error {
	file, err := os.Open(name)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer file.Close()
	sc := bufio.NewScanner(file)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			if err := f(l); err != nil {
				return err
			}
		}
	}
	return sc.Err()
}

// summarize is, per path ("single/per-stream"), the median over rounds of
// each metric.
func summarize(samples []sample) map[string]map[string]stat {
	vals := map[string]map[string][]float64{}
	for _, s := range samples {
		if vals[s.Path] == nil {
			vals[s.Path] = map[string][]float64{}
		}
		for k, v := range s.Metrics {
			vals[s.Path][k] = append(vals[s.Path][k], v)
		}
	}
	out := map[string]map[string]stat{}
	for p, m := range vals {
		out[p] = map[string]stat{}
		for k, vs := range m {
			out[p][k] = statOf(vs)
		}
	}
	return out
}

func loadDevices(name string) (*devicesDoc, json.RawMessage, error) {
	b, err := os.ReadFile(name)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	var d devicesDoc
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", filepath.Base(name), err)
	}
	return &d, json.RawMessage(b), nil
}

// fields parses a line of numbers.
func fields(l string) ([]float64, error) {
	var out []float64
	for _, f := range strings.Fields(l) {
		v, err := strconv.ParseFloat(f, 64)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", l, err)
		}
		out = append(out, v)
	}
	return out, nil
}

func loadNATS(dir string) (*natsResult, error) {
	var before []float64
	if err := eachLine(filepath.Join(dir, "nats-before.txt"), func(l string) (err error) {
		before, err = fields(l)
		return err
	}); err != nil || before == nil {
		return nil, err
	}
	var samples [][]float64
	if err := eachLine(filepath.Join(dir, "nats-samples.txt"), func(l string) error {
		f, err := fields(l)
		if err != nil {
			return err
		}
		// A node that was gone gives an empty RSS: skip the sample.
		if len(f) == len(before)+1 {
			samples = append(samples, f)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	r := &natsResult{BeforeBytes: before, PeakBytes: make([]float64, len(before))}
	if err := eachLine(filepath.Join(dir, "nats-node.txt"), func(l string) (err error) {
		r.ReplicaNode, err = strconv.Atoi(l)
		return err
	}); err != nil {
		return nil, fmt.Errorf("nats-node.txt: %w", err)
	}
	for _, s := range samples {
		r.Connected = max(r.Connected, int(s[0]))
	}
	if r.Connected == 0 {
		return nil, nil
	}
	for _, s := range samples {
		if int(s[0]) != r.Connected {
			continue
		}
		for i := range before {
			r.PeakBytes[i] = max(r.PeakBytes[i], s[i+1])
		}
	}
	for i := range before {
		r.PerDeviceBytes = append(r.PerDeviceBytes, (r.PeakBytes[i]-before[i])/float64(r.Connected))
	}
	r.MedianPerDevice = statOf(r.PerDeviceBytes).Median
	return r, nil
}

func loadPG(name string, replica *devicesDoc) (*pgResult, error) {
	var rows [][]float64
	if err := eachLine(name, func(l string) error {
		f, err := fields(l)
		if err == nil && len(f) != 7 {
			err = fmt.Errorf("%q: want 7 numbers", l)
		}
		rows = append(rows, f)
		return err
	}); err != nil {
		return nil, fmt.Errorf("pg-counts.txt: %w", err)
	}
	if len(rows) != 2 || replica == nil || replica.N == 0 {
		return nil, nil
	}
	d := func(i int) float64 { return rows[1][i] - rows[0][i] }
	n := float64(replica.N)
	return &pgResult{
		Rows: rows[1][4], Released: rows[1][5], Claims: d(6),
		SessionInserts: d(0), SessionUpdates: d(1), DeviceWrites: d(2), Transactions: d(3),
		SessionsPerDev: (d(0) + d(1)) / n, TransactsPerDev: d(3) / n,
	}, nil
}

func writeJSON(name string, res *results) error {
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(name, append(b, '\n'), 0o644)
}

func kib(b float64) string { return fmt.Sprintf("%.1f KiB", b/1024) }

func writeTable(w io.Writer, res *results) error {
	m := res.Meta
	fmt.Fprintf(w, "## Hub replicas (scripts/bench-cluster.sh)\n\n")
	fmt.Fprintf(w, "Commit %s, %s; %s CPUs (%s), %s; load average %s at the start, %s at the end.\n\n",
		m["commit"], m["date"], m["cpus"], m["cpu"], m["go"], m["load"], m["loadEnd"])
	if len(res.SetupSummary) > 0 {
		fmt.Fprintf(w, "### setup: one new stream (connect, echo 1 byte), %s sequential, median of %s rounds [min–max]\n\n", m["conns"], m["rounds"])
		fmt.Fprintln(w, "| mode | path | p50 ms | p90 ms | p50 ÷ single | p90 ÷ single | setups/s |")
		fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- | --- |")
		for _, mode := range []string{"per-stream", "session"} {
			base := res.SetupSummary["single/"+mode]
			for _, path := range []string{"single", "replica", "across"} {
				s, ok := res.SetupSummary[path+"/"+mode]
				if !ok {
					continue
				}
				p50, p90 := s["setup_p50_ms"], s["setup_p90_ms"]
				ratio := func(v, b stat) string {
					if b.Median == 0 {
						return ""
					}
					return fmt.Sprintf("%.2f", v.Median/b.Median)
				}
				fmt.Fprintf(w, "| %s | %s | %.2f [%.2f–%.2f] | %.2f [%.2f–%.2f] | %s | %s | %.0f |\n",
					mode, pathTitle(path), p50.Median, p50.Min, p50.Max, p90.Median, p90.Min, p90.Max,
					ratio(p50, base["setup_p50_ms"]), ratio(p90, base["setup_p90_ms"]), s["setup_per_s"].Median)
			}
		}
		fmt.Fprintln(w)
	}
	if res.single != nil || res.replica != nil {
		fmt.Fprintf(w, "### memory: idle devices, per device (one run)\n\n")
		fmt.Fprintln(w, "| hub | devices | hub RSS / device | hub live heap / device | hub stacks / device | goroutines / device |")
		fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- |")
		for _, r := range []struct {
			name string
			d    *devicesDoc
		}{{"single (SQLite)", res.single}, {"replica (PostgreSQL + NATS)", res.replica}} {
			if r.d == nil {
				continue
			}
			p := r.d.Hub.PerDevice
			fmt.Fprintf(w, "| %s | %d | %s | %s | %s | %.1f |\n", r.name, r.d.N, kib(p.RSS), kib(p.HeapLive), kib(p.StackInuse), p.Goroutines)
		}
		if res.single != nil && res.replica != nil && res.single.Hub.PerDevice.RSS > 0 {
			fmt.Fprintf(w, "\nreplica ÷ single, RSS per device: %.2f; live heap: %.2f\n",
				res.replica.Hub.PerDevice.RSS/res.single.Hub.PerDevice.RSS,
				res.replica.Hub.PerDevice.HeapLive/res.single.Hub.PerDevice.HeapLive)
		}
		fmt.Fprintln(w)
	}
	if res.NATS != nil {
		fmt.Fprintf(w, "NATS nodes' RSS growth per device subscription (%d devices on one replica; every node keeps the interest): ", res.NATS.Connected)
		var parts []string
		for i, v := range res.NATS.PerDeviceBytes {
			note := ""
			if i+1 == res.NATS.ReplicaNode {
				note = " (the replica's own node)"
			}
			parts = append(parts, fmt.Sprintf("n%d %s%s", i+1, kib(v), note))
		}
		fmt.Fprintf(w, "%s; median %s.\n\n", strings.Join(parts, ", "), kib(res.NATS.MedianPerDevice))
	}
	if res.PG != nil {
		fmt.Fprintf(w, "PostgreSQL, per device registered, connected once and disconnected: %.2f writes to device_sessions (%.0f inserts, %.0f updates in all; %.0f claims, %.0f of %.0f rows released at the end), %.2f committed transactions (%.0f writes to devices: the registration).\n",
			res.PG.SessionsPerDev, res.PG.SessionInserts, res.PG.SessionUpdates, res.PG.Claims, res.PG.Released, res.PG.Rows, res.PG.TransactsPerDev, res.PG.DeviceWrites)
	}
	return nil
}

func pathTitle(p string) string {
	switch p {
	case "single":
		return "single hub"
	case "replica":
		return "replica, service and device on B"
	case "across":
		return "across: service on A, device on B"
	}
	return p
}
