package main

// scaletool devices: a fleet of simulated idle devices, each a real
// hubclient.DeviceClient (the same code as `dsproxy device`, with its
// keepalives, reconnection backoff and jitter), in this one process.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"maps"
	"net/http"
	"os"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/dsproxy/dsproxy/hubclient"
	"github.com/dsproxy/dsproxy/internal/sas"
)

// devicesResult is what scaletool devices prints.
type devicesResult struct {
	Row string `json:"row"` // "devices"
	N   int    `json:"n"`
	// MinBackoff is the devices' MinBackoff when not the client's default.
	MinBackoff string `json:"minBackoff,omitempty"`
	FileLimit  uint64 `json:"fileLimit"`
	Registered struct {
		Reused  int     `json:"reused"`
		Created int     `json:"created"`
		Seconds float64 `json:"seconds"`
	} `json:"registered"`
	ConnectSeconds float64 `json:"connectSeconds"` // first dial to all N connected (ramped at --connect-rate)
	Hub            struct {
		Before    memory  `json:"before"`
		After     memory  `json:"after"`
		PerDevice perUnit `json:"perDevice"`
	} `json:"hub"`
	Simulator struct {
		Before    memory  `json:"before"`
		After     memory  `json:"after"`
		PerDevice perUnit `json:"perDevice"`
	} `json:"simulator"`
	Restart *restartResult `json:"restart,omitempty"`
}

// restartResult is how the fleet came back after a hub restart.
type restartResult struct {
	// Times are seconds from the first session drop the fleet saw.
	HubDownSeconds float64 `json:"hubDownSeconds"` // the hub's /healthz first failed
	HubUpSeconds   float64 `json:"hubUpSeconds"`   // and first answered again (zero: not before the fleet was back)
	// HubExitedSeconds and HubStartedSeconds are when the old hub process
	// had exited and the new one was started, as the script recorded
	// them (zero when it did not).
	HubExitedSeconds  float64 `json:"hubExitedSeconds,omitempty"`
	HubStartedSeconds float64 `json:"hubStartedSeconds,omitempty"`
	AllBackSeconds    float64 `json:"allBackSeconds"` // every device connected again
	// AllBackAfterStart is AllBackSeconds - HubStartedSeconds: the
	// reconnect storm itself, without the old hub's shutdown.
	AllBackAfterStart float64 `json:"allBackAfterStartSeconds,omitempty"`
	Back              int     `json:"back"` // devices connected again by the end
	// Reconnect is the distribution of each device's time back (seconds
	// from the drop), Histogram the same in 1 s buckets.
	Reconnect summary `json:"reconnect"`
	Histogram []int   `json:"histogram1s"`
	// Failures counts failed connection attempts during the storm by
	// class (refused, throttled, unavailable, timeout, reset, eof, closed,
	// tls, other); Attempts the distribution of failed attempts per device.
	Failures     map[string]int `json:"failures"`
	FailureTotal int            `json:"failureTotal"`
	Attempts     summary        `json:"failedAttemptsPerDevice"`
	// RetryWaits is the distribution of the waits the clients chose
	// between attempts (backoff with jitter), in seconds.
	RetryWaits summary `json:"retryWaits"`
	// HubCPUSeconds is the CPU time the new hub used from its start until
	// every device was back: the storm's cost to the hub. SimCPUSeconds is
	// the simulator's over the whole restart (it shares the machine's
	// cores with the hub here; a real fleet does not).
	HubCPUSeconds float64  `json:"hubCPUSeconds"`
	Load1         float64  `json:"loadAverage1m"` // the machine's load when all were back
	SimCPUSeconds float64  `json:"simulatorCPUSeconds"`
	Examples      []string `json:"examples,omitempty"` // a few errors of each class but "refused", as logged
	HubGauge      float64  `json:"hubConnectedDevices"`

	// TLS counts the reconnects' handshakes that resumed a TLS session
	// and those that did not, as the devices logged them and as the new
	// hub counted them (its metrics; zero from a hub without them), and
	// the hub's mean wait for a handshake slot.
	TLS struct {
		ClientResumed int     `json:"clientResumed"`
		ClientFull    int     `json:"clientFull"`
		HubResumed    float64 `json:"hubResumed"`
		HubFull       float64 `json:"hubFull"`
		HubWaitMeanMS float64 `json:"hubWaitMeanMs"`
	} `json:"tls"`
	// Where is where the devices' time back went, over all of them and
	// over the slowest 1 %; Late says what happened to the slowest.
	Where struct {
		All     timeSplit `json:"all"`
		Slowest timeSplit `json:"slowest1pct"`
	} `json:"where"`
	Late lateReport `json:"late"`
}

