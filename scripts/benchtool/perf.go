package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ---------------------------------------------------------------- CPU split

// A throughput run with --perf samples the tunnel processes with Linux
// perf while the bytes move, and splits their CPU time per GB three ways:
// the kernel (system calls, TCP over loopback, the wake-ups of the process
// at the other end), the cipher (AES-GCM, ChaCha20-Poly1305, GHASH: in
// OpenSSL's libcrypto for ssh, in Go's crypto packages for dsproxy), and
// everything else in user space. It answers "what does a byte cost, and
// where": the kernel's share grows with each process a byte passes through,
// the cipher's with each TLS or SSH leg it is encrypted on.

// perfHz is the sampling rate: below perf's default and off any round
// number, so that samples do not run in step with timers.
const perfHz = "999"

// cryptoSym matches the symbols of cipher code in a Go binary (libcrypto
// is matched by its file name).
var cryptoSym = regexp.MustCompile(`(?i)aes|gcm|ghash|chacha|poly1305`)

// perfSplit is a running perf record of some processes.
type perfSplit struct {
	cmd  *exec.Cmd
	file string
	pids string // comma-separated: the processes whose samples count
	errb bytes.Buffer
}

// startPerf starts sampling into a temporary file for procs. It fails
// when perf is missing; one that cannot record says so at stop.
func startPerf(procs []int) (*perfSplit, error) {
	if len(procs) == 0 {
		return nil, errors.New("--perf needs --pids")
	}
	f, err := os.CreateTemp("", "benchtool-perf-*.data")
	if err != nil {
		return nil, err
	}
	f.Close()
	list := make([]string, len(procs))
	for i, p := range procs {
		list[i] = strconv.Itoa(p)
	}
	// The whole machine is sampled and the report keeps procs' samples:
	// per-process counters (perf record -p) are switched at every context
	// switch of every thread, which cost the per-stream path 14 % more
	// CPU per GB in one run; per-CPU ones cost nothing there.
	p := &perfSplit{file: f.Name(), pids: strings.Join(list, ",")}
	p.cmd = exec.Command("perf", "record", "-q", "-a", "-F", perfHz, "-o", p.file)
	p.cmd.Stderr = &p.errb
	if err := p.cmd.Start(); err != nil {
		os.Remove(p.file)
		return nil, fmt.Errorf("--perf: start perf record: %w", err)
	}
	// perf takes a moment to start sampling; bytes moved sooner go
	// unsampled, which only shortens the window the shares are taken over.
	time.Sleep(200 * time.Millisecond)
	return p, nil
}

// stop ends the recording and adds to m the CPU-s per GB in the kernel, the
// cipher and the rest of user space: their shares of the samples times
// m["cpu_s_per_gb"], which the CPU meter measured over the whole run. With
// a nil m (the run failed) it only ends the recording.
func (p *perfSplit) stop(ctx context.Context, m map[string]float64) error {
	defer os.Remove(p.file)
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	if err := p.cmd.Wait(); err != nil && !isSignalExit(err) {
		return fmt.Errorf("--perf: perf record: %w: %s", err, strings.TrimSpace(p.errb.String()))
	}
	if m == nil {
		return nil
	}
	total, ok := m["cpu_s_per_gb"]
	if !ok {
		return errors.New("--perf: no CPU time measured (--pids)")
	}
	rep := exec.CommandContext(ctx, "perf", "report", "-i", p.file, "--pid", p.pids, "--stdio", "--no-children",
		"-g", "none", "--fields", "sample,dso,sym", "-t", "\t")
	out, err := rep.Output()
	if err != nil {
		return fmt.Errorf("--perf: perf report: %w", err)
	}
	s, err := splitSamples(bytes.NewReader(out))
	if err != nil {
		return fmt.Errorf("--perf: %w", err)
	}
	all := s.kernel + s.crypto + s.other
	if all == 0 {
		return errors.New("--perf: perf recorded no samples of the tunnel processes")
	}
	m["cpu_kernel_s_per_gb"] = total * float64(s.kernel) / float64(all)
	m["cpu_crypto_s_per_gb"] = total * float64(s.crypto) / float64(all)
	m["cpu_other_s_per_gb"] = total * float64(s.other) / float64(all)
	m["perf_samples"] = float64(all)
	return nil
}

// isSignalExit reports perf's exit after the SIGINT that stops it.
func isSignalExit(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && (ws.Signaled() || ws.ExitStatus() == 130)
}

// sampleSplit counts samples by where they fell.
type sampleSplit struct{ kernel, crypto, other int64 }

// splitSamples reads perf report's tab-separated "samples, object, symbol"
// lines ("[k] name" is the kernel, "[.] name" user space) and counts them.
func splitSamples(r io.Reader) (sampleSplit, error) {
	var s sampleSplit
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "" {
			continue
		}
		f := strings.Split(line, "\t")
		if len(f) < 3 {
			return s, fmt.Errorf("perf report line %q: want samples, object and symbol", line)
		}
		n, err := strconv.ParseInt(strings.TrimSpace(f[0]), 10, 64)
		if err != nil {
			return s, fmt.Errorf("perf report line %q: %w", line, err)
		}
		dso, sym := strings.TrimSpace(f[1]), strings.TrimSpace(f[2])
		switch {
		case strings.HasPrefix(sym, "[k]"):
			s.kernel += n
		case strings.Contains(dso, "libcrypto") || cryptoSym.MatchString(sym):
			s.crypto += n
		default:
			s.other += n
		}
	}
	return s, sc.Err()
}
