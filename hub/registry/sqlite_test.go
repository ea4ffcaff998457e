package registry_test

import (
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"go.uber.org/goleak"

	"github.com/dsproxy/dsproxy/hub/registry"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// freshSQLite is a new registry.db in the test's temporary directory.
func freshSQLite(t testing.TB) opener {
	path := filepath.Join(t.TempDir(), "registry.db")
	return func() (registry.Store, error) { return registry.OpenSQLite(path) }
}

func TestSQLite(t *testing.T) {
	testStore(t, freshSQLite)
}

func TestRights(t *testing.T) {
	all := registry.RegistryRead | registry.RegistryWrite | registry.ServiceConnect | registry.DeviceConnect
	for _, tc := range []struct {
		r    registry.Rights
		want string
	}{
		{0, ""},
		{registry.RegistryRead, "RegistryRead"},
		{registry.RegistryRead | registry.ServiceConnect, "RegistryRead, ServiceConnect"},
		{all, "RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect"},
		{registry.DeviceConnect | 0x40, "DeviceConnect, 0x40"},
	} {
		if got := tc.r.String(); got != tc.want {
			t.Errorf("Rights(%#x).String() = %q, want %q", uint8(tc.r), got, tc.want)
		}
	}
	if !all.Has(registry.RegistryWrite | registry.ServiceConnect) {
		t.Errorf("all rights lack RegistryWrite|ServiceConnect")
	}
	if registry.ServiceConnect.Has(registry.ServiceConnect | registry.RegistryRead) {
		t.Errorf("ServiceConnect has ServiceConnect|RegistryRead")
	}
	if !registry.Rights(0).Has(0) {
		t.Errorf("no rights lack no rights")
	}
}

func TestSQLiteFileMode(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no Unix file modes")
	}
	// A permissive umask must not leak into the files: they hold keys.
	old := syscall.Umask(0)
	t.Cleanup(func() { syscall.Umask(old) })

	path := filepath.Join(t.TempDir(), "registry.db")
	s, err := registry.OpenSQLite(path)
	if err != nil {
		t.Fatalf("OpenSQLite: %v", err)
	}
	defer s.Close()
	if _, err := registry.EnsureDefaultPolicies(t.Context(), s); err != nil {
		t.Fatalf("EnsureDefaultPolicies: %v", err)
	}
	if _, err := s.GetPolicy(t.Context(), "iothubowner"); err != nil {
		t.Fatalf("GetPolicy: %v", err)
	}
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatalf("stat: %v", err)
		}
		if m := fi.Mode().Perm(); m != 0o600 {
			t.Errorf("%s has mode %v, want 0600", filepath.Base(p), m)
		}
	}
}

func TestSQLiteTightensExistingFile(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no Unix file modes")
	}
	path := filepath.Join(t.TempDir(), "registry.db")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := registry.OpenSQLite(path)
	if err != nil {
		t.Fatalf("OpenSQLite: %v", err)
	}
	defer s.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if m := fi.Mode().Perm(); m != 0o600 {
		t.Errorf("mode %v, want 0600", m)
	}
}

// TestSQLiteSchemaVersion checks that starts after the first leave one
// schema_version row, at the current version.
func TestSQLiteSchemaVersion(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registry.db")
	for range 3 {
		s, err := registry.OpenSQLite(path)
		if err != nil {
			t.Fatalf("OpenSQLite: %v", err)
		}
		s.Close()
	}
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n, v int
	if err := db.QueryRow(`SELECT COUNT(*), MAX(version) FROM schema_version`).Scan(&n, &v); err != nil {
		t.Fatal(err)
	}
	if n != 1 || v != 2 {
		t.Errorf("schema_version has %d rows, version %d; want 1 row, version 2", n, v)
	}
}

func TestSQLiteNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registry.db")
	s, err := registry.OpenSQLite(path)
	if err != nil {
		t.Fatalf("OpenSQLite: %v", err)
	}
	s.Close()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE schema_version SET version = 99`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s, err = registry.OpenSQLite(path)
	if err == nil {
		s.Close()
		t.Fatalf("OpenSQLite of a newer schema succeeded")
	}
	if !strings.Contains(err.Error(), "99") {
		t.Errorf("error %q does not name the version", err)
	}
}

func TestSQLiteOddPath(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a dir?with#odd%chars")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "reg?.db")
	s, err := registry.OpenSQLite(path)
	if err != nil {
		t.Fatalf("OpenSQLite: %v", err)
	}
	defer s.Close()
	if _, err := s.CreateDevice(t.Context(), registry.Device{ID: "d"}); err != nil {
		t.Fatalf("CreateDevice: %v", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "reg?.db") {
			t.Errorf("unexpected file %q: the path was not taken literally", e.Name())
		}
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("database not at %q: %v", path, err)
	}
}

func TestSQLiteMissingDir(t *testing.T) {
	_, err := registry.OpenSQLite(filepath.Join(t.TempDir(), "missing", "registry.db"))
	if err == nil {
		t.Fatalf("OpenSQLite in a missing directory succeeded")
	}
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("error = %v, want one wrapping ErrNotExist", err)
	}
}
