package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// iperf3Cmd runs `iperf3 -c HOST -p PORT -J -t --time -P --parallel [-R]`
// against an iperf3 server behind --addr and reports the receiver's
// Gbit/s and, with --pids, the tunnel processes' CPU seconds per GB
// received. iperf3's control connection goes through the path too.
func iperf3Cmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("iperf3", flag.ExitOnError)
	c := commonFlags(fs, "iperf3-up")
	bin := fs.String("iperf3", "iperf3", "the iperf3 binary")
	secs := fs.Duration("time", 3*time.Second, "how long iperf3 sends (whole seconds or more)")
	reverse := fs.Bool("reverse", false, "server → client (iperf3 -R)")
	parallel := fs.Int("parallel", 1, "parallel streams (iperf3 -P)")
	pids := fs.String("pids", "", "comma-separated PIDs whose CPU time (with their descendants') to measure")
	fs.Parse(args)
	if err := c.check(); err != nil {
		return err
	}
	host, port, err := net.SplitHostPort(c.addr)
	if err != nil {
		return fmt.Errorf("--addr: %w", err)
	}
	if *parallel < 1 || *parallel > 128 {
		return fmt.Errorf("--parallel %d: want 1 to 128", *parallel)
	}
	t := int(secs.Round(time.Second) / time.Second)
	if t < 1 {
		return fmt.Errorf("--time %v: want at least 1s", *secs)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	cm, err := newCPUMeter(*pids)
	if err != nil {
		return err
	}
	cmdArgs := []string{"-c", host, "-p", port, "-J", "-t", strconv.Itoa(t), "-P", strconv.Itoa(*parallel)}
	if *reverse {
		cmdArgs = append(cmdArgs, "-R")
	}
	var res iperf3Result
	for attempt := 1; ; attempt++ {
		var stdout, stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, *bin, cmdArgs...)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		runErr := cmd.Run()
		res, err = parseIperf3(stdout.Bytes())
		if err == nil {
			break
		}
		// The server runs one test at a time, and learns that the last
		// one ended only when its connections close through the path.
		if errors.Is(err, errIperf3Busy) && attempt < busyRetries {
			select {
			case <-time.After(busyWait):
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if runErr != nil {
			return fmt.Errorf("%s %v: %w (%s)", *bin, cmdArgs, err, bytes.TrimSpace(stderr.Bytes()))
		}
		return err
	}
	m := map[string]float64{
		"gbps":     res.bitsPerSecond / 1e9,
		"bytes":    res.bytes,
		"seconds":  res.seconds,
		"streams":  float64(*parallel),
		"retrans":  res.retransmits,
		"reversed": boolFloat(*reverse),
	}
	if err := cm.done(m, res.bytes); err != nil {
		return err
	}
	return printSample(c.sample(m))
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// busyRetries and busyWait bound how long iperf3Cmd waits for a server
// that is still busy with the previous test.
const (
	busyRetries = 40
	busyWait    = 250 * time.Millisecond
)

// errIperf3Busy is parseIperf3's error for a server busy with another test.
var errIperf3Busy = errors.New("iperf3 server busy with another test")

// iperf3Result is what a row takes from iperf3's JSON output.
type iperf3Result struct {
	bitsPerSecond float64 // measured by the receiver, over all streams
	bytes         float64 // received
	seconds       float64
	retransmits   float64 // of the sender's TCP
}

// parseIperf3 reads the output of iperf3 -J. The receiver's numbers are in
// end.sum_received (whichever side received, with or without -R); an
// iperf3 that failed says why in "error".
func parseIperf3(b []byte) (iperf3Result, error) {
	var out struct {
		Error string `json:"error"`
		End   struct {
			SumSent struct {
				Retransmits float64 `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived *struct {
				Seconds       float64 `json:"seconds"`
				Bytes         float64 `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return iperf3Result{}, fmt.Errorf("iperf3 output: %w", err)
	}
	if out.Error != "" {
		// iperf3 has no error codes in its JSON: its message is all there is.
		if strings.Contains(out.Error, "server is busy") {
			return iperf3Result{}, fmt.Errorf("%w: %s", errIperf3Busy, out.Error)
		}
		return iperf3Result{}, fmt.Errorf("iperf3: %s", out.Error)
	}
	r := out.End.SumReceived
	if r == nil || r.Bytes <= 0 || r.BitsPerSecond <= 0 {
		return iperf3Result{}, errors.New("iperf3 output: no end.sum_received with bytes and bits_per_second")
	}
	return iperf3Result{bitsPerSecond: r.BitsPerSecond, bytes: r.Bytes, seconds: r.Seconds,
		retransmits: out.End.SumSent.Retransmits}, nil
}
