// Package hubclient is the Go SDK for a dsproxy hub: [DeviceClient] keeps a
// device's control session and hands each stream request to a callback;
// [ServiceClient] opens streams to devices and calls the registry. Both
// authenticate with Azure IoT Hub connection strings and SAS tokens, and
// both speak only outbound HTTPS and WebSockets.
//
// A stream is a [*Conn]: a net.Conn with CloseWrite, as reliable and
// ordered as TCP.
package hubclient

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dsproxy/dsproxy/internal/sas"
	"github.com/dsproxy/dsproxy/internal/wire"
)

// defaultTokenTTL is how long the SAS tokens a client signs stay valid.
const defaultTokenTTL = time.Hour

// base is what both clients share: the hub address, the credential and an
// HTTP client.
type base struct {
	cs     sas.ConnectionString
	hosts  []string     // where to reach the hub: cs.HostName, or the configured replicas
	cur    atomic.Int32 // index in hosts of the one in use
	http   *http.Client
	ttl    time.Duration
	scheme string // "https"

	mu       sync.Mutex
	token    string
	tokenExp time.Time
}

func newBase(connStr string, hubs []string, tlsCfg *tls.Config, ttl time.Duration) (*base, error) {
	cs, err := sas.ParseConnectionString(connStr)
	if err != nil {
		return nil, fmt.Errorf("connection string: %w", err)
	}
	hosts, err := hubHosts(cs.HostName, hubs)
	if err != nil {
		return nil, err
	}
	if ttl <= 0 {
		ttl = defaultTokenTTL
	}
	if tlsCfg == nil {
		tlsCfg = &tls.Config{}
	}
	tlsCfg = tlsCfg.Clone()
	if tlsCfg.ClientSessionCache == nil {
		// Resume TLS sessions with the hub: each stream dials its own
		// connections, and a resumed handshake skips the certificate
		// signature and its verification (issue 6); a ticket survives a
		// handshake that broke on the way (resume.go).
		tlsCfg.ClientSessionCache = newSessionCache(tls.NewLRUClientSessionCache(0))
	}
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     tlsCfg,
		TLSHandshakeTimeout: 15 * time.Second,
		// As many as a busy service proxy has initiations in flight:
		// with fewer, every connection beyond them is closed after its
		// POST and the next burst dials and handshakes anew (issue 6:
		// with 16, every fourth setup of 64 parallel clients). Idle
		// ones close after IdleConnTimeout.
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		// WebSockets need HTTP/1.1.
		ForceAttemptHTTP2: false,
	}
	// net/http reports a refused CONNECT as the bare status text
	// ("Forbidden"); name the proxy so that the operator knows where to
	// look. Clone (streamTransport) keeps it.
	tr.OnProxyConnectResponse = proxyRefused
	return &base{
		cs:     cs,
		hosts:  hosts,
		http:   &http.Client{Transport: tr},
		ttl:    ttl,
		scheme: "https",
	}, nil
}

// authorization returns a SAS token for the credential, reusing one until
// it nears expiry.
func (b *base) authorization() (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	if b.token != "" && now.Add(b.ttl/4).Before(b.tokenExp) {
		return b.token, nil
	}
	res := b.cs.HostName
	if b.cs.IsDevice() {
		res = sas.DeviceResource(b.cs.HostName, b.cs.DeviceID)
	}
	exp := now.Add(b.ttl)
	tok, err := sas.NewToken(res, b.cs.SharedAccessKey, b.cs.SharedAccessKeyName, exp)
	if err != nil {
		return "", fmt.Errorf("sign SAS token: %w", err)
	}
	b.token, b.tokenExp = tok, exp
	return tok, nil
}

// hubHosts checks a list of hub replicas (host:port, or host for port
// 443) and returns it, or just hostName when the list is empty.
func hubHosts(hostName string, hubs []string) ([]string, error) {
	if len(hubs) == 0 {
		return []string{hostName}, nil
	}
	out := make([]string, 0, len(hubs))
	for _, h := range hubs {
		h = strings.TrimSpace(h)
		u, err := url.Parse("https://" + h)
		if h == "" || err != nil || u.Host != h || u.User != nil {
			return nil, fmt.Errorf("hub address %q: want host or host:port", h)
		}
		out = append(out, h)
	}
	return out, nil
}

