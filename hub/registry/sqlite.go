package registry

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	mrand "math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver, no cgo
)

// migrations holds the schema, one step per version: migrations[i] brings the
// database from version i to version i+1. Append only; never edit a released
// step.
var migrations = [][]string{
	// Version 1. Times are Unix microseconds (UTC), durations nanoseconds.
	// BINARY collation: device IDs and policy names are case-sensitive.
	{
		`CREATE TABLE devices (
			id            TEXT    NOT NULL COLLATE BINARY PRIMARY KEY,
			status        TEXT    NOT NULL,
			status_reason TEXT    NOT NULL DEFAULT '',
			primary_key   TEXT    NOT NULL DEFAULT '',
			secondary_key TEXT    NOT NULL DEFAULT '',
			etag          TEXT    NOT NULL,
			generation    TEXT    NOT NULL,
			created       INTEGER NOT NULL,
			updated       INTEGER NOT NULL
		)`,
		`CREATE TABLE policies (
			name          TEXT    NOT NULL COLLATE BINARY PRIMARY KEY,
			primary_key   TEXT    NOT NULL DEFAULT '',
			secondary_key TEXT    NOT NULL DEFAULT '',
			rights        INTEGER NOT NULL
		)`,
		`CREATE TABLE stream_events (
			id         INTEGER PRIMARY KEY AUTOINCREMENT,
			stream_id  TEXT    NOT NULL,
			device_id  TEXT    NOT NULL COLLATE BINARY,
			policy     TEXT    NOT NULL,
			name       TEXT    NOT NULL,
			result     TEXT    NOT NULL,
			reason     TEXT    NOT NULL,
			bytes_up   INTEGER NOT NULL,
			bytes_down INTEGER NOT NULL,
			started    INTEGER NOT NULL,
			duration   INTEGER NOT NULL
		)`,
		`CREATE INDEX stream_events_started ON stream_events (started, id)`,
		`CREATE INDEX stream_events_device ON stream_events (device_id, started, id)`,
	},
	// Version 2: where each device's newest control session is held (see
	// sessions.go). A row outlives its session so that epochs never go back.
	{
		`CREATE TABLE device_sessions (
			device_id TEXT    NOT NULL COLLATE BINARY PRIMARY KEY,
			epoch     INTEGER NOT NULL,
			replica   TEXT    NOT NULL,
			since     INTEGER NOT NULL
		)`,
		`CREATE INDEX device_sessions_replica ON device_sessions (replica, device_id)`,
	},
}

// sqliteStore is the single-node Store.
//
// SQLite allows one writer at a time. All writes go through w, a pool of a
// single connection whose transactions begin IMMEDIATE, so writers in this
// process queue in database/sql (honouring their contexts) instead of
// contending for the file lock, and a read-then-write transaction can never
// fail with SQLITE_BUSY on upgrade. Reads use r, a pool of read-only
// connections that WAL lets run alongside the writer. The busy timeout covers
// other processes opening the same file.
type sqliteStore struct {
	w, r *sql.DB

	// Prepared on r: the reads every stream makes (the hub looks up the
	// device, and a session stream its policy), which would otherwise
	// parse their SQL each time.
	getDevice, getPolicy *sql.Stmt
	// Prepared on w: the INSERTs of eventInsertSizes events that
	// AddStreamEvents writes a batch with.
	insertEvents [len(eventInsertSizes)]*sql.Stmt

	closeOnce sync.Once
	closeErr  error
}

var (
	_ Store         = (*sqliteStore)(nil)
	_ policyCreator = (*sqliteStore)(nil)
)

