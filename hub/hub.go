// Package hub is the dsproxy hub: the main endpoint (REST registry, stream
// initiation, device control sessions) and the streaming endpoint (pairing
// and relay), served over one HTTPS listener.
//
// # Protocol flow
//
//  1. A device dials GET /devices/{id}/control with a SAS token signed with
//     its device key and the WebSocket subprotocol dsproxy.control.v1. The
//     hub runs a yamux client over the WebSocket; the device runs the yamux
//     server. A newer session for the same device replaces the older one.
//  2. A service POSTs /twins/{id}/streams/{name} with a token of a policy
//     that holds ServiceConnect. The hub mints a stream: an unguessable ID
//     and two single-use tokens, one per side, valid until the handshake
//     deadline. It opens one yamux stream to the device, writes a
//     StreamRequest carrying the device's token and reads one StreamResponse.
//  3. The hub answers 200 with iothub-streaming-is-accepted True or False;
//     when accepted, with the streaming URL and the service's token.
//  4. Both sides dial GET /streams/{id} with "Authorization: Bearer <token>".
//     The first to arrive waits, reading nothing, until the second arrives or
//     the handshake deadline passes. Then the hub relays binary messages both
//     ways, message by message: one of up to 64 KiB is read whole and written
//     on as one frame, a larger one is copied on as it arrives, so no more
//     than 64 KiB per direction is ever buffered. A zero-length
//     message (half-close) is relayed like any other. When either side ends,
//     the hub closes the other at once, with the same close code when that
//     code can be sent, and records a stream event.
//
// The wire details live in internal/wire; the registry in hub/registry.
package hub

import (
	"context"
	"errors"
	"fmt"
	"log"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/dsproxy/dsproxy/hub/certs"
	"github.com/dsproxy/dsproxy/hub/registry"
	"github.com/dsproxy/dsproxy/internal/sas"
)

// Log field names.
const (
	fieldDevice = "device"
	fieldStream = "stream"
	fieldName   = "name"
	fieldRemote = "remote"
	fieldPolicy = "policy"
)

// Files in the data directory (mode 0600) that hold the connection strings
// of the iothubowner and service policies, so scripts can pick them up.
const (
	OwnerConnectionStringFile   = "iothubowner.connection-string"
	ServiceConnectionStringFile = "service.connection-string"
)

