// Command natstool runs NATS servers for the scripts that test and measure
// hub replicas (scripts/e2e-cluster.sh, scripts/bench-cluster.sh): the
// nats-server of the Go module dsproxy is built with, embedded, so that no
// NATS package has to be installed (Debian's is older).
//
// Subcommands:
//
//	natstool node --name N [--host 127.0.0.1] [--port 0] [--cluster-port 0]
//	              [--cluster dsproxy] [--routes nats://h:p,...]
//	    one node of a cluster, in this process, until SIGTERM or SIGINT.
//	    Port 0 takes a free port. Once it accepts clients it prints one line
//	    on stdout:
//	        client=nats://H:P cluster=nats://H:CP pid=PID
//	    so that later nodes can be given its route URL, and a script can
//	    kill -9 one node alone. Give each node the routes of all the nodes
//	    started before it: nodes on different 127.0.0.x addresses do not
//	    find each other through gossip alone, since a node names a peer by
//	    the address its route connection came from (127.0.0.1).
//	natstool cluster --n 3 [--host 127.0.0.1]
//	    n nodes in this process, routed to each other; prints their client
//	    URLs, comma-separated, on one line once a message crosses the
//	    cluster, then runs until SIGTERM or SIGINT.
//	natstool ready --urls nats://a,nats://b,... [--timeout 10s]
//	    waits until a request sent through each URL reaches a subscriber on
//	    every other one: the nodes have formed one cluster. Exits 0, or 1
//	    with what is missing.
//
// Every server listens on loopback addresses only, logs to stderr when
// --log is given, and shuts down cleanly on SIGTERM (exit status 0).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: natstool node|cluster|ready [flags] (natstool CMD -h for its flags)")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "node":
		err = nodeCmd(ctx, args)
	case "cluster":
		err = clusterCmd(ctx, args)
	case "ready":
		err = readyCmd(ctx, args)
	default:
		err = fmt.Errorf("unknown subcommand %q (want node, cluster or ready)", cmd)
	}
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "natstool %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
