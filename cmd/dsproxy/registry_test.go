package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dsproxy/dsproxy/hub"
	"github.com/dsproxy/dsproxy/hub/certs"
	"github.com/dsproxy/dsproxy/internal/dsproxytest"
	"github.com/dsproxy/dsproxy/internal/pgtest"
)

// syncBuffer is a bytes.Buffer that the hub writes while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// runningHub is `dsproxy hub` run in process until stop.
type runningHub struct {
	*dsproxytest.Hub
	stdout *syncBuffer
	cancel context.CancelFunc
	done   chan error
}

// startHubCommand runs `dsproxy hub` with args on 127.0.0.1:0 in dataDir
// and waits until it serves: until it has written its owner connection
// string, which names its port.
func startHubCommand(t *testing.T, dataDir string, args ...string) *runningHub {
	t.Helper()
	csFile := filepath.Join(dataDir, hub.OwnerConnectionStringFile)
	os.Remove(csFile) // a previous run's names another port
	ctx, cancel := context.WithCancel(context.Background())
	h := &runningHub{stdout: &syncBuffer{}, cancel: cancel, done: make(chan error, 1)}
	go func() {
		h.done <- newApp(h.stdout, io.Discard).RunContext(ctx, append([]string{"dsproxy", "hub",
			"--listen", "127.0.0.1:0", "--hostname", "127.0.0.1", "--data-dir", dataDir}, args...))
	}()
	t.Cleanup(func() { h.stop(t) })
	var cs []byte
	dsproxytest.Eventually(t, "the hub's owner connection string", func() bool {
		select {
		case err := <-h.done:
			t.Fatalf("hub stopped: %v", err)
		default:
		}
		var err error
		cs, err = os.ReadFile(csFile)
		return err == nil
	})
	pem, err := os.ReadFile(filepath.Join(dataDir, "tls", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	h.Hub = &dsproxytest.Hub{DataDir: dataDir, OwnerConnectionString: strings.TrimSpace(string(cs))}
	if h.ClientTLS, err = certs.ClientConfig(pem); err != nil {
		t.Fatal(err)
	}
	h.Service = h.ServiceClient(t, h.OwnerConnectionString)
	return h
}

// serving waits until the hub answers a request.
func serving(t *testing.T, h *runningHub) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	dsproxytest.Eventually(t, "the hub to serve", func() bool {
		_, err := h.Service.Hub(ctx)
		return err == nil
	})
}

// stop ends the hub and waits for it. It is idempotent.
func (h *runningHub) stop(t *testing.T) {
	t.Helper()
	h.cancel()
	select {
	case err, ok := <-h.done:
		if ok && err != nil {
			t.Errorf("hub stopped with: %v", err)
		}
		if ok {
			close(h.done)
		}
	case <-time.After(dsproxytest.WaitTimeout):
		t.Errorf("hub did not stop within %s", dsproxytest.WaitTimeout)
	}
}

// echoThrough checks that a stream to deviceID's "echo" target carries bytes
// both ways.
func echoThrough(t *testing.T, h *dsproxytest.Hub, deviceID string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", h.StartService(t, deviceID, "echo"), dsproxytest.WaitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("echo through the hub: %q, %v", buf, err)
	}
}

// TestHubRegistryPostgres runs `dsproxy hub --registry postgres://...`:
// a device added through the CLI connects and carries a stream, and a hub
// restarted in another data directory finds the device and the policies
// in the database.
func TestHubRegistryPostgres(t *testing.T) {
	pg := pgtest.URL(t)
	echo := dsproxytest.Echo(t)

	h1 := startHubCommand(t, t.TempDir(), "--registry", pg)
	serving(t, h1) // the first-start text is printed before the hub serves
	if !strings.Contains(h1.stdout.String(), "first start") {
		t.Errorf("the first hub on an empty database printed %q, want the first-start message", h1.stdout)
	}
	ca1 := filepath.Join(h1.DataDir, "tls", "ca.pem")
	out, _, err := run(t, "devices", "add", "--connection-string", h1.OwnerConnectionString, "--ca-file", ca1, "pi-pg")
	if err != nil {
		t.Fatal(err)
	}
	d1 := h1.RunDevice(t, strings.TrimSpace(out), nil, "echo="+echo)
	echoThrough(t, h1.Hub, "pi-pg")
	d1.Stop(t)
	h1.stop(t)

	// Another data directory (so another CA and no registry.db): what
	// the second hub knows, it read from PostgreSQL.
	// The URL from a --config file this time (DSPROXY_REGISTRY is
	// checked with every flag's variable).
	h2 := startHubCommand(t, t.TempDir(), "--config", writeConfig(t, "registry: \""+pg+"\"\n"))
	serving(t, h2)
	if strings.Contains(h2.stdout.String(), "first start") {
		t.Errorf("a hub on a database that has its policies printed %q", h2.stdout)
	}
	if _, err := os.Stat(filepath.Join(h2.DataDir, "registry.db")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a hub with --registry made registry.db (%v)", err)
	}
	if key := func(cs string) string { return cs[strings.Index(cs, "SharedAccessKey="):] }; key(h2.OwnerConnectionString) != key(h1.OwnerConnectionString) {
		t.Errorf("the owner key changed across hubs on one database")
	}
	ca2 := filepath.Join(h2.DataDir, "tls", "ca.pem")
	out, _, err = run(t, "devices", "show", "--connection-string", h2.OwnerConnectionString, "--ca-file", ca2, "pi-pg")
	if err != nil {
		t.Fatalf("devices show after the restart: %v", err)
	}
	var deviceCS string
	for _, line := range strings.Fields(out) {
		if strings.HasPrefix(line, "HostName=") {
			deviceCS = line
		}
	}
	if deviceCS == "" {
		t.Fatalf("devices show printed no connection string: %q", out)
	}
	h2.RunDevice(t, deviceCS, nil, "echo="+echo)
	echoThrough(t, h2.Hub, "pi-pg")
}

// TestHubRegistryErrors checks that a hub that cannot use its --registry
// says why in one line, soon, and does not fall back to SQLite.
func TestHubRegistryErrors(t *testing.T) {
	server, err := url.Parse(pgtest.Server(t))
	if err != nil {
		t.Fatal(err)
	}
	password, _ := server.User.Password()
	wrongPassword := *server
	wrongPassword.User = url.UserPassword(server.User.Username(), "not-"+password)
	noDatabase := *server
	noDatabase.Path = "/no_such_db"
	noServer := *server
	noServer.Host = dsproxytest.ClosedPort(t)

	for _, tc := range []struct {
		name, registry, want string
	}{
		{"wrong password", wrongPassword.String(), "password authentication failed"},
		{"no database", noDatabase.String(), `database "no_such_db" does not exist`},
		{"no server", noServer.String(), "connection refused"},
		{"not postgres", "mysql://db/x", "want postgres://"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			start := time.Now()
			_, _, err := run(t, "hub", "--listen", "127.0.0.1:0", "--data-dir", dir, "--registry", tc.registry)
			if err == nil {
				t.Fatal("hub started")
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.want) || !strings.Contains(msg, "--registry") {
				t.Errorf("error %q lacks %q or --registry", msg, tc.want)
			}
			if strings.Contains(msg, "\n") || strings.Contains(msg, "cannot reach the hub") {
				t.Errorf("error %q is not one line about the database", msg)
			}
			if password != "" && strings.Contains(msg, password) {
				t.Errorf("error %q holds the password", msg)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("the hub took %v to fail", d)
			}
			if _, err := os.Stat(filepath.Join(dir, "registry.db")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the hub fell back to SQLite (%v)", err)
			}
		})
	}
}
