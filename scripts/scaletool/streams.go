package main

// scaletool streams: many concurrent open, idle streams through the real
// processes (TCP client → dsproxy service → hub → dsproxy device → echo
// target), and scaletool echo, the target.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// streamsResult is what scaletool streams prints.
type streamsResult struct {
	Row       string `json:"row"`  // "streams"
	Mode      string `json:"mode"` // the service proxy's --mode, as the script says
	N         int    `json:"n"`
	FileLimit uint64 `json:"fileLimit"`
	Opened    int    `json:"opened"`
	// FailedAttempts are connections that did not echo (the service proxy
	// closes a connection whose stream the hub refused, e.g. 429); each is
	// retried up to --retries times.
	FailedAttempts int     `json:"failedAttempts"`
	OpenSeconds    float64 `json:"openSeconds"`
	SetupsPerSec   float64 `json:"setupsPerSecond"`
	// SetupMS is the time from dial to the echo of the first bytes, in
	// milliseconds, of the attempts that succeeded.
	SetupMS summary `json:"setupMs"`
	// LiveAtEnd is how many streams echoed again after the measurement.
	LiveAtEnd int `json:"liveAtEnd"`
	// DrainSeconds is how long the hub took to count no active streams
	// after the tool closed all its connections.
	DrainSeconds float64    `json:"drainSeconds"`
	HubActive    float64    `json:"hubActiveStreams"`
	Hub          procMemory `json:"hub"`
	Service      procMemory `json:"service"`
	Device       procMemory `json:"device"`
}

// procMemory is a process's memory before and after the streams opened.
type procMemory struct {
	Before    memory  `json:"before"`
	After     memory  `json:"after"`
	PerStream perUnit `json:"perStream"`
}

func streamsCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("streams", flag.ContinueOnError)
	mode := fs.String("mode", "", "label of the service proxy's --mode, for the table")
	addr := fs.String("addr", "", "`HOST:PORT` of the service proxy's listener")
	n := fs.Int("n", 1000, "number of concurrent streams")
	concurrency := fs.Int("concurrency", 64, "streams being set up at once")
	retries := fs.Int("retries", 5, "attempts per stream beyond the first")
	hubAddr := fs.String("hub", "", "`HOST:PORT` of the hub (for /metrics)")
	caFile := fs.String("ca-file", "", "`FILE`: the hub's CA certificate (PEM)")
	hubPID := fs.Int("hub-pid", 0, "the hub's process ID")
	servicePID := fs.Int("service-pid", 0, "the service proxy's process ID")
	devicePID := fs.Int("device-pid", 0, "the device proxy's process ID")
	gcWait := fs.Duration("gc-wait", 130*time.Second, "how long to wait for a hub GC after all streams are open, for a current live heap")
	hubDataDir := fs.String("hub-data-dir", "", "`DIR`: the hub's data directory, where scaletool hub leaves its pprof address")
	profileDir := fs.String("profile-dir", "", "`DIR` to save the hub's heap profiles and goroutines in (scaletool hub only)")
	hold := fs.Duration("hold", 0, "keep the streams open this much longer after measuring")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case *addr == "" || *hubAddr == "" || *caFile == "":
		return errors.New("--addr, --hub and --ca-file are required")
	case *hubPID <= 0 || *servicePID <= 0 || *devicePID <= 0:
		return errors.New("--hub-pid, --service-pid and --device-pid are required")
	case *n <= 0 || *concurrency <= 0 || *retries < 0:
		return errors.New("--n and --concurrency must be positive, --retries not negative")
	}
	var res streamsResult
	res.Row, res.Mode, res.N = "streams", *mode, *n
	lim, err := raiseFileLimit()
	if err != nil {
		return err
	}
	res.FileLimit = lim
	if need := uint64(*n) + 64; lim < need {
		return fmt.Errorf("%d streams need about %d file descriptors here, RLIMIT_NOFILE is %d: raise ulimit -n (hard) or lower --n", *n, need, lim)
	}
	hm, err := newHubMetrics(*hubAddr, *caFile)
	if err != nil {
		return err
	}
	if res.Hub.Before, err = hubMemory(ctx, *hubPID, hm, time.Time{}, 0); err != nil {
		return err
	}
	if res.Service.Before, err = rssOnly(*servicePID); err != nil {
		return err
	}
	if *profileDir != "" {
		if err := saveProfiles(ctx, *hubDataDir, *profileDir, "streams-before"); err != nil {
			return err
		}
	}
	if res.Device.Before, err = rssOnly(*devicePID); err != nil {
		return err
	}

	conns, st, err := openStreams(ctx, *addr, *n, *concurrency, *retries)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	res.Opened, res.FailedAttempts = st.opened, st.failed
	res.OpenSeconds = st.elapsed.Seconds()
	if st.elapsed > 0 {
		res.SetupsPerSec = float64(st.opened) / st.elapsed.Seconds()
	}
	res.SetupMS = summarize(st.setupMS)
	if err != nil {
		return err
	}
	progress("%d streams open in %.1fs (%.0f/s), %d failed attempts", res.Opened, res.OpenSeconds, res.SetupsPerSec, res.FailedAttempts)
	if err := waitFor(ctx, time.Minute, "hub counts every stream relaying", func() (bool, string) {
		m, err := hm.scrape(ctx)
		if err != nil {
			return false, err.Error()
		}
		active, pending := m["dsproxy_hub_active_streams"], m["dsproxy_hub_pending_handshakes"]
		res.HubActive = active
		return int(active) == *n && pending == 0, fmt.Sprintf("active %v, pending %v", active, pending)
	}); err != nil {
		return err
	}
	allOpen := time.Now()
	if _, err := forceGC(ctx, *hubDataDir); err != nil {
		return err
	}
	progress("waiting for a hub GC")
	if res.Hub.After, err = hubMemory(ctx, *hubPID, hm, allOpen, *gcWait); err != nil {
		return err
	}
	if res.Service.After, err = rssOnly(*servicePID); err != nil {
		return err
	}
	if res.Device.After, err = rssOnly(*devicePID); err != nil {
		return err
	}
	if *profileDir != "" {
		if err := saveProfiles(ctx, *hubDataDir, *profileDir, "streams-after"); err != nil {
			return err
		}
	}
	res.Hub.PerStream = per(res.Hub.Before, res.Hub.After, *n)
	res.Service.PerStream = per(res.Service.Before, res.Service.After, *n)
	res.Device.PerStream = per(res.Device.Before, res.Device.After, *n)
	progress("hub: %.1f KiB RSS, %.1f KiB live heap per stream", res.Hub.PerStream.RSS/1024, res.Hub.PerStream.HeapLive/1024)

	if *hold > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(*hold):
		}
	}
	res.LiveAtEnd = echoAll(ctx, conns, *concurrency)
	progress("%d of %d streams still echo", res.LiveAtEnd, *n)

	// Close them all and wait for the hub to let go of every stream, so
	// that the processes stop promptly after the row.
	t0 := time.Now()
	for i, c := range conns {
		if c != nil {
			c.Close()
			conns[i] = nil
		}
	}
	if err := waitFor(ctx, 2*time.Minute, "hub ends every stream", func() (bool, string) {
		v, err := hm.gauge(ctx, "dsproxy_hub_active_streams")
		return err == nil && v == 0, fmt.Sprintf("active %v (%v)", v, err)
	}); err != nil {
		return err
	}
	res.DrainSeconds = time.Since(t0).Seconds()
	progress("streams drained in %.1fs", res.DrainSeconds)
	return json.NewEncoder(os.Stdout).Encode(res)
}

