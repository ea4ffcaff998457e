package hubclient

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"

	"github.com/dsproxy/dsproxy/internal/batch"
)

// streamLayers are the connections under one stream's WebSocket, through
// which a [Conn] sends each message in as few TLS records and write system
// calls as it can (issue 6): coder/websocket's client masks and flushes
// every 4 KiB, which would otherwise make each 4 KiB a record and a write.
type streamLayers struct {
	local, remote net.Addr

	// plain, above TLS, gathers a message into one TLS write, made of
	// records of up to 16 KiB. Nil when net/http did the TLS itself
	// (through an HTTP proxy).
	plain *batch.Conn
	// wire, below TLS, gathers a message's records into one write to TCP.
	wire *batch.Conn
}

// hold starts gathering a message's writes.
func (l *streamLayers) hold() {
	if l.plain != nil {
		l.plain.Hold()
	}
	l.wire.Hold()
}

// release sends what hold gathered: the plaintext through TLS into the
// wire layer, then the records to TCP in one write. It blocks while TCP
// does.
func (l *streamLayers) release() error {
	var err error
	if l.plain != nil {
		err = l.plain.Release()
	}
	if werr := l.wire.Release(); err == nil {
		err = werr
	}
	return err
}

// streamTransport returns a copy of base that dials one stream's
// connection and does its TLS itself, recording the layers in the
// returned streamLayers, which are set once the transport has dialed.
// Through an HTTP proxy net/http does the TLS, and only the wire layer is
// there.
func streamTransport(base *http.Transport) (*http.Transport, *streamLayers) {
	l := &streamLayers{}
	tr := base.Clone()
	dial := tr.DialContext
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		l.local, l.remote = nc.LocalAddr(), nc.RemoteAddr()
		l.wire = batch.New(nc)
		return l.wire, nil
	}
	tlsCfg, hsTimeout := tr.TLSClientConfig, tr.TLSHandshakeTimeout
	tr.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", addr, err)
		}
		nc, err := tr.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		cfg := &tls.Config{}
		if tlsCfg != nil {
			cfg = tlsCfg.Clone() // shares the session cache
		}
		if cfg.ServerName == "" {
			cfg.ServerName = host
		}
		cfg.NextProtos = []string{"http/1.1"} // WebSockets need HTTP/1.1
		tc := tls.Client(nc, cfg)
		if hsTimeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, hsTimeout)
			defer cancel()
		}
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("tls handshake with %s: %w", addr, err)
		}
		l.plain = batch.New(tc)
		return l.plain, nil
	}
	return tr, l
}
