package registry

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// pgMigrationFiles holds the PostgreSQL schema, one file per version:
// NNNN_name.sql brings the database from version NNNN-1 to NNNN. Append
// only; never edit a released file.
//
//go:embed migrations/postgres/*.sql
var pgMigrationFiles embed.FS

// pgMigrateLock is the pg_advisory_xact_lock key under which the schema is
// brought up to date, so that hub replicas starting at once on one database
// take turns instead of racing to create the same tables. It is the ASCII
// of "dsproxyM"; other programs sharing the database are unlikely to pick it.
const pgMigrateLock int64 = 0x647370726f78794d

// DefaultPostgresConnectTimeout bounds each connection attempt of
// [OpenPostgres] when the URL sets no connect_timeout.
const DefaultPostgresConnectTimeout = 10 * time.Second

// postgresStore is the Store that hub replicas share.
//
// Every call takes a connection from pool. Conditional updates and deletes
// are single statements that test the ETag in their WHERE clause; only when
// they change nothing does a second query tell a missing device from a
// stale ETag.
type postgresStore struct {
	pool *pgxpool.Pool

	closeOnce sync.Once
}

var (
	_ Store         = (*postgresStore)(nil)
	_ policyCreator = (*postgresStore)(nil)
)

// OpenPostgres connects to the PostgreSQL database at rawURL
// (postgres://user:password@host:port/database?param=value..., libpq's
// parameters such as sslmode, connect_timeout or search_path) and brings
// its schema up to date (safe on every start, and from several hubs
// starting at once: they take turns under an advisory lock). The database
// must exist; the tables are created in the first schema of the
// connection's search_path.
//
// ctx bounds connecting and the schema step; each connection attempt is
// also bounded by the URL's connect_timeout, or by
// DefaultPostgresConnectTimeout. When the server cannot be reached, refuses
// the credentials or has no such database, the error wraps ErrUnavailable
// and reads as one line. Errors never contain the password.
//
// The caller must Close the store.
func OpenPostgres(ctx context.Context, rawURL string) (Store, error) {
	target, err := postgresTarget(rawURL)
	if err != nil {
		return nil, fmt.Errorf("open postgres registry: %w", err)
	}
	cfg, err := pgxpool.ParseConfig(rawURL)
	if err != nil {
		return nil, fmt.Errorf("open postgres registry %s: %w", target, oneLine{err})
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = DefaultPostgresConnectTimeout
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open postgres registry %s: %w", target, oneLine{err})
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("open postgres registry %s: %w: %w", target, ErrUnavailable, oneLine{err})
	}
	if err := pgMigrate(ctx, pool); err != nil {
		pool.Close()
		return nil, fmt.Errorf("open postgres registry %s: %w", target, oneLine{err})
	}
	return &postgresStore{pool: pool}, nil
}

// postgresTarget checks that rawURL is a PostgreSQL URL and returns it
// without its password and parameters (which may hold one), for messages.
func postgresTarget(rawURL string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Error repeats the URL, password and all.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return "", fmt.Errorf("not a postgres:// URL: %w", err)
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return "", fmt.Errorf("URL scheme %q: want postgres:// or postgresql://", u.Scheme)
	}
	shown := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}
	if u.User != nil {
		shown.User = url.User(u.User.Username())
	}
	return shown.String(), nil
}

// oneLine is an error whose message is err's on a single line: pgx lists
// the failure of each address it tried on a line of its own, and the hub
// reports startup errors as one line.
type oneLine struct{ err error }

func (e oneLine) Error() string {
	return strings.Join(strings.Fields(e.err.Error()), " ")
}

func (e oneLine) Unwrap() error { return e.err }

type pgMigration struct {
	version int
	name    string
	sql     string
}