// Config configures a hub. The zero value is not usable; start from
// [DefaultConfig].
type Config struct {
	// DataDir holds the registry (registry.db), the generated TLS material
	// (tls/) and the owner connection string. Created with mode 0700.
	DataDir string

	// HostNames are the names clients use to reach the hub. SAS tokens must
	// be issued for one of them. The first one, with the listener's port,
	// makes the streaming URLs and connection strings unless AdvertiseAddr is
	// set. The generated certificate covers all of them.
	HostNames []string

	// AdvertiseAddr, when set, is the host:port put in streaming URLs and
	// connection strings instead of HostNames[0] and the listener's port
	// (for a hub behind a load balancer or port mapping).
	AdvertiseAddr string

	// PublicAddr, when set, is the host:port put in connection strings
	// instead of the advertised address: the name all replicas share (a
	// load balancer or DNS name), while each replica's streaming URLs keep
	// its own address. Tokens for it are accepted.
	PublicAddr string

	// TLSCertFile and TLSKeyFile name a certificate and key to serve. When
	// both are empty the hub uses a private CA in DataDir/tls, creating it
	// on first start; clients trust DataDir/tls/ca.pem.
	TLSCertFile string
	TLSKeyFile  string

	// Registry, when set, is used instead of DataDir/registry.db. The hub
	// does not close it.
	Registry registry.Store

	// NATS, when set, makes the hub one replica of several (cluster.go):
	// the NATS servers to route stream requests through, as a
	// comma-separated list of nats:// URLs. The replicas must share
	// Registry (PostgreSQL) and each must advertise its own address
	// (AdvertiseAddr, or HostNames[0] and the port), which its streaming
	// URLs name and which clients must be able to dial. Unset, the hub is
	// a single node.
	NATS string

	// HandshakeTimeout is how long after initiation both sides have to
	// reach the streaming endpoint. Stream tokens die with it.
	HandshakeTimeout time.Duration

	// ConnectTimeout and ResponseTimeout are used when a stream initiation
	// does not send the iothub-streaming-*-timeout-in-seconds headers:
	// the time to reach the device's session, and the time the device has
	// to answer. MaxRequestTimeout caps what a request may ask for.
	ConnectTimeout    time.Duration
	ResponseTimeout   time.Duration
	MaxRequestTimeout time.Duration

	// KeepAliveInterval is how often the hub pings each control session
	// and both sides of each relayed stream; a peer that does not answer
	// within ConnectionWriteTimeout is taken for dead (frozen, crashed
	// without a word, cut off), so one is noticed within their sum. A lost
	// control session makes the device unavailable and ends the streams
	// it delivered; a stream side that does not answer ends its stream.
	// Both with close code ClosePeerLost. A stream side held back by
	// backpressure is not pinged (see faults.go). Defaults: 15 s and 10 s.
	KeepAliveInterval      time.Duration
	ConnectionWriteTimeout time.Duration

	// ShutdownGrace is how long running streams may go on once Run's
	// context ends. The hub then refuses new streams and control sessions
	// at once (503, and its listener closes), closes every control
	// session (relayed streams do not depend on them) and ends streams
	// still waiting for a side; relayed streams still running when the
	// grace period is over are closed with 1001 "hub shutting down". Zero
	// closes them at once. Default 10 s.
	ShutdownGrace time.Duration

	// MaxMessageSize is the largest WebSocket message accepted on the
	// streaming endpoint; a larger one ends the stream with close code 1009.
	// At least 64 KiB.
	MaxMessageSize int64

	// ClockSkew is how long past its expiry a SAS token is still accepted.
	ClockSkew time.Duration

	// ReadHeaderTimeout and MaxHeaderBytes bound an HTTP request's headers
	// (and the TLS handshake before them).
	ReadHeaderTimeout time.Duration
	MaxHeaderBytes    int

	// MaxStreams bounds the active streams on the hub, and
	// MaxStreamsPerDevice those to any one device. A stream is active from
	// the moment the hub admits its initiation (before it asks the device)
	// until its relay ends, or until the device rejects it or its
	// handshake deadline passes. An initiation beyond either limit is
	// answered 429 with Retry-After, and the device is not asked.
	// Defaults: 10000 and 256.
	MaxStreams          int
	MaxStreamsPerDevice int

	// MaxPendingHandshakes bounds the active streams whose two sides have
	// not both reached the streaming endpoint yet (including those waiting
	// for the device's answer); beyond it, initiations are answered 429.
	// It caps what clients that initiate streams and never join them can
	// hold. Default 1024.
	MaxPendingHandshakes int

	// StreamRate and StreamBurst meter new stream initiations per shared
	// access policy with a token bucket: StreamRate initiations per second
	// on average, StreamBurst at once. An initiation over the rate is
	// answered 429 with Retry-After (whole seconds until the bucket holds
	// a token again). Defaults: 1000 per second, bursts of 2000 (Azure IoT
	// Hub allows 5 new streams per second).
	StreamRate  float64
	StreamBurst int

	// IdleStreamTimeout, when positive, ends a relayed stream that has
	// carried no message in either direction for that long: both sides
	// are closed with CloseIdleTimeout and the stream event says why. Zero
	// (the default) never ends a stream for being idle.
	IdleStreamTimeout time.Duration

	// EventRetention and MaxEvents bound the stream event log (the audit
	// trail): events that started longer ago than EventRetention, and
	// events beyond the newest MaxEvents, are deleted when the hub starts
	// and every few minutes after (see events.go). Zero disables that
	// bound. Defaults: 30 days and 1,000,000 events.
	EventRetention time.Duration
	MaxEvents      int

	// Logger receives the hub's logs. The zero value logs nothing.
	Logger zerolog.Logger
}

