package hub_test

// The hub's protocol tests speak to a real hub (dsproxytest.NewHub) at the
// HTTP and WebSocket level: they sign their own SAS tokens, POST stream
// initiations by hand, and play the device with a raw control session
// (rawDevice) so that they see both stream tokens. The helpers are in this
// file; the tests are grouped by topic in the other *_test.go files.

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"
	"go.uber.org/goleak"

	"github.com/dsproxy/dsproxy/internal/dsproxytest"
	"github.com/dsproxy/dsproxy/internal/sas"
	"github.com/dsproxy/dsproxy/internal/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// httpClient returns a client that trusts tlsCfg's roots and never pools
// connections, so no idle connection outlives a test.
func httpClient(tlsCfg *tls.Config) *http.Client {
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig:   tlsCfg.Clone(),
		DisableKeepAlives: true,
	}}
}

// ownerKey returns the iothubowner policy's primary key.
func ownerKey(t *testing.T, w *dsproxytest.Hub) string {
	t.Helper()
	cs, err := sas.ParseConnectionString(w.OwnerConnectionString)
	if err != nil {
		t.Fatal(err)
	}
	return cs.SharedAccessKey
}

// policyToken signs a SAS token for the whole hub with a policy's key.
func policyToken(t *testing.T, w *dsproxytest.Hub, policy, key string, expiry time.Time) string {
	t.Helper()
	tok, err := sas.NewToken(w.Server.Addr(), key, policy, expiry)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// ownerToken is a valid iothubowner token for an hour.
func ownerToken(t *testing.T, w *dsproxytest.Hub) string {
	t.Helper()
	return policyToken(t, w, "iothubowner", ownerKey(t, w), time.Now().Add(time.Hour))
}

// addDevice registers id and returns its primary key.
func addDevice(t *testing.T, w *dsproxytest.Hub, id string) string {
	t.Helper()
	cs, err := sas.ParseConnectionString(w.AddDevice(t, id))
	if err != nil {
		t.Fatal(err)
	}
	return cs.SharedAccessKey
}

// deviceToken signs a device token the way hubclient does.
func deviceToken(t *testing.T, w *dsproxytest.Hub, id, key string) string {
	t.Helper()
	tok, err := sas.NewToken(sas.DeviceResource(w.Server.Addr(), id), key, "", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// initiation is the hub's answer to a stream initiation.
type initiation struct {
	status int
	header http.Header
	body   wire.InitiateResponse // when status is 200
	err    wire.Error            // otherwise
}

// initiate POSTs /twins/{id}/streams/{name} with the given Authorization
// header value and extra headers.
func initiate(t *testing.T, w *dsproxytest.Hub, auth, id, name string, hdr http.Header) initiation {
	t.Helper()
	in, err := postInitiate(w, auth, id, name, hdr)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// postInitiate is initiate for use off the test goroutine.
func postInitiate(w *dsproxytest.Hub, auth, id, name string, hdr http.Header) (initiation, error) {
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	u := "https://" + w.Addr + "/twins/" + url.PathEscape(id) + "/streams/" + url.PathEscape(name) + "?api-version=2020-09-30"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	if err != nil {
		return initiation{}, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := httpClient(w.ClientTLS).Do(req)
	if err != nil {
		return initiation{}, fmt.Errorf("initiate stream: %w", err)
	}
	defer resp.Body.Close()
	in := initiation{status: resp.StatusCode, header: resp.Header}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return initiation{}, fmt.Errorf("initiate stream: read answer: %w", err)
	}
	if resp.StatusCode == http.StatusOK {
		err = json.Unmarshal(body, &in.body)
	} else {
		err = json.Unmarshal(body, &in.err)
	}
	if err != nil {
		return initiation{}, fmt.Errorf("initiate stream: %d answer %q: %w", resp.StatusCode, body, err)
	}
	return in, nil
}

// getStatus sends GET path with auth and returns the status code.
func getStatus(t *testing.T, w *dsproxytest.Hub, path, auth string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+w.Addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", auth)
	resp, err := httpClient(w.ClientTLS).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// wsConn is a raw WebSocket to the hub and the TCP connection under it,
// which a test may close to drop the WebSocket without a close frame.
type wsConn struct {
	*websocket.Conn
	tcp net.Conn
}

// dialWS opens a WebSocket to the hub at path (or a full wss:// URL). On a
// refused upgrade it returns the HTTP status and a nil *wsConn. A WebSocket
// it returns is closed at cleanup.
func dialWS(t *testing.T, w *dsproxytest.Hub, path string, hdr http.Header, subprotocols ...string) (*wsConn, int) {
	t.Helper()
	u := path
	if !strings.HasPrefix(u, "wss://") {
		u = "wss://" + w.Addr + path
	}
	var (
		mu  sync.Mutex
		tcp net.Conn
	)
	tr := &http.Transport{
		TLSClientConfig:   w.ClientTLS.Clone(),
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			mu.Lock()
			tcp = c
			mu.Unlock()
			return c, err
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	ws, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{
		HTTPClient:   &http.Client{Transport: tr},
		HTTPHeader:   hdr,
		Subprotocols: subprotocols,
	})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			return nil, resp.StatusCode
		}
		t.Fatalf("dial %s: %v", u, err)
	}
	ws.SetReadLimit(-1)
	t.Cleanup(func() { ws.CloseNow() })
	mu.Lock()
	defer mu.Unlock()
	return &wsConn{Conn: ws, tcp: tcp}, http.StatusSwitchingProtocols
}

// dialStream joins one side of a stream with a bearer token and fails the
// test if the hub refuses.
func dialStream(t *testing.T, w *dsproxytest.Hub, streamURL, token string) *wsConn {
	t.Helper()
	c, status := dialWS(t, w, streamURL, bearer(token))
	if c == nil {
		t.Fatalf("join stream %s: hub answered %d", streamURL, status)
	}
	return c
}

// dialStreamStatus tries to join a stream and returns the HTTP status: 101
// when the hub let the side in.
func dialStreamStatus(t *testing.T, w *dsproxytest.Hub, streamURL, token string) int {
	t.Helper()
	c, status := dialWS(t, w, streamURL, bearer(token))
	if c != nil {
		c.CloseNow()
	}
	return status
}

func bearer(token string) http.Header {
	if token == "" {
		return nil
	}
	return http.Header{"Authorization": {"Bearer " + token}}
}

// rawDevice is a device control session run by hand: it dials the control
// endpoint, runs the yamux server, reads the hub's SessionReady and then
// hands every stream request to the test, which answers it.
type rawDevice struct {
	ws   *wsConn
	mux  *yamux.Session
	reqs chan *rawRequest
	done chan struct{}
}

// rawRequest is a stream request delivered to a rawDevice.
type rawRequest struct {
	wire.StreamRequest
	ctl net.Conn
}

// answer sends the device's response and ends the control stream.
func (r *rawRequest) answer(t *testing.T, accepted bool, reason string) {
	t.Helper()
	defer r.ctl.Close()
	if err := wire.WriteMessage(r.ctl, &wire.StreamResponse{Accepted: accepted, Reason: reason}); err != nil {
		t.Fatalf("answer stream request: %v", err)
	}
}

// connectRawDevice opens a control session for id with the Authorization
// header value auth, announcing features (wire.HeaderFeatures), and waits
// for the hub's SessionReady. It fails the test if the hub refuses; see
// dialWS for a refusal's status.
func connectRawDevice(t *testing.T, w *dsproxytest.Hub, id, auth string, features ...string) *rawDevice {
	t.Helper()
	hdr := http.Header{"Authorization": {auth}}
	if len(features) > 0 {
		hdr.Set(wire.HeaderFeatures, strings.Join(features, ","))
	}
	ws, status := dialWS(t, w, "/devices/"+url.PathEscape(id)+"/control?api-version=2020-09-30",
		hdr, wire.ControlSubprotocol)
	if ws == nil {
		t.Fatalf("control session for %q refused with %d", id, status)
	}
	if got := ws.Subprotocol(); got != wire.ControlSubprotocol {
		t.Fatalf("control session subprotocol %q, want %q", got, wire.ControlSubprotocol)
	}
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	mux, err := yamux.Server(websocket.NetConn(context.Background(), ws.Conn, websocket.MessageBinary), cfg)
	if err != nil {
		t.Fatal(err)
	}
	d := &rawDevice{ws: ws, mux: mux, reqs: make(chan *rawRequest, 16), done: make(chan struct{})}
	t.Cleanup(func() {
		mux.Close()
		ws.CloseNow()
		<-d.done
	})

	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	st, err := mux.AcceptStreamWithContext(ctx)
	if err != nil {
		close(d.done)
		t.Fatalf("no SessionReady stream: %v", err)
	}
	var ready wire.SessionReady
	err = wire.ReadMessage(st, &ready)
	st.Close()
	if err != nil || ready.DeviceID != id {
		close(d.done)
		t.Fatalf("SessionReady %+v, %v; want device %q", ready, err, id)
	}
	go d.serve()
	return d
}

func (d *rawDevice) serve() {
	defer close(d.done)
	for {
		st, err := d.mux.AcceptStream()
		if err != nil {
			return
		}
		var req wire.StreamRequest
		if err := wire.ReadMessage(st, &req); err != nil {
			st.Close()
			continue
		}
		select {
		case d.reqs <- &rawRequest{StreamRequest: req, ctl: st}:
		case <-d.mux.CloseChan():
			st.Close()
			return
		}
	}
}

// next returns the next stream request delivered to the device.
func (d *rawDevice) next(t *testing.T) *rawRequest {
	t.Helper()
	select {
	case r := <-d.reqs:
		return r
	case <-time.After(dsproxytest.WaitTimeout):
		t.Fatal("no stream request reached the device")
		return nil
	}
}

// rawStream is an initiated, accepted stream whose sides have not joined:
// the URL and both tokens.
type rawStream struct {
	id, url       string
	serviceToken  string
	deviceToken   string
	deviceURL     string
	initiatedFrom time.Time // just before the initiation was sent
}

// openRaw initiates a stream to d with the owner's credential, has d
// accept it, and returns what each side needs to join.
func openRaw(t *testing.T, w *dsproxytest.Hub, d *rawDevice, id, name string) rawStream {
	t.Helper()
	start := time.Now()
	type result struct {
		in  initiation
		err error
	}
	answered := make(chan result, 1)
	auth := ownerToken(t, w)
	go func() {
		in, err := postInitiate(w, auth, id, name, nil)
		answered <- result{in, err}
	}()
	req := d.next(t)
	if req.Name != name {
		t.Errorf("device got stream name %q, want %q", req.Name, name)
	}
	req.answer(t, true, "")
	res := <-answered
	if res.err != nil {
		t.Fatal(res.err)
	}
	in := res.in
	if in.status != http.StatusOK || in.header.Get(wire.HeaderIsAccepted) != wire.Accepted {
		t.Fatalf("initiation: %d %s=%q %+v", in.status, wire.HeaderIsAccepted, in.header.Get(wire.HeaderIsAccepted), in.err)
	}
	rs := rawStream{
		id:            in.body.StreamID,
		url:           in.header.Get(wire.HeaderURL),
		serviceToken:  in.header.Get(wire.HeaderAuthToken),
		deviceToken:   req.AuthToken,
		deviceURL:     req.URL,
		initiatedFrom: start,
	}
	if rs.url != rs.deviceURL || rs.url == "" || rs.serviceToken == "" || rs.deviceToken == "" || rs.serviceToken == rs.deviceToken {
		t.Fatalf("bad stream: %+v", rs)
	}
	return rs
}

// readClose reads from c until the WebSocket ends and returns the error
// that ended it, discarding any messages.
func readClose(t *testing.T, c *wsConn) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	for {
		_, _, err := c.Read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				t.Fatal("the stream was not closed in time")
			}
			return err
		}
	}
}

// expectClose reads from c until it ends and checks the close code, and
// that it ended within within of now.
func expectClose(t *testing.T, c *wsConn, want websocket.StatusCode, within time.Duration) {
	t.Helper()
	start := time.Now()
	err := readClose(t, c)
	if got := websocket.CloseStatus(err); got != want {
		t.Errorf("stream ended with %v (close code %d), want close code %d", err, got, want)
	}
	if d := time.Since(start); d > within {
		t.Errorf("stream ended after %s, want within %s", d, within)
	}
}

// readMessage reads one message from c.
func readMessage(t *testing.T, c *wsConn) (websocket.MessageType, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	typ, b, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read message: %v", err)
	}
	return typ, b
}

// writeMessage sends one binary message on c.
func writeMessage(t *testing.T, c *wsConn, b []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageBinary, b); err != nil {
		t.Fatalf("write message: %v", err)
	}
}

// isRefused reports whether an HTTP status is a refusal of a stream token.
func isRefused(status int) bool {
	return status == http.StatusUnauthorized || status == http.StatusNotFound
}
