package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestStatOf(t *testing.T) {
	if s := statOf([]float64{3, 1, 2}); s.Median != 2 || s.Min != 1 || s.Max != 3 || s.N != 3 {
		t.Errorf("statOf(3, 1, 2) = %+v", s)
	}
	if s := statOf([]float64{4, 1}); s.Median != 2.5 {
		t.Errorf("statOf(4, 1).Median = %v, want 2.5", s.Median)
	}
	if s := statOf(nil); s.N != 0 {
		t.Errorf("statOf(nil) = %+v", s)
	}
}

// TestTable builds the table from a results directory like the script's.
func TestTable(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("meta.txt", "commit=abc1234\nrounds=2\nconns=10\n")
	write("setup.jsonl", `{"row":"setup","path":"single/per-stream","round":1,"metrics":{"setup_p50_ms":2,"setup_p90_ms":4}}
{"row":"setup","path":"single/per-stream","round":2,"metrics":{"setup_p50_ms":2,"setup_p90_ms":4}}
{"row":"setup","path":"across/per-stream","round":1,"metrics":{"setup_p50_ms":3,"setup_p90_ms":6}}
{"row":"setup","path":"across/per-stream","round":2,"metrics":{"setup_p50_ms":3,"setup_p90_ms":6}}
`)
	write("memory-replica.json", `{"n":100,"hub":{"perDevice":{"rssBytes":102400,"heapLiveBytes":40960}}}`)
	write("memory-single.json", `{"n":100,"hub":{"perDevice":{"rssBytes":51200,"heapLiveBytes":20480}}}`)
	write("nats-before.txt", "1000 1000 1000\n")
	// The last sample has a node gone (empty RSS): skipped.
	write("nats-samples.txt", "50 1000 1000 1000\n100 103400 52200 1000\n100 102400 52200 1000\n100 1000 1000\n")
	write("nats-node.txt", "1\n")
	write("pg-counts.txt", "0 0 0 10 0 0 0\n100 100 100 510 100 100 100\n")

	res, err := load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := res.SetupSummary["across/per-stream"]["setup_p50_ms"].Median; got != 3 {
		t.Errorf("across p50 median %v, want 3", got)
	}
	if res.NATS == nil || res.NATS.Connected != 100 || res.NATS.PerDeviceBytes[0] != 1024 || res.NATS.PerDeviceBytes[1] != 512 || res.NATS.PerDeviceBytes[2] != 0 {
		t.Errorf("NATS %+v", res.NATS)
	}
	if res.PG == nil || res.PG.SessionsPerDev != 2 || res.PG.TransactsPerDev != 5 || res.PG.Claims != 100 {
		t.Errorf("PostgreSQL %+v", res.PG)
	}
	var out bytes.Buffer
	if err := writeTable(&out, res); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"| per-stream | across: service on A, device on B | 3.00 [3.00–3.00] | 6.00 [6.00–6.00] | 1.50 | 1.50 |",
		"replica ÷ single, RSS per device: 2.00",
		"n1 1.0 KiB (the replica's own node)",
		"2.00 writes to device_sessions",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
	if err := writeJSON(filepath.Join(dir, "out.json"), res); err != nil {
		t.Fatal(err)
	}
}

func TestMissingRowsAreLeftOut(t *testing.T) {
	res, err := load(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := writeTable(&out, res); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "### ") {
		t.Errorf("an empty results directory gave rows:\n%s", out.String())
	}
}
