package hubclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/coder/websocket"
	"github.com/rs/zerolog"

	"github.com/dsproxy/dsproxy/internal/wire"
)

// ServiceConfig configures a [ServiceClient].
type ServiceConfig struct {
	// ConnectionString is a policy connection string
	// (HostName=...;SharedAccessKeyName=...;SharedAccessKey=...). Opening
	// streams needs ServiceConnect; registry calls need RegistryRead or
	// RegistryWrite.
	ConnectionString string

	// TLSConfig verifies the hub; nil uses the system roots.
	TLSConfig *tls.Config

	// Hubs, when set, are the hub replicas to use (host:port), instead of
	// the connection string's HostName, which tokens are still signed
	// for. The client stays with one until it cannot be reached or shuts
	// down, then moves to the next; a stream goes to the replica the hub
	// names for it.
	Hubs []string

	// ConnectTimeout and ResponseTimeout, when set, are sent with each
	// stream initiation (whole seconds): how long the hub may take to
	// reach the device and how long the device has to answer. Zero leaves
	// the hub's defaults (60 s each).
	ConnectTimeout  time.Duration
	ResponseTimeout time.Duration

	// TokenTTL is the lifetime of the SAS tokens the client signs; zero
	// means one hour.
	TokenTTL time.Duration

	// For a [SessionClient] only: keepalive pings on the session every
	// KeepAliveInterval, and a hub that does not answer within
	// ConnectionWriteTimeout is gone (zero values: 15 s and 10 s); the
	// wait between redials doubles from MinBackoff to MaxBackoff, with
	// jitter (zero values: 500 ms and 30 s).
	KeepAliveInterval      time.Duration
	ConnectionWriteTimeout time.Duration
	MinBackoff             time.Duration
	MaxBackoff             time.Duration

	// Logger receives debug logs. The zero value logs nothing.
	Logger zerolog.Logger

	// legacyFrames makes a session announce no wire.FeatureLargeFrames,
	// as a build before it (a test hook: export_test.go).
	legacyFrames bool
}

// ServiceClient opens streams to devices and calls the registry. It is
// safe for concurrent use.
type ServiceClient struct {
	*base
	cfg     ServiceConfig
	log     zerolog.Logger
	streams *streamDialer
}

// NewServiceClient checks cfg and returns a client. It does not contact the
// hub.
func NewServiceClient(cfg ServiceConfig) (*ServiceClient, error) {
	b, err := newServiceBase(cfg)
	if err != nil {
		return nil, err
	}
	return &ServiceClient{base: b, cfg: cfg, log: cfg.Logger, streams: newStreamDialer(b.http.Transport.(*http.Transport))}, nil
}

// newServiceBase is the base of a client with a policy's credential.
func newServiceBase(cfg ServiceConfig) (*base, error) {
	b, err := newBase(cfg.ConnectionString, cfg.Hubs, cfg.TLSConfig, cfg.TokenTTL)
	if err != nil {
		return nil, err
	}
	if b.cs.IsDevice() {
		return nil, errors.New("connection string: a service needs a policy connection string (SharedAccessKeyName=...), not a device's")
	}
	return b, nil
}

// HostName is the hub address from the connection string.
func (c *ServiceClient) HostName() string { return c.cs.HostName }

// Close releases idle connections to the hub, and the one dialed ahead
// for the next stream. Streams already open are not affected.
func (c *ServiceClient) Close() {
	c.streams.Close()
	c.close()
}

