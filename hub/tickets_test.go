package hub_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dsproxy/dsproxy/hub"
	"github.com/dsproxy/dsproxy/hub/certs"
	"github.com/dsproxy/dsproxy/internal/dsproxytest"
)

// runHubOn runs a hub on dataDir and 127.0.0.1:0 until the returned stop
// is called; it returns the hub's address and a client configuration that
// trusts it.
func runHubOn(t *testing.T, dataDir string) (addr string, client *tls.Config, stop func()) {
	t.Helper()
	cfg := hub.DefaultConfig()
	cfg.DataDir = dataDir
	cfg.HostNames = []string{"127.0.0.1"}
	cfg.Logger = dsproxytest.Logger(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := hub.New(cfg, ln)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	client, err = certs.ClientConfig(srv.CAPEM())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	return ln.Addr().String(), client, func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("hub stopped with: %v", err)
			}
		case <-time.After(dsproxytest.WaitTimeout):
			t.Fatalf("hub did not stop within %s", dsproxytest.WaitTimeout)
		}
	}
}

// healthzResumed asks addr for /healthz over TLS with cache (reading the
// answer takes in the hub's session ticket) and reports whether the TLS
// session was resumed.
func healthzResumed(t *testing.T, addr string, client *tls.Config, cache tls.ClientSessionCache) bool {
	t.Helper()
	cfg := client.Clone()
	cfg.ServerName = "127.0.0.1"
	cfg.ClientSessionCache = cache
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: dsproxytest.WaitTimeout}, Config: cfg}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := nc.(*tls.Conn)
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
	if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(c)
	if err != nil || !strings.HasPrefix(string(body), "HTTP/1.1 200") {
		t.Fatalf("healthz: %q, %v", body, err)
	}
	return c.ConnectionState().DidResume
}

// TestTicketKeysSurviveRestart: the hub keeps its TLS session-ticket keys
// in its data directory (0600), so a client's session resumes across a
// hub restart: after one, devices need no full handshake.
func TestTicketKeysSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	cache := tls.NewLRUClientSessionCache(4)

	addr, client, stop := runHubOn(t, dir)
	if healthzResumed(t, addr, client, cache) {
		t.Error("first connection resumed a session")
	}
	if !healthzResumed(t, addr, client, cache) {
		t.Error("second connection to the same hub did not resume")
	}
	stop()

	path := filepath.Join(dir, "tls", hub.TicketKeysFile)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", path, fi.Mode().Perm())
	}
	before, _ := os.ReadFile(path)

	addr, client, stop = runHubOn(t, dir)
	defer stop()
	if !healthzResumed(t, addr, client, cache) {
		t.Error("after a restart on the same data directory, the session did not resume")
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Errorf("restart changed the ticket keys before their rotation was due:\n%s\n%s", before, after)
	}
}
