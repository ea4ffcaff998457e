package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"

	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"

	"github.com/dsproxy/dsproxy/hubclient"
	"github.com/dsproxy/dsproxy/tunnel"
)

func serviceCommand() *cli.Command {
	return &cli.Command{
		Name:  "service",
		Usage: "run the service proxy: a local port (or stdin/stdout) that reaches a device",
		Description: `Run this on the engineer's machine. It listens on a local port and carries
every accepted TCP connection to the device over its own stream. A listen
address without a host binds loopback only (127.0.0.1 and ::1); name another
interface explicitly to share the port. --forward adds more ports, each to a
stream name (the device picks the target by name). --stdio carries one stream
on stdin/stdout instead, for ssh's ProxyCommand.

--mode session (the default) carries every connection over one session the
proxy holds to the hub: a connection costs no new TCP or TLS handshake, and
its first bytes travel with the request. --mode per-stream opens a WebSocket
per connection, the Azure IoT Hub device streams flow, for hubs and devices
that speak only that.

Examples:
   dsproxy service --connection-string "HostName=hub.example.com:8443;SharedAccessKeyName=service;SharedAccessKey=..." \
     --ca-file ca.pem --device-id pi-42 --listen 2222
   ssh -p 2222 pi@localhost

   dsproxy service --device-id pi-42 --forward 2222=ssh --forward 13389=rdp

   ssh -o ProxyCommand='dsproxy service --stdio --device-id %h' pi@pi-42`,
		Flags: append(clientFlags(),
			&cli.StringFlag{Name: "device-id", Usage: "`ID` of the device to reach", EnvVars: []string{"DSPROXY_DEVICE_ID"}, Required: true},
			&cli.StringFlag{Name: "listen", Value: "2222", Usage: "`[HOST:]PORT` to accept connections on (no host: loopback only)", EnvVars: []string{"DSPROXY_LISTEN"}},
			&cli.StringFlag{Name: "stream-name", Value: "ssh", Usage: "stream `NAME` for --listen and --stdio: picks the device's target", EnvVars: []string{"DSPROXY_STREAM_NAME"}},
			&cli.StringSliceFlag{Name: "forward", Usage: "`[HOST:]PORT=NAME`: also accept on PORT and carry to stream NAME (repeatable); with --forward, --listen applies only when given", EnvVars: []string{"DSPROXY_FORWARD"}},
			&cli.BoolFlag{Name: "stdio", Usage: "carry one stream on stdin/stdout (for ssh -o ProxyCommand) and exit when it ends; logs only warnings unless --log-level says otherwise", EnvVars: []string{"DSPROXY_STDIO"}},
			modeFlag(),
		),
		Action: runService,
	}
}

// forward is one local listener and the stream name it carries to.
type forward struct {
	listen string
	name   string
}

func runService(c *cli.Context) error {
	if c.Bool("stdio") && !c.IsSet("log-level") {
		// ssh shows a ProxyCommand's stderr in the terminal.
		if err := c.Set("log-level", "warn"); err != nil {
			return err
		}
	}
	log, err := newLogger(c)
	if err != nil {
		return err
	}
	fwds, err := forwards(c)
	if err != nil {
		return err
	}
	sc, err := newServiceClient(c)
	if err != nil {
		return err
	}
	defer sc.Close()
	deviceID := c.String("device-id")
	ctx, cancel := context.WithCancel(c.Context)
	defer cancel()
	newSession := sc.Session
	if c.Bool("stdio") {
		// A session that cannot be made fails the stream, whose error
		// is the one line ssh shows: the session's own retry warnings
		// would only repeat it.
		newSession = func() (*hubclient.SessionClient, error) {
			cfg, err := serviceConfig(c)
			if err != nil {
				return nil, err
			}
			cfg.Logger = cfg.Logger.Level(zerolog.ErrorLevel)
			return hubclient.NewSessionClient(cfg)
		}
	}
	opener, stopSession, err := startOpener(ctx, cancel, c.String("mode"), sc, newSession)
	if err != nil {
		return err
	}
	defer stopSession()

	if c.Bool("stdio") {
		svc, err := tunnel.NewService(tunnel.ServiceConfig{DeviceID: deviceID, StreamName: c.String("stream-name"), Logger: log}, opener)
		if err != nil {
			return err
		}
		err = svc.CarryOne(ctx, tunnel.Stdio())
		return errors.Join(err, stopSession())
	}

	// Open every port before serving any, so a busy port fails the whole
	// command at once.
	lns := make([]net.Listener, 0, len(fwds))
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for _, f := range fwds {
		ln, err := tunnel.Listen(f.listen)
		if err != nil {
			return err
		}
		lns = append(lns, ln)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(fwds))
	for i, f := range fwds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if errs[i] = serveProxy(ctx, lns[i], opener, deviceID, f.name, log); errs[i] != nil {
				cancel()
			}
		}()
	}
	wg.Wait()
	lns = nil // each serveProxy closed its own
	return errors.Join(append(errs, stopSession())...)
}

// The service proxy's modes (--mode).
const (
	modeSession   = "session"
	modePerStream = "per-stream"
)

// modeFlag is --mode of the commands that run a service proxy.
func modeFlag() cli.Flag {
	return &cli.StringFlag{Name: "mode", Value: modeSession, Usage: "`MODE` of carrying connections: session (over one held session) or per-stream (a WebSocket each, as Azure IoT Hub)", EnvVars: []string{"DSPROXY_MODE"}}
}

// startOpener returns what opens the streams of mode: sc itself, or a
// session client from newSession whose session it holds until ctx ends;
// then stop, which is idempotent, ends it and returns why it ended early.
// A session that ends early (the hub refused the credential) cancels ctx.
func startOpener(ctx context.Context, cancel context.CancelFunc, mode string, sc *hubclient.ServiceClient,
	newSession func() (*hubclient.SessionClient, error),
) (o tunnel.Opener, stop func() error, err error) {
	switch mode {
	case modePerStream:
		return sc, func() error { return nil }, nil
	case modeSession:
	default:
		return nil, nil, fmt.Errorf("--mode %q: want %s or %s", mode, modeSession, modePerStream)
	}
	sess, err := newSession()
	if err != nil {
		return nil, nil, err
	}
	held := make(chan error, 1)
	go func() {
		err := sess.Run(ctx)
		if err != nil {
			cancel()
		}
		held <- err
	}()
	return sess, sync.OnceValue(func() error {
		cancel()
		return <-held
	}), nil
}

// forwards reads --listen/--stream-name and --forward.
func forwards(c *cli.Context) ([]forward, error) {
	var out []forward
	if !c.IsSet("forward") || c.IsSet("listen") {
		out = append(out, forward{listen: c.String("listen"), name: c.String("stream-name")})
	}
	for _, s := range c.StringSlice("forward") {
		for _, s := range strings.Split(s, ",") {
			addr, name, ok := strings.Cut(strings.TrimSpace(s), "=")
			if !ok || addr == "" || name == "" {
				return nil, fmt.Errorf("--forward %q: want [HOST:]PORT=NAME, e.g. 2222=ssh", s)
			}
			out = append(out, forward{listen: addr, name: name})
		}
	}
	return out, nil
}

// serveProxy runs a service proxy on ln until ctx ends. It closes ln.
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
		var s []string
		for _, a := range m.Addrs() {
			s = append(s, a.String())
		}
		return strings.Join(s, ", ")
	}
	return ln.Addr().String()
}
