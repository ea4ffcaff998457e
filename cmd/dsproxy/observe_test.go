package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/dsproxy/dsproxy/internal/dsproxytest"
)

func TestHubShow(t *testing.T) {
	h := dsproxytest.NewHub(t)
	ca := writeCA(t, h)
	out, _, err := run(t, "hub", "show", "--connection-string", h.OwnerConnectionString, "--ca-file", ca)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		HostName           string   `json:"hostName"`
		StreamingEndpoints []string `json:"streamingEndpoints"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("hub show printed %q: %v", out, err)
	}
	addr := h.Server.Addr()
	if got.HostName != addr || len(got.StreamingEndpoints) != 1 || got.StreamingEndpoints[0] != "https://"+addr {
		t.Fatalf("hub show printed %q", out)
	}
	// The hub command itself still runs the server: a bad flag reaches it.
	if _, _, err := run(t, "hub", "--listen", "nope", "--data-dir", t.TempDir()); err == nil || !strings.Contains(err.Error(), "listen") {
		t.Fatalf("hub --listen nope: %v", err)
	}
}

func TestStreamsAndLogs(t *testing.T) {
	h := dsproxytest.NewHub(t)
	ca := writeCA(t, h)
	flags := []string{"--connection-string", h.OwnerConnectionString, "--ca-file", ca}
	h.StartDevice(t, "pi-1", "ssh="+dsproxytest.Echo(t))
	addr := h.StartService(t, "pi-1", "ssh")

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
	msg := strings.Repeat("x", 2048)
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, len(msg))); err != nil {
		t.Fatal(err)
	}

	var out string
	dsproxytest.Eventually(t, "streams to list the stream with its bytes", func() bool {
		out, _, err = run(t, append([]string{"streams"}, flags...)...)
		return err == nil && strings.Contains(out, "2.0 KiB")
	})
	for _, want := range []string{"DEVICE", "NAME", "STATE", "MODE", "AGE", "UP", "DOWN", "pi-1", "ssh", "relaying"} {
		if !strings.Contains(out, want) {
			t.Errorf("streams printed %q, lacking %q", out, want)
		}
	}
	out, _, err = run(t, append([]string{"streams", "--json"}, flags...)...)
	var ss []map[string]any
	if err != nil || json.Unmarshal([]byte(out), &ss) != nil || len(ss) != 1 || ss[0]["deviceId"] != "pi-1" || ss[0]["bytesUp"] != 2048.0 {
		t.Fatalf("streams --json printed %q (%v)", out, err)
	}

	c.Close()
	dsproxytest.Eventually(t, "the stream to end", func() bool {
		out, _, err = run(t, append([]string{"streams", "--json"}, flags...)...)
		return err == nil && strings.TrimSpace(out) == "[]"
	})
	// Another device's event, which --device leaves out.
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	if _, err := h.Service.OpenStream(ctx, "ghost", "ssh"); err == nil {
		t.Fatal("stream to an unregistered device opened")
	}

	var es []map[string]any
	dsproxytest.Eventually(t, "logs to show pi-1's event", func() bool {
		out, _, err = run(t, append([]string{"logs", "--device", "pi-1", "--json"}, flags...)...)
		return err == nil && json.Unmarshal([]byte(out), &es) == nil && len(es) > 0
	})
	if len(es) != 1 {
		t.Fatalf("logs --device pi-1 --json printed %q (%v)", out, err)
	}
	if e := es[0]; e["deviceId"] != "pi-1" || e["result"] != "ended" || e["bytesUp"] != 2048.0 || e["bytesDown"] != 2048.0 || e["name"] != "ssh" {
		t.Errorf("logs --json event %v", e)
	}

	// Events are written in the background: wait for the ghost's.
	var lines []string
	dsproxytest.Eventually(t, "logs to show both events", func() bool {
		out, _, err = run(t, append([]string{"logs", "--since", "1h"}, flags...)...)
		lines = strings.Split(strings.TrimSpace(out), "\n")
		return err == nil && len(lines) >= 3
	})
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "TIME") || !strings.Contains(lines[1], "ghost") || !strings.Contains(lines[2], "pi-1") {
		t.Fatalf("logs printed, want a header, ghost's event then pi-1's:\n%s", out)
	}
	if _, _, err := run(t, append([]string{"logs", "--limit", "0"}, flags...)...); err == nil || !strings.Contains(err.Error(), "--limit") {
		t.Errorf("logs --limit 0: %v", err)
	}
}

func TestHumanUnits(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 20 << 20: "20 MiB", 3 << 30: "3.0 GiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
	for d, want := range map[time.Duration]string{
		850 * time.Millisecond: "850ms", 42 * time.Second: "42s", 5*time.Minute + 3*time.Second: "5m3s",
		2*time.Hour + 10*time.Minute: "2h10m", 76 * time.Hour: "3d4h",
	} {
		if got := humanDuration(d); got != want {
			t.Errorf("humanDuration(%s) = %q, want %q", d, got, want)
		}
	}
}