// pgMigrations returns the embedded migrations in order, checking that
// their versions run 1, 2, 3... without a gap.
func pgMigrations() ([]pgMigration, error) {
	const dir = "migrations/postgres"
	entries, err := fs.ReadDir(pgMigrationFiles, dir)
	if err != nil {
		return nil, err
	}
	var ms []pgMigration
	for _, e := range entries { // sorted by name
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v != len(ms)+1 {
			return nil, fmt.Errorf("migration file %s: want the name %04d_*.sql", e.Name(), len(ms)+1)
		}
		b, err := fs.ReadFile(pgMigrationFiles, path.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		ms = append(ms, pgMigration{version: v, name: e.Name(), sql: string(b)})
	}
	return ms, nil
}

// pgMigrate applies the migrations the database has not seen yet, in one
// transaction under the advisory lock pgMigrateLock, and records the new
// version in schema_version. A hub that finds the schema newer than its
// own refuses to start rather than write rows an older program does not
// understand.
func pgMigrate(ctx context.Context, pool *pgxpool.Pool) error {
	ms, err := pgMigrations()
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	// Released when the transaction ends, whichever way it does.
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, pgMigrateLock); err != nil {
		return fmt.Errorf("migrate: take the advisory lock: %w", err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)`); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	var v int
	if err := tx.QueryRow(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_version`).Scan(&v); err != nil {
		return fmt.Errorf("migrate: read schema version: %w", err)
	}
	if v > len(ms) {
		return fmt.Errorf("migrate: database schema version %d is newer than this program's %d", v, len(ms))
	}
	if v == len(ms) {
		return nil
	}
	for _, m := range ms[v:] {
		if _, err := tx.Exec(ctx, m.sql); err != nil {
			return fmt.Errorf("migrate to version %d (%s): %w", m.version, m.name, err)
		}
	}
	if _, err := tx.Exec(ctx, `DELETE FROM schema_version`); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO schema_version (version) VALUES ($1)`, len(ms)); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return nil
}

func scanPgDevice(row pgx.Row) (Device, error) {
	var d Device
	var status string
	err := row.Scan(&d.ID, &status, &d.StatusReason, &d.PrimaryKey, &d.SecondaryKey,
		&d.ETag, &d.Generation, &d.Created, &d.Updated)
	d.Status = Status(status)
	d.Created, d.Updated = d.Created.UTC(), d.Updated.UTC()
	return d, err
}

func (s *postgresStore) GetDevice(ctx context.Context, id string) (Device, error) {
	if !isText(id) {
		return Device{}, fmt.Errorf("get device %q: %w", id, ErrNotFound)
	}
	d, err := scanPgDevice(s.pool.QueryRow(ctx, `SELECT `+deviceColumns+` FROM devices WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return Device{}, fmt.Errorf("get device %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return Device{}, fmt.Errorf("get device %q: %w", id, err)
	}
	return d, nil
}

func (s *postgresStore) ListDevices(ctx context.Context) ([]Device, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+deviceColumns+` FROM devices ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	defer rows.Close()
	var ds []Device
	for rows.Next() {
		d, err := scanPgDevice(rows)
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

func (s *postgresStore) CreateDevice(ctx context.Context, d Device) (Device, error) {
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
	tag, err := s.pool.Exec(ctx, `INSERT INTO devices (`+deviceColumns+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING`,
		d.ID, string(d.Status), d.StatusReason, d.PrimaryKey, d.SecondaryKey,
		d.ETag, d.Generation, d.Created, d.Updated)
	if err != nil {
		return Device{}, fmt.Errorf("create device %q: %w", d.ID, err)
	}
	if tag.RowsAffected() == 0 {
		return Device{}, fmt.Errorf("create device %q: %w", d.ID, ErrExists)
	}
	return d, nil
}

func (s *postgresStore) UpdateDevice(ctx context.Context, d Device, ifMatch string) (Device, error) {
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
	out, err := scanPgDevice(s.pool.QueryRow(ctx, `UPDATE devices
		SET status = $2, status_reason = $3, primary_key = $4, secondary_key = $5, etag = $6, updated = $7
		WHERE id = $1 AND ($8::text IS NULL OR etag = $8)
		RETURNING `+deviceColumns,
		d.ID, string(d.Status), d.StatusReason, d.PrimaryKey, d.SecondaryKey, etag, now(), wantETag(ifMatch)))
	if errors.Is(err, pgx.ErrNoRows) {
		err = s.whyUnchanged(ctx, d.ID)
	}
	if err != nil {
		return Device{}, fmt.Errorf("update device %q: %w", d.ID, err)
	}
	return out, nil
}

func (s *postgresStore) DeleteDevice(ctx context.Context, id string, ifMatch string) error {
	if !isText(id) {
		return fmt.Errorf("delete device %q: %w", id, ErrNotFound)
	}
	tag, err := s.pool.Exec(ctx, `DELETE FROM devices WHERE id = $1 AND ($2::text IS NULL OR etag = $2)`,
		id, wantETag(ifMatch))
	if err == nil && tag.RowsAffected() == 0 {
		err = s.whyUnchanged(ctx, id)
	}
	if err != nil {
		return fmt.Errorf("delete device %q: %w", id, err)
	}
	return nil
}

