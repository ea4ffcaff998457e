package hubclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

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
//
// With ready, the transport dials nothing: its one connection is ready's,
// dialed ahead to the address the WebSocket's URL names.
func streamTransport(base *http.Transport, ready *readyConn) (*http.Transport, *streamLayers) {
	tr := base.Clone()
	if ready != nil {
		taken := false
		tr.Proxy = nil
		tr.DialContext = nil
		tr.DialTLSContext = func(_ context.Context, _, addr string) (net.Conn, error) {
			if taken || addr != ready.addr {
				// Not reached: a WebSocket dial makes one connection,
				// to the URL's address.
				return nil, fmt.Errorf("dial %s: the connection dialed ahead is to %s", addr, ready.addr)
			}
			taken = true
			return ready.conn, nil
		}
		return tr, ready.layers
	}
	l := &streamLayers{}
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
	tr.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		rc, err := dialTLS(ctx, base, network, addr)
		if err != nil {
			return nil, err
		}
		*l = *rc.layers
		return rc.conn, nil
	}
	return tr, l
}

// readyConn is a TLS connection to the hub for one stream's WebSocket,
// dialed before its upgrade request is sent.
type readyConn struct {
	addr   string   // host:port it was dialed to
	conn   net.Conn // the top of layers: what HTTP is written to
	layers *streamLayers
}

// resumeCurves are the key exchanges a stream connection offers when it
// resumes a TLS session with the hub (issue 6: the key exchange was a
// third of a per-stream setup's CPU, two handshakes per stream).
//
// A resumed TLS 1.3 handshake derives its keys from both the session's
// secret (the PSK) and a fresh key exchange (psk_dhe_ke, the only mode
// crypto/tls speaks). The PSK comes, through a chain of resumptions, from
// a full handshake with Go's default key exchange, the post-quantum
// hybrid X25519MLKEM768; so the fresh exchange need not repeat ML-KEM to
// keep a recording safe from a quantum computer, and it only adds forward
// secrecy against the theft of the ticket keys, which P-256 gives as well
// at about half the CPU of X25519 on amd64. A handshake that offered only
// P-256 and did not resume (the hub restarted without its ticket keys,
// or the ticket was too old) is dialed again with the default key
// exchange, so no stream connection rests on P-256 alone; so is one
// that failed otherwise before its handshake timeout (a server that takes
// no P-256 refuses it with an alert, which crypto/tls does not export).
// P-256 is offered alone: crypto/tls sends its key share for the first
// exchange in a fixed order (X25519 before P-256), and its server picks a
// post-quantum exchange whenever one is listed, at the cost of a
// HelloRetryRequest.
var resumeCurves = []tls.CurveID{tls.CurveP256}

// dialTLS dials addr with base's dialer, TLS configuration and handshake
// timeout, without a proxy, and returns the connection with its layers.
// When the session cache holds a session for the hub and the
// configuration names no key exchanges, it offers resumeCurves (see
// there).
func dialTLS(ctx context.Context, base *http.Transport, network, addr string) (*readyConn, error) {
	rc, offered, err := dialTLSWith(ctx, base, network, addr, true)
	// Not again after the handshake timeout: that would double it.
	if offered && err != nil && ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) {
		rc, _, err = dialTLSWith(ctx, base, network, addr, false)
	}
	return rc, err
}

// errNotResumed: a handshake that offered only resumeCurves did not resume
// its session.
var errNotResumed = errors.New("tls session not resumed")

// dialTLSWith is dialTLS; with resume, a handshake offers resumeCurves
// when the cache holds a session (offered reports that it did), and then
// must resume (errNotResumed otherwise).
func dialTLSWith(ctx context.Context, base *http.Transport, network, addr string, resume bool) (_ *readyConn, offered bool, _ error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, false, fmt.Errorf("dial %s: %w", addr, err)
	}
	dial := base.DialContext
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	nc, err := dial(ctx, network, addr)
	if err != nil {
		return nil, false, err
	}
	l := &streamLayers{local: nc.LocalAddr(), remote: nc.RemoteAddr(), wire: batch.New(nc)}
	cfg := &tls.Config{}
	if base.TLSClientConfig != nil {
		cfg = base.TLSClientConfig.Clone() // shares the session cache
	}
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	cfg.NextProtos = []string{"http/1.1"} // WebSockets need HTTP/1.1
	offered = resume && cfg.CurvePreferences == nil && cached(cfg)
	if offered {
		cfg.CurvePreferences = resumeCurves
	}
	tc := tls.Client(l.wire, cfg)
	if hs := base.TLSHandshakeTimeout; hs > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, hs)
		defer cancel()
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		restoreTicket(cfg, cfg.ServerName, err) // crypto/tls's cache key
		return nil, offered, fmt.Errorf("tls handshake with %s: %w", addr, err)
	}
	if offered && !tc.ConnectionState().DidResume {
		tc.Close()
		return nil, offered, errNotResumed
	}
	l.plain = batch.New(tc)
	return &readyConn{addr: addr, conn: l.plain, layers: l}, offered, nil
}