// timeSplit is where a set of devices' time back went, as means in
// seconds: Closing, from the fleet's first drop to the device's own (the
// old hub closes sessions one after another); Backoff, the waits between
// attempts; Failed, the attempts that failed, all classes; Attempt, the
// one that succeeded. Closing + Backoff + Failed + Attempt = Back, the
// mean time back (an attempt is timed from the end of the wait its
// predecessor logged). The successful attempt, as the devices log it:
// Dial, TCP, TLS (with the hub's admission queue) and the WebSocket
// upgrade; Ready, the wait for the hub's ready message.
type timeSplit struct {
	N       int     `json:"n"`
	Back    float64 `json:"back"`
	Closing float64 `json:"closing"`
	Backoff float64 `json:"backoff"`
	Failed  float64 `json:"failed"`
	Attempt float64 `json:"attempt"`
	Dial    float64 `json:"dial"`
	Ready   float64 `json:"ready"`
}

// lateReport is what happened to the slowest 1 % of the devices: their
// failed attempts by class, the longest wait any of them chose, and the
// attempts of a few of them in order.
type lateReport struct {
	Failures  map[string]int `json:"failures"`
	MaxWait   float64        `json:"maxWaitSeconds"`
	Timelines []string       `json:"timelines,omitempty"`
}

func devicesCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("devices", flag.ContinueOnError)
	csFile := fs.String("hub-cs", "", "`FILE` with the hub's owner connection string (registers the devices)")
	caFile := fs.String("ca-file", "", "`FILE`: the hub's CA certificate (PEM)")
	n := fs.Int("n", 1000, "number of simulated devices")
	prefix := fs.String("prefix", "scale-", "device ID prefix; IDs are PREFIX00000, PREFIX00001, ...")
	hubPID := fs.Int("hub-pid", 0, "the hub's process ID, for its RSS")
	hubPIDFile := fs.String("hub-pid-file", "", "`FILE` holding the hub's process ID (read again after a restart)")
	workers := fs.Int("workers", 16, "concurrent registry requests")
	rate := fs.Int("connect-rate", 1000, "devices started per second for the first connection (a ramp, so that the initial connect is no storm)")
	connectTimeout := fs.Duration("connect-timeout", 10*time.Minute, "how long all devices may take to connect at first")
	gcWait := fs.Duration("gc-wait", 130*time.Second, "how long to wait for a hub GC after all connected, for a current live heap (the runtime forces one every 2 min)")
	restart := fs.Bool("restart", false, "after measuring, write --ready-file and measure the reconnect after the hub restarts")
	readyFile := fs.String("ready-file", "", "`FILE` to create when the fleet is connected and measured (the script then restarts the hub)")
	restartTimeout := fs.Duration("restart-timeout", 5*time.Minute, "how long to wait for the hub to go away and the fleet to come back")
	stoppedFile := fs.String("hub-exited-file", "", "`FILE` where the script writes when the old hub exited (Unix nanoseconds)")
	startedFile := fs.String("hub-started-file", "", "`FILE` where the script writes when it started the new hub (Unix nanoseconds)")
	hubDataDir := fs.String("hub-data-dir", "", "`DIR`: the hub's data directory, where scaletool hub leaves its pprof address")
	profileDir := fs.String("profile-dir", "", "`DIR` to save the hub's heap profiles and goroutines in (scaletool hub only)")
	minBackoff := fs.Duration("min-backoff", 0, "the devices' MinBackoff (0: the client's default, 500 ms): the first reconnect waits a random time in its upper half")
	cpuProfile := fs.String("cpu-profile", "", "`FILE` for a CPU profile of the simulator itself during the restart (from the ready file until all are back)")
	keepalive := fs.Duration("keepalive", 15*time.Second, "the devices' keepalive interval (the default of dsproxy device)")
	restartGOGC := fs.Int("restart-gogc", 400, "the simulator's GOGC during the restart (-1: leave it); see simulatorGOGC")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case *csFile == "" || *caFile == "":
		return errors.New("--hub-cs and --ca-file are required")
	case *n <= 0:
		return fmt.Errorf("--n %d: want a positive number", *n)
	case *hubPID <= 0 && *hubPIDFile == "":
		return errors.New("--hub-pid or --hub-pid-file is required")
	case *restart && *readyFile == "":
		return errors.New("--restart needs --ready-file")
	case *rate <= 0 || *rate > 1_000_000 || *workers <= 0:
		return errors.New("--connect-rate must be in 1..1000000 and --workers positive")
	}
	pidOf := func() (int, error) {
		if *hubPIDFile == "" {
			return *hubPID, nil
		}
		return readPIDFile(*hubPIDFile)
	}

	var res devicesResult
	res.Row, res.N = "devices", *n
	if *minBackoff > 0 {
		res.MinBackoff = minBackoff.String()
	}
	lim, err := raiseFileLimit()
	if err != nil {
		return err
	}
	res.FileLimit = lim
	if need := uint64(*n) + 64; lim < need {
		return fmt.Errorf("%d devices need about %d file descriptors, RLIMIT_NOFILE is %d: raise ulimit -n (hard) or lower --n", *n, need, lim)
	}
	ownerCS, err := readTrimmed(*csFile)
	if err != nil {
		return err
	}
	tlsCfg, err := loadCA(*caFile)
	if err != nil {
		return err
	}
	cs, err := sas.ParseConnectionString(ownerCS)
	if err != nil {
		return fmt.Errorf("--hub-cs: %w", err)
	}
	hm, err := newHubMetrics(cs.HostName, *caFile)
	if err != nil {
		return err
	}
	svc, err := hubclient.NewServiceClient(hubclient.ServiceConfig{ConnectionString: ownerCS, TLSConfig: tlsCfg})
	if err != nil {
		return err
	}
	defer svc.Close()

	t0 := time.Now()
	conns, reused, err := register(ctx, svc, *prefix, *n, *workers)
	if err != nil {
		return err
	}
	res.Registered.Reused, res.Registered.Created = reused, *n-reused
	res.Registered.Seconds = time.Since(t0).Seconds()
	progress("%d devices registered (%d reused) in %.1fs", *n, reused, res.Registered.Seconds)

	pid, err := pidOf()
	if err != nil {
		return err
	}
	if res.Hub.Before, err = hubMemory(ctx, pid, hm, time.Time{}, 0); err != nil {
		return err
	}
	res.Simulator.Before = selfMemory()
	if *profileDir != "" {
		if err := saveProfiles(ctx, *hubDataDir, *profileDir, "devices-before"); err != nil {
			return err
		}
	}

	fleet := newFleet(*n)
	runCtx, stopFleet := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		stopFleet()
		wg.Wait()
	}()
	t0 = time.Now()
	tick := time.NewTicker(time.Second / time.Duration(*rate))
	for i, c := range conns {
		dc, err := hubclient.NewDeviceClient(hubclient.DeviceConfig{
			ConnectionString:  c,
			TLSConfig:         tlsCfg,
			KeepAliveInterval: *keepalive,
			MinBackoff:        *minBackoff,
			Logger:            zerolog.New(fleet.logWriter(i)).Level(zerolog.InfoLevel),
		}, rejectAll)
		if err != nil {
			tick.Stop()
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := dc.Run(runCtx); err != nil {
				progress("device %s stopped: %v", dc.DeviceID(), err)
			}
		}()
		select {
		case <-ctx.Done():
			tick.Stop()
			return ctx.Err()
		case <-tick.C:
		}
	}
	tick.Stop()
	if err := waitFor(ctx, *connectTimeout, "all devices connected", func() (bool, string) {
		up := fleet.connected()
		return up == *n, fmt.Sprintf("%d of %d connected", up, *n)
	}); err != nil {
		return err
	}
	res.ConnectSeconds = time.Since(t0).Seconds()
	if err := waitFor(ctx, time.Minute, "hub counts every device", func() (bool, string) {
		v, err := hm.gauge(ctx, "dsproxy_hub_connected_devices")
		return err == nil && int(v) == *n, fmt.Sprintf("hub counts %v (%v)", v, err)
	}); err != nil {
		return err
	}
	allUp := time.Now()
	progress("%d devices connected in %.1fs; waiting for a hub GC", *n, res.ConnectSeconds)
	if _, err := forceGC(ctx, *hubDataDir); err != nil {
		return err
	}
	if res.Hub.After, err = hubMemory(ctx, pid, hm, allUp, *gcWait); err != nil {
		return err
	}
	res.Simulator.After = selfMemory()
	if *profileDir != "" {
		if err := saveProfiles(ctx, *hubDataDir, *profileDir, "devices-after"); err != nil {
			return err
		}
	}
	res.Hub.PerDevice = per(res.Hub.Before, res.Hub.After, *n)
	res.Simulator.PerDevice = per(res.Simulator.Before, res.Simulator.After, *n)
	progress("hub: %.1f KiB RSS, %.1f KiB live heap per device", res.Hub.PerDevice.RSS/1024, res.Hub.PerDevice.HeapLive/1024)

	if *restart {
		stopProfile, err := startCPUProfile(*cpuProfile)
		if err != nil {
			return err
		}
		rr, err := measureRestart(ctx, fleet, hm, cs.HostName, *caFile, *readyFile, *restartTimeout, *restartGOGC)
		if perr := stopProfile(); err == nil {
			err = perr
		}
		if err != nil {
			return err
		}
		err = rr.addScriptTimes(fleet.dropTime(), *stoppedFile, *startedFile)
		if err == nil {
			var newPID int
			if newPID, err = pidOf(); err == nil {
				var cpu time.Duration
				cpu, err = readCPU(newPID)
				rr.HubCPUSeconds = cpu.Seconds()
			}
		}
		if err != nil {
			return err
		}
		res.Restart = rr
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// rejectAll is the simulated devices' stream handler: they are idle.
func rejectAll(_ context.Context, req *hubclient.StreamRequest) {
	_ = req.Reject("simulated device: no targets")
}

// register makes sure devices PREFIX00000 ... exist, creating the missing
// ones with workers concurrent requests, and returns their connection
// strings and how many already existed.
func register(ctx context.Context, svc *hubclient.ServiceClient, prefix string, n, workers int) ([]string, int, error) {
	existing, err := svc.ListDevices(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("register devices: %w", err)
	}
	byID := make(map[string]hubclient.Device, len(existing))
	for _, d := range existing {
		byID[d.ID] = d
	}
	conns := make([]string, n)
	reused := 0
	var todo []int
	for i := range n {
		if d, ok := byID[deviceID(prefix, i)]; ok && d.Status == "enabled" {
			conns[i] = svc.DeviceConnectionString(d)
			reused++
		} else {
			todo = append(todo, i)
		}
	}
	var next atomic.Int64
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for {
				k := int(next.Add(1)) - 1
				if k >= len(todo) || ctx.Err() != nil {
					return
				}
				i := todo[k]
				id := deviceID(prefix, i)
				d, err := svc.CreateDevice(ctx, id)
				if errors.Is(err, hubclient.ErrExists) {
					d, err = svc.GetDevice(ctx, id) // registered concurrently, or disabled: reuse
				}
				if err != nil {
					errs[w] = fmt.Errorf("register device %s: %w", id, err)
					return
				}
				conns[i] = svc.DeviceConnectionString(d)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, 0, err
	}
	return conns, reused, ctx.Err()
}

// deviceID is the ID of simulated device i.
func deviceID(prefix string, i int) string { return fmt.Sprintf("%s%05d", prefix, i) }

// measureRestart signals readiness through readyFile, then follows the
// fleet through the hub's restart: the drop, the hub down and up again
// (polling /healthz), and every device back. With gogc ≥ 0 the
// simulator runs the restart with that GOGC (simulatorGOGC).
//
// simulatorGOGC: the fleet's 19,900 clients share one heap here (600 MB
// live and more), which every GC cycle marks; with the default GOGC of
// 100 the reconnect storm's allocations ran a cycle every few seconds,
// 15 % of the simulator's CPU in the restart, taken from the hub's two
// cores. A real device collects only its own few kilobytes. A higher
// GOGC during the restart alone (the memory figures are read before it)
// cuts that overhead of the simulation, at the cost of more of the
// machine's memory (up to about (1 + GOGC/100) × the live heap).
func measureRestart(ctx context.Context, fleet *fleet, hm *hubMetrics, hubAddr, caFile, readyFile string, timeout time.Duration, gogc int) (*restartResult, error) {
	if gogc >= 0 {
		defer debug.SetGCPercent(debug.SetGCPercent(gogc))
	}
	fleet.markRestart()
	cpu0, err := readCPU(os.Getpid())
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(readyFile, []byte(time.Now().UTC().Format(time.RFC3339Nano)+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("write ready file: %w", err)
	}
	progress("ready: waiting for the hub to restart")
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	// Follow the hub's /healthz until it has gone away and answered again.
	tlsCfg, err := loadCA(caFile)
	if err != nil {
		return nil, err
	}
	var hubDown, hubUp time.Time
	health := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg, DisableKeepAlives: true}}
	for hubUp.IsZero() {
		ok := healthy(ctx, health, "https://"+hubAddr+"/healthz")
		switch {
		case !ok && hubDown.IsZero():
			hubDown = time.Now()
		case ok && !hubDown.IsZero():
			hubUp = time.Now()
		}
		if hubUp.IsZero() && !hubDown.IsZero() && fleet.back() == fleet.n {
			// The fleet is back before a probe got through: each waits
			// 2 s at most, and in the storm the hub's handshake queue is
			// longer. The hub is up; when, the fleet's times say.
			progress("the fleet is back; /healthz did not answer a probe meanwhile")
			break
		}
		if hubUp.IsZero() {
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("hub restart: /healthz did not go away and come back: %w", ctx.Err())
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	progress("hub answers again; waiting for the fleet")
	err = waitFor(ctx, timeout, "fleet back after the restart", func() (bool, string) {
		back := fleet.back()
		return back == fleet.n, fmt.Sprintf("%d of %d back", back, fleet.n)
	})
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return nil, err
	}
	rr := fleet.restartReport(hubDown, hubUp)
	rr.Load1 = loadAverage()
	if cpu1, err := readCPU(os.Getpid()); err == nil {
		rr.SimCPUSeconds = (cpu1 - cpu0).Seconds()
	}
	if m, err := hm.scrape(ctx); err == nil {
		rr.HubGauge = m["dsproxy_hub_connected_devices"]
		// Absent from a hub that predates them: zero.
		rr.TLS.HubFull, rr.TLS.HubResumed = m["dsproxy_hub_tls_handshakes_full_total"], m["dsproxy_hub_tls_handshakes_resumed_total"]
		if n := rr.TLS.HubFull + rr.TLS.HubResumed; n > 0 {
			rr.TLS.HubWaitMeanMS = m["dsproxy_hub_tls_handshake_wait_seconds_total"] / n * 1e3
		}
	}
	progress("fleet back %.1fs after the drop; %d failed attempts", rr.AllBackSeconds, rr.FailureTotal)
	return rr, nil
}

// addScriptTimes reads when the script saw the old hub exit and started
// the new one, each from a file holding Unix nanoseconds (absent names
// are skipped), as seconds from drop.
func (rr *restartResult) addScriptTimes(drop time.Time, exitedFile, startedFile string) error {
	for name, dst := range map[string]*float64{exitedFile: &rr.HubExitedSeconds, startedFile: &rr.HubStartedSeconds} {
		if name == "" {
			continue
		}
		s, err := readTrimmed(name)
		if err != nil {
			return fmt.Errorf("hub restart time: %w", err)
		}
		ns, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("hub restart time in %s: %w", name, err)
		}
		*dst = time.Unix(0, ns).Sub(drop).Seconds()
	}
	if rr.HubStartedSeconds > 0 && rr.AllBackSeconds > 0 {
		rr.AllBackAfterStart = rr.AllBackSeconds - rr.HubStartedSeconds
	}
	return nil
}