// DefaultConfig returns a configuration with dsproxy's defaults for every
// field but DataDir.
func DefaultConfig() Config {
	return Config{
		HostNames:              []string{"localhost"},
		HandshakeTimeout:       60 * time.Second,
		ConnectTimeout:         60 * time.Second,
		ResponseTimeout:        60 * time.Second,
		MaxRequestTimeout:      300 * time.Second,
		KeepAliveInterval:      15 * time.Second,
		ConnectionWriteTimeout: 10 * time.Second,
		ShutdownGrace:          10 * time.Second,
		MaxMessageSize:         1 << 20,
		ClockSkew:              5 * time.Minute,
		ReadHeaderTimeout:      10 * time.Second,
		MaxHeaderBytes:         32 << 10,
		MaxStreams:             10000,
		MaxStreamsPerDevice:    256,
		MaxPendingHandshakes:   1024,
		StreamRate:             1000,
		StreamBurst:            2000,
		EventRetention:         30 * 24 * time.Hour,
		MaxEvents:              1_000_000,
	}
}

// Validate reports the first problem with c.
func (c *Config) Validate() error {
	switch {
	case c.DataDir == "" && (c.Registry == nil || c.TLSCertFile == ""):
		return errors.New("hub config: DataDir is required")
	case c.NATS != "" && c.Registry == nil:
		return errors.New("hub config: replicas (NATS) must share a registry: give a PostgreSQL registry")
	case len(c.HostNames) == 0:
		return errors.New("hub config: at least one host name is required")
	case (c.TLSCertFile == "") != (c.TLSKeyFile == ""):
		return errors.New("hub config: TLS certificate and key must be given together")
	case c.HandshakeTimeout <= 0:
		return errors.New("hub config: HandshakeTimeout must be positive")
	case c.ConnectTimeout <= 0 || c.ResponseTimeout <= 0:
		return errors.New("hub config: ConnectTimeout and ResponseTimeout must be positive")
	case c.MaxRequestTimeout < c.ConnectTimeout || c.MaxRequestTimeout < c.ResponseTimeout:
		return errors.New("hub config: MaxRequestTimeout must not be below the default timeouts")
	case c.KeepAliveInterval <= 0 || c.ConnectionWriteTimeout <= 0:
		return errors.New("hub config: KeepAliveInterval and ConnectionWriteTimeout must be positive")
	case c.MaxMessageSize < 64<<10:
		return errors.New("hub config: MaxMessageSize must be at least 64 KiB")
	case c.ClockSkew < 0:
		return errors.New("hub config: ClockSkew must not be negative")
	case c.ReadHeaderTimeout <= 0 || c.MaxHeaderBytes <= 0:
		return errors.New("hub config: ReadHeaderTimeout and MaxHeaderBytes must be positive")
	case c.MaxStreams <= 0 || c.MaxStreamsPerDevice <= 0 || c.MaxPendingHandshakes <= 0:
		return errors.New("hub config: MaxStreams, MaxStreamsPerDevice and MaxPendingHandshakes must be positive")
	case !(c.StreamRate > 0) || math.IsInf(c.StreamRate, 0) || c.StreamBurst < 1:
		return errors.New("hub config: StreamRate must be positive and finite, StreamBurst at least 1")
	case c.IdleStreamTimeout < 0:
		return errors.New("hub config: IdleStreamTimeout must not be negative")
	case c.ShutdownGrace < 0:
		return errors.New("hub config: ShutdownGrace must not be negative")
	case c.EventRetention < 0 || c.MaxEvents < 0:
		return errors.New("hub config: EventRetention and MaxEvents must not be negative")
	}
	for _, h := range c.HostNames {
		if h == "" {
			return errors.New("hub config: empty host name")
		}
	}
	return nil
}