// OpenSQLite opens the SQLite database at path, creating it if needed, and
// brings its schema up to date (safe on every start). The file and its -wal
// and -shm companions are made mode 0600 whatever the umask, since the
// database holds keys. The parent directory must exist.
//
// The caller must Close the store.
func OpenSQLite(path string) (Store, error) {
	if path == "" {
		return nil, errors.New("open sqlite registry: empty path")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("open sqlite registry: %w", err)
	}
	// Create the file ourselves: SQLite would create it 0644 less the umask.
	// SQLite then gives -wal and -shm the mode of the database file.
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open sqlite registry: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("open sqlite registry: %w", err)
	}
	if err := chmodFiles(abs); err != nil {
		return nil, fmt.Errorf("open sqlite registry: %w", err)
	}

	// A "file:" URI, so that a path holding '?' or '#' is escaped rather
	// than taken for the start of the driver's parameters.
	p := filepath.ToSlash(abs)
	if !strings.HasPrefix(p, "/") {
		p = "/" + p // Windows: file:///C:/dir/db
	}
	base := (&url.URL{Scheme: "file", Path: p}).String()

	w, err := sql.Open("sqlite", base+"?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("open sqlite registry: %w", err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	if err := migrateRetrying(w); err != nil {
		w.Close()
		return nil, fmt.Errorf("open sqlite registry: %w", err)
	}
	r, err := sql.Open("sqlite", base+"?_pragma=busy_timeout(5000)&_pragma=query_only(1)")
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("open sqlite registry: %w", err)
	}
	// Bounded, so a burst of requests cannot open a connection (and a page
	// cache) each.
	r.SetMaxOpenConns(max(4, runtime.GOMAXPROCS(0)))
	r.SetMaxIdleConns(max(4, runtime.GOMAXPROCS(0)))
	if err := r.Ping(); err != nil {
		w.Close()
		r.Close()
		return nil, fmt.Errorf("open sqlite registry: %w", err)
	}
	// Tighten companions left by an earlier run with looser modes.
	if err := chmodFiles(abs); err != nil {
		w.Close()
		r.Close()
		return nil, fmt.Errorf("open sqlite registry: %w", err)
	}
	st := &sqliteStore{w: w, r: r}
	if err := st.prepare(); err != nil {
		w.Close()
		r.Close()
		return nil, fmt.Errorf("open sqlite registry: %w", err)
	}
	return st, nil
}

// prepare prepares the hot reads.
func (s *sqliteStore) prepare() error {
	var err error
	if s.getDevice, err = s.r.Prepare(`SELECT ` + deviceColumns + ` FROM devices WHERE id = ?`); err != nil {
		return err
	}
	if s.getPolicy, err = s.r.Prepare(`SELECT name, primary_key, secondary_key, rights FROM policies WHERE name = ?`); err != nil {
		return err
	}
	for i, n := range eventInsertSizes {
		if s.insertEvents[i], err = s.w.Prepare(insertEventsSQL(n, func(int) string { return "?" })); err != nil {
			return err
		}
	}
	return nil
}

// chmodFiles makes the database file and any -wal and -shm files mode 0600.
func chmodFiles(path string) error {
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		if err := os.Chmod(p, 0o600); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// migrateRetrying runs migrate, again while SQLite answers busy without
// waiting for its busy timeout (it does so when processes that open one
// new database at once race to switch it to WAL mode), for up to 10 s.
func migrateRetrying(db *sql.DB) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := migrate(context.Background(), db)
		var se interface{ Code() int }
		if err == nil || !errors.As(err, &se) || se.Code()&0xff != sqliteBusy || time.Now().After(deadline) {
			return err
		}
		time.Sleep(time.Duration(10+mrand.IntN(40)) * time.Millisecond)
	}
}

// sqliteBusy is SQLite's primary result code SQLITE_BUSY.
const sqliteBusy = 5