// healthy reports whether GET url answers 200.
func healthy(ctx context.Context, c *http.Client, url string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := c.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// waitFor polls cond every 200 ms until it holds, printing its status
// every 10 s; it fails when timeout passes or ctx ends first.
func waitFor(ctx context.Context, timeout time.Duration, what string, cond func() (bool, string)) error {
	deadline := time.Now().Add(timeout)
	lastPrint := time.Now()
	for {
		ok, status := cond()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not after %s (%s): %w", what, timeout, status, context.DeadlineExceeded)
		}
		if time.Since(lastPrint) > 10*time.Second {
			progress("%s: %s", what, status)
			lastPrint = time.Now()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// readTrimmed reads a small file without its surrounding space.
func readTrimmed(name string) (string, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// readPIDFile reads a process ID from a file.
func readPIDFile(name string) (int, error) {
	s, err := readTrimmed(name)
	if err != nil {
		return 0, fmt.Errorf("read pid file: %w", err)
	}
	var pid int
	if _, err := fmt.Sscan(s, &pid); err != nil || pid <= 0 {
		return 0, fmt.Errorf("pid file %s: %q is not a process ID", name, s)
	}
	return pid, nil
}

// fleet follows the simulated devices through their clients' logs: the
// DeviceClient reports each session up ("control session up") and each
// failed or ended session with its error and the wait before the next
// attempt ("control session down"), and nothing else tells a caller why an
// attempt failed.
type fleet struct {
	n int

	mu         sync.Mutex
	up         []bool
	nUp        int
	restartAt  time.Time   // zero until markRestart
	dropAt     time.Time   // first session end after restartAt
	dropped    []bool      // the device's session ended after restartAt
	backAt     []time.Time // the device's first session up after its drop
	nBack      int
	failures   map[string]int
	perDevice  []int     // failed attempts after the drop
	tracks     []track   // each device's way back, after its drop
	retryWaits []float64 // seconds, after the drop
	examples   []string
	exampled   map[string]int // examples kept, by class
}

func newFleet(n int) *fleet {
	return &fleet{
		n: n, up: make([]bool, n), dropped: make([]bool, n), backAt: make([]time.Time, n),
		perDevice: make([]int, n), tracks: make([]track, n), failures: make(map[string]int),
	}
}

// logWriter returns the log destination of device i's client.
func (f *fleet) logWriter(i int) *deviceLog { return &deviceLog{f: f, i: i} }

// deviceLog receives one device client's JSON log lines (zerolog writes
// each event with one Write).
type deviceLog struct {
	f *fleet
	i int
}

// logLine is the part of a DeviceClient log line the fleet reads. Dial
// and Ready are milliseconds (zerolog's durations), on "control session
// up" from clients that log them.
type logLine struct {
	Message    string   `json:"message"`
	Error      string   `json:"error"`
	RetryIn    string   `json:"retry_in"`
	TLSResumed *bool    `json:"tls_resumed"`
	Dial       *float64 `json:"dial"`
	Ready      *float64 `json:"ready"`
}

// attempt is one of a device's attempts after its drop: its failure
// class ("" for the one that succeeded), how long it took and the wait
// that followed (seconds).
type attempt struct {
	class      string
	took, wait float64
}

// track is one device's way back after its drop.
type track struct {
	droppedAt time.Time // its session ended
	dropWait  float64   // the wait chosen then (seconds)
	lastAt    time.Time // its last attempt ended (or the drop)
	lastWait  float64   // the wait chosen then (seconds)
	attempts  []attempt
	dial      float64 // the successful attempt's phases (seconds), when logged
	ready     float64
	resumed   *bool
}

func (l *deviceLog) Write(p []byte) (int, error) {
	var e logLine
	if err := json.Unmarshal(p, &e); err != nil {
		return len(p), nil // not ours to judge; the figures come from the lines we know
	}
	l.f.event(l.i, e, time.Now())
	return len(p), nil
}

func (f *fleet) event(i int, e logLine, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	restarting := !f.restartAt.IsZero()
	switch e.Message {
	case "control session up":
		if !f.up[i] {
			f.up[i] = true
			f.nUp++
		}
		if restarting && f.dropped[i] && f.backAt[i].IsZero() {
			f.backAt[i] = now
			f.nBack++
			t := &f.tracks[i]
			t.attempts = append(t.attempts, attempt{took: t.since(now)})
			t.resumed = e.TLSResumed
			if e.Dial != nil && e.Ready != nil {
				t.dial, t.ready = *e.Dial/1e3, *e.Ready/1e3
			}
		}
	case "control session down":
		if f.up[i] {
			f.up[i] = false
			f.nUp--
		}
		if !restarting {
			return
		}
		t := &f.tracks[i]
		wait, werr := time.ParseDuration(e.RetryIn)
		if !f.dropped[i] {
			f.dropped[i] = true
			if f.dropAt.IsZero() {
				f.dropAt = now
			}
			t.droppedAt = now
			t.dropWait = wait.Seconds()
		} else {
			class := failureClass(e.Error)
			f.failures[class]++
			f.perDevice[i]++
			t.attempts = append(t.attempts, attempt{class: class, took: t.since(now), wait: wait.Seconds()})
			if class != "refused" && f.exampled[class] < 3 {
				if f.exampled == nil {
					f.exampled = map[string]int{}
				}
				f.exampled[class]++
				f.examples = append(f.examples, class+": "+e.Error)
			}
		}
		t.lastAt, t.lastWait = now, 0
		if werr == nil {
			t.lastWait = wait.Seconds()
			f.retryWaits = append(f.retryWaits, wait.Seconds())
		}
	}
}

// since is how long the attempt that ended at now took: it began when
// the wait chosen after the previous one was over.
func (t *track) since(now time.Time) float64 {
	return max(now.Sub(t.lastAt).Seconds()-t.lastWait, 0)
}

// failureClass sorts a failed connection attempt by its logged error. The
// client's errors reach this tool only as log text, hence the matching on
// words; a class this does not know is "other".
func failureClass(msg string) string {
	switch {
	case strings.Contains(msg, "(429)"):
		return "throttled"
	case strings.Contains(msg, "(503)"):
		return "unavailable"
	case strings.Contains(msg, "connection refused"):
		return "refused"
	case strings.Contains(msg, "connection reset"), strings.Contains(msg, "broken pipe"):
		return "reset"
	case strings.Contains(msg, "timeout"), strings.Contains(msg, "deadline exceeded"):
		return "timeout"
	case strings.Contains(msg, "EOF"):
		return "eof"
	case strings.Contains(msg, "server closed"):
		return "closed" // the hub closed the connection before it answered the upgrade
	case strings.Contains(msg, "tls:"), strings.Contains(msg, "x509:"):
		return "tls"
	}
	return "other"
}

func (f *fleet) connected() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.nUp
}

func (f *fleet) back() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.nBack
}

// dropTime is when the first session ended after markRestart.
func (f *fleet) dropTime() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dropAt
}

func (f *fleet) markRestart() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.restartAt = time.Now()
}

