package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dsproxy/dsproxy/hub"
	"github.com/dsproxy/dsproxy/hub/registry"
)

func hubCommand() *cli.Command {
	return &cli.Command{
		Name:  "hub",
		Usage: "run the hub that devices and service proxies connect to",
		Description: `The hub keeps each device's control session, starts streams when a service
asks, and relays the bytes. Everything is TLS. Without --tls-cert/--tls-key it
makes a private CA in DATA_DIR/tls; clients trust DATA_DIR/tls/ca.pem.

On first start it creates DATA_DIR (registry, keys, CA) and prints the owner
connection string, which it also keeps in DATA_DIR/iothubowner.connection-string.

With --registry postgres://... the registry (devices, policies and their keys,
stream events) lives in that PostgreSQL database instead of DATA_DIR/registry.db,
so that hub replicas can share it; the database must exist, and the hub creates
its tables. The first start is then the first on that database.

With --nats nats://... as well, the hub is one replica of several: replicas
route stream requests over NATS to the replica that holds the device's session,
which answers with a stream URL on itself, and the newest session of a device
wins across replicas. Each replica must advertise its own address (--hostname
or --advertise) and serve a certificate valid for it; --public-addr puts the
name all replicas share into connection strings, and every replica must accept
it (--hostname). See docs/scaling.md.

Example:
   dsproxy hub --listen :8443 --hostname hub.example.com`,
		Flags: append(logFlags(),
			&cli.StringFlag{Name: "listen", Value: ":8443", Usage: "`ADDR` to serve HTTPS on", EnvVars: []string{"DSPROXY_LISTEN"}},
			&cli.StringFlag{Name: "data-dir", Value: defaultDataDir, Usage: "`DIR` for the registry, keys and TLS material", EnvVars: []string{"DSPROXY_DATA_DIR"}},
			&cli.StringSliceFlag{Name: "hostname", Usage: "`NAME` clients use to reach the hub (repeatable; the first goes into connection strings and stream URLs); default: this machine's host name and localhost", EnvVars: []string{"DSPROXY_HOSTNAME"}},
			&cli.StringFlag{Name: "registry", Usage: "`URL` of a PostgreSQL database to keep the registry in, as postgres://user:password@host:5432/dsproxy (default: SQLite in --data-dir)", EnvVars: []string{"DSPROXY_REGISTRY"}},
			&cli.StringFlag{Name: "nats", Usage: "`URLS` of the NATS servers (comma-separated nats://host:4222) that hub replicas route stream requests through; needs --registry (default: a single hub, no NATS)", EnvVars: []string{"DSPROXY_NATS"}},
			&cli.StringFlag{Name: "public-addr", Usage: "`HOST:PORT` to put in connection strings instead of --advertise: the name all hub replicas share (load balancer or DNS), while each replica's stream URLs keep its own address; tokens for it are accepted", EnvVars: []string{"DSPROXY_PUBLIC_ADDR"}},
			&cli.StringFlag{Name: "advertise", Usage: "`HOST:PORT` to put in stream URLs and connection strings when clients reach the hub through another address (load balancer, port mapping)", EnvVars: []string{"DSPROXY_ADVERTISE"}},
			&cli.StringFlag{Name: "tls-cert", Usage: "PEM certificate `FILE` to serve instead of the generated one", EnvVars: []string{"DSPROXY_TLS_CERT"}},
			&cli.StringFlag{Name: "tls-key", Usage: "PEM private key `FILE` of --tls-cert", EnvVars: []string{"DSPROXY_TLS_KEY"}},
			&cli.DurationFlag{Name: "handshake-timeout", Value: hub.DefaultConfig().HandshakeTimeout, Usage: "how long both sides of a new stream have to connect", EnvVars: []string{"DSPROXY_HANDSHAKE_TIMEOUT"}},
			&cli.DurationFlag{Name: "keepalive", Value: hub.DefaultConfig().KeepAliveInterval, Usage: "how often the hub pings each device and each stream's sides", EnvVars: []string{"DSPROXY_KEEPALIVE"}},
			&cli.DurationFlag{Name: "keepalive-timeout", Value: hub.DefaultConfig().ConnectionWriteTimeout, Usage: "how long a ping may go unanswered before the device or stream side is taken for dead (silent peers are noticed within --keepalive plus this)", EnvVars: []string{"DSPROXY_KEEPALIVE_TIMEOUT"}},
			&cli.IntFlag{Name: "max-streams", Value: hub.DefaultConfig().MaxStreams, Usage: "active streams the hub carries at once; more get 429", EnvVars: []string{"DSPROXY_MAX_STREAMS"}},
			&cli.IntFlag{Name: "max-streams-per-device", Value: hub.DefaultConfig().MaxStreamsPerDevice, Usage: "active streams per device; more get 429", EnvVars: []string{"DSPROXY_MAX_STREAMS_PER_DEVICE"}},
			&cli.IntFlag{Name: "max-pending-handshakes", Value: hub.DefaultConfig().MaxPendingHandshakes, Usage: "streams initiated whose two sides have not both connected yet; more get 429", EnvVars: []string{"DSPROXY_MAX_PENDING_HANDSHAKES"}},
			&cli.Float64Flag{Name: "stream-rate", Value: hub.DefaultConfig().StreamRate, Usage: "new streams per second per policy (token bucket); more get 429 with Retry-After", EnvVars: []string{"DSPROXY_STREAM_RATE"}},
			&cli.IntFlag{Name: "stream-burst", Value: hub.DefaultConfig().StreamBurst, Usage: "burst of new streams per policy above --stream-rate", EnvVars: []string{"DSPROXY_STREAM_BURST"}},
			&cli.DurationFlag{Name: "idle-timeout", Value: hub.DefaultConfig().IdleStreamTimeout, Usage: "close a stream with no data either way for this long (0: never)", EnvVars: []string{"DSPROXY_IDLE_TIMEOUT"}},
			&cli.Int64Flag{Name: "max-message-size", Value: hub.DefaultConfig().MaxMessageSize, Usage: "largest WebSocket message in `BYTES` on the streaming endpoint (at least 65536); larger ends the stream with 1009", EnvVars: []string{"DSPROXY_MAX_MESSAGE_SIZE"}},
			&cli.DurationFlag{Name: "event-retention", Value: hub.DefaultConfig().EventRetention, Usage: "how long stream events (the audit trail) are kept (0: no age bound)", EnvVars: []string{"DSPROXY_EVENT_RETENTION"}},
			&cli.IntFlag{Name: "max-events", Value: hub.DefaultConfig().MaxEvents, Usage: "how many stream events are kept at most, newest first (0: no count bound)", EnvVars: []string{"DSPROXY_MAX_EVENTS"}},
			&cli.DurationFlag{Name: "shutdown-grace", Value: hub.DefaultConfig().ShutdownGrace, Usage: "on SIGTERM, how long running streams may go on (new ones are refused) before they are closed", EnvVars: []string{"DSPROXY_SHUTDOWN_GRACE"}},
		),
		Action: runHub,
	}
}