// migrate applies the migrations the database has not seen yet, in one
// transaction, and records the new version in schema_version.
func migrate(ctx context.Context, db *sql.DB) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	var v int
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_version`).Scan(&v); err != nil {
		return fmt.Errorf("migrate: read schema version: %w", err)
	}
	if v > len(migrations) {
		return fmt.Errorf("migrate: database schema version %d is newer than this program's %d", v, len(migrations))
	}
	if v == len(migrations) {
		return nil
	}
	for i := v; i < len(migrations); i++ {
		for _, stmt := range migrations[i] {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("migrate to version %d: %w", i+1, err)
			}
		}
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM schema_version`); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_version (version) VALUES (?)`, len(migrations)); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return nil
}

const deviceColumns = `id, status, status_reason, primary_key, secondary_key, etag, generation, created, updated`

type scanner interface{ Scan(dest ...any) error }

func scanDevice(row scanner) (Device, error) {
	var d Device
	var created, updated int64
	err := row.Scan(&d.ID, &d.Status, &d.StatusReason, &d.PrimaryKey, &d.SecondaryKey,
		&d.ETag, &d.Generation, &created, &updated)
	d.Created, d.Updated = fromMicros(created), fromMicros(updated)
	return d, err
}

func (s *sqliteStore) GetDevice(ctx context.Context, id string) (Device, error) {
	if !isText(id) {
		return Device{}, fmt.Errorf("get device %q: %w", id, ErrNotFound)
	}
	d, err := scanDevice(s.getDevice.QueryRowContext(ctx, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Device{}, fmt.Errorf("get device %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return Device{}, fmt.Errorf("get device %q: %w", id, err)
	}
	return d, nil
}

func (s *sqliteStore) ListDevices(ctx context.Context) ([]Device, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+deviceColumns+` FROM devices ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	defer rows.Close()
	var ds []Device
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, fmt.Errorf("list devices: %w", err)
		}
		ds = append(ds, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	return ds, nil
}