// Server is a hub. Create it with [New], serve with [Server.Run]; Close
// releases what New opened when Run is never called.
type Server struct {
	cfg      Config
	log      zerolog.Logger
	reg      registry.Store
	ownsReg  bool
	tls      certs.Bundle
	ln       net.Listener
	addr     string // host:port in URLs and connection strings
	first    bool
	ownerKey string
	svcKey   string

	// ctx is the lifetime of every connection the hub holds; it ends when
	// Run's shutdown grace period is over.
	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	closing  bool
	stopping chan struct{}  // closed when Run starts to shut down (drain)
	conns    sync.WaitGroup // hijacked connections, initiations and their goroutines
	sessions map[string]*session
	streams  map[string]*stream   // until both sides connected
	relays   map[*stream]struct{} // from then until the relay ends

	// svcSessions counts the service sessions held (session.go).
	svcSessions atomic.Int32
	// events writes stream events to the registry (eventlog.go).
	events *eventLog

	// handshakes admits TLS handshakes (handshake.go); set by Run.
	handshakes atomic.Pointer[handshakeListener]

	// cluster links the replica to the others; nil on a single node.
	cluster *cluster

	// lim counts streams against the configured limits.
	lim *limiter
	// metrics are served at GET /metrics (metrics.go).
	metrics *metrics

	closeOnce sync.Once
	closeErr  error
}

// New opens the hub's data directory and registry (creating them on first
// start, with the default policies and their random keys), loads or creates
// its TLS material, and takes ownership of ln, on which Run will serve.
func New(cfg Config, ln net.Listener) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		ln:       ln,
		sessions: make(map[string]*session),
		streams:  make(map[string]*stream),
		relays:   make(map[*stream]struct{}),
		stopping: make(chan struct{}),
		lim:      newLimiter(&cfg),
	}
	s.metrics = newMetrics(s)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if err := s.open(); err != nil {
		s.cancel()
		if s.ownsReg && s.reg != nil {
			s.reg.Close()
		}
		return nil, err
	}
	if cfg.NATS != "" {
		c, err := connectCluster(cfg.NATS, s.addr, s.log)
		if err != nil {
			s.cancel()
			if s.ownsReg {
				s.reg.Close()
			}
			return nil, err
		}
		s.cluster = c
	}
	s.events = newEventLog(s.reg, s.log)
	return s, nil
}

func (s *Server) open() error {
	if s.cfg.DataDir != "" {
		if err := os.MkdirAll(s.cfg.DataDir, 0o700); err != nil {
			return fmt.Errorf("create data directory: %w", err)
		}
		if err := os.Chmod(s.cfg.DataDir, 0o700); err != nil {
			return fmt.Errorf("create data directory: %w", err)
		}
	}
	s.reg = s.cfg.Registry
	if s.reg == nil {
		reg, err := registry.OpenSQLite(filepath.Join(s.cfg.DataDir, "registry.db"))
		if err != nil {
			return fmt.Errorf("open registry: %w", err)
		}
		s.reg, s.ownsReg = reg, true
	}
	ctx := s.ctx
	first, err := registry.EnsureDefaultPolicies(ctx, s.reg)
	if err != nil {
		return fmt.Errorf("create default policies: %w", err)
	}
	s.first = first
	owner, err := s.reg.GetPolicy(ctx, "iothubowner")
	if err != nil {
		return fmt.Errorf("load owner policy: %w", err)
	}
	s.ownerKey = owner.PrimaryKey
	svc, err := s.reg.GetPolicy(ctx, "service")
	if err != nil {
		return fmt.Errorf("load service policy: %w", err)
	}
	s.svcKey = svc.PrimaryKey

	if s.cfg.TLSCertFile != "" {
		s.tls, err = certs.LoadFiles(s.cfg.TLSCertFile, s.cfg.TLSKeyFile)
	} else {
		s.tls, err = certs.LoadOrCreate(filepath.Join(s.cfg.DataDir, "tls"), s.cfg.HostNames)
	}
	if err != nil {
		return fmt.Errorf("load TLS: %w", err)
	}

	s.addr = s.cfg.AdvertiseAddr
	if s.addr == "" {
		_, port, err := net.SplitHostPort(s.ln.Addr().String())
		if err != nil {
			return fmt.Errorf("listener address: %w", err)
		}
		s.addr = net.JoinHostPort(s.cfg.HostNames[0], port)
	}
	if s.cfg.DataDir != "" {
		if err := writeFileAtomic(filepath.Join(s.cfg.DataDir, OwnerConnectionStringFile), []byte(s.OwnerConnectionString()+"\n")); err != nil {
			return fmt.Errorf("write owner connection string: %w", err)
		}
		if err := writeFileAtomic(filepath.Join(s.cfg.DataDir, ServiceConnectionStringFile), []byte(s.ServiceConnectionString()+"\n")); err != nil {
			return fmt.Errorf("write service connection string: %w", err)
		}
	}
	return nil
}