// restartReport sums up the fleet's restart; hubDown and hubUp are when
// the hub's /healthz stopped and started answering.
func (f *fleet) restartReport(hubDown, hubUp time.Time) *restartResult {
	f.mu.Lock()
	defer f.mu.Unlock()
	rr := &restartResult{Failures: maps.Clone(f.failures), Back: f.nBack, Examples: slices.Clone(f.examples)}
	since := func(t time.Time) float64 { return t.Sub(f.dropAt).Seconds() }
	var back []float64
	var last time.Time
	for _, t := range f.backAt {
		if t.IsZero() {
			continue
		}
		back = append(back, since(t))
		if t.After(last) {
			last = t
		}
	}
	if f.nBack == f.n {
		rr.AllBackSeconds = since(last)
	}
	rr.HubDownSeconds = since(hubDown)
	if !hubUp.IsZero() {
		rr.HubUpSeconds = since(hubUp) // zero: no probe got through before the fleet was back
	}
	rr.Histogram = histogram(back, 1)
	rr.Reconnect = summarize(back)
	attempts := make([]float64, 0, f.n)
	for i, k := range f.perDevice {
		if f.dropped[i] {
			attempts = append(attempts, float64(k))
		}
		rr.FailureTotal += k
	}
	rr.Attempts = summarize(attempts)
	rr.RetryWaits = summarize(slices.Clone(f.retryWaits))
	f.whereReport(rr)
	return rr
}

