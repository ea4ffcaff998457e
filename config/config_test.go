package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var testFlags = map[string]Kind{
	"listen":      String,
	"hostname":    List,
	"target":      List,
	"keepalive":   Duration,
	"log-level":   String,
	"json":        Bool,
	"max-streams": Int,
	"stream-rate": Float,
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     Values
	}{
		{"empty", "", Values{}},
		{"comments only", "# nothing\n", Values{}},
		{"null document", "~\n", Values{}},
		{"all kinds", `
listen: ":8443"
hostname: [hub.example.com, hub2]
target:
  - ssh=localhost:22
keepalive: 15s
log-level: debug
json: true
max-streams: 0x10
stream-rate: 2.5
`, Values{
			"listen":      {":8443"},
			"hostname":    {"hub.example.com", "hub2"},
			"target":      {"ssh=localhost:22"},
			"keepalive":   {"15s"},
			"log-level":   {"debug"},
			"json":        {"true"},
			"max-streams": {"16"},
			"stream-rate": {"2.5"},
		}},
		{"number as string", "listen: 2222", Values{"listen": {"2222"}}},
		{"one scalar for a list", "target: ssh=localhost:22", Values{"target": {"ssh=localhost:22"}}},
		{"integer for a float", "stream-rate: 3", Values{"stream-rate": {"3"}}},
		{"zero duration", "keepalive: 0", Values{"keepalive": {"0"}}},
		{"alias", "listen: &a x\nlog-level: *a", Values{"listen": {"x"}, "log-level": {"x"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse("test.yaml", []byte(tc.in), testFlags)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []string // substrings of the error
	}{
		{"unknown key", "lissen: :8443", []string{"test.yaml", `unknown key "lissen"`, "did you mean listen?", "valid keys: hostname, json, keepalive"}},
		{"unknown key far from all", "zzzzzzzzzz: 1", []string{`unknown key "zzzzzzzzzz"`, "valid keys:"}},
		{"list for a string", "listen: [a, b]", []string{"line 1", "listen", "want a string, not a list"}},
		{"mapping for a string", "listen: {a: b}", []string{"listen", "not a mapping"}},
		{"bad duration", "keepalive: soon", []string{"keepalive", `"soon"`, "duration"}},
		{"duration without unit", "keepalive: 15", []string{"keepalive", "duration"}},
		{"bool as string", `json: "yes"`, []string{"json", "true or false"}},
		{"bad int", "max-streams: 1.5", []string{"max-streams", "integer"}},
		{"bad float", "stream-rate: fast", []string{"stream-rate", "number"}},
		{"null value", "listen:", []string{"listen", "no value"}},
		{"list of lists", "target: [[a]]", []string{"target", "list element"}},
		{"duplicate key", "listen: a\nlisten: b", []string{"line 2", "listen given twice"}},
		{"not a mapping", "- a\n- b", []string{"want a mapping"}},
		{"two documents", "listen: a\n---\nlisten: b", []string{"one YAML document"}},
		{"syntax", "listen: [a", []string{"test.yaml"}},
		{"config is not a key", "config: other.yaml", []string{`unknown key "config"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("test.yaml", []byte(tc.in), testFlags)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
	_, err := Parse("x.yaml", []byte("nope: 1"), testFlags)
	if !errors.Is(err, ErrUnknownKey) {
		t.Errorf("unknown key error %v is not ErrUnknownKey", err)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(name, []byte("listen: \":1\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := Load(name, testFlags)
	if err != nil || !reflect.DeepEqual(got, Values{"listen": {":1"}}) {
		t.Fatalf("Load = %v, %v", got, err)
	}
	if _, err := Load(filepath.Join(dir, "missing.yaml"), testFlags); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v, want ErrNotExist", err)
	}
	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, make([]byte, MaxFileSize+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(big, testFlags); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("big file: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"", "listen: \":8443\"\nhostname: [a, b]\nkeepalive: 15s\njson: true\n",
		"target:\n  - ssh=localhost:22\n", "max-streams: 0x10", "stream-rate: .5",
		"a: &x [1]\nb: *x", "lissen: 1", "- 1", "{", "listen: !!binary aGk=",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := Parse("fuzz.yaml", data, testFlags)
		if err != nil {
			return
		}
		for k, vals := range v {
			kind, ok := testFlags[k]
			if !ok {
				t.Fatalf("accepted unknown key %q", k)
			}
			if kind != List && len(vals) != 1 {
				t.Fatalf("%s: %d values for a %v flag", k, len(vals), kind)
			}
		}
	})
}
