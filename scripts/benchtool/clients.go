package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// Sample is one measurement of one path in one round: a line of the samples
// file, and an element of the JSON results. Metric names start with the
// row's prefix (see metricPrefix), so that rows never share a metric.
type Sample struct {
	Row     string             `json:"row"`
	Path    string             `json:"path"`
	Round   int                `json:"round"`
	Metrics map[string]float64 `json:"metrics"`
}

// metricPrefix turns a row name into the prefix of its metric names:
// "setup-parallel" → "setup_parallel".
func metricPrefix(row string) string { return strings.ReplaceAll(row, "-", "_") }

// common are the flags every client has.
type common struct {
	addr, row, path string
	round           int
	timeout         time.Duration
}

func commonFlags(fs *flag.FlagSet, row string) *common {
	c := &common{}
	fs.StringVar(&c.addr, "addr", "", "entry address of the path")
	fs.StringVar(&c.row, "row", row, "row name, recorded in the sample and prefixed to its metric names")
	fs.StringVar(&c.path, "path", "", "name of the path, recorded in the sample")
	fs.IntVar(&c.round, "round", 0, "round number, recorded in the sample")
	fs.DurationVar(&c.timeout, "timeout", 5*time.Minute, "give up after this long")
	return c
}

func (c *common) check() error {
	if c.addr == "" {
		return errors.New("--addr is required")
	}
	return nil
}

// sample makes the row's sample from metrics named without the prefix.
func (c *common) sample(m map[string]float64) Sample {
	out := make(map[string]float64, len(m))
	p := metricPrefix(c.row)
	for k, v := range m {
		out[p+"_"+k] = v
	}
	return Sample{Row: c.row, Path: c.path, Round: c.round, Metrics: out}
}

func printSample(s Sample) error {
	return json.NewEncoder(os.Stdout).Encode(s)
}

// cpuMeter measures the CPU time of some processes and their descendants
// between its creation and done.
type cpuMeter struct {
	procs []int
	t0    float64
}

func newCPUMeter(pids string) (*cpuMeter, error) {
	procs, err := processTree(pids)
	if err != nil {
		return nil, err
	}
	t0, err := cpuSeconds(procs)
	if err != nil {
		return nil, err
	}
	return &cpuMeter{procs: procs, t0: t0}, nil
}

// seconds returns the CPU seconds used since the meter was made.
func (cm *cpuMeter) seconds() (float64, error) {
	t1, err := cpuSeconds(cm.procs)
	if err != nil {
		return 0, err
	}
	return t1 - cm.t0, nil
}

// done adds cpu_s_per_gb, cpu_seconds and processes to m for bytes carried;
// nothing when the meter has no processes.
func (cm *cpuMeter) done(m map[string]float64, bytes float64) error {
	if len(cm.procs) == 0 {
		return nil
	}
	secs, err := cm.seconds()
	if err != nil {
		return err
	}
	m["cpu_s_per_gb"] = secs / (bytes / 1e9)
	m["cpu_seconds"] = secs
	m["processes"] = float64(len(cm.procs))
	return nil
}

// ---------------------------------------------------------------- throughput

// direction of a transfer, as seen from the client.
type direction string

const (
	up   direction = "up"   // client → target: to a sink
	down direction = "down" // target → client: from a source
)

func parseDirection(s string) (direction, error) {
	switch d := direction(s); d {
	case up, down:
		return d, nil
	}
	return "", fmt.Errorf("--dir %q: want up or down", s)
}

// transfer dials addr and moves n bytes over the connection (see move).
func transfer(ctx context.Context, addr string, dir direction, n int64) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	return move(ctx, c, dir, n)
}

// move moves n bytes over c: up, to a sink (write, half-close, wait for the
// one-byte ack); down, from a source (ask for n, read to EOF). It returns
// when the last byte is known to have arrived, and closes c when ctx ends.
func move(ctx context.Context, c net.Conn, dir direction, n int64) error {
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	buf := make([]byte, bufSize)
	if dir == down {
		binary.BigEndian.PutUint64(buf, uint64(n))
		if _, err := c.Write(buf[:8]); err != nil {
			return fmt.Errorf("write the request: %w", err)
		}
		got, err := io.CopyBuffer(io.Discard, onlyReader{c}, buf)
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		if got != n {
			return fmt.Errorf("read %d bytes, want %d", got, n)
		}
		return nil
	}
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
	return nil
}