// OpenStream asks the hub for a stream named name to device deviceID and,
// when the device accepts, connects to the streaming endpoint. ctx bounds
// the initiation and the connection, not the returned stream, which lives
// until closed.
//
// A refusal is a [*RejectedError] (errors.Is ErrRejected) with the device's
// reason; other failures are [*HubError]s matching ErrDeviceUnavailable,
// ErrTimeout, ErrUnauthorized, ErrForbidden or ErrRateLimited.
func (c *ServiceClient) OpenStream(ctx context.Context, deviceID, name string) (Stream, error) {
	op := fmt.Sprintf("open stream %q to device %q", name, deviceID)
	auth, err := c.authorization()
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost,
		c.url("https", "/twins/"+pathEscape(deviceID)+"/streams/"+pathEscape(name)+"?api-version=2020-09-30"), nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	req.Header.Set("Authorization", auth)
	if c.cfg.ConnectTimeout > 0 {
		req.Header.Set(wire.HeaderConnectTimeout, strconv.Itoa(seconds(c.cfg.ConnectTimeout)))
	}
	if c.cfg.ResponseTimeout > 0 {
		req.Header.Set(wire.HeaderResponseTimeout, strconv.Itoa(seconds(c.cfg.ResponseTimeout)))
	}
	// The stream's WebSocket connection is dialed while the hub asks the
	// device: the hub names itself in the URL, unless another replica
	// holds the device.
	_, host := c.host()
	c.streams.Prepare("wss://" + host + "/")
	resp, err := c.roundTrip(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	defer closeBody(resp)
	if resp.StatusCode != http.StatusOK {
		return nil, hubError(op, resp)
	}
	switch resp.Header.Get(wire.HeaderIsAccepted) {
	case wire.Accepted:
	case wire.NotAccepted:
		var body wire.InitiateResponse
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return nil, &RejectedError{DeviceID: deviceID, Name: name, Reason: orDefault(body.Reason, "no reason given")}
	default:
		return nil, fmt.Errorf("%s: hub answered without %s", op, wire.HeaderIsAccepted)
	}
	url, token := resp.Header.Get(wire.HeaderURL), resp.Header.Get(wire.HeaderAuthToken)
	if url == "" || token == "" {
		return nil, fmt.Errorf("%s: hub accepted without a streaming URL and token", op)
	}
	conn, err := c.streams.Dial(ctx, url, token)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	return conn, nil
}

// dialStreamOn connects one side of a stream to the streaming endpoint,
// on ready when it is not nil (it is then closed on failure), else on a
// connection of its own. A failure the hub answered comes with its
// response.
//
// The connection is dialed by streamTransport, so that the [Conn] can send
// each message in one TLS write and one TCP write.
func dialStreamOn(ctx context.Context, base *http.Transport, ready *readyConn, url, token string) (*Conn, *http.Response, error) {
	tr, layers := streamTransport(base, ready)
	ws, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{
		HTTPClient: &http.Client{Transport: tr},
		HTTPHeader: http.Header{"Authorization": {"Bearer " + token}},
	})
	if err != nil {
		if ready != nil {
			ready.close()
		}
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			return nil, resp, hubError("connect to streaming endpoint", resp)
		}
		return nil, resp, fmt.Errorf("connect to streaming endpoint: %w", err)
	}
	// The hub enforces its own limit; accept whatever it relays.
	ws.SetReadLimit(-1)
	return newConn(ws, layers), nil, nil
}

// maxDrain is the most of an answer's unread body closeBody reads so
// that the connection can carry the next request.
const maxDrain = 64 << 10

// closeBody reads what is left of a hub's answer, up to maxDrain, and
// closes it. net/http keeps a connection for the next request only when
// its last answer was read to the end: without this, every stream
// initiation after an accepted one (whose JSON body nobody reads) paid a
// new TCP connection and TLS handshake (issue 6).
func closeBody(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrain))
	resp.Body.Close()
}

func seconds(d time.Duration) int {
	s := int((d + time.Second - 1) / time.Second)
	if s < 1 {
		s = 1
	}
	return s
}

// Device is a registry entry as the hub returns it.
type Device struct {
	ID              string
	Status          string // "enabled" or "disabled"
	ConnectionState string // "Connected" or "Disconnected"
	PrimaryKey      string
	SecondaryKey    string
	ETag            string
}

// deviceJSON is the Azure-shaped JSON of a device.
type deviceJSON wire.Device

