package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/dsproxy/dsproxy/internal/dsproxytest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// run runs the dsproxy CLI in process with args and returns its stdout,
// stderr and error (already explained, as main prints it).
func run(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	err = newApp(&out, &errOut).RunContext(ctx, append([]string{"dsproxy"}, args...))
	if err != nil {
		err = explain(err)
	}
	return out.String(), errOut.String(), err
}

// writeCA stores the hub's CA certificate for --ca-file.
func writeCA(t *testing.T, h *dsproxytest.Hub) string {
	t.Helper()
	name := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(name, h.Server.CAPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	return name
}

func TestDevicesCommands(t *testing.T) {
	h := dsproxytest.NewHub(t)
	ca := writeCA(t, h)
	flags := []string{"--connection-string", h.OwnerConnectionString, "--ca-file", ca}
	cmd := func(sub string, rest ...string) []string {
		return append(append([]string{"devices", sub}, flags...), rest...)
	}

	out, _, err := run(t, cmd("add", "pi-42")...)
	if err != nil {
		t.Fatal(err)
	}
	cs := strings.TrimSpace(out)
	if strings.Count(out, "\n") != 1 || !strings.HasPrefix(cs, "HostName=") || !strings.Contains(cs, ";DeviceId=pi-42;SharedAccessKey=") {
		t.Fatalf("devices add printed %q, want the connection string alone", out)
	}
	// The printed connection string is a working credential.
	h.RunDevice(t, cs, nil, "ssh="+dsproxytest.Echo(t))

	out, _, err = run(t, cmd("list")...)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "DEVICE") || !strings.Contains(out, "pi-42") || !strings.Contains(out, "Connected") {
		t.Fatalf("devices list printed %q", out)
	}
	out, _, err = run(t, cmd("list", "--json")...)
	if err != nil {
		t.Fatal(err)
	}
	var list []map[string]string
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 1 || list[0]["deviceId"] != "pi-42" {
		t.Fatalf("devices list --json printed %q (%v)", out, err)
	}
	out, _, err = run(t, cmd("show", "pi-42")...)
	if err != nil || !strings.Contains(out, cs) {
		t.Fatalf("devices show printed %q (%v), want the connection string", out, err)
	}

	_, _, err = run(t, cmd("add", "pi-42")...)
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("adding twice: %v", err)
	}
	if _, _, err := run(t, cmd("delete", "pi-42")...); err != nil {
		t.Fatal(err)
	}
	_, _, err = run(t, cmd("show", "pi-42")...)
	if err == nil || !strings.Contains(err.Error(), "not registered") {
		t.Fatalf("show after delete: %v", err)
	}
}

// TestErrorsSayWhatToDo checks the one-line errors users see for common
// mistakes.
func TestErrorsSayWhatToDo(t *testing.T) {
	h := dsproxytest.NewHub(t)
	ca := writeCA(t, h)
	t.Chdir(t.TempDir()) // no ./dsproxy-data to fall back on

	tests := []struct {
		name string
		args []string
		want string
	}{
		{"flags after the ID", []string{"devices", "add", "x", "--ca-file", ca}, "flags go before the device ID"},
		{"no connection string", []string{"devices", "list"}, "pass --connection-string"},
		{"untrusted hub", []string{"devices", "list", "--connection-string", h.OwnerConnectionString}, "--ca-file"},
		{"bad connection string", []string{"devices", "list", "--connection-string", "HostName=x", "--ca-file", ca}, "connection string"},
		{"device connection string for the registry", []string{"devices", "list", "--connection-string", h.AddDevice(t, "d1"), "--ca-file", ca}, "policy connection string"},
		{"offline device", []string{"devices", "show", "--connection-string", h.OwnerConnectionString, "--ca-file", ca, "nope"}, `device "nope" is not registered`},
		{"bad log level", []string{"devices", "list", "--log-level", "loud"}, "--log-level"},
		{"bad target", []string{"device", "--connection-string", "x", "--target", "ssh=localhost"}, "[name=]host:port"},
		{"device without its own connection string", []string{"device", "--target", "localhost:22"}, "a device needs its own connection string"},
		{"nats without a shared registry", []string{"hub", "--data-dir", t.TempDir(), "--listen", "127.0.0.1:0", "--nats", "nats://127.0.0.1:1"}, "--nats needs --registry"},
		{"bad hub address", []string{"devices", "list", "--connection-string", h.OwnerConnectionString, "--ca-file", ca, "--hub", "a/b"}, `hub address "a/b"`},
		{"unreachable hub replicas", []string{"devices", "list", "--connection-string", h.OwnerConnectionString, "--ca-file", ca, "--hub", dsproxytest.ClosedPort(t) + "," + dsproxytest.ClosedPort(t)}, "connection refused"},
		{"bad mode", []string{"service", "--connection-string", h.OwnerConnectionString, "--ca-file", ca, "--device-id", "d1", "--listen", "127.0.0.1:0", "--mode", "fast"}, "--mode \"fast\": want session or per-stream"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := run(t, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got error %v, want one containing %q", err, tt.want)
			}
			if strings.Count(err.Error(), "\n") > 0 {
				t.Fatalf("error spans several lines: %q", err)
			}
		})
	}
}

func TestHelpHasExamples(t *testing.T) {
	for _, c := range newApp(nil, nil).Commands {
		if !strings.Contains(c.Description, "Example") {
			t.Errorf("dsproxy %s --help has no example", c.Name)
		}
	}
}

func TestSSHConfig(t *testing.T) {
	h := dsproxytest.NewHub(t)
	ca := writeCA(t, h)
	csFile := filepath.Join(t.TempDir(), "svc.cs")
	if err := os.WriteFile(csFile, []byte(h.OwnerConnectionString+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h.AddDevice(t, "pi-1")
	h.AddDevice(t, "pi*2") // a pattern on a Host line

	out, _, err := run(t, "ssh-config", "--connection-string-file", csFile, "--ca-file", ca, "--user", "pi")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Host pi-1\n",
		"service --stdio --connection-string-file " + csFile + " --ca-file " + ca + " --device-id pi-1\n",
		"User pi\n",
		`skipped device "pi*2"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("ssh-config output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "SharedAccessKey") {
		t.Fatalf("ssh-config printed a key:\n%s", out)
	}
	_, _, err = run(t, "ssh-config", "--connection-string", h.OwnerConnectionString, "--device-id", "pi-1")
	if err == nil || !strings.Contains(err.Error(), "--connection-string-file") {
		t.Fatalf("ssh-config with a key on the command line: %v", err)
	}
}

func TestServiceFlagErrors(t *testing.T) {
	for _, args := range [][]string{
		{"service", "--connection-string", "x", "--device-id", "d", "--forward", "2222"},
		{"service", "--connection-string", "x", "--device-id", "d", "--forward", "=ssh"},
	} {
		_, _, err := run(t, args...)
		if err == nil || !strings.Contains(err.Error(), "[HOST:]PORT=NAME") {
			t.Errorf("%v: got %v", args, err)
		}
	}
	_, _, err := run(t, "service", "--connection-string", "x", "--device-id", "d", "--listen", "nope")
	if err == nil || !strings.Contains(err.Error(), "connection string") && !strings.Contains(err.Error(), "listen") {
		t.Errorf("bad --listen: %v", err)
	}
}

func TestVersion(t *testing.T) {
	out, _, err := run(t, "--version")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "dsproxy version dev (commit ") || !strings.Contains(out, "go1.") {
		t.Fatalf("--version printed %q, want version, commit and Go version", out)
	}
}