// whereReport fills rr's TLS counts (the clients' side), Where and Late
// from the devices' tracks. f.mu must be held.
func (f *fleet) whereReport(rr *restartResult) {
	var order []int // the devices back, slowest last
	for i, t := range f.backAt {
		if t.IsZero() {
			continue
		}
		order = append(order, i)
		if r := f.tracks[i].resumed; r != nil && *r {
			rr.TLS.ClientResumed++
		} else if r != nil {
			rr.TLS.ClientFull++
		}
	}
	slices.SortFunc(order, func(a, b int) int { return f.backAt[a].Compare(f.backAt[b]) })
	rr.Where.All = f.split(order)
	slowest := order[len(order)-max(len(order)/100, min(len(order), 1)):]
	rr.Where.Slowest = f.split(slowest)
	rr.Late.Failures = map[string]int{}
	for k, i := range slices.Backward(slowest) {
		t := &f.tracks[i]
		line := fmt.Sprintf("%s back at %.1fs, dropped at %.1fs:", deviceID("#", i), f.backAt[i].Sub(f.dropAt).Seconds(), t.droppedAt.Sub(f.dropAt).Seconds())
		for _, a := range t.attempts {
			if a.class != "" {
				rr.Late.Failures[a.class]++
				rr.Late.MaxWait = max(rr.Late.MaxWait, a.wait)
				line += fmt.Sprintf(" %s %.1fs, wait %.1fs;", a.class, a.took, a.wait)
			} else {
				line += fmt.Sprintf(" up %.1fs (dial %.1fs, ready %.1fs)", a.took, t.dial, t.ready)
			}
		}
		if len(slowest)-k <= 5 {
			rr.Late.Timelines = append(rr.Late.Timelines, line)
		}
	}
}

