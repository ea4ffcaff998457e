package hubclient

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// tlsServer starts a TLS test server that logs nothing, configured by
// configure (when not nil) before it starts, and returns it with its
// address and a transport whose TLS configuration trusts it and caches
// sessions. t.Cleanup closes the server.
func tlsServer(t *testing.T, configure func(*tls.Config)) (*httptest.Server, string, *http.Transport) {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.TLS = &tls.Config{}
	if configure != nil {
		configure(srv.TLS)
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	cfg := srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(0)
	base := &http.Transport{TLSClientConfig: cfg, TLSHandshakeTimeout: 10 * time.Second}
	return srv, strings.TrimPrefix(srv.URL, "https://"), base
}

// dialState dials addr as a stream connection, sends one request and
// reads its answer (so that the client takes the session ticket the
// server sent after the handshake), and returns the connection's TLS
// state.
func dialState(t *testing.T, base *http.Transport, addr, what string) tls.ConnectionState {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rc, err := dialTLS(ctx, base, "tcp", addr)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	defer rc.close()
	if _, err := rc.conn.Write([]byte("GET / HTTP/1.1\r\nHost: hub\r\n\r\n")); err != nil {
		t.Fatalf("%s: write: %v", what, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(rc.conn), nil)
	if err != nil {
		t.Fatalf("%s: read: %v", what, err)
	}
	resp.Body.Close()
	return rc.layers.plain.Conn.(*tls.Conn).ConnectionState()
}

// TestStreamDialKeyExchange: a stream connection's first handshake with
// a hub uses Go's default, post-quantum key exchange; one that resumes
// its session offers P-256 (resumeCurves); and one whose session the
// server no longer takes (new ticket keys, as after a restart that lost
// them) is dialed again with the default key exchange instead of
// resting on P-256 alone.
func TestStreamDialKeyExchange(t *testing.T) {
	srv, addr, base := tlsServer(t, nil)
	check := func(what string, resumed bool, curve tls.CurveID) {
		t.Helper()
		if cs := dialState(t, base, addr, what); cs.DidResume != resumed || cs.CurveID != curve {
			t.Fatalf("%s: resumed %v with %v, want resumed %v with %v", what, cs.DidResume, cs.CurveID, resumed, curve)
		}
	}
	check("first dial", false, tls.X25519MLKEM768)
	check("second dial", true, tls.CurveP256)
	check("third dial", true, tls.CurveP256)

	// The server forgets its ticket keys: the cached session no longer
	// resumes.
	srv.TLS.SetSessionTicketKeys([][32]byte{{1, 2, 3}})
	check("dial after new ticket keys", false, tls.X25519MLKEM768)
	check("dial after that", true, tls.CurveP256)
}

// TestStreamDialNoP256: a server that takes no P-256 refuses a resuming
// handshake with an alert; the dial goes on with the default key
// exchange.
func TestStreamDialNoP256(t *testing.T) {
	_, addr, base := tlsServer(t, func(c *tls.Config) {
		c.CurvePreferences = []tls.CurveID{tls.X25519MLKEM768, tls.X25519}
	})
	for _, what := range []string{"first dial", "second dial", "third dial"} {
		if cs := dialState(t, base, addr, what); cs.CurveID != tls.X25519MLKEM768 {
			t.Fatalf("%s: key exchange %v, want X25519MLKEM768", what, cs.CurveID)
		}
	}
}

// TestStreamDialOwnCurves: a configuration that names its key exchanges
// keeps them on resumption.
func TestStreamDialOwnCurves(t *testing.T) {
	_, addr, base := tlsServer(t, nil)
	base.TLSClientConfig.CurvePreferences = []tls.CurveID{tls.X25519}
	for _, what := range []string{"first dial", "second dial"} {
		if cs := dialState(t, base, addr, what); cs.CurveID != tls.X25519 {
			t.Fatalf("%s: key exchange %v, want X25519", what, cs.CurveID)
		}
	}
}

// TestStreamDialTimeoutOnce: a resuming handshake that runs into the
// handshake timeout is not dialed again, which would double the wait.
func TestStreamDialTimeoutOnce(t *testing.T) {
	_, addr, base := tlsServer(t, nil)
	dialState(t, base, addr, "first dial") // caches a session for 127.0.0.1

	// A server under the same name that never answers.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 2)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		close(accepted)
		for c := range accepted {
			c.Close()
		}
	})
	base.TLSHandshakeTimeout = 100 * time.Millisecond
	if _, err := dialTLS(context.Background(), base, "tcp", ln.Addr().String()); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial a silent server: %v, want %v", err, context.DeadlineExceeded)
	}
	if n := len(accepted); n != 1 {
		t.Errorf("%d connections to the silent server, want 1", n)
	}
}