// wantETag is the ETag a conditional statement must find, or nil (SQL
// NULL) for an unconditional one, by the rules of etagMatches. An ifMatch
// that is not text matches no ETag; cleaned, it still matches none, and
// PostgreSQL takes it.
func wantETag(ifMatch string) *string {
	if ifMatch == "" || ifMatch == "*" {
		return nil
	}
	ifMatch = cleanText(ifMatch)
	if len(ifMatch) >= 2 && ifMatch[0] == '"' && ifMatch[len(ifMatch)-1] == '"' {
		ifMatch = ifMatch[1 : len(ifMatch)-1]
	}
	return &ifMatch
}

// whyUnchanged explains a conditional update or delete of device id that
// changed nothing: ErrNotFound if the device does not exist, else
// ErrPrecondition.
func (s *postgresStore) whyUnchanged(ctx context.Context, id string) error {
	var exists bool
	if err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM devices WHERE id = $1)`, id).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		return ErrNotFound
	}
	return ErrPrecondition
}

func (s *postgresStore) GetPolicy(ctx context.Context, name string) (Policy, error) {
	if !isText(name) {
		return Policy{}, fmt.Errorf("get policy %q: %w", name, ErrNotFound)
	}
	p, err := scanPgPolicy(s.pool.QueryRow(ctx, `SELECT name, primary_key, secondary_key, rights FROM policies WHERE name = $1`, name))
	if errors.Is(err, pgx.ErrNoRows) {
		return Policy{}, fmt.Errorf("get policy %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return Policy{}, fmt.Errorf("get policy %q: %w", name, err)
	}
	return p, nil
}

func scanPgPolicy(row pgx.Row) (Policy, error) {
	var p Policy
	var rights int16
	err := row.Scan(&p.Name, &p.PrimaryKey, &p.SecondaryKey, &rights)
	p.Rights = Rights(rights)
	return p, err
}

func (s *postgresStore) ListPolicies(ctx context.Context) ([]Policy, error) {
	rows, err := s.pool.Query(ctx, `SELECT name, primary_key, secondary_key, rights FROM policies ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list policies: %w", err)
	}
	defer rows.Close()
	var ps []Policy
	for rows.Next() {
		p, err := scanPgPolicy(rows)
		if err != nil {
			return nil, fmt.Errorf("list policies: %w", err)
		}
		ps = append(ps, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list policies: %w", err)
	}
	return ps, nil
}