// rssOnly is a process's memory when only its RSS is known.
func rssOnly(pid int) (memory, error) {
	rss, err := readRSS(pid)
	return memory{RSS: rss}, err
}

// openStats is how opening the streams went.
type openStats struct {
	opened, failed int
	elapsed        time.Duration
	setupMS        []float64
}

// openStreams dials addr n times, concurrency at a time, and echoes a few
// bytes through each connection; it returns the connections (nil where a
// stream could not be opened in 1+retries attempts).
func openStreams(ctx context.Context, addr string, n, concurrency, retries int) ([]net.Conn, openStats, error) {
	conns := make([]net.Conn, n)
	setup := make([]float64, n)
	var failed atomic.Int64
	var next atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	t0 := time.Now()
	for range concurrency {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				var err error
				for try := 0; try <= retries; try++ {
					start := time.Now()
					var c net.Conn
					c, err = openOne(ctx, addr, i)
					if err == nil {
						conns[i] = c
						setup[i] = float64(time.Since(start).Microseconds()) / 1000
						break
					}
					failed.Add(1)
					select {
					case <-ctx.Done():
						return
					case <-time.After(time.Duration(try+1) * 200 * time.Millisecond):
					}
				}
				if err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("stream %d: %w", i, err) })
				}
			}
		})
	}
	wg.Wait()
	st := openStats{failed: int(failed.Load()), elapsed: time.Since(t0)}
	for i, c := range conns {
		if c != nil {
			st.opened++
			st.setupMS = append(st.setupMS, setup[i])
		}
	}
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return conns, st, firstErr
}

// openOne dials addr and echoes an 8-byte message naming stream i.
func openOne(ctx context.Context, addr string, i int) (net.Conn, error) {
	d := net.Dialer{Timeout: 30 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if err := echoOnce(c, i); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// echoOnce writes an 8-byte message naming stream i and reads it back,
// within 60 s (the hub's handshake timeout).
func echoOnce(c net.Conn, i int) error {
	msg := fmt.Appendf(nil, "s%07d", i%10_000_000)
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read the echo: %w", err)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

// echoAll echoes once more through every open connection, concurrency at
// a time, and returns how many answered.
func echoAll(ctx context.Context, conns []net.Conn, concurrency int) int {
	var ok, next atomic.Int64
	var wg sync.WaitGroup
	for range concurrency {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(conns) || ctx.Err() != nil {
					return
				}
				if conns[i] != nil && echoOnce(conns[i], i) == nil {
					ok.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return int(ok.Load())
}

func echoCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("echo", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "`ADDR` to listen on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if _, err := raiseFileLimit(); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr())
	return serveEcho(ctx, ln)
}

// serveEcho writes back what each accepted connection sends, until ctx
// ends; it closes ln and every connection, and returns when all their
// goroutines have.
func serveEcho(ctx context.Context, ln net.Listener) error {
	var mu sync.Mutex
	open := make(map[net.Conn]struct{})
	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for c := range open {
			c.Close()
		}
	})
	defer stop()
	defer wg.Wait()
	defer ln.Close() // before the wait: an accept error leaves no listener behind
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		mu.Lock()
		if ctx.Err() != nil {
			mu.Unlock()
			c.Close()
			return nil
		}
		open[c] = struct{}{}
		mu.Unlock()
		wg.Go(func() {
			defer func() {
				mu.Lock()
				delete(open, c)
				mu.Unlock()
				c.Close()
			}()
			// Hide the TCP connection's ReadFrom/WriteTo: between two TCP
			// connections io.Copy splices through a pipe, two more
			// descriptors per connection, and 10,000 streams would need
			// 30,000 of them here.
			buf := make([]byte, 1024)
			_, _ = io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, buf)
		})
	}
}
