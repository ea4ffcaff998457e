// Package pgtest gives tests a PostgreSQL database of their own: an empty
// schema in the server named by $DSPROXY_TEST_POSTGRES, dropped when the
// test ends. scripts/test.sh starts a throwaway server for it
// (scripts/lib/postgres.sh).
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Environment variables that give tests a PostgreSQL server.
const (
	// ServerEnv holds the URL of a database the tests may use, as
	// postgres://user:password@127.0.0.1:port/database.
	ServerEnv = "DSPROXY_TEST_POSTGRES"
	// RequireEnv, set to 1, makes a missing ServerEnv a test
	// failure instead of a skip.
	RequireEnv = "DSPROXY_REQUIRE_POSTGRES"
)

// timeout bounds each statement of the helpers.
const timeout = 20 * time.Second

// Server returns the URL in ServerEnv. Without it the test is
// skipped, or fails when RequireEnv is 1.
func Server(t testing.TB) string {
	t.Helper()
	u := os.Getenv(ServerEnv)
	if u == "" {
		if os.Getenv(RequireEnv) == "1" {
			t.Fatalf("%s is not set and %s=1: start a server with scripts/lib/postgres.sh start", ServerEnv, RequireEnv)
		}
		t.Skipf("%s not set: no PostgreSQL to test against (scripts/lib/postgres.sh start makes one)", ServerEnv)
	}
	return u
}

// URL returns the URL of an empty schema of the test's own in the
// ServerEnv database: that URL with search_path set to a new schema,
// which is dropped, with everything in it, at cleanup. Tests using
// different schemas can run in parallel. It skips like Server.
func URL(t testing.TB) string {
	t.Helper()
	server := Server(t)
	b := make([]byte, 8)
	rand.Read(b)
	schema := "test_" + hex.EncodeToString(b)
	exec := func(ctx context.Context, sql string) error {
		conn, err := pgx.Connect(ctx, server)
		if err != nil {
			return err
		}
		defer conn.Close(context.WithoutCancel(ctx))
		_, err = conn.Exec(ctx, sql)
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := exec(ctx, `CREATE SCHEMA `+schema); err != nil {
		t.Fatalf("create schema in %s: %v", ServerEnv, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		if err := exec(ctx, `DROP SCHEMA `+schema+` CASCADE`); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	u, err := url.Parse(server)
	if err != nil {
		t.Fatalf("%s: %v", ServerEnv, err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}
