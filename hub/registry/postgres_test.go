package registry_test

import (
	"context"
	"errors"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dsproxy/dsproxy/hub/registry"
	"github.com/dsproxy/dsproxy/internal/pgtest"
)

// freshPostgres is a new, empty schema in the test database
// (pgtest.ServerEnv), dropped at cleanup.
func freshPostgres(t testing.TB) opener {
	u := pgtest.URL(t)
	return func() (registry.Store, error) { return registry.OpenPostgres(testCtx(t), u) }
}

func TestPostgres(t *testing.T) {
	testStore(t, freshPostgres)
}

// pgExec runs sql on the database at u.
func pgExec(t *testing.T, u, sql string) {
	t.Helper()
	conn, err := pgx.Connect(testCtx(t), u)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(testCtx(t), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// TestPostgresConcurrentMigrate is two hubs starting at once on one empty
// database, many times over: both succeed, and the schema is there once.
func TestPostgresConcurrentMigrate(t *testing.T) {
	for i := range 5 {
		u := pgtest.URL(t)
		var wg sync.WaitGroup
		errs := make([]error, 2)
		start := make(chan struct{}) // both open at once
		for j := range errs {
			wg.Go(func() {
				<-start
				s, err := registry.OpenPostgres(testCtx(t), u)
				if err == nil {
					_, err = s.ListDevices(testCtx(t))
					s.Close()
				}
				errs[j] = err
			})
		}
		close(start)
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatalf("round %d: %v", i, err)
			}
		}
		conn, err := pgx.Connect(testCtx(t), u)
		if err != nil {
			t.Fatal(err)
		}
		var n, v int
		err = conn.QueryRow(testCtx(t), `SELECT COUNT(*), MAX(version) FROM schema_version`).Scan(&n, &v)
		conn.Close(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if n != 1 || v != 2 {
			t.Fatalf("round %d: schema_version has %d rows, version %d; want 1 row, version 2", i, n, v)
		}
	}
}

func TestPostgresNewerSchema(t *testing.T) {
	u := pgtest.URL(t)
	s, err := registry.OpenPostgres(testCtx(t), u)
	if err != nil {
		t.Fatalf("OpenPostgres: %v", err)
	}
	s.Close()
	pgExec(t, u, `UPDATE schema_version SET version = 99`)
	s, err = registry.OpenPostgres(testCtx(t), u)
	if err == nil {
		s.Close()
		t.Fatalf("OpenPostgres of a newer schema succeeded")
	}
	if !strings.Contains(err.Error(), "99") {
		t.Errorf("error %q does not name the version", err)
	}
}

// TestPostgresConnectErrors checks that each way of failing to reach the
// database is one line that says what went wrong, without the password,
// in bounded time.
func TestPostgresConnectErrors(t *testing.T) {
	good, err := url.Parse(pgtest.Server(t))
	if err != nil {
		t.Fatal(err)
	}
	password, _ := good.User.Password()
	with := func(change func(u *url.URL)) string {
		u := *good
		change(&u)
		return u.String()
	}

	// A listener that accepts and never answers: a server that hangs.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	var mu sync.Mutex
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	})
	defer func() {
		silent.Close()
		wg.Wait()
		for _, c := range held {
			c.Close()
		}
	}()

	for _, tc := range []struct {
		name, url, want string
		unavailable     bool
	}{
		{"wrong password", with(func(u *url.URL) { u.User = url.UserPassword(good.User.Username(), "wrong-"+password) }),
			"password authentication failed", true},
		{"no server", with(func(u *url.URL) { u.Host = closedPort(t) }), "connection refused", true},
		{"no database", with(func(u *url.URL) { u.Path = "/no_such_db" }), `database "no_such_db" does not exist`, true},
		{"server never answers", with(func(u *url.URL) {
			u.Host = silent.Addr().String()
			q := u.Query()
			q.Set("connect_timeout", "1")
			u.RawQuery = q.Encode()
		}), "timeout", true},
		{"not a postgres URL", "mysql://root:" + password + "@127.0.0.1/x", "want postgres://", false},
		{"unparsable", "postgres://u:" + password + "@127.0.0.1:notaport/x", "postgres", false},
		{"bad parameter", with(func(u *url.URL) { u.RawQuery = "sslmode=sometimes" }), "sslmode", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			s, err := registry.OpenPostgres(testCtx(t), tc.url)
			if err == nil {
				s.Close()
				t.Fatalf("OpenPostgres succeeded")
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("OpenPostgres took %v to fail", d)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.want) {
				t.Errorf("error %q does not say %q", msg, tc.want)
			}
			if strings.ContainsAny(msg, "\n\r") {
				t.Errorf("error spans lines: %q", msg)
			}
			if strings.Contains(msg, password) {
				t.Errorf("error %q holds the password", msg)
			}
			if got := errors.Is(err, registry.ErrUnavailable); got != tc.unavailable {
				t.Errorf("errors.Is(err, ErrUnavailable) = %v, want %v (%v)", got, tc.unavailable, err)
			}
		})
	}
}

// closedPort returns an address on 127.0.0.1 where nothing listens.
func closedPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestPostgresContextBoundsOpen checks that the caller's context bounds
// opening, even when the URL lets each connection attempt take longer.
func TestPostgresContextBoundsOpen(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close() // accepts nothing: the connection sits in the backlog
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	s, err := registry.OpenPostgres(ctx, "postgres://u:p@"+ln.Addr().String()+"/db?connect_timeout=60")
	if err == nil {
		s.Close()
		t.Fatal("OpenPostgres succeeded")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("OpenPostgres took %v, past its context's 300 ms", d)
	}
	if !errors.Is(err, registry.ErrUnavailable) {
		t.Errorf("error %v does not wrap ErrUnavailable", err)
	}
}