// onlyReader hides WriterTo, so that io.CopyBuffer uses the given buffer.
type onlyReader struct{ io.Reader }

// parallelTransfer dials streams connections, then moves n bytes in all
// over them at once, and returns the seconds from the start of the moves to
// the last byte.
func parallelTransfer(ctx context.Context, addr string, dir direction, n int64, streams int) (float64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var d net.Dialer
	conns := make([]net.Conn, 0, streams)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range streams {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return 0, fmt.Errorf("stream %d: %w", i, err)
		}
		conns = append(conns, c)
	}
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	t0 := time.Now()
	for i, c := range conns {
		share := n / int64(streams)
		if i == 0 {
			share += n % int64(streams)
		}
		wg.Go(func() {
			if err := move(ctx, c, dir, share); err != nil {
				once.Do(func() { first = fmt.Errorf("stream %d: %w", i, err); cancel() })
			}
		})
	}
	wg.Wait()
	return time.Since(t0).Seconds(), first
}

// throughputCmd moves --bytes through --addr over --streams connections
// and reports Gbit/s (10^9 bits) and, with --pids, the CPU seconds the
// processes and their descendants used per GB (10^9 bytes); with --perf
// too, that CPU time split into kernel, cipher and the rest (perf.go).
func throughputCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("throughput", flag.ExitOnError)
	c := commonFlags(fs, "upload")
	size := fs.String("bytes", "1GiB", "bytes to move, over all streams")
	dirFlag := fs.String("dir", "up", "up (to a sink) or down (from a source)")
	streams := fs.Int("streams", 1, "parallel connections")
	pids := fs.String("pids", "", "comma-separated PIDs whose CPU time (with their descendants') to measure")
	withPerf := fs.Bool("perf", false, "also split the --pids' CPU time per GB into kernel, cipher and the rest, sampled with Linux perf")
	fs.Parse(args)
	if err := c.check(); err != nil {
		return err
	}
	n, err := parseSize(*size)
	if err != nil {
		return err
	}
	dir, err := parseDirection(*dirFlag)
	if err != nil {
		return err
	}
	if *streams < 1 || int64(*streams) > n {
		return fmt.Errorf("--streams %d: want between 1 and --bytes", *streams)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	cm, err := newCPUMeter(*pids)
	if err != nil {
		return err
	}
	var ps *perfSplit
	if *withPerf {
		if ps, err = startPerf(cm.procs); err != nil {
			return err
		}
	}
	secs, err := parallelTransfer(ctx, c.addr, dir, n, *streams)
	if err != nil {
		if ps != nil {
			_ = ps.stop(ctx, nil) // the transfer's error says more
		}
		return err
	}
	m := map[string]float64{
		"gbps":    gbps(n, secs),
		"seconds": secs,
		"bytes":   float64(n),
		"streams": float64(*streams),
	}
	if err := cm.done(m, float64(n)); err != nil {
		return err
	}
	if ps != nil {
		if err := ps.stop(ctx, m); err != nil {
			return err
		}
	}
	return printSample(c.sample(m))
}

func gbps(n int64, secs float64) float64 { return float64(n) * 8 / secs / 1e9 }

// ---------------------------------------------------------------- setup