// writeFileAtomic replaces name with data, mode 0600, unless it already
// holds exactly data.
func writeFileAtomic(name string, data []byte) error {
	if old, err := os.ReadFile(name); err == nil && string(old) == string(data) {
		return os.Chmod(name, 0o600)
	}
	tmp, err := os.CreateTemp(filepath.Dir(name), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), name)
}

// FirstStart reports whether New created the hub's policies, that is,
// whether this is the hub's first start on its data directory.
func (s *Server) FirstStart() bool { return s.first }

// Addr is the host:port the hub puts in streaming URLs, and in connection
// strings unless Config.PublicAddr is set.
func (s *Server) Addr() string { return s.addr }

// publicAddr is the host:port in connection strings.
func (s *Server) publicAddr() string {
	if s.cfg.PublicAddr != "" {
		return s.cfg.PublicAddr
	}
	return s.addr
}

// CAPEM returns the PEM certificate of the hub's private CA, or nil when the
// hub serves a user-provided certificate.
func (s *Server) CAPEM() []byte { return s.tls.CAPEM }

// OwnerConnectionString is the iothubowner policy's connection string.
func (s *Server) OwnerConnectionString() string {
	return sas.ConnectionString{
		HostName:            s.publicAddr(),
		SharedAccessKeyName: "iothubowner",
		SharedAccessKey:     s.ownerKey,
	}.String()
}

// ServiceConnectionString is the service policy's connection string: it
// may open streams (ServiceConnect) and nothing else, which is what an
// engineer's service proxy needs.
func (s *Server) ServiceConnectionString() string {
	return sas.ConnectionString{
		HostName:            s.publicAddr(),
		SharedAccessKeyName: "service",
		SharedAccessKey:     s.svcKey,
	}.String()
}

// DeviceConnectionString returns the connection string of a registered
// device, with its primary key.
func (s *Server) DeviceConnectionString(ctx context.Context, id string) (string, error) {
	d, err := s.reg.GetDevice(ctx, id)
	if err != nil {
		return "", fmt.Errorf("get device %q: %w", id, err)
	}
	return sas.ConnectionString{HostName: s.publicAddr(), DeviceID: id, SharedAccessKey: d.PrimaryKey}.String(), nil
}

// Registry returns the hub's device registry.
func (s *Server) Registry() registry.Store { return s.reg }

// Handler returns the hub's HTTP handler. Run serves it; tests may wrap it.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /devices/{id}/control", s.handleControl)
	mux.HandleFunc("POST /twins/{id}/streams/{name}", s.handleInitiate)
	mux.HandleFunc("GET /streams/{id}", s.handleStream)
	mux.HandleFunc("GET /service/session", s.handleServiceSession)
	mux.HandleFunc("GET /devices", s.handleListDevices)
	mux.HandleFunc("GET /devices/{id}", s.handleGetDevice)
	mux.HandleFunc("PUT /devices/{id}", s.handlePutDevice)
	mux.HandleFunc("DELETE /devices/{id}", s.handleDeleteDevice)
	mux.HandleFunc("GET /hub", s.handleHub)
	mux.HandleFunc("GET /streams", s.handleActiveStreams)
	mux.HandleFunc("GET /events", s.handleEvents)
	mux.Handle("GET /metrics", s.metrics.handler()) // counts only, unauthenticated: see metrics.go
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, http.StatusNotFound, wireNotFound("no such endpoint: "+r.Method+" "+r.URL.Path))
	})
	return s.canonicalPaths(mux)
}

