package hubclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"

	"github.com/dsproxy/dsproxy/internal/wsmux"
)

// sessionDefaults fills the zero keepalive and backoff settings that a
// [DeviceClient] and a [SessionClient] share: 15 s + 10 s keepalive, and
// backoff from 500 ms to 30 s (never below the minimum).
func sessionDefaults(keepAlive, writeTimeout, minBackoff, maxBackoff *time.Duration) {
	if *keepAlive <= 0 {
		*keepAlive = 15 * time.Second
	}
	if *writeTimeout <= 0 {
		*writeTimeout = 10 * time.Second
	}
	if *minBackoff <= 0 {
		*minBackoff = 500 * time.Millisecond
	}
	if *maxBackoff <= 0 {
		*maxBackoff = 30 * time.Second
	}
	*maxBackoff = max(*maxBackoff, *minBackoff)
}

// dialMux dials the WebSocket of a session (the device's control session
// or a service's session) at path with subprotocol, on a transport of its
// own, as a stream's, since session streams carry data on it. It tries
// each hub replica in the list once, from the one in use: a session moves
// on from a replica that cannot be reached or is shutting down. what names
// the session in errors.
func (b *base) dialMux(ctx context.Context, path, subprotocol string, hdr http.Header, what string) (*websocket.Conn, *streamLayers, error) {
	for tries := 1; ; tries++ {
		i, host := b.host()
		ws, layers, resp, err := b.dialMuxAt(ctx, host, path, subprotocol, hdr)
		if err == nil {
			return ws, layers, nil
		}
		if resp != nil && resp.StatusCode == http.StatusSwitchingProtocols {
			resp = nil // upgraded, then refused by this client: not the hub's answer
		}
		if tries < len(b.hosts) && ctx.Err() == nil && passedOver(resp, err) {
			b.failover(i)
			continue
		}
		where := what
		if len(b.hosts) > 1 {
			where += " at " + host
		}
		if resp != nil {
			return nil, nil, hubError("connect "+where, resp)
		}
		return nil, nil, fmt.Errorf("connect %s: %w", where, err)
	}
}

// dialMuxAt dials a session's WebSocket on the hub at host. A refusal
// comes with the hub's response.
func (b *base) dialMuxAt(ctx context.Context, host, path, subprotocol string, hdr http.Header) (*websocket.Conn, *streamLayers, *http.Response, error) {
	auth, err := b.authorization()
	if err != nil {
		return nil, nil, nil, err
	}
	hdr = hdr.Clone()
	if hdr == nil {
		hdr = http.Header{}
	}
	hdr.Set("Authorization", auth)
	ws, layers, resp, err := dialWebSocket(ctx, b.http.Transport.(*http.Transport), "wss://"+host+path, hdr, subprotocol)
	if err != nil {
		return nil, nil, resp, err
	}
	if ws.Subprotocol() != subprotocol {
		ws.Close(websocket.StatusProtocolError, "subprotocol "+subprotocol+" required")
		return nil, nil, nil, errors.New("hub did not agree on " + subprotocol + ": is it older than this client?")
	}
	return ws, layers, nil, nil
}

// dialWebSocket dials one WebSocket with the session's transport.
func dialWebSocket(ctx context.Context, base *http.Transport, url string, hdr http.Header, subprotocol string) (*websocket.Conn, *streamLayers, *http.Response, error) {
	tr, layers := streamTransport(base, nil)
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ws, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{
		HTTPClient:   &http.Client{Transport: tr},
		HTTPHeader:   hdr,
		Subprotocols: []string{subprotocol},
	})
	return ws, layers, resp, err
}

// runMux runs a yamux session over ws (newMux is yamux.Client or
// yamux.Server), its messages gathered through layers, watched by
// wsmux.Keepalive, for as long as ctx. The caller must close the session,
// then call watched, which waits for the keepalive watch. On an error ws
// is closed.
func runMux(ctx context.Context, ws *websocket.Conn, layers *streamLayers,
	newMux func(io.ReadWriteCloser, *yamux.Config) (*yamux.Session, error), keepAlive, timeout time.Duration,
) (mux *yamux.Session, nc net.Conn, watched func(), err error) {
	nc = wsmux.Conn(ctx, ws, gatherer{layers})
	mux, err = newMux(nc, wsmux.Config(nil))
	if err != nil {
		ws.CloseNow()
		return nil, nil, nil, err
	}
	watching := make(chan struct{})
	go func() {
		defer close(watching)
		_ = wsmux.Keepalive(mux, nc, keepAlive, timeout)
	}()
	return mux, nc, func() { <-watching }, nil
}

// gatherer lets wsmux gather a session's messages through a stream's
// layers.
type gatherer struct{ l *streamLayers }

func (g gatherer) Hold()          { g.l.hold() }
func (g gatherer) Release() error { return g.l.release() }