func (s *postgresStore) PutPolicy(ctx context.Context, p Policy) error {
	if p.Name == "" {
		return errors.New("put policy: empty policy name")
	}
	if err := checkPolicy(p); err != nil {
		return fmt.Errorf("put policy %q: %w", p.Name, err)
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO policies (name, primary_key, secondary_key, rights)
		VALUES ($1, $2, $3, $4)
		ON CONFLICT (name) DO UPDATE SET
			primary_key = excluded.primary_key,
			secondary_key = excluded.secondary_key,
			rights = excluded.rights`,
		p.Name, p.PrimaryKey, p.SecondaryKey, int16(p.Rights))
	if err != nil {
		return fmt.Errorf("put policy %q: %w", p.Name, err)
	}
	return nil
}

// createPolicy creates p, or returns ErrExists if a policy has its name.
func (s *postgresStore) createPolicy(ctx context.Context, p Policy) error {
	if p.Name == "" {
		return errors.New("create policy: empty policy name")
	}
	if err := checkPolicy(p); err != nil {
		return fmt.Errorf("create policy %q: %w", p.Name, err)
	}
	tag, err := s.pool.Exec(ctx, `INSERT INTO policies (name, primary_key, secondary_key, rights)
		VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING`,
		p.Name, p.PrimaryKey, p.SecondaryKey, int16(p.Rights))
	if err != nil {
		return fmt.Errorf("create policy %q: %w", p.Name, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("create policy %q: %w", p.Name, ErrExists)
	}
	return nil
}

const postgresInsertEvent = `INSERT INTO stream_events (` + eventColumns + `) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`

// postgresInsertEvents holds the INSERTs of eventInsertSizes events. pgx
// prepares each once per connection (its statement cache).
var postgresInsertEvents = sync.OnceValue(func() (q [len(eventInsertSizes)]string) {
	for i, n := range eventInsertSizes {
		q[i] = insertEventsSQL(n, func(i int) string { return "$" + strconv.Itoa(i) })
	}
	return q
})

func postgresEventArgs(e StreamEvent) []any {
	return appendPostgresEventArgs(nil, e)
}

func appendPostgresEventArgs(args []any, e StreamEvent) []any {
	e = cleanEvent(e)
	return append(args, e.StreamID, e.DeviceID, e.Policy, e.Name, e.Result, e.Reason,
		e.BytesUp, e.BytesDown, micros(e.Started), int64(e.Duration))
}

func (s *postgresStore) AddStreamEvent(ctx context.Context, e StreamEvent) error {
	if _, err := s.pool.Exec(ctx, postgresInsertEvent, postgresEventArgs(e)...); err != nil {
		return fmt.Errorf("add stream event %q: %w", e.StreamID, err)
	}
	return nil
}

// AddStreamEvents writes es in one transaction, with the INSERTs of
// eventInsertSizes, in order, so that their IDs follow es.
func (s *postgresStore) AddStreamEvents(ctx context.Context, es []StreamEvent) error {
	if len(es) == 0 {
		return nil
	}
	var b pgx.Batch
	for i, chunk := range eventChunks(es) {
		args := make([]any, 0, 10*len(chunk))
		for _, e := range chunk {
			args = appendPostgresEventArgs(args, e)
		}
		b.Queue(postgresInsertEvents()[i], args...)
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error { return tx.SendBatch(ctx, &b).Close() })
	if err != nil {
		return fmt.Errorf("add %d stream events: %w", len(es), err)
	}
	return nil
}

func (s *postgresStore) StreamEvents(ctx context.Context, f EventFilter) ([]StreamEvent, error) {
	q := `SELECT id, stream_id, device_id, policy, name, result, reason, bytes_up, bytes_down, started, duration
		FROM stream_events`
	f.DeviceID = cleanText(f.DeviceID)
	var where []string
	var args []any
	if f.DeviceID != "" {
		args = append(args, f.DeviceID)
		where = append(where, fmt.Sprintf(`device_id = $%d`, len(args)))
	}
	if !f.Since.IsZero() {
		args = append(args, micros(f.Since))
		where = append(where, fmt.Sprintf(`started >= $%d`, len(args)))
	}
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, ` AND `)
	}
	limit := f.Limit
	if limit <= 0 {
		limit = defaultEventLimit
	}
	args = append(args, limit)
	q += fmt.Sprintf(` ORDER BY started DESC, id DESC LIMIT $%d`, len(args))

	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list stream events: %w", err)
	}
	defer rows.Close()
	var es []StreamEvent
	for rows.Next() {
		var e StreamEvent
		var duration int64
		if err := rows.Scan(&e.ID, &e.StreamID, &e.DeviceID, &e.Policy, &e.Name, &e.Result, &e.Reason,
			&e.BytesUp, &e.BytesDown, &e.Started, &duration); err != nil {
			return nil, fmt.Errorf("list stream events: %w", err)
		}
		e.Started, e.Duration = e.Started.UTC(), time.Duration(duration)
		es = append(es, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list stream events: %w", err)
	}
	return es, nil
}

func (s *postgresStore) PruneStreamEvents(ctx context.Context, olderThan time.Time, keep int) (int, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("prune stream events: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var n int64
	if !olderThan.IsZero() {
		tag, err := tx.Exec(ctx, `DELETE FROM stream_events WHERE started < $1`, micros(olderThan))
		if err != nil {
			return 0, fmt.Errorf("prune stream events: %w", err)
		}
		n += tag.RowsAffected()
	}
	if keep > 0 {
		// As in the SQLite store: the newest event past the bound, and
		// everything older than it, go.
		var started time.Time
		var id int64
		err := tx.QueryRow(ctx, `SELECT started, id FROM stream_events
			ORDER BY started DESC, id DESC LIMIT 1 OFFSET $1`, keep).Scan(&started, &id)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
		case err != nil:
			return 0, fmt.Errorf("prune stream events: %w", err)
		default:
			tag, err := tx.Exec(ctx, `DELETE FROM stream_events WHERE (started, id) <= ($1, $2)`, started, id)
			if err != nil {
				return 0, fmt.Errorf("prune stream events: %w", err)
			}
			n += tag.RowsAffected()
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("prune stream events: %w", err)
	}
	return int(n), nil
}

// Close closes every connection; calls in progress fail.
func (s *postgresStore) Close() error {
	s.closeOnce.Do(s.pool.Close)
	return nil
}

// micros is t at the precision the store keeps, truncated as the SQLite
// store truncates (PostgreSQL itself would round).
func micros(t time.Time) time.Time { return fromMicros(t.UnixMicro()) }