// Run serves HTTPS on the listener given to New until ctx ends. Then it
// shuts down gracefully: it stops accepting, refuses new streams, closes
// every control session, lets relayed streams run for up to
// Config.ShutdownGrace and then closes the rest (see faults.go), waits for
// all of the hub's goroutines and returns. It closes what New opened, so
// the Server cannot be reused. Run returns nil after a clean shutdown.
func (s *Server) Run(ctx context.Context) error {
	tlsCfg := s.tls.Config.Clone()
	// WebSockets need HTTP/1.1; the REST calls gain nothing from HTTP/2.
	tlsCfg.NextProtos = []string{"http/1.1"}
	stopTickets, terr := s.startTicketKeys(tlsCfg) // tickets.go
	if terr != nil {
		s.Close()
		return terr
	}
	defer stopTickets()
	srv := &http.Server{
		Handler:           s.Handler(),
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    s.cfg.MaxHeaderBytes,
		ErrorLog:          log.New(debugWriter{s.log}, "", 0),
		BaseContext:       func(net.Listener) context.Context { return s.ctx },
		ConnContext:       withBatch,
	}
	stopCluster := s.startCluster() // before the first device session is claimed
	errc := make(chan error, 1)
	// TLS handshakes run under admission (handshake.go); Serve closes hl.
	hl := newHandshakeListener(batchListener{flightListener{s.ln}}, tlsCfg, s.cfg.ReadHeaderTimeout, handshakeQueueWait, handshakeSlots(), s.log)
	s.handshakes.Store(hl)
	go func() { errc <- srv.Serve(hl) }()
	s.log.Info().Str("addr", s.ln.Addr().String()).Str("advertise", s.addr).Msg("hub serving")
	stopPruning := s.startPruning()

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		err = fmt.Errorf("serve: %w", err)
	}
	grace := time.Now().Add(s.cfg.ShutdownGrace)
	if err != nil {
		grace = time.Now() // the listener failed: stop at once
	}
	s.log.Info().Stringer("grace", s.cfg.ShutdownGrace).Msg("hub shutting down")
	s.drain()
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if serr := srv.Shutdown(shutCtx); serr != nil {
		srv.Close()
	}
	if err == nil {
		if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) {
			err = fmt.Errorf("serve: %w", serr)
		}
	}
	s.awaitConns(grace)
	stopCluster()
	stopPruning() // before Close closes the registry
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	s.log.Info().Msg("hub stopped")
	return err
}

// shutdown ends every connection the hub holds and refuses new ones.
func (s *Server) shutdown() {
	s.drain()
	s.cancel()
}

// track registers a hijacked connection's goroutine with the hub. It
// returns false when the hub is shutting down; the caller must then close
// the connection. A true return must be paired with s.conns.Done.
func (s *Server) track() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.conns.Add(1)
	return true
}

// Close releases what New opened: the listener and, when the hub opened
// it, the registry. Run calls it; call it directly only when Run is never
// called. It is idempotent.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.shutdown()
		s.ln.Close()
		if s.cluster != nil {
			s.cluster.nc.Close()
		}
		s.events.close() // before the registry closes
		if s.ownsReg {
			s.closeErr = s.reg.Close()
		}
	})
	return s.closeErr
}

// debugWriter sends the HTTP server's own complaints (TLS handshake errors
// from scanners and the like) to the debug level.
type debugWriter struct{ log zerolog.Logger }

func (w debugWriter) Write(p []byte) (int, error) {
	w.log.Debug().Str("detail", string(trimNewline(p))).Msg("http server")
	return len(p), nil
}

func trimNewline(p []byte) []byte {
	for len(p) > 0 && (p[len(p)-1] == '\n' || p[len(p)-1] == '\r') {
		p = p[:len(p)-1]
	}
	return p
}

// parseSeconds reads a timeout header in whole seconds.
func parseSeconds(v string, def, max time.Duration) (time.Duration, error) {
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a positive number of seconds", v)
	}
	d := time.Duration(n) * time.Second
	if d > max {
		d = max
	}
	return d, nil
}