// cached reports whether cfg's session cache holds a session for the
// server cfg names, under the key crypto/tls looks it up by.
func cached(cfg *tls.Config) bool {
	if cfg.ClientSessionCache == nil || cfg.SessionTicketsDisabled {
		return false
	}
	_, ok := cfg.ClientSessionCache.Get(cfg.ServerName)
	return ok
}

func (r *readyConn) close() { r.conn.Close() }

// warmKeep is how long a [streamDialer] keeps a connection dialed ahead
// that no stream has taken. It is below the hub's ReadHeaderTimeout
// (10 s by default), which closes a connection that sends no request.
const warmKeep = 3 * time.Second

// streamDialer dials the connections of a client's stream WebSockets, and
// dials one ahead while streams are being opened, so that a stream's
// WebSocket costs an upgrade request instead of a TCP connection, a TLS
// handshake and the upgrade in series (issue 6):
//
//   - Prepare starts dialing when the client learns that a stream's
//     WebSocket is coming: a service as its POST goes out, a device as a
//     stream request arrives.
//   - Dial takes the connection dialed ahead to the URL's address, waiting
//     for one still being dialed, and when a previous stream was opened
//     within the keep time, dials the next one ahead once the upgrade is
//     done.
//   - A connection nobody took is closed after the keep time, so that a
//     client that opens no streams holds no connection on the hub; Reset
//     closes it at once (a device's control session ended: the hub may
//     have restarted).
//
// A connection dialed ahead carries exactly one WebSocket, its upgrade
// request with its own token, as a fresh one would. When the upgrade
// fails on it without an answer from the hub (it closed the connection
// meanwhile), Dial dials a fresh one and tries once more. Through an HTTP
// proxy nothing is dialed ahead. It is safe for concurrent use.
type streamDialer struct {
	base *http.Transport
	keep time.Duration

	ctx    context.Context // ends at close: cancels a dial ahead
	cancel context.CancelFunc
	wg     sync.WaitGroup // dials ahead

	mu       sync.Mutex
	ready    *readyConn    // dialed ahead, not taken
	dialing  chan struct{} // closed when the dial ahead in progress ends; nil when none
	expiry   *time.Timer   // closes ready after keep
	lastOpen time.Time     // when Dial last opened a stream
	gen      int           // counts Resets: a dial begun before one is not kept
	closed   bool
}

func newStreamDialer(base *http.Transport) *streamDialer {
	d := &streamDialer{base: base, keep: warmKeep}
	if k := testWarmKeep.Load(); k != nil {
		d.keep = *k
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	return d
}

// testWarmKeep, when set, replaces warmKeep (see export_test.go).
var testWarmKeep atomic.Pointer[time.Duration]

// Prepare starts dialing rawURL's address ahead, unless a connection there
// is ready or being dialed, or it would go through a proxy.
func (d *streamDialer) Prepare(rawURL string) {
	addr, ok := d.directAddr(rawURL)
	if !ok {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.prepareLocked(addr)
}

func (d *streamDialer) prepareLocked(addr string) {
	if d.closed || d.dialing != nil || (d.ready != nil && d.ready.addr == addr) {
		return
	}
	d.dropLocked()
	done := make(chan struct{})
	d.dialing = done
	gen := d.gen
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		ctx, cancel := context.WithTimeout(d.ctx, 30*time.Second)
		rc, err := dialTLS(ctx, d.base, "tcp", addr)
		cancel()
		d.mu.Lock()
		defer d.mu.Unlock()
		d.dialing = nil
		close(done)
		if err != nil {
			return // the stream's Dial dials itself
		}
		if d.closed || d.gen != gen {
			rc.close()
			return
		}
		d.dropLocked()
		d.ready = rc
		d.expiry = time.AfterFunc(d.keep, func() { d.expire(rc) })
	}()
}

// expire closes rc when it is still the connection dialed ahead.
func (d *streamDialer) expire(rc *readyConn) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ready == rc {
		d.dropLocked()
	}
}