// url builds the hub URL of a path whose segments are already escaped, on
// the hub in use.
func (b *base) url(scheme, escapedPath string) string {
	i, _ := b.host()
	return b.urlOn(i, scheme, escapedPath)
}

// urlOn is url on hosts[i].
func (b *base) urlOn(i int32, scheme, escapedPath string) string {
	return scheme + "://" + b.hosts[i] + escapedPath
}

// host returns the index and address of the hub in use.
func (b *base) host() (int32, string) {
	i := b.cur.Load()
	return i, b.hosts[i]
}

// failover moves on from hosts[i], which could not be reached, to the
// next hub in the list; it does nothing if another call moved already.
func (b *base) failover(i int32) {
	b.cur.CompareAndSwap(i, (i+1)%int32(len(b.hosts)))
}

// roundTrip sends req to the hub in use, and on to the next replica in
// the list while the one tried cannot be reached or is shutting down
// (503): either way it did nothing with the request. req's URL must be on
// the hub in use (url), and its body replayable (GetBody), as
// http.NewRequest makes it for the bodies the clients send.
func (b *base) roundTrip(req *http.Request) (*http.Response, error) {
	i, _ := b.host()
	for tries := 1; ; tries++ {
		r := req
		if tries > 1 {
			r = req.Clone(req.Context())
			r.URL.Host = b.hosts[i]
			r.Host = ""
			if req.GetBody != nil {
				body, err := req.GetBody()
				if err != nil {
					return nil, err
				}
				r.Body = body
			}
		}
		resp, err := b.http.Do(r)
		if tries == len(b.hosts) || req.Context().Err() != nil || !passedOver(resp, err) {
			return resp, err
		}
		if resp != nil {
			resp.Body.Close()
		}
		b.failover(i)
		i, _ = b.host()
	}
}

// passedOver reports whether a request to one hub replica, answered with
// resp or failed with err, did nothing there and may go to the next one:
// nothing answered at the address (refused, unreachable, timed out while
// connecting), or the replica is shutting down (503).
func passedOver(resp *http.Response, err error) bool {
	if err == nil || resp != nil {
		return resp != nil && resp.StatusCode == http.StatusServiceUnavailable
	}
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "dial"
}

// close releases idle connections.
func (b *base) close() { b.http.CloseIdleConnections() }

// hubError reads an error response into a *HubError.
func hubError(op string, resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	e := &HubError{Op: op, StatusCode: resp.StatusCode, RetryAfter: retryAfter(resp.Header.Get("Retry-After"), time.Now())}
	var we wire.Error
	if json.Unmarshal(body, &we) == nil {
		e.Code = we.ErrorCode
		e.Message = we.Detail
		if e.Message == "" {
			e.Message = we.Message
		}
	}
	if e.Message == "" {
		e.Message = strings.TrimSpace(string(body))
		if len(e.Message) > 200 {
			e.Message = e.Message[:200]
		}
	}
	return e
}

// retryAfter reads a Retry-After header: delay-seconds or an HTTP date
// (RFC 9110 10.2.3). It returns zero for an absent, malformed or past
// value.
func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 {
			return 0
		}
		return time.Duration(min(n, int64(math.MaxInt64/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// pathEscape escapes one path segment (url.PathEscape escapes "/" too), so
// any device ID Azure allows reaches the hub as one segment.
func pathEscape(s string) string { return url.PathEscape(s) }

func deviceConnString(host, id, key string) string {
	return sas.ConnectionString{HostName: host, DeviceID: id, SharedAccessKey: key}.String()
}

// proxyRefused fails a CONNECT through HTTPS_PROXY that did not succeed,
// naming the proxy and the hub address it was asked for.
func proxyRefused(_ context.Context, proxyURL *url.URL, req *http.Request, resp *http.Response) error {
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	return fmt.Errorf("proxy %s refused CONNECT %s: %s", proxyURL.Redacted(), req.Host, resp.Status)
}
