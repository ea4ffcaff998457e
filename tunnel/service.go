package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/dsproxy/dsproxy/hubclient"
)

// Opener opens streams to devices: *hubclient.ServiceClient (a WebSocket
// per stream) and *hubclient.SessionClient (streams over one session).
type Opener interface {
	OpenStream(ctx context.Context, deviceID, name string) (hubclient.Stream, error)
}

// ServiceConfig configures a [Service].
type ServiceConfig struct {
	// DeviceID is the device every accepted connection is carried to.
	DeviceID string
	// StreamName names the stream, which picks the device's target.
	StreamName string
	// Logger receives one line per connection. The zero value logs nothing.
	Logger zerolog.Logger
}

// Validate reports the first problem with c.
func (c *ServiceConfig) Validate() error {
	switch {
	case c.DeviceID == "":
		return errors.New("service: a device ID is required")
	case c.StreamName == "":
		return errors.New("service: a stream name is required")
	}
	return nil
}

// Service is the service-side proxy: each connection accepted on its
// listener gets a new stream to the device.
type Service struct {
	cfg    ServiceConfig
	opener Opener
	log    zerolog.Logger
}

// NewService checks cfg and returns a service-side proxy that opens
// streams with o.
func NewService(cfg ServiceConfig, o Opener) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Service{
		cfg:    cfg,
		opener: o,
		log:    cfg.Logger.With().Str(fieldDevice, cfg.DeviceID).Str(fieldName, cfg.StreamName).Logger(),
	}, nil
}

// Serve accepts connections on ln and carries each over its own stream,
// many at once, until ctx ends. Then it closes ln and every connection and
// returns nil once all of them are done. A connection whose stream cannot
// be opened is closed and the reason logged. Serve owns ln.
func (s *Service) Serve(ctx context.Context, ln net.Listener) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer ln.Close()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) {
				// Out of file descriptors or similar: back off like net/http.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn().Err(err).Stringer("retry_in", delay).Msg("accept failed")
				select {
				case <-time.After(delay):
				case <-ctx.Done():
					return nil
				}
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		delay = 0
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.carry(ctx, c)
		}()
	}
}

// carry opens a stream for one accepted connection and joins the two.
func (s *Service) carry(ctx context.Context, c net.Conn) {
	// The remote address goes on each line rather than into a child
	// logger: a connection logs once, and a child logger is built per
	// connection (issue 7).
	remote := c.RemoteAddr().String()
	start := time.Now()
	sc, err := s.opener.OpenStream(ctx, s.cfg.DeviceID, s.cfg.StreamName)
	if err != nil {
		abortConn(c)
		if ctx.Err() == nil {
			s.log.Warn().Str(fieldRemote, remote).Str("reason", err.Error()).Msg("stream not opened")
		}
		return
	}
	stats, err := Join(ctx, c, sc)
	if notOpened(err) && ctx.Err() == nil {
		// A session stream's refusal comes on its first read.
		s.log.Warn().Str(fieldRemote, remote).Str("reason", err.Error()).Msg("stream not opened")
		return
	}
	logEnd(s.log.Info().Str(fieldRemote, remote), stats.AToB, stats.BToA, start, err).Msg("connection ended")
}

// handshaker is a stream that can wait for the hub's answer to its
// opening: a session stream.
type handshaker interface {
	Handshake() error
}

// notOpened reports whether err is a stream's refusal by the hub or
// rejection by the device.
func notOpened(err error) bool {
	var he *hubclient.HubError
	var re *hubclient.RejectedError
	return errors.As(err, &he) || errors.As(err, &re)
}
