package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dsproxy/dsproxy/internal/dsproxytest"
)

// writeConfig stores a --config file and returns its name.
func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	name := filepath.Join(t.TempDir(), "dsproxy.yaml")
	if err := os.WriteFile(name, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return name
}

// TestEveryFlagHasEnvVar walks every command and checks each flag has
// exactly its DSPROXY_ variable, and each command that runs takes --config.
func TestEveryFlagHasEnvVar(t *testing.T) {
	var walk func(path string, cmds []*cli.Command)
	walk = func(path string, cmds []*cli.Command) {
		for _, c := range cmds {
			p := path + " " + c.Name
			walk(p, c.Subcommands)
			if c.Action == nil {
				continue
			}
			hasConfig := false
			for _, f := range c.Flags {
				name := f.Names()[0]
				hasConfig = hasConfig || name == configFlagName
				ef, ok := f.(interface{ GetEnvVars() []string })
				if !ok {
					t.Errorf("%s --%s: flag type %T has no environment variables", p, name, f)
					continue
				}
				if want := []string{envVar(name)}; !slices.Equal(ef.GetEnvVars(), want) {
					t.Errorf("%s --%s: EnvVars %v, want %v", p, name, ef.GetEnvVars(), want)
				}
				if rf, ok := f.(cli.RequiredFlag); ok && rf.IsRequired() {
					t.Errorf("%s --%s: still Required, so it cannot come from --config", p, name)
				}
			}
			if !hasConfig {
				t.Errorf("%s has no --config", p)
			}
		}
	}
	walk("dsproxy", newApp(nil, nil).Commands)
}

// TestConfigPrecedence checks flag > environment > file > default on one
// flag (--json of devices list) and one string flag (--log-level).
func TestConfigPrecedence(t *testing.T) {
	h := dsproxytest.NewHub(t)
	ca := writeCA(t, h)
	file := writeConfig(t, "connection-string: \""+h.OwnerConnectionString+"\"\nca-file: "+ca+"\njson: true\n")
	isJSON := func(out string) bool { return strings.HasPrefix(strings.TrimSpace(out), "[") }

	list := func(t *testing.T, args ...string) string {
		t.Helper()
		out, _, err := run(t, append([]string{"devices", "list"}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	t.Run("default", func(t *testing.T) {
		if out := list(t, "--connection-string", h.OwnerConnectionString, "--ca-file", ca); isJSON(out) {
			t.Errorf("without a file printed JSON: %q", out)
		}
	})
	t.Run("file beats default", func(t *testing.T) {
		if out := list(t, "--config", file); !isJSON(out) {
			t.Errorf("json: true in the file printed %q", out)
		}
	})
	t.Run("DSPROXY_CONFIG", func(t *testing.T) {
		t.Setenv("DSPROXY_CONFIG", file)
		if out := list(t); !isJSON(out) {
			t.Errorf("DSPROXY_CONFIG file printed %q", out)
		}
	})
	t.Run("env beats file", func(t *testing.T) {
		t.Setenv("DSPROXY_JSON", "false")
		if out := list(t, "--config", file); isJSON(out) {
			t.Errorf("DSPROXY_JSON=false printed JSON: %q", out)
		}
	})
	t.Run("flag beats env", func(t *testing.T) {
		t.Setenv("DSPROXY_JSON", "false")
		if out := list(t, "--config", file, "--json"); !isJSON(out) {
			t.Errorf("--json printed %q", out)
		}
	})

	loud := writeConfig(t, "connection-string: \""+h.OwnerConnectionString+"\"\nca-file: "+ca+"\nlog-level: loud\n")
	t.Run("string from file", func(t *testing.T) {
		if _, _, err := run(t, "devices", "list", "--config", loud); err == nil || !strings.Contains(err.Error(), `--log-level "loud"`) {
			t.Errorf("log-level: loud in the file: %v", err)
		}
	})
	t.Run("string env beats file", func(t *testing.T) {
		t.Setenv("DSPROXY_LOG_LEVEL", "warn")
		if _, _, err := run(t, "devices", "list", "--config", loud); err != nil {
			t.Errorf("DSPROXY_LOG_LEVEL=warn over the file: %v", err)
		}
	})
	t.Run("string flag beats env", func(t *testing.T) {
		t.Setenv("DSPROXY_LOG_LEVEL", "loud")
		if _, _, err := run(t, "devices", "list", "--config", loud, "--log-level", "warn"); err != nil {
			t.Errorf("--log-level warn over the environment: %v", err)
		}
	})
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		yaml string
		want []string
	}{
		{"unknown key", []string{"devices", "list"}, "lissen: x\n", []string{`unknown key "lissen"`, "dsproxy.yaml", "valid keys:", "connection-string"}},
		{"key of another command", []string{"devices", "list"}, "target: [ssh=localhost:22]\n", []string{`unknown key "target"`}},
		{"nearest key", []string{"device"}, "targets: [ssh=localhost:22]\n", []string{"did you mean target?"}},
		{"list for a string", []string{"service"}, "device-id: [a, b]\n", []string{"device-id", "not a list"}},
		{"not a duration", []string{"device"}, "keepalive: soon\n", []string{"keepalive", "duration"}},
		{"not a bool", []string{"devices", "list"}, "json: maybe\n", []string{"json", "true or false"}},
		{"not an int", []string{"hub"}, "max-streams: many\n", []string{"max-streams", "integer"}},
		{"required flag still required", []string{"device", "--connection-string", "x"}, "keepalive: 1s\n", []string{`required flag "target" not set`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append(tt.args, "--config", writeConfig(t, tt.yaml))
			_, _, err := run(t, args...)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
	_, _, err := run(t, "devices", "list", "--config", filepath.Join(t.TempDir(), "missing.yaml"))
	if err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("missing file: %v", err)
	}
}

// TestDeviceFromConfigFile runs a device agent configured only by a file
// (connection string file, CA, targets) and carries a stream through it.
func TestDeviceFromConfigFile(t *testing.T) {
	h := dsproxytest.NewHub(t)
	ca := writeCA(t, h)
	csFile := filepath.Join(t.TempDir(), "device.cs")
	if err := os.WriteFile(csFile, []byte(h.AddDevice(t, "pi-cfg")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := writeConfig(t, `# dsproxy device --config device.yaml
connection-string-file: `+csFile+`
ca-file: `+ca+`
target:
  - echo=`+dsproxytest.Echo(t)+`
keepalive: 5s
log-level: debug
`)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		var out, errOut bytes.Buffer
		done <- newApp(&out, &errOut).RunContext(ctx, []string{"dsproxy", "device", "--config", file})
	}()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("device: %v", err)
			}
		case <-time.After(dsproxytest.WaitTimeout):
			t.Errorf("device did not stop within %s", dsproxytest.WaitTimeout)
		}
	}()

	dsproxytest.Eventually(t, "device connected", func() bool {
		select {
		case err := <-done:
			t.Fatalf("device stopped: %v", err)
		default:
		}
		d, err := h.Service.GetDevice(ctx, "pi-cfg")
		return err == nil && d.ConnectionState == "Connected"
	})

	addr := h.StartService(t, "pi-cfg", "echo")
	c, err := net.DialTimeout("tcp", addr, dsproxytest.WaitTimeout)
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
		t.Fatalf("echo through the file-configured device: %q, %v", buf, err)
	}
}