// split sums up where the devices' time back went (see timeSplit).
// f.mu must be held.
func (f *fleet) split(devices []int) timeSplit {
	s := timeSplit{N: len(devices)}
	if len(devices) == 0 {
		return s
	}
	for _, i := range devices {
		t := &f.tracks[i]
		s.Back += f.backAt[i].Sub(f.dropAt).Seconds()
		s.Closing += t.droppedAt.Sub(f.dropAt).Seconds()
		s.Dial += t.dial
		s.Ready += t.ready
		for _, a := range t.attempts {
			s.Backoff += a.wait
			if a.class != "" {
				s.Failed += a.took
			} else {
				s.Attempt += a.took
			}
		}
		s.Backoff += t.dropWait
	}
	n := float64(len(devices))
	for _, p := range []*float64{&s.Back, &s.Closing, &s.Backoff, &s.Failed, &s.Attempt, &s.Dial, &s.Ready} {
		*p /= n
	}
	return s
}

// startCPUProfile profiles this process's CPU into file until the returned
// function is called; with file "" it does nothing.
func startCPUProfile(file string) (stop func() error, err error) {
	if file == "" {
		return func() error { return nil }, nil
	}
	f, err := os.Create(file)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() error {
		pprof.StopCPUProfile()
		return f.Close()
	}, nil
}