// setupCmd measures connection setups through --addr to an echo server,
// each: dial, write one byte, read it back, close. With --duration, --clients
// loops run for that long (a rate under load); without, --conns setups are
// made by --clients loops in all (one: sequential). It reports the
// percentiles of the time each took, the setups per second, and with
// --rtt-ms the percentiles in round trips.
func setupCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("setup", flag.ExitOnError)
	c := commonFlags(fs, "setup")
	conns := fs.Int("conns", 1000, "setups to make (without --duration)")
	clients := fs.Int("clients", 1, "parallel loops")
	duration := fs.Duration("duration", 0, "run the loops for this long instead of --conns setups")
	perConn := fs.Duration("conn-timeout", 10*time.Second, "give up on one setup after this long")
	rttMS := fs.Float64("rtt-ms", 0, "the path's added round trip in ms: also report percentiles in round trips")
	pids := fs.String("pids", "", "comma-separated PIDs whose CPU time (with their descendants') per setup to measure")
	fs.Parse(args)
	if err := c.check(); err != nil {
		return err
	}
	if *clients < 1 {
		return fmt.Errorf("--clients %d: want at least 1", *clients)
	}
	if *duration <= 0 && *conns < 1 {
		return fmt.Errorf("--conns %d: want at least 1", *conns)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	cm, err := newCPUMeter(*pids)
	if err != nil {
		return err
	}
	res, err := setups(ctx, c.addr, *clients, *conns, *duration, *perConn)
	if err != nil {
		return err
	}
	cpu, err := cm.seconds()
	if err != nil {
		return err
	}
	// Sequential runs stop at the first error; under load a few may fail
	// (and are counted), but not all.
	if len(res.ms) == 0 || (*clients == 1 && res.errors > 0) {
		return fmt.Errorf("%d of %d setups failed, the first: %w", res.errors, res.errors+len(res.ms), res.firstErr)
	}
	slices.Sort(res.ms)
	m := map[string]float64{
		"p50_ms": percentile(res.ms, 50),
		"p90_ms": percentile(res.ms, 90),
		"p99_ms": percentile(res.ms, 99),
		"min_ms": res.ms[0],
		"max_ms": res.ms[len(res.ms)-1],
		"per_s":  float64(len(res.ms)) / res.secs,
		"conns":  float64(len(res.ms)),
		"errors": float64(res.errors),
	}
	if len(cm.procs) > 0 {
		m["cpu_ms_per_setup"] = cpu * 1000 / float64(len(res.ms)+res.errors)
		m["cpu_seconds"] = cpu
	}
	if *rttMS > 0 {
		m["p50_rtts"] = m["p50_ms"] / *rttMS
		m["p90_rtts"] = m["p90_ms"] / *rttMS
		m["rtt_ms"] = *rttMS
	}
	if res.errors > 0 {
		fmt.Fprintf(os.Stderr, "benchtool setup: %d setups failed, the first: %v\n", res.errors, res.firstErr)
	}
	return printSample(c.sample(m))
}

type setupResult struct {
	ms       []float64 // one per successful setup, in milliseconds
	errors   int
	firstErr error
	secs     float64 // from the first dial to the end of the last setup
}

