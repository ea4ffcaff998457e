package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"

	"github.com/urfave/cli/v2"

	"github.com/dsproxy/dsproxy/hub"
	"github.com/dsproxy/dsproxy/hub/certs"
	"github.com/dsproxy/dsproxy/hubclient"
	"github.com/dsproxy/dsproxy/tunnel"
)

func devCommand() *cli.Command {
	return &cli.Command{
		Name:  "dev",
		Usage: "run hub, device agent and service proxy in one process, to try dsproxy",
		Description: `Starts a real hub on 127.0.0.1 (TLS with a fresh private CA in a temporary
directory), registers one device, runs its agent in front of --target, and a
service proxy on --listen. Connections to --listen travel the whole path:
service proxy -> hub -> device agent -> target.

Example:
   dsproxy dev --target localhost:22
   ssh -p 2222 localhost`,
		Flags: append(logFlags(),
			&cli.StringFlag{Name: "target", Value: "localhost:22", Usage: "`HOST:PORT` the device agent exposes", EnvVars: []string{"DSPROXY_TARGET"}},
			&cli.StringFlag{Name: "listen", Value: "2222", Usage: "`[HOST:]PORT` of the service proxy (no host: loopback only, 127.0.0.1 and ::1)", EnvVars: []string{"DSPROXY_LISTEN"}},
			&cli.StringFlag{Name: "device-id", Value: "dev", Usage: "`ID` of the device to register", EnvVars: []string{"DSPROXY_DEVICE_ID"}},
			&cli.StringFlag{Name: "data-dir", Usage: "`DIR` for the hub's data (default: a temporary directory, removed on exit)", EnvVars: []string{"DSPROXY_DATA_DIR"}},
			modeFlag(),
		),
		Action: runDev,
	}
}

func runDev(c *cli.Context) error {
	log, err := newLogger(c)
	if err != nil {
		return err
	}
	target, err := tunnel.ParseTarget(c.String("target"))
	if err != nil {
		return err
	}
	if target.Name != "" {
		return fmt.Errorf("--target %q: dev takes a plain HOST:PORT", c.String("target"))
	}
	// Take the service port first: if it is busy, nothing else starts.
	svcLn, err := tunnel.Listen(c.String("listen"))
	if err != nil {
		return err
	}
	defer svcLn.Close()

	dataDir := c.String("data-dir")
	if dataDir == "" {
		dataDir, err = os.MkdirTemp("", "dsproxy-dev-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dataDir)
	}
	hubLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	cfg := hub.DefaultConfig()
	cfg.DataDir = dataDir
	cfg.HostNames = []string{"127.0.0.1"}
	cfg.Logger = log.With().Str("role", "hub").Logger()
	srv, err := hub.New(cfg, hubLn)
	if err != nil {
		hubLn.Close()
		return err
	}

	ctx, cancel := context.WithCancel(c.Context)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	run := func(name string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				errs <- fmt.Errorf("%s: %w", name, err)
				cancel()
			}
		}()
	}
	run("hub", func() error { return srv.Run(ctx) })
	defer wg.Wait()

	tlsCfg, err := certs.ClientConfig(srv.CAPEM())
	if err != nil {
		return err
	}
	sc, err := hubclient.NewServiceClient(hubclient.ServiceConfig{
		ConnectionString: srv.OwnerConnectionString(),
		TLSConfig:        tlsCfg,
		Logger:           log,
	})
	if err != nil {
		return err
	}
	defer sc.Close()
	d, err := sc.CreateDevice(ctx, c.String("device-id"))
	if err != nil {
		return err
	}
	port := listenPort(svcLn)
	run("device", func() error {
		return runDeviceAgent(ctx, deviceOptions{
			connStr: sc.DeviceConnectionString(d),
			tlsCfg:  tlsCfg,
			targets: []tunnel.Target{target},
			log:     log.With().Str("role", "device").Logger(),
			connected: func() {
				fmt.Fprintf(c.App.Writer, "\ndsproxy dev: %s -> hub %s -> device %q -> %s\n\n  ssh -p %s localhost\n\n(Ctrl-C to stop)\n\n",
					listenAddrs(svcLn), srv.Addr(), d.ID, target.Addr, port)
			},
		})
	})
	opener, stopSession, err := startOpener(ctx, cancel, c.String("mode"), sc, sc.Session)
	if err != nil {
		return err
	}
	run("session", func() error {
		<-ctx.Done()
		return stopSession()
	})
	run("service", func() error {
		return serveProxy(ctx, svcLn, opener, d.ID, "ssh", log.With().Str("role", "service").Logger())
	})

	<-ctx.Done()
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}

func listenPort(ln net.Listener) string {
	a := ln.Addr().String()
	return a[strings.LastIndex(a, ":")+1:]
}