func (s *sqliteStore) CreateDevice(ctx context.Context, d Device) (Device, error) {
	if d.ID == "" {
		return Device{}, errors.New("create device: empty device id")
	}
	if !isText(d.ID) {
		return Device{}, fmt.Errorf("create device %q: device id: %w", d.ID, ErrInvalidText)
	}
	var err error
	if d.Status, err = checkStatus(d.Status); err != nil {
		return Device{}, fmt.Errorf("create device %q: %w", d.ID, err)
	}
	if err := checkKeys(d.PrimaryKey, d.SecondaryKey); err != nil {
		return Device{}, fmt.Errorf("create device %q: %w", d.ID, err)
	}
	d.StatusReason = cleanText(d.StatusReason)
	if d.ETag, err = newETag(); err != nil {
		return Device{}, fmt.Errorf("create device %q: %w", d.ID, err)
	}
	if d.Generation, err = newGeneration(); err != nil {
		return Device{}, fmt.Errorf("create device %q: %w", d.ID, err)
	}
	d.Created = now()
	d.Updated = d.Created
	res, err := s.w.ExecContext(ctx, `INSERT INTO devices (`+deviceColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`,
		d.ID, d.Status, d.StatusReason, d.PrimaryKey, d.SecondaryKey,
		d.ETag, d.Generation, d.Created.UnixMicro(), d.Updated.UnixMicro())
	if err != nil {
		return Device{}, fmt.Errorf("create device %q: %w", d.ID, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return Device{}, fmt.Errorf("create device %q: %w", d.ID, err)
	} else if n == 0 {
		return Device{}, fmt.Errorf("create device %q: %w", d.ID, ErrExists)
	}
	return d, nil
}

func (s *sqliteStore) UpdateDevice(ctx context.Context, d Device, ifMatch string) (Device, error) {
	var err error
	if d.Status, err = checkStatus(d.Status); err != nil {
		return Device{}, fmt.Errorf("update device %q: %w", d.ID, err)
	}
	if err := checkKeys(d.PrimaryKey, d.SecondaryKey); err != nil {
		return Device{}, fmt.Errorf("update device %q: %w", d.ID, err)
	}
	if !isText(d.ID) {
		return Device{}, fmt.Errorf("update device %q: %w", d.ID, ErrNotFound)
	}
	d.StatusReason = cleanText(d.StatusReason)
	etag, err := newETag()
	if err != nil {
		return Device{}, fmt.Errorf("update device %q: %w", d.ID, err)
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return Device{}, fmt.Errorf("update device %q: %w", d.ID, err)
	}
	defer tx.Rollback()
	if err := checkETag(ctx, tx, d.ID, ifMatch); err != nil {
		return Device{}, fmt.Errorf("update device %q: %w", d.ID, err)
	}
	d, err = scanDevice(tx.QueryRowContext(ctx, `UPDATE devices
		SET status = ?, status_reason = ?, primary_key = ?, secondary_key = ?, etag = ?, updated = ?
		WHERE id = ? RETURNING `+deviceColumns,
		d.Status, d.StatusReason, d.PrimaryKey, d.SecondaryKey, etag, now().UnixMicro(), d.ID))
	if err != nil {
		return Device{}, fmt.Errorf("update device %q: %w", d.ID, err)
	}
	if err := tx.Commit(); err != nil {
		return Device{}, fmt.Errorf("update device %q: %w", d.ID, err)
	}
	return d, nil
}

func (s *sqliteStore) DeleteDevice(ctx context.Context, id string, ifMatch string) error {
	if !isText(id) {
		return fmt.Errorf("delete device %q: %w", id, ErrNotFound)
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("delete device %q: %w", id, err)
	}
	defer tx.Rollback()
	if err := checkETag(ctx, tx, id, ifMatch); err != nil {
		return fmt.Errorf("delete device %q: %w", id, err)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM devices WHERE id = ?`, id); err != nil {
		return fmt.Errorf("delete device %q: %w", id, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("delete device %q: %w", id, err)
	}
	return nil
}

// checkETag returns ErrNotFound if the device does not exist and
// ErrPrecondition if ifMatch names another ETag than its current one.
func checkETag(ctx context.Context, tx *sql.Tx, id, ifMatch string) error {
	var etag string
	err := tx.QueryRowContext(ctx, `SELECT etag FROM devices WHERE id = ?`, id).Scan(&etag)
	if errors.Is(err, sql.ErrNoRows) {
		return ErrNotFound
	}
	if err != nil {
		return err
	}
	if !etagMatches(ifMatch, etag) {
		return ErrPrecondition
	}
	return nil
}

func (s *sqliteStore) GetPolicy(ctx context.Context, name string) (Policy, error) {
	if !isText(name) {
		return Policy{}, fmt.Errorf("get policy %q: %w", name, ErrNotFound)
	}
	var p Policy
	err := s.getPolicy.QueryRowContext(ctx, name).Scan(&p.Name, &p.PrimaryKey, &p.SecondaryKey, &p.Rights)
	if errors.Is(err, sql.ErrNoRows) {
		return Policy{}, fmt.Errorf("get policy %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return Policy{}, fmt.Errorf("get policy %q: %w", name, err)
	}
	return p, nil
}

func (s *sqliteStore) ListPolicies(ctx context.Context) ([]Policy, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT name, primary_key, secondary_key, rights FROM policies ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list policies: %w", err)
	}
	defer rows.Close()
	var ps []Policy
	for rows.Next() {
		var p Policy
		if err := rows.Scan(&p.Name, &p.PrimaryKey, &p.SecondaryKey, &p.Rights); err != nil {
			return nil, fmt.Errorf("list policies: %w", err)
		}
		ps = append(ps, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list policies: %w", err)
	}
	return ps, nil
}

func (s *sqliteStore) PutPolicy(ctx context.Context, p Policy) error {
	if p.Name == "" {
		return errors.New("put policy: empty policy name")
	}
	if err := checkPolicy(p); err != nil {
		return fmt.Errorf("put policy %q: %w", p.Name, err)
	}
	_, err := s.w.ExecContext(ctx, `INSERT INTO policies (name, primary_key, secondary_key, rights)
		VALUES (?, ?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET
			primary_key = excluded.primary_key,
			secondary_key = excluded.secondary_key,
			rights = excluded.rights`,
		p.Name, p.PrimaryKey, p.SecondaryKey, p.Rights)
	if err != nil {
		return fmt.Errorf("put policy %q: %w", p.Name, err)
	}
	return nil
}

// createPolicy creates p, or returns ErrExists if a policy has its name.
func (s *sqliteStore) createPolicy(ctx context.Context, p Policy) error {
	if p.Name == "" {
		return errors.New("create policy: empty policy name")
	}
	if err := checkPolicy(p); err != nil {
		return fmt.Errorf("create policy %q: %w", p.Name, err)
	}
	res, err := s.w.ExecContext(ctx, `INSERT INTO policies (name, primary_key, secondary_key, rights)
		VALUES (?, ?, ?, ?) ON CONFLICT (name) DO NOTHING`,
		p.Name, p.PrimaryKey, p.SecondaryKey, p.Rights)
	if err != nil {
		return fmt.Errorf("create policy %q: %w", p.Name, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("create policy %q: %w", p.Name, err)
	} else if n == 0 {
		return fmt.Errorf("create policy %q: %w", p.Name, ErrExists)
	}
	return nil
}

const sqliteInsertEvent = `INSERT INTO stream_events (` + eventColumns + `) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`

func sqliteEventArgs(e StreamEvent) []any {
	return appendSQLiteEventArgs(nil, e)
}

func appendSQLiteEventArgs(args []any, e StreamEvent) []any {
	e = cleanEvent(e)
	return append(args, e.StreamID, e.DeviceID, e.Policy, e.Name, e.Result, e.Reason,
		e.BytesUp, e.BytesDown, e.Started.UnixMicro(), int64(e.Duration))
}

func (s *sqliteStore) AddStreamEvent(ctx context.Context, e StreamEvent) error {
	if _, err := s.w.ExecContext(ctx, sqliteInsertEvent, sqliteEventArgs(e)...); err != nil {
		return fmt.Errorf("add stream event %q: %w", e.StreamID, err)
	}
	return nil
}

// AddStreamEvents writes es in one transaction, with the prepared INSERTs
// of eventInsertSizes, in order, so that their IDs follow es.
func (s *sqliteStore) AddStreamEvents(ctx context.Context, es []StreamEvent) error {
	if len(es) == 0 {
		return nil
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("add %d stream events: %w", len(es), err)
	}
	defer tx.Rollback()
	var stmts [len(eventInsertSizes)]*sql.Stmt // closed with tx
	args := make([]any, 0, 10*eventInsertSizes[0])
	for i, chunk := range eventChunks(es) {
		if stmts[i] == nil {
			stmts[i] = tx.StmtContext(ctx, s.insertEvents[i])
		}
		args = args[:0]
		for _, e := range chunk {
			args = appendSQLiteEventArgs(args, e)
		}
		if _, err := stmts[i].ExecContext(ctx, args...); err != nil {
			return fmt.Errorf("add %d stream events: %w", len(es), err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("add %d stream events: %w", len(es), err)
	}
	return nil
}

func (s *sqliteStore) StreamEvents(ctx context.Context, f EventFilter) ([]StreamEvent, error) {
	q := `SELECT id, stream_id, device_id, policy, name, result, reason, bytes_up, bytes_down, started, duration
		FROM stream_events`
	f.DeviceID = cleanText(f.DeviceID)
	var where []string
	var args []any
	if f.DeviceID != "" {
		where = append(where, `device_id = ?`)
		args = append(args, f.DeviceID)
	}
	if !f.Since.IsZero() {
		where = append(where, `started >= ?`)
		args = append(args, f.Since.UnixMicro())
	}
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, ` AND `)
	}
	limit := f.Limit
	if limit <= 0 {
		limit = defaultEventLimit
	}
	q += ` ORDER BY started DESC, id DESC LIMIT ?`
	args = append(args, limit)

	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list stream events: %w", err)
	}
	defer rows.Close()
	var es []StreamEvent
	for rows.Next() {
		var e StreamEvent
		var started, duration int64
		if err := rows.Scan(&e.ID, &e.StreamID, &e.DeviceID, &e.Policy, &e.Name, &e.Result, &e.Reason,
			&e.BytesUp, &e.BytesDown, &started, &duration); err != nil {
			return nil, fmt.Errorf("list stream events: %w", err)
		}
		e.Started, e.Duration = fromMicros(started), time.Duration(duration)
		es = append(es, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list stream events: %w", err)
	}
	return es, nil
}

func (s *sqliteStore) PruneStreamEvents(ctx context.Context, olderThan time.Time, keep int) (int, error) {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("prune stream events: %w", err)
	}
	defer tx.Rollback()
	var n int64
	if !olderThan.IsZero() {
		res, err := tx.ExecContext(ctx, `DELETE FROM stream_events WHERE started < ?`, olderThan.UnixMicro())
		if err != nil {
			return 0, fmt.Errorf("prune stream events: %w", err)
		}
		d, err := res.RowsAffected()
		if err != nil {
			return 0, fmt.Errorf("prune stream events: %w", err)
		}
		n += d
	}
	if keep > 0 {
		// The newest event past the bound, and everything older than it,
		// go: one walk of the (started, id) index rather than a NOT IN over
		// the events kept.
		var started, id int64
		err := tx.QueryRowContext(ctx, `SELECT started, id FROM stream_events
			ORDER BY started DESC, id DESC LIMIT 1 OFFSET ?`, keep).Scan(&started, &id)
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return 0, fmt.Errorf("prune stream events: %w", err)
		default:
			res, err := tx.ExecContext(ctx, `DELETE FROM stream_events
				WHERE started < ? OR (started = ? AND id <= ?)`, started, started, id)
			if err != nil {
				return 0, fmt.Errorf("prune stream events: %w", err)
			}
			d, err := res.RowsAffected()
			if err != nil {
				return 0, fmt.Errorf("prune stream events: %w", err)
			}
			n += d
		}
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("prune stream events: %w", err)
	}
	return int(n), nil
}

func (s *sqliteStore) Close() error {
	s.closeOnce.Do(func() {
		errs := []error{s.getDevice.Close(), s.getPolicy.Close()}
		for _, st := range s.insertEvents {
			errs = append(errs, st.Close())
		}
		s.closeErr = errors.Join(append(errs, s.r.Close(), s.w.Close())...)
	})
	return s.closeErr
}

// checkStatus validates a device status; "" means enabled, as in Azure.
func checkStatus(st Status) (Status, error) {
	switch st {
	case "":
		return StatusEnabled, nil
	case StatusEnabled, StatusDisabled:
		return st, nil
	}
	return "", fmt.Errorf("invalid status %q", st)
}

// etagMatches applies the If-Match rules: "" and "*" match any ETag; anything
// else must equal it, with or without HTTP quotes.
func etagMatches(ifMatch, etag string) bool {
	if ifMatch == "" || ifMatch == "*" {
		return true
	}
	if len(ifMatch) >= 2 && ifMatch[0] == '"' && ifMatch[len(ifMatch)-1] == '"' {
		ifMatch = ifMatch[1 : len(ifMatch)-1]
	}
	return ifMatch == etag
}

// newETag returns a random opaque ETag: random rather than a counter, so a
// device deleted and created again never repeats an old ETag.
func newETag() (string, error) {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate etag: %w", err)
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// newGeneration returns a random 18-digit decimal string, the shape of an
// Azure generationId.
func newGeneration() (string, error) {
	n, err := rand.Int(rand.Reader, big.NewInt(1e18))
	if err != nil {
		return "", fmt.Errorf("generate generation id: %w", err)
	}
	return fmt.Sprintf("%018d", n), nil
}

// now is the current time at the precision the store keeps.
func now() time.Time { return fromMicros(time.Now().UnixMicro()) }

func fromMicros(us int64) time.Time { return time.UnixMicro(us).UTC() }
