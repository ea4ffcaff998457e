// Command scaletool does the measuring for scripts/bench-scale.sh (issue 6,
// docs/scale-benchmarks.md): how much memory one hub needs per connected
// idle device and per open stream, and how fast a fleet of devices comes
// back after the hub restarts.
//
// Subcommands:
//
//	scaletool devices --hub-cs F --ca-file F --n N [--restart] ...
//	    registers N simulated devices (reusing those a previous run
//	    registered), connects each with the real hubclient.DeviceClient,
//	    waits until the hub counts them all connected, and reports the
//	    hub's memory per device and the simulator's own. With --restart it
//	    then writes --ready-file, waits for the hub to go away and come
//	    back (scripts/bench-scale.sh restarts it), and reports how long
//	    the fleet took to reconnect and how its attempts failed.
//	scaletool streams --addr A --n N ...
//	    opens N TCP connections to a service proxy's port, echoes a few
//	    bytes once through each (so each stream is known to be live), keeps
//	    them all open and idle, and reports the memory per stream of the
//	    hub and of the service and device proxies.
//	scaletool echo --listen 127.0.0.1:0
//	    a TCP echo target; prints its address on the first line of stdout.
//	scaletool hub --listen A --data-dir D ...
//	    the real hub in this process, with net/http/pprof on a second
//	    loopback port (bench-scale.sh --profile); with --hub-data-dir and
//	    --profile-dir, devices and streams save its heap profile and
//	    goroutines before and after.
//
// Each measuring subcommand prints one JSON document on stdout (the raw
// result; bench-scale.sh keeps it and builds its table from it) and its
// progress on stderr. Everything runs against 127.0.0.1.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: scaletool devices|streams|echo|hub|table [flags]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "devices":
		err = devicesCmd(ctx, args)
	case "streams":
		err = streamsCmd(ctx, args)
	case "echo":
		err = echoCmd(ctx, args)
	case "hub":
		err = hubCmd(ctx, args)
	case "table":
		err = tableCmd(args)
	default:
		err = fmt.Errorf("unknown subcommand %q (want devices, streams, echo, hub or table)", cmd)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "scaletool %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

// raiseFileLimit raises this process's soft RLIMIT_NOFILE to its hard
// limit (Go does this for os.Open users at start-up, but say what we got)
// and returns the limit in force.
func raiseFileLimit() (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("read RLIMIT_NOFILE: %w", err)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return 0, fmt.Errorf("raise RLIMIT_NOFILE to %d: %w", lim.Max, err)
		}
	}
	return lim.Cur, nil
}

// progress prints one progress line on stderr.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "scaletool: "+format+"\n", args...)
}