func (d deviceJSON) device() Device {
	return Device{
		ID:              d.DeviceID,
		Status:          d.Status,
		ConnectionState: d.ConnectionState,
		PrimaryKey:      d.Authentication.SymmetricKey.PrimaryKey,
		SecondaryKey:    d.Authentication.SymmetricKey.SecondaryKey,
		ETag:            d.ETag,
	}
}

// do sends a registry request and decodes a JSON answer into out (when
// non-nil).
func (c *ServiceClient) do(ctx context.Context, op, method, path string, hdr http.Header, in, out any) error {
	auth, err := c.authorization()
	if err != nil {
		return err
	}
	var body *bytes.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		body = bytes.NewReader(b)
	} else {
		body = bytes.NewReader(nil)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url("https", path+"?api-version=2020-09-30"), body)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	req.Header.Set("Authorization", auth)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.roundTrip(req)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	defer closeBody(resp)
	if resp.StatusCode/100 != 2 {
		return hubError(op, resp)
	}
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return fmt.Errorf("%s: decode answer: %w", op, err)
		}
	}
	return nil
}

// GetDevice returns a registered device (needs RegistryRead).
func (c *ServiceClient) GetDevice(ctx context.Context, id string) (Device, error) {
	var d deviceJSON
	err := c.do(ctx, fmt.Sprintf("get device %q", id), http.MethodGet, "/devices/"+pathEscape(id), nil, nil, &d)
	return d.device(), err
}

// ListDevices returns every registered device (needs RegistryRead).
func (c *ServiceClient) ListDevices(ctx context.Context) ([]Device, error) {
	var ds []deviceJSON
	if err := c.do(ctx, "list devices", http.MethodGet, "/devices", nil, nil, &ds); err != nil {
		return nil, err
	}
	out := make([]Device, len(ds))
	for i, d := range ds {
		out[i] = d.device()
	}
	return out, nil
}

// CreateDevice registers a new, enabled device with fresh keys (needs
// RegistryWrite). It fails with ErrExists when the ID is taken.
func (c *ServiceClient) CreateDevice(ctx context.Context, id string) (Device, error) {
	in := deviceJSON{DeviceID: id, Status: "enabled"}
	in.Authentication.Type = "sas"
	var d deviceJSON
	err := c.do(ctx, fmt.Sprintf("create device %q", id), http.MethodPut, "/devices/"+pathEscape(id), nil, in, &d)
	return d.device(), err
}

// UpdateDevice replaces a device's status and keys (needs RegistryWrite).
// Empty keys keep their current value. d.ETag "" updates whatever the
// current state is; otherwise a device changed since fails with a
// *HubError of status 412.
func (c *ServiceClient) UpdateDevice(ctx context.Context, d Device) (Device, error) {
	in := deviceJSON{DeviceID: d.ID, Status: d.Status}
	in.Authentication.Type = "sas"
	in.Authentication.SymmetricKey.PrimaryKey = d.PrimaryKey
	in.Authentication.SymmetricKey.SecondaryKey = d.SecondaryKey
	etag := d.ETag
	if etag == "" {
		etag = "*"
	}
	var out deviceJSON
	err := c.do(ctx, fmt.Sprintf("update device %q", d.ID), http.MethodPut, "/devices/"+pathEscape(d.ID),
		http.Header{"If-Match": {etag}}, in, &out)
	return out.device(), err
}

// DeleteDevice removes a device (needs RegistryWrite); its session ends.
func (c *ServiceClient) DeleteDevice(ctx context.Context, id string) error {
	return c.do(ctx, fmt.Sprintf("delete device %q", id), http.MethodDelete, "/devices/"+pathEscape(id),
		http.Header{"If-Match": {"*"}}, nil, nil)
}

// DeviceConnectionString formats the connection string of a device on this
// client's hub, with its primary key.
func (c *ServiceClient) DeviceConnectionString(d Device) string {
	return deviceConnString(c.cs.HostName, d.ID, d.PrimaryKey)
}