// dropLocked closes the connection dialed ahead, if any.
func (d *streamDialer) dropLocked() {
	if d.ready == nil {
		return
	}
	d.expiry.Stop()
	d.ready.close()
	d.ready, d.expiry = nil, nil
}

// take returns the connection dialed ahead to addr, after waiting for a
// dial in progress; nil when there is none. It marks a stream opened, and
// reports whether the previous one was opened within the keep time: then
// the next connection is worth dialing ahead.
func (d *streamDialer) take(ctx context.Context, addr string) (rc *readyConn, again bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if dialing := d.dialing; dialing != nil {
		// Once only: under many streams at once another one may take
		// the connection, and a fresh dial is then no slower than the
		// next one ahead.
		d.mu.Unlock()
		select {
		case <-dialing:
		case <-ctx.Done():
		}
		d.mu.Lock()
		if ctx.Err() != nil {
			return nil, false
		}
	}
	if d.ready != nil && d.ready.addr == addr {
		d.expiry.Stop()
		rc, d.ready, d.expiry = d.ready, nil, nil
	}
	now := time.Now()
	again = !d.lastOpen.IsZero() && now.Sub(d.lastOpen) < d.keep
	d.lastOpen = now
	return rc, again
}

// Reset closes the connection dialed ahead, and the one being dialed once
// it is up: they may lead to a hub that is gone.
func (d *streamDialer) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.gen++
	d.dropLocked()
}

// Close closes the connection dialed ahead, stops a dial in progress and
// waits for it. Dial still works after Close, without dialing ahead.
func (d *streamDialer) Close() {
	d.mu.Lock()
	d.closed = true
	d.dropLocked()
	d.mu.Unlock()
	d.cancel()
	d.wg.Wait()
}

// warm reports whether a connection dialed ahead is ready (for tests).
func (d *streamDialer) warm() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ready != nil
}

// directAddr returns the host:port of a wss URL that is dialed without a
// proxy.
func (d *streamDialer) directAddr(rawURL string) (string, bool) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "wss" || u.Host == "" {
		return "", false
	}
	if d.base.Proxy != nil {
		// net/http asks with the scheme it dials: https for wss.
		pu, err := d.base.Proxy(&http.Request{URL: &url.URL{Scheme: "https", Host: u.Host}})
		if err != nil || pu != nil {
			return "", false
		}
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "443")
	}
	return addr, true
}

// Dial connects one side of a stream to the streaming endpoint at rawURL
// with token, on the connection dialed ahead when there is one.
func (d *streamDialer) Dial(ctx context.Context, rawURL, token string) (*Conn, error) {
	addr, direct := d.directAddr(rawURL)
	var rc *readyConn
	var again bool
	if direct {
		rc, again = d.take(ctx, addr)
	}
	c, err := d.dialOn(ctx, rc, rawURL, token)
	if again {
		// Only now: the handshake would take the CPU from this stream's
		// upgrade (issue 6: on two cores a setup is CPU-bound).
		d.mu.Lock()
		d.prepareLocked(addr)
		d.mu.Unlock()
	}
	return c, err
}

// dialOn dials the WebSocket on rc, or on a fresh connection when rc is
// nil or the hub closed it before answering.
func (d *streamDialer) dialOn(ctx context.Context, rc *readyConn, rawURL, token string) (*Conn, error) {
	if rc != nil {
		c, resp, err := dialStreamOn(ctx, d.base, rc, rawURL, token)
		if err == nil || resp != nil || ctx.Err() != nil {
			return c, err
		}
		// The hub closed the connection dialed ahead before it answered
		// (its keep time on the hub ran out, or the hub restarted): the
		// token was not used.
	}
	c, _, err := dialStreamOn(ctx, d.base, nil, rawURL, token)
	return c, err
}
