package main

// scaletool table: the Markdown table of a bench-scale.sh run, from the
// JSON the rows printed.

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"time"
)

// Targets of issue 6, on a 2-core machine.
const (
	targetStreamBytes  = 64 << 10 // hub memory per open stream
	targetDeviceBytes  = 48 << 10 // hub memory per idle device
	targetReconnectSec = 30       // every device back after a hub restart
)

func tableCmd(args []string) error {
	fs := flag.NewFlagSet("table", flag.ContinueOnError)
	devicesFile := fs.String("devices", "", "`FILE`: the JSON of scaletool devices (optional)")
	var streamsFiles stringList
	fs.Var(&streamsFiles, "streams", "`FILE`: the JSON of scaletool streams (repeatable, one per mode; optional)")
	goVersion := fs.String("go", runtime.Version(), "Go version of the measured binary")
	commit := fs.String("commit", "unknown", "commit of the measured binary")
	out := fs.String("json", "", "`FILE` to write both rows and the run's facts to")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *devicesFile == "" && len(streamsFiles) == 0 {
		return errors.New("give --devices, --streams or both")
	}
	run := scaleRun{
		Date: time.Now().UTC().Format(time.RFC3339), Machine: machine(),
		Go: *goVersion, Commit: *commit, Load1: loadAverage(),
	}
	if *devicesFile != "" {
		run.Devices = new(devicesResult)
		if err := readJSON(*devicesFile, run.Devices); err != nil {
			return err
		}
	}
	for _, f := range streamsFiles {
		s := new(streamsResult)
		if err := readJSON(f, s); err != nil {
			return err
		}
		run.Streams = append(run.Streams, s)
	}
	if *out != "" {
		b, err := json.MarshalIndent(run, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(*out, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	writeTable(os.Stdout, run)
	return nil
}

// scaleRun is one bench-scale.sh run: its facts and its rows.
type scaleRun struct {
	Date    string           `json:"date"`
	Machine string           `json:"machine"`
	Go      string           `json:"go"`
	Commit  string           `json:"commit"`
	Load1   float64          `json:"loadAverage1m"`
	Devices *devicesResult   `json:"devices,omitempty"`
	Streams []*streamsResult `json:"streams,omitempty"`
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func readJSON(name string, v any) error {
	b, err := os.ReadFile(name)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// machine describes this machine: CPU model and count, memory.
func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		if _, err := fmt.Sscanf(string(b), "MemTotal: %d kB", &kb); err == nil {
			mem = fmt.Sprintf(", %.0f GiB RAM", float64(kb)/(1<<20))
		}
	}
	return fmt.Sprintf("%s, %d CPUs%s, %s/%s", model, runtime.NumCPU(), mem, runtime.GOOS, runtime.GOARCH)
}

// kib formats bytes as KiB with one decimal.
func kib(b float64) string { return fmt.Sprintf("%.1f KiB", b/1024) }

// verdict compares a measured value with a target that it must not pass.
func verdict(v, target float64) string {
	if v <= target {
		return "meets"
	}
	return "**misses**"
}

// writeTable writes the run as Markdown.
func writeTable(w io.Writer, r scaleRun) {
	fmt.Fprintf(w, "## dsproxy scale benchmarks\n\n")
	fmt.Fprintf(w, "- date: %s\n- machine: %s\n- Go: %s\n- commit: %s\n- load average (1 min) at the end: %.1f\n\n", r.Date, r.Machine, r.Go, r.Commit, r.Load1)
	fmt.Fprintf(w, "Memory per unit is the growth of the process over its baseline before the\n")
	fmt.Fprintf(w, "row (measured in the same run), divided by the count. Live heap: after a GC.\n\n")
	fmt.Fprintf(w, "| row | figure | measured | target | |\n| --- | --- | --- | --- | --- |\n")
	if d := r.Devices; d != nil {
		row := fmt.Sprintf("%d idle devices", d.N)
		if d.MinBackoff != "" {
			row += ", MinBackoff " + d.MinBackoff
		}
		fmt.Fprintf(w, "| %s | hub RSS per device | %s | ≤ %s | %s |\n", row, kib(d.Hub.PerDevice.RSS), kib(targetDeviceBytes), verdict(d.Hub.PerDevice.RSS, targetDeviceBytes))
		fmt.Fprintf(w, "| | hub Go live heap per device | %s | | |\n", kib(d.Hub.PerDevice.HeapLive))
		fmt.Fprintf(w, "| | hub goroutine stacks per device | %s | | |\n", kib(d.Hub.PerDevice.StackInuse))
		fmt.Fprintf(w, "| | hub goroutines per device | %.1f | | |\n", d.Hub.PerDevice.Goroutines)
		fmt.Fprintf(w, "| | hub RSS baseline → with devices | %.0f → %.0f MiB | | |\n", float64(d.Hub.Before.RSS)/(1<<20), float64(d.Hub.After.RSS)/(1<<20))
		fmt.Fprintf(w, "| | simulator RSS per device | %s | | |\n", kib(d.Simulator.PerDevice.RSS))
		fmt.Fprintf(w, "| | first connect of all (ramped) | %.1f s | | |\n", d.ConnectSeconds)
		if rr := d.Restart; rr != nil {
			if rr.Back == d.N {
				fmt.Fprintf(w, "| | all back after hub restart (from the drop) | %.1f s | ≤ %d s | %s |\n", rr.AllBackSeconds, targetReconnectSec, verdict(rr.AllBackSeconds, targetReconnectSec))
				if rr.HubStartedSeconds > 0 {
					fmt.Fprintf(w, "| | … from the new hub's start | %.1f s | | |\n", rr.AllBackAfterStart)
				}
			} else {
				fmt.Fprintf(w, "| | back after hub restart | %d of %d | all ≤ %d s | **misses** |\n", rr.Back, d.N, targetReconnectSec)
			}
			fmt.Fprintf(w, "| | old hub exited, new hub started, /healthz answered (from the drop) | %.1f, %.1f, %.1f s | | |\n", rr.HubExitedSeconds, rr.HubStartedSeconds, rr.HubUpSeconds)
			fmt.Fprintf(w, "| | reconnect p50 / p90 / p99 / max | %.1f / %.1f / %.1f / %.1f s | | |\n", rr.Reconnect.P50, rr.Reconnect.P90, rr.Reconnect.P99, rr.Reconnect.Max)
			fmt.Fprintf(w, "| | CPU: new hub until all back, simulator over the restart | %.1f s, %.1f s | | |\n", rr.HubCPUSeconds, rr.SimCPUSeconds)
			fmt.Fprintf(w, "| | machine load average (1 min) when all were back | %.1f | | |\n", rr.Load1)
			fmt.Fprintf(w, "| | failed attempts (by class) | %d %s | | |\n", rr.FailureTotal, classes(rr.Failures))
			fmt.Fprintf(w, "| | failed attempts per device p50 / p99 / max | %.0f / %.0f / %.0f | | |\n", rr.Attempts.P50, rr.Attempts.P99, rr.Attempts.Max)
			fmt.Fprintf(w, "| | devices back per 5 s since the drop | %s | | |\n", histString(rebucket(rr.Histogram, 5), 5))
			fmt.Fprintf(w, "| | TLS resumed / full: devices' view; hub's view; hub's mean wait for a slot | %d / %d; %.0f / %.0f; %.0f ms | | |\n",
				rr.TLS.ClientResumed, rr.TLS.ClientFull, rr.TLS.HubResumed, rr.TLS.HubFull, rr.TLS.HubWaitMeanMS)
			for _, x := range []struct {
				name string
				s    timeSplit
			}{{"all", rr.Where.All}, {"slowest 1 %", rr.Where.Slowest}} {
				fmt.Fprintf(w, "| | time back, %s (mean s): closing + backoff + failed attempts + last attempt (its dial, ready) | %.1f = %.1f + %.1f + %.1f + %.1f (%.1f, %.1f) | | |\n",
					x.name, x.s.Back, x.s.Closing, x.s.Backoff, x.s.Failed, x.s.Attempt, x.s.Dial, x.s.Ready)
			}
			fmt.Fprintf(w, "| | slowest 1 %%: failed attempts (by class), longest wait | %s, %.1f s | | |\n", classes(rr.Late.Failures), rr.Late.MaxWait)
		}
	}
	for _, s := range r.Streams {
		row := fmt.Sprintf("%d open streams", s.N)
		if s.Mode != "" {
			row += ", " + s.Mode + " mode"
		}
		fmt.Fprintf(w, "| %s | hub RSS per stream | %s | ≤ %s | %s |\n", row, kib(s.Hub.PerStream.RSS), kib(targetStreamBytes), verdict(s.Hub.PerStream.RSS, targetStreamBytes))
		fmt.Fprintf(w, "| | hub Go live heap per stream | %s | | |\n", kib(s.Hub.PerStream.HeapLive))
		fmt.Fprintf(w, "| | hub goroutine stacks per stream | %s | | |\n", kib(s.Hub.PerStream.StackInuse))
		fmt.Fprintf(w, "| | hub goroutines per stream | %.1f | | |\n", s.Hub.PerStream.Goroutines)
		fmt.Fprintf(w, "| | hub RSS baseline → with streams | %.0f → %.0f MiB | | |\n", float64(s.Hub.Before.RSS)/(1<<20), float64(s.Hub.After.RSS)/(1<<20))
		fmt.Fprintf(w, "| | service proxy RSS per stream | %s | | |\n", kib(s.Service.PerStream.RSS))
		fmt.Fprintf(w, "| | device proxy RSS per stream | %s | | |\n", kib(s.Device.PerStream.RSS))
		fmt.Fprintf(w, "| | opened (setups/s at %s) | %d (%.0f/s), %d failed attempts | | |\n", "the tool's concurrency", s.Opened, s.SetupsPerSec, s.FailedAttempts)
		fmt.Fprintf(w, "| | setup p50 / p99 while opening | %.1f / %.1f ms | | |\n", s.SetupMS.P50, s.SetupMS.P99)
		fmt.Fprintf(w, "| | still echoing at the end; drained in | %d of %d; %.1f s | | |\n", s.LiveAtEnd, s.N, s.DrainSeconds)
	}
}

// classes formats failure counts as "(refused 12, eof 3)", largest first.
func classes(m map[string]int) string {
	if len(m) == 0 {
		return ""
	}
	type kv struct {
		k string
		v int
	}
	var kvs []kv
	for k, v := range m {
		kvs = append(kvs, kv{k, v})
	}
	// Largest first, then by name, so that the table is stable.
	for i := range kvs {
		for j := i + 1; j < len(kvs); j++ {
			if kvs[j].v > kvs[i].v || (kvs[j].v == kvs[i].v && kvs[j].k < kvs[i].k) {
				kvs[i], kvs[j] = kvs[j], kvs[i]
			}
		}
	}
	parts := make([]string, len(kvs))
	for i, e := range kvs {
		parts[i] = fmt.Sprintf("%s %d", e.k, e.v)
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

// rebucket merges every k buckets of h into one.
func rebucket(h []int, k int) []int {
	out := make([]int, (len(h)+k-1)/k)
	for i, c := range h {
		out[i/k] += c
	}
	return out
}

// histString formats a histogram of buckets width seconds wide as
// "0s:12 5s:300 ...", leaving out empty buckets.
func histString(h []int, width int) string {
	var parts []string
	for i, c := range h {
		if c > 0 {
			parts = append(parts, fmt.Sprintf("%ds:%d", i*width, c))
		}
	}
	if len(parts) == 0 {
		return "—"
	}
	return strings.Join(parts, " ")
}
