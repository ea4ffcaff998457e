// Command benchtool does the measuring for scripts/bench.sh: the targets
// (sink, source, echo, hold), the clients (throughput, setup latency and
// rate, a stalled reader beside a transfer, iperf3), a delayed link for the
// long-round-trip row, and the report (a Markdown table and raw JSON).
//
// scripts/bench.sh starts the paths under test (direct TCP, ssh -L through a
// private sshd, dsproxy service → hub → device in each mode the binary has)
// and calls benchtool once per path, row and round; each client run prints
// one JSON sample line, and "benchtool report" turns the collected lines into
// the table. See docs/benchmarks.md.
//
// Subcommands:
//
//	benchtool sink   --listen 127.0.0.1:0   read everything, then answer one byte
//	benchtool source --listen 127.0.0.1:0   read an 8-byte big-endian count N, write N bytes, close
//	benchtool echo   --listen 127.0.0.1:0   write back what is read
//	benchtool hold   --listen 127.0.0.1:0   read nothing for --for, then drain to EOF
//	benchtool throughput --addr A --bytes N [--dir down] [--streams 4]
//	                                        upload to a sink (or download from a source), N bytes in all
//	benchtool setup --addr A --conns N [--clients 64 --duration 5s] [--rtt-ms 50]
//	                                        dial, echo one byte, close: latency and rate
//	benchtool stall --addr B --stall-addr A --bytes N [--dir down]
//	                                        B's throughput alone and while A's reader stalls
//	benchtool iperf3 --addr A [--reverse] [--parallel 4] [--time 3s]
//	                                        run iperf3 -c -J and turn its result into a sample
//	benchtool delay --tun-a X --tun-b Y --delay 25ms
//	                                        two TUN devices joined by a link with that one-way delay
//	benchtool report --samples F --json OUT aggregate the sample lines
//	benchtool size 1GiB                     print a size in bytes (for bench.sh)
//
// The servers print their address on the first line of stdout, delay prints
// "ready", and all run until SIGINT or SIGTERM.
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: benchtool sink|source|echo|hold|throughput|setup|stall|iperf3|delay|report|size [flags]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "sink":
		err = serveCmd(ctx, cmd, args, nil, func(_ context.Context, c *net.TCPConn) { sink(c) })
	case "source":
		err = serveCmd(ctx, cmd, args, nil, func(_ context.Context, c *net.TCPConn) { source(c) })
	case "echo":
		err = serveCmd(ctx, cmd, args, nil, func(_ context.Context, c *net.TCPConn) { echo(c) })
	case "hold":
		fs := flag.NewFlagSet(cmd, flag.ExitOnError)
		d := fs.Duration("for", time.Minute, "how long to read nothing from each connection")
		err = serveCmd(ctx, cmd, args, fs, func(ctx context.Context, c *net.TCPConn) { hold(ctx, c, *d) })
	case "throughput":
		err = throughputCmd(ctx, args)
	case "setup":
		err = setupCmd(ctx, args)
	case "stall":
		err = stallCmd(ctx, args)
	case "iperf3":
		err = iperf3Cmd(ctx, args)
	case "delay":
		err = delayCmd(ctx, args)
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

// bufSize is the read and write size of the servers and the throughput
// clients: large enough that syscalls are not what is measured.
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

// source reads an 8-byte big-endian count, writes that many bytes and
// half-closes; the caller then closes. A client that stops reading leaves
// source blocked in Write until the connection is closed.
func source(c *net.TCPConn) {
	var hdr [8]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	buf := make([]byte, bufSize)
	for left := binary.BigEndian.Uint64(hdr[:]); left > 0; {
		k := min(left, uint64(len(buf)))
		if _, err := c.Write(buf[:k]); err != nil {
			return
		}
		left -= k
	}
	c.CloseWrite()
	// Wait for the client's end, so that the close is not a reset.
	io.Copy(io.Discard, c)
}

// echo writes back what it reads and, at EOF, half-closes.
func echo(c *net.TCPConn) {
	if _, err := io.Copy(c, c); err == nil {
		c.CloseWrite()
	}
}

// hold reads nothing for d (or until ctx ends), so that a writer on the
// other end stalls once the buffers along its path are full; then it drains
// to EOF, so that connections that were given up do not pile up.
func hold(ctx context.Context, c *net.TCPConn, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return
	case <-t.C:
	}
	io.Copy(io.Discard, c)
}

// serveCmd runs handle for every connection on --listen until ctx ends, then
// closes the listener and the open connections and waits for the handlers.
// fs, when not nil, has the command's own flags; --listen is added to it.
func serveCmd(ctx context.Context, name string, args []string, fs *flag.FlagSet, handle func(context.Context, *net.TCPConn)) error {
	if fs == nil {
		fs = flag.NewFlagSet(name, flag.ExitOnError)
	}
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
			handle(ctx, c.(*net.TCPConn))
		})
	}
}
