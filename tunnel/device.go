package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/dsproxy/dsproxy/hubclient"
)

// Log field names.
const (
	fieldDevice    = "device"
	fieldStream    = "stream"
	fieldName      = "name"
	fieldTarget    = "target"
	fieldRemote    = "remote"
	fieldBytesUp   = "bytes_up"   // service → device
	fieldBytesDown = "bytes_down" // device → service
	fieldDuration  = "duration"
	fieldEnd       = "end"
)

// DeviceConfig configures a [Device].
type DeviceConfig struct {
	// Targets are what the device exposes; a stream whose name matches no
	// target (and there is no unnamed one) is rejected.
	Targets []Target
	// DialTimeout bounds dialling a target; zero means 10 s.
	DialTimeout time.Duration
	// Logger receives one line per stream. The zero value logs nothing.
	Logger zerolog.Logger
}

// Validate reports the first problem with c.
func (c *DeviceConfig) Validate() error {
	if len(c.Targets) == 0 {
		return errors.New("device: at least one target is required (--target [name=]host:port)")
	}
	seen := map[string]bool{}
	for _, t := range c.Targets {
		if seen[t.Name] {
			if t.Name == "" {
				return errors.New("device: more than one target without a name")
			}
			return fmt.Errorf("device: target name %q given twice", t.Name)
		}
		seen[t.Name] = true
	}
	return nil
}

// Device is the device-side proxy: it bridges each accepted stream to a
// local TCP target. Its HandleStream is a hubclient.StreamHandler.
type Device struct {
	cfg DeviceConfig
	log zerolog.Logger
}

// NewDevice checks cfg and returns a device-side proxy.
func NewDevice(cfg DeviceConfig) (*Device, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	return &Device{cfg: cfg, log: cfg.Logger}, nil
}

// HandleStream serves one stream request: it finds the target for the
// stream's name, dials it, and only then accepts, so a target that cannot
// be reached is a rejection with a reason. It then joins the stream and
// the target until both directions end. It blocks until then; ctx ending
// closes both.
func (d *Device) HandleStream(ctx context.Context, req *hubclient.StreamRequest) {
	t, ok := lookup(d.cfg.Targets, req.Name)
	if !ok {
		reason := fmt.Sprintf("no target named %q on this device (it serves %s)", req.Name, names(d.cfg.Targets))
		d.log.Info().Str(fieldStream, req.ID).Str(fieldName, req.Name).Str("reason", reason).Msg("stream rejected")
		_ = req.Reject(reason)
		return
	}
	// One child logger per stream, with every field its lines share.
	log := d.log.With().Str(fieldStream, req.ID).Str(fieldName, req.Name).Str(fieldTarget, t.Addr).Logger()
	dialer := net.Dialer{Timeout: d.cfg.DialTimeout}
	if host, _, err := net.SplitHostPort(t.Addr); err == nil {
		dialer.KeepAlive = keepAliveFor(host)
	}
	tc, err := dialer.DialContext(ctx, "tcp", t.Addr)
	if err != nil {
		reason := fmt.Sprintf("cannot reach target %s: %s", t.Addr, dialReason(err))
		log.Info().Str("reason", reason).Msg("stream rejected")
		_ = req.Reject(reason)
		return
	}
	start := time.Now()
	sc, err := req.Accept(ctx)
	if err != nil {
		tc.Close()
		log.Warn().Err(err).Msg("stream accepted but not connected")
		return
	}
	stats, err := Join(ctx, sc, tc)
	logEnd(log.Info(), stats.AToB, stats.BToA, start, err).Msg("stream ended")
}

// logEnd adds the per-stream summary fields to ev: bytes up (service to
// device) and down, duration and how it ended.
func logEnd(ev *zerolog.Event, up, down int64, start time.Time, err error) *zerolog.Event {
	return ev.Int64(fieldBytesUp, up).Int64(fieldBytesDown, down).
		Stringer(fieldDuration, time.Since(start).Round(time.Millisecond)).Str(fieldEnd, endReason(err))
}

// endReason says how a Join ended, in words for the log.
func endReason(err error) string {
	switch {
	case err == nil:
		return "closed"
	case errors.Is(err, context.Canceled):
		return "shutdown"
	case errors.Is(err, net.ErrClosed):
		return "closed"
	}
	var se *hubclient.StreamEndError
	if errors.As(err, &se) {
		return se.Error()
	}
	return err.Error()
}

// dialReason shortens a dial error to what an engineer needs.
func dialReason(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT):
		return "timed out"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timed out"
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err.Error()
	}
	return err.Error()
}

func names(ts []Target) string {
	var out []string
	for _, t := range ts {
		out = append(out, fmt.Sprintf("%q", t.Name))
	}
	return strings.Join(out, ", ")
}