// setups runs clients loops of echoOne against addr: until duration has
// passed when it is positive, else until conns setups were attempted.
func setups(ctx context.Context, addr string, clients, conns int, duration, perConn time.Duration) (setupResult, error) {
	var (
		mu       sync.Mutex
		res      setupResult
		wg       sync.WaitGroup
		attempts int
	)
	var end time.Time
	t0 := time.Now()
	if duration > 0 {
		end = t0.Add(duration)
	}
	// next reports whether a loop should make one more setup.
	next := func() bool {
		mu.Lock()
		defer mu.Unlock()
		if ctx.Err() != nil {
			return false
		}
		if duration > 0 {
			return time.Now().Before(end)
		}
		if attempts >= conns {
			return false
		}
		attempts++
		return true
	}
	var d net.Dialer
	for range clients {
		wg.Go(func() {
			for next() {
				s := time.Now()
				cctx, cancel := context.WithTimeout(ctx, perConn)
				err := echoOne(cctx, &d, addr)
				cancel()
				ms := float64(time.Since(s).Nanoseconds()) / 1e6
				mu.Lock()
				if err != nil {
					res.errors++
					if res.firstErr == nil {
						res.firstErr = err
					}
				} else {
					res.ms = append(res.ms, ms)
				}
				stop := clients == 1 && err != nil
				mu.Unlock()
				if stop {
					return
				}
			}
		})
	}
	wg.Wait()
	res.secs = time.Since(t0).Seconds()
	return res, ctx.Err()
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

// ---------------------------------------------------------------- stall

// stallCmd measures a transfer B of --bytes through --addr alone and while
// another stream A through the same path has a reader that stopped: up, A
// writes to a hold target (--stall-addr) until its writes block; down, A
// asks a source (--stall-addr) for more than the path can buffer and reads
// nothing. It makes --pairs pairs of runs, alone and stalled (stalled
// first in even rounds), with a new A for every stalled run, and reports
// the median Gbit/s of each and their ratio (stalled ÷ alone).
func stallCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("stall", flag.ExitOnError)
	c := commonFlags(fs, "stall")
	stallAddr := fs.String("stall-addr", "", "address of A's target: a hold server (up) or a source (down)")
	size := fs.String("bytes", "256MiB", "bytes B moves in each run")
	dirFlag := fs.String("dir", "up", "up: B uploads to a sink while A's target does not read; down: B downloads while A's client does not read")
	fill := fs.Duration("fill", time.Second, "down: how long A's buffers get to fill before B starts")
	pairs := fs.Int("pairs", 3, "pairs of runs, alone and stalled")
	fs.Parse(args)
	if err := c.check(); err != nil {
		return err
	}
	if *stallAddr == "" {
		return errors.New("--stall-addr is required")
	}
	if *pairs < 1 {
		return fmt.Errorf("--pairs %d: want at least 1", *pairs)
	}
	n, err := parseSize(*size)
	if err != nil {
		return err
	}
	dir, err := parseDirection(*dirFlag)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()

	timed := func() (float64, error) {
		t0 := time.Now()
		if err := transfer(ctx, c.addr, dir, n); err != nil {
			return 0, fmt.Errorf("stream B: %w", err)
		}
		return gbps(n, time.Since(t0).Seconds()), nil
	}
	var alone, stalled, buffered []float64
	aloneRun := func() error {
		g, err := timed()
		alone = append(alone, g)
		return err
	}
	stalledRun := func() error {
		a, held, err := stallA(ctx, *stallAddr, dir, *fill)
		if err != nil {
			return fmt.Errorf("stream A: %w", err)
		}
		defer a.Close()
		buffered = append(buffered, float64(held))
		g, err := timed()
		stalled = append(stalled, g)
		return err
	}
	first, second := aloneRun, stalledRun
	if c.round%2 == 0 {
		first, second = stalledRun, aloneRun
	}
	for range *pairs {
		if err := first(); err != nil {
			return err
		}
		if err := second(); err != nil {
			return err
		}
	}
	m := map[string]float64{
		"alone_gbps":   median(alone),
		"stalled_gbps": median(stalled),
		"ratio":        median(stalled) / median(alone),
		"bytes":        float64(n),
		"pairs":        float64(*pairs),
	}
	if dir == up {
		m["buffered_mib"] = median(buffered) / (1 << 20)
	}
	return printSample(c.sample(m))
}

// stallLimit bounds what stallA writes before it gives up on a path that
// never pushes back.
const stallLimit = 4 << 30

// stallA opens stream A and stalls its reader. Up: it writes to the hold
// target until a write makes no progress for half a second, and returns how
// many bytes the path took. Down: it asks the source for stallLimit bytes,
// reads none, and waits fill for the buffers along the path to fill.
func stallA(ctx context.Context, addr string, dir direction, fill time.Duration) (net.Conn, int64, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, 0, err
	}
	if dir == down {
		var hdr [8]byte
		binary.BigEndian.PutUint64(hdr[:], stallLimit)
		if _, err := c.Write(hdr[:]); err != nil {
			c.Close()
			return nil, 0, fmt.Errorf("write the request: %w", err)
		}
		select {
		case <-time.After(fill):
		case <-ctx.Done():
			c.Close()
			return nil, 0, ctx.Err()
		}
		return c, 0, nil
	}
	buf := make([]byte, 64<<10)
	var total int64
	for total < stallLimit {
		c.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
		k, err := c.Write(buf)
		total += int64(k)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return c, total, nil
		}
		if err != nil {
			c.Close()
			return nil, total, fmt.Errorf("write: %w", err)
		}
	}
	c.Close()
	return nil, total, fmt.Errorf("the path took %d bytes without pushing back", total)
}
