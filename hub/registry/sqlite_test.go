package registry_test

import (
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"

	"go.uber.org/goleak"

	"github.com/dsproxy/dsproxy/hub/registry"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func openSQLite(t *testing.T) registry.Store {
	t.Helper()
	s, err := registry.OpenSQLite(filepath.Join(t.TempDir(), "registry.db"))
	if err != nil {
		t.Fatalf("OpenSQLite: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func TestSQLite(t *testing.T) {
	testStore(t, openSQLite)
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

func TestSQLiteReopen(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "registry.db")
	s, err := registry.OpenSQLite(path)
	if err != nil {
		t.Fatalf("OpenSQLite: %v", err)
	}
	created, err := registry.EnsureDefaultPolicies(ctx, s)
	if err != nil || !created {
		t.Fatalf("EnsureDefaultPolicies = %v, %v; want true", created, err)
	}
	before, err := s.ListPolicies(ctx)
	if err != nil {
		t.Fatalf("ListPolicies: %v", err)
	}
	dev, err := s.CreateDevice(ctx, registry.Device{ID: "d", PrimaryKey: "aGVsbG8="})
	if err != nil {
		t.Fatalf("CreateDevice: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.GetDevice(ctx, "d"); err == nil {
		t.Errorf("GetDevice on a closed store succeeded")
	}

	for range 2 { // the schema step is idempotent, whatever the number of starts
		s, err = registry.OpenSQLite(path)
		if err != nil {
			t.Fatalf("OpenSQLite again: %v", err)
		}
		created, err = registry.EnsureDefaultPolicies(ctx, s)
		if err != nil || created {
			t.Fatalf("EnsureDefaultPolicies after reopen = %v, %v; want false", created, err)
		}
		after, err := s.ListPolicies(ctx)
		if err != nil {
			t.Fatalf("ListPolicies: %v", err)
		}
		if len(after) != len(before) {
			t.Fatalf("reopened store has %d policies, want %d", len(after), len(before))
		}
		for i := range after {
			if after[i] != before[i] {
				t.Errorf("policy %q changed across reopen", after[i].Name)
			}
		}
		got, err := s.GetDevice(ctx, "d")
		if err != nil {
			t.Fatalf("GetDevice after reopen: %v", err)
		}
		if got.ETag != dev.ETag || got.Generation != dev.Generation || !got.Created.Equal(dev.Created) {
			t.Errorf("device after reopen = %+v, want %+v", got, dev)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}

	// One schema_version row, at version 1.
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n, v int
	if err := db.QueryRow(`SELECT COUNT(*), MAX(version) FROM schema_version`).Scan(&n, &v); err != nil {
		t.Fatal(err)
	}
	if n != 1 || v != 1 {
		t.Errorf("schema_version has %d rows, version %d; want 1 row, version 1", n, v)
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

// TestSQLiteTwoStores is two hub processes on one file: the busy timeout
// makes their writers wait for each other instead of failing.
func TestSQLiteTwoStores(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registry.db")
	var stores [2]registry.Store
	for i := range stores {
		s, err := registry.OpenSQLite(path)
		if err != nil {
			t.Fatalf("OpenSQLite: %v", err)
		}
		defer s.Close()
		stores[i] = s
	}
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := range 200 {
		wg.Go(func() {
			s := stores[i%2]
			err := s.AddStreamEvent(t.Context(), registry.StreamEvent{StreamID: "x", DeviceID: "d"})
			if err == nil {
				_, err = s.StreamEvents(t.Context(), registry.EventFilter{Limit: 1})
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent use of two stores: %v", err)
		}
	}
	es, err := stores[0].StreamEvents(t.Context(), registry.EventFilter{})
	if err != nil || len(es) != 200 {
		t.Fatalf("StreamEvents = %d events, %v; want 200", len(es), err)
	}
}
