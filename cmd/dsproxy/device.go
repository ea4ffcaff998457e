package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"

	"github.com/dsproxy/dsproxy/hubclient"
	"github.com/dsproxy/dsproxy/tunnel"
)

func deviceCommand() *cli.Command {
	return &cli.Command{
		Name:  "device",
		Usage: "run the device agent: bridge streams from the hub to local ports",
		Description: `Run this on the device. It connects out to the hub (no inbound port needed),
stays connected, reconnects when the hub goes away, and for each stream the
hub delivers dials the matching --target and relays the bytes. A stream whose
name matches no target is rejected with a reason; a target without a name
serves every stream name.

Example:
   dsproxy device --connection-string "HostName=hub.example.com:8443;DeviceId=pi-42;SharedAccessKey=..." \
     --ca-file ca.pem --target ssh=localhost:22 --target rdp=localhost:3389`,
		Flags: append(clientFlags(),
			&cli.StringSliceFlag{Name: "target", Usage: "`[NAME=]HOST:PORT` to expose under stream name NAME (repeatable; without NAME, any stream name)", EnvVars: []string{"DSPROXY_TARGET"}, Required: true},
			&cli.DurationFlag{Name: "keepalive", Value: 15 * time.Second, Usage: "how often the device pings the hub", EnvVars: []string{"DSPROXY_KEEPALIVE"}},
			&cli.DurationFlag{Name: "keepalive-timeout", Value: 10 * time.Second, Usage: "how long a ping may go unanswered before the hub is taken for gone and redialled (a dead hub is noticed within --keepalive plus this)", EnvVars: []string{"DSPROXY_KEEPALIVE_TIMEOUT"}},
		),
		Action: runDevice,
	}
}

func runDevice(c *cli.Context) error {
	log, err := newLogger(c)
	if err != nil {
		return err
	}
	var targets []tunnel.Target
	for _, s := range c.StringSlice("target") {
		for _, s := range strings.Split(s, ",") {
			t, err := tunnel.ParseTarget(strings.TrimSpace(s))
			if err != nil {
				return err
			}
			targets = append(targets, t)
		}
	}
	if c.String("connection-string") == "" && c.String("connection-string-file") == "" {
		return errors.New("a device needs its own connection string: pass --connection-string (from `dsproxy devices add ID`) or set DSPROXY_CONNECTION_STRING")
	}
	connStr, err := connectionString(c, log)
	if err != nil {
		return err
	}
	tlsCfg, err := clientTLS(c, log)
	if err != nil {
		return err
	}
	return runDeviceAgent(c.Context, deviceOptions{
		connStr: connStr,
		hubs:    hubList(c),
		tlsCfg:  tlsCfg,
		targets: targets,
		log:     log,

		keepAlive:        c.Duration("keepalive"),
		keepAliveTimeout: c.Duration("keepalive-timeout"),
	})
}

// deviceOptions is what runDeviceAgent needs.
type deviceOptions struct {
	connStr string
	hubs    []string // hub replicas instead of the connection string's HostName
	tlsCfg  *tls.Config
	targets []tunnel.Target
	log     zerolog.Logger
	// connected, when set, is called once the first session is up.
	connected func()
	// keepAlive and keepAliveTimeout: see hubclient.DeviceConfig; zero
	// means its defaults.
	keepAlive, keepAliveTimeout time.Duration
}

// runDeviceAgent runs the device client with the device proxy as its
// stream handler until ctx ends.
func runDeviceAgent(ctx context.Context, o deviceOptions) error {
	var proxy *tunnel.Device
	dc, err := hubclient.NewDeviceClient(hubclient.DeviceConfig{
		ConnectionString:       o.connStr,
		Hubs:                   o.hubs,
		TLSConfig:              o.tlsCfg,
		KeepAliveInterval:      o.keepAlive,
		ConnectionWriteTimeout: o.keepAliveTimeout,
		Logger:                 o.log,
	}, func(ctx context.Context, req *hubclient.StreamRequest) { proxy.HandleStream(ctx, req) })
	if err != nil {
		return err
	}
	log := o.log.With().Str("device", dc.DeviceID()).Logger()
	proxy, err = tunnel.NewDevice(tunnel.DeviceConfig{Targets: o.targets, Logger: log})
	if err != nil {
		return err
	}
	var names []string
	for _, t := range o.targets {
		names = append(names, t.String())
	}
	log.Info().Strs("targets", names).Msg("device agent starting")

	var wg sync.WaitGroup
	defer wg.Wait()
	if o.connected != nil {
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-dc.Connected():
				o.connected()
			case <-wctx.Done():
			}
		}()
	}
	if err := dc.Run(ctx); err != nil {
		return fmt.Errorf("device %q: %w", dc.DeviceID(), err)
	}
	return nil
}
