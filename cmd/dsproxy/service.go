package main

import (
	"context"
	"fmt"
	"net"

	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"

	"github.com/dsproxy/dsproxy/tunnel"
)

func serviceCommand() *cli.Command {
	return &cli.Command{
		Name:  "service",
		Usage: "run the service proxy: a local port that reaches a device",
		Description: `Run this on the engineer's machine. It listens on a local port and carries
every accepted TCP connection to the device over its own stream. A listen
address without a host binds loopback only (127.0.0.1 and ::1); name another
interface explicitly to share the port.

Example:
   dsproxy service --connection-string "HostName=hub.example.com:8443;SharedAccessKeyName=service;SharedAccessKey=..." \
     --ca-file ca.pem --device-id pi-42 --listen 2222
   ssh -p 2222 pi@localhost`,
		Flags: append(clientFlags(),
			&cli.StringFlag{Name: "device-id", Usage: "`ID` of the device to reach", EnvVars: []string{"DSPROXY_DEVICE_ID"}, Required: true},
			&cli.StringFlag{Name: "listen", Value: "2222", Usage: "`[HOST:]PORT` to accept connections on (no host: loopback only)", EnvVars: []string{"DSPROXY_LISTEN"}},
			&cli.StringFlag{Name: "stream-name", Value: "ssh", Usage: "stream `NAME`: picks the device's target", EnvVars: []string{"DSPROXY_STREAM_NAME"}},
		),
		Action: runService,
	}
}

func runService(c *cli.Context) error {
	log, err := newLogger(c)
	if err != nil {
		return err
	}
	sc, err := newServiceClient(c)
	if err != nil {
		return err
	}
	defer sc.Close()
	ln, err := tunnel.Listen(c.String("listen"))
	if err != nil {
		return err
	}
	return serveProxy(c.Context, ln, sc, c.String("device-id"), c.String("stream-name"), log)
}

// serveProxy runs a service proxy on ln until ctx ends.
func serveProxy(ctx context.Context, ln net.Listener, o tunnel.Opener, deviceID, name string, log zerolog.Logger) error {
	svc, err := tunnel.NewService(tunnel.ServiceConfig{DeviceID: deviceID, StreamName: name, Logger: log}, o)
	if err != nil {
		ln.Close()
		return err
	}
	log.Info().Str("listen", listenAddrs(ln)).Str("device", deviceID).Str("name", name).Msg("forwarding")
	if err := svc.Serve(ctx, ln); err != nil {
		return fmt.Errorf("service proxy: %w", err)
	}
	return nil
}

// listenAddrs lists where ln accepts.
func listenAddrs(ln net.Listener) string {
	if m, ok := ln.(interface{ Addrs() []net.Addr }); ok {
		s := ""
		for i, a := range m.Addrs() {
			if i > 0 {
				s += ", "
			}
			s += a.String()
		}
		return s
	}
	return ln.Addr().String()
}