// registryOpenTimeout bounds connecting to the --registry database and
// bringing its schema up to date, so that a hub pointed at a database that
// does not answer says so instead of hanging.
const registryOpenTimeout = 30 * time.Second

func runHub(c *cli.Context) error {
	log, err := newLogger(c)
	if err != nil {
		return err
	}
	cfg := hub.DefaultConfig()
	cfg.DataDir = c.String("data-dir")
	cfg.HostNames = c.StringSlice("hostname")
	if len(cfg.HostNames) == 0 {
		cfg.HostNames = defaultHostNames()
	}
	cfg.AdvertiseAddr = c.String("advertise")
	cfg.PublicAddr = c.String("public-addr")
	cfg.TLSCertFile, cfg.TLSKeyFile = c.String("tls-cert"), c.String("tls-key")
	cfg.HandshakeTimeout = c.Duration("handshake-timeout")
	cfg.KeepAliveInterval = c.Duration("keepalive")
	cfg.ConnectionWriteTimeout = c.Duration("keepalive-timeout")
	cfg.ShutdownGrace = c.Duration("shutdown-grace")
	cfg.MaxStreams = c.Int("max-streams")
	cfg.MaxStreamsPerDevice = c.Int("max-streams-per-device")
	cfg.MaxPendingHandshakes = c.Int("max-pending-handshakes")
	cfg.StreamRate = c.Float64("stream-rate")
	cfg.StreamBurst = c.Int("stream-burst")
	cfg.IdleStreamTimeout = c.Duration("idle-timeout")
	cfg.MaxMessageSize = c.Int64("max-message-size")
	cfg.EventRetention = c.Duration("event-retention")
	cfg.MaxEvents = c.Int("max-events")
	cfg.Logger = log
	cfg.NATS = c.String("nats")
	if cfg.NATS != "" && c.String("registry") == "" {
		return errors.New("--nats needs --registry: hub replicas must share a PostgreSQL registry")
	}

	if u := c.String("registry"); u != "" {
		ctx, cancel := context.WithTimeout(c.Context, registryOpenTimeout)
		reg, err := registry.OpenPostgres(ctx, u)
		cancel()
		if err != nil {
			return fmt.Errorf("--registry: %w", err)
		}
		defer reg.Close()
		cfg.Registry = reg
	}

	ln, err := net.Listen("tcp", c.String("listen"))
	if err != nil {
		return fmt.Errorf("listen on %s: %w", c.String("listen"), err)
	}
	srv, err := hub.New(cfg, ln)
	if err != nil {
		ln.Close()
		return err
	}
	csFile := filepath.Join(cfg.DataDir, hub.OwnerConnectionStringFile)
	caFile := filepath.Join(cfg.DataDir, "tls", "ca.pem")
	if srv.FirstStart() {
		w := c.App.Writer
		fmt.Fprintf(w, "dsproxy hub: first start in %s\n\n", cfg.DataDir)
		fmt.Fprintf(w, "Owner connection string (full control; kept in %s):\n\n  %s\n\n", csFile, srv.OwnerConnectionString())
		fmt.Fprintf(w, "Service connection string (opens streams only, for engineers' service proxies; kept in %s):\n\n  %s\n\n",
			filepath.Join(cfg.DataDir, hub.ServiceConnectionStringFile), srv.ServiceConnectionString())
		if srv.CAPEM() != nil {
			fmt.Fprintf(w, "Clients trust the hub's certificate with --ca-file %s (copy it to them).\n\n", caFile)
		}
		fmt.Fprintf(w, "Register a device:  dsproxy devices add my-device\n\n")
	} else {
		log.Info().Str("file", csFile).Msg("owner connection string")
	}
	return srv.Run(c.Context)
}

// defaultHostNames is this machine's name and localhost.
func defaultHostNames() []string {
	names := []string{}
	if h, err := os.Hostname(); err == nil && h != "" && h != "localhost" {
		names = append(names, h)
	}
	return append(names, "localhost")
}
