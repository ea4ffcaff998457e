package main

// scaletool hub: the real hub (package hub, as `dsproxy hub` runs it) in
// this process, with net/http/pprof on a second loopback listener, so that
// bench-scale.sh --profile can take heap and goroutine profiles of the hub
// under the load the rows put on it. The hub itself serves no debug
// endpoint.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"time"

	"github.com/rs/zerolog"

	"github.com/dsproxy/dsproxy/hub"
)

// pprofAddrFile is the file in the hub's data directory that holds the
// address of its pprof listener.
const pprofAddrFile = "pprof.addr"

func hubCmd(ctx context.Context, args []string) error {
	def := hub.DefaultConfig()
	fs := flag.NewFlagSet("hub", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8443", "`ADDR` to serve HTTPS on")
	dataDir := fs.String("data-dir", "", "`DIR` for the registry, keys and TLS material")
	hostname := fs.String("hostname", "127.0.0.1", "`NAME` clients use to reach the hub")
	pprofListen := fs.String("pprof", "127.0.0.1:0", "`ADDR` for net/http/pprof; its address goes to DATA_DIR/"+pprofAddrFile)
	fs.String("log-format", "json", "accepted for the command line of dsproxy hub; the logs are JSON")
	grace := fs.Duration("shutdown-grace", def.ShutdownGrace, "on SIGTERM, how long running streams may go on")
	maxStreams := fs.Int("max-streams", def.MaxStreams, "active streams the hub carries at once")
	perDevice := fs.Int("max-streams-per-device", def.MaxStreamsPerDevice, "active streams per device")
	pending := fs.Int("max-pending-handshakes", def.MaxPendingHandshakes, "streams whose two sides have not both connected")
	rate := fs.Float64("stream-rate", def.StreamRate, "new streams per second per policy")
	burst := fs.Int("stream-burst", def.StreamBurst, "burst of new streams per policy")
	cpuProfile := fs.String("cpu-profile", "", "`FILE` for a CPU profile of the hub from its start until it stops")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dataDir == "" {
		return errors.New("--data-dir is required")
	}
	if _, err := raiseFileLimit(); err != nil {
		return err
	}
	cfg := def
	cfg.DataDir, cfg.HostNames = *dataDir, []string{*hostname}
	cfg.ShutdownGrace = *grace
	cfg.MaxStreams, cfg.MaxStreamsPerDevice, cfg.MaxPendingHandshakes = *maxStreams, *perDevice, *pending
	cfg.StreamRate, cfg.StreamBurst = *rate, *burst
	cfg.Logger = zerolog.New(os.Stderr).With().Timestamp().Logger()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv, err := hub.New(cfg, ln)
	if err != nil {
		ln.Close()
		return err
	}
	pln, err := net.Listen("tcp", *pprofListen)
	if err != nil {
		srv.Close()
		return err
	}
	if err := os.WriteFile(filepath.Join(*dataDir, pprofAddrFile), []byte(pln.Addr().String()+"\n"), 0o644); err != nil {
		pln.Close()
		srv.Close()
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	ps := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- ps.Serve(pln) }()
	stopProfile, err := startCPUProfile(*cpuProfile)
	if err != nil {
		ps.Close()
		<-served
		srv.Close()
		return err
	}
	err = srv.Run(ctx)
	if perr := stopProfile(); err == nil {
		err = perr
	}
	ps.Close()
	if perr := <-served; !errors.Is(perr, http.ErrServerClosed) && err == nil {
		err = perr
	}
	return err
}

// saveProfiles fetches the heap profile (after a GC) and the goroutine
// dump of the in-process hub whose pprof address is in dataDir, into
// dir/NAME-heap.pb.gz and dir/NAME-goroutines.txt. A hub without a pprof
// listener (dsproxy hub) is skipped.
func saveProfiles(ctx context.Context, dataDir, dir, name string) error {
	addr, err := readTrimmed(filepath.Join(dataDir, pprofAddrFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, p := range []struct{ path, file string }{
		{"/debug/pprof/heap?gc=1", name + "-heap.pb.gz"},
		{"/debug/pprof/goroutine?debug=1", name + "-goroutines.txt"},
	} {
		if err := fetch(ctx, "http://"+addr+p.path, filepath.Join(dir, p.file)); err != nil {
			return err
		}
	}
	progress("hub profiles in %s/%s-*", dir, name)
	return nil
}

// fetch saves what GET url answers into file.
func fetch(ctx context.Context, url, file string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("fetch profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fetch profile %s: %s", url, resp.Status)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("fetch profile: %w", err)
	}
	return f.Close()
}

// forceGC has the in-process hub whose pprof address is in dataDir run a
// GC (the heap profile's gc=1), so that its live heap is current without
// waiting for the runtime's two-minute GC. It reports false for a hub
// without a pprof listener (dsproxy hub).
func forceGC(ctx context.Context, dataDir string) (bool, error) {
	if dataDir == "" {
		return false, nil
	}
	addr, err := readTrimmed(filepath.Join(dataDir, pprofAddrFile))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/debug/pprof/heap?gc=1", nil)
	if err != nil {
		return false, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false, fmt.Errorf("force a hub GC: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("force a hub GC: %s", resp.Status)
	}
	return true, nil
}
