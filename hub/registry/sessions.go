package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// The session table (device_sessions) of both stores. A claim is one
// upsert that bumps the epoch, so that concurrent claims of one device,
// from any number of replicas, are ordered by the database; a release
// names the epoch it ends, so that a late release of an old session never
// erases a newer one.

func (s *sqliteStore) ClaimSession(ctx context.Context, deviceID, replica string) (int64, error) {
	if !isText(deviceID) || !isText(replica) || replica == "" {
		return 0, fmt.Errorf("claim session of device %q: %w", deviceID, ErrInvalidText)
	}
	var epoch int64
	err := s.w.QueryRowContext(ctx, `INSERT INTO device_sessions (device_id, epoch, replica, since)
		VALUES (?, 1, ?, ?)
		ON CONFLICT (device_id) DO UPDATE SET
			epoch = device_sessions.epoch + 1, replica = excluded.replica, since = excluded.since
		RETURNING epoch`, deviceID, replica, now().UnixMicro()).Scan(&epoch)
	if err != nil {
		return 0, fmt.Errorf("claim session of device %q: %w", deviceID, err)
	}
	return epoch, nil
}

func (s *sqliteStore) ReleaseSession(ctx context.Context, deviceID string, epoch int64) (bool, error) {
	res, err := s.w.ExecContext(ctx, `UPDATE device_sessions SET replica = '' WHERE device_id = ? AND epoch = ?`, deviceID, epoch)
	if err != nil {
		return false, fmt.Errorf("release session of device %q: %w", deviceID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("release session of device %q: %w", deviceID, err)
	}
	return n > 0, nil
}

func (s *sqliteStore) ReleaseReplica(ctx context.Context, replica string) (int, error) {
	res, err := s.w.ExecContext(ctx, `UPDATE device_sessions SET replica = '' WHERE replica = ? AND replica <> ''`, replica)
	if err != nil {
		return 0, fmt.Errorf("release sessions of replica %q: %w", replica, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("release sessions of replica %q: %w", replica, err)
	}
	return int(n), nil
}

func (s *sqliteStore) GetSession(ctx context.Context, deviceID string) (DeviceSession, error) {
	var ds DeviceSession
	var since int64
	err := s.r.QueryRowContext(ctx, `SELECT device_id, epoch, replica, since FROM device_sessions WHERE device_id = ?`, deviceID).
		Scan(&ds.DeviceID, &ds.Epoch, &ds.Replica, &since)
	if errors.Is(err, sql.ErrNoRows) {
		return DeviceSession{}, fmt.Errorf("get session of device %q: %w", deviceID, ErrNotFound)
	}
	if err != nil {
		return DeviceSession{}, fmt.Errorf("get session of device %q: %w", deviceID, err)
	}
	ds.Since = fromMicros(since)
	return ds, nil
}

func (s *sqliteStore) ReplicaSessions(ctx context.Context, replica string) ([]DeviceSession, error) {
	if replica == "" {
		return nil, nil
	}
	rows, err := s.r.QueryContext(ctx, `SELECT device_id, epoch, replica, since FROM device_sessions WHERE replica = ? ORDER BY device_id`, replica)
	if err != nil {
		return nil, fmt.Errorf("list sessions of replica %q: %w", replica, err)
	}
	defer rows.Close()
	var out []DeviceSession
	for rows.Next() {
		var ds DeviceSession
		var since int64
		if err := rows.Scan(&ds.DeviceID, &ds.Epoch, &ds.Replica, &since); err != nil {
			return nil, fmt.Errorf("list sessions of replica %q: %w", replica, err)
		}
		ds.Since = fromMicros(since)
		out = append(out, ds)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list sessions of replica %q: %w", replica, err)
	}
	return out, nil
}

func (s *postgresStore) ClaimSession(ctx context.Context, deviceID, replica string) (int64, error) {
	if !isText(deviceID) || !isText(replica) || replica == "" {
		return 0, fmt.Errorf("claim session of device %q: %w", deviceID, ErrInvalidText)
	}
	var epoch int64
	err := s.pool.QueryRow(ctx, `INSERT INTO device_sessions (device_id, epoch, replica, since)
		VALUES ($1, 1, $2, $3)
		ON CONFLICT (device_id) DO UPDATE SET
			epoch = device_sessions.epoch + 1, replica = excluded.replica, since = excluded.since
		RETURNING epoch`, deviceID, replica, now()).Scan(&epoch)
	if err != nil {
		return 0, fmt.Errorf("claim session of device %q: %w", deviceID, err)
	}
	return epoch, nil
}

func (s *postgresStore) ReleaseSession(ctx context.Context, deviceID string, epoch int64) (bool, error) {
	if !isText(deviceID) {
		return false, nil
	}
	tag, err := s.pool.Exec(ctx, `UPDATE device_sessions SET replica = '' WHERE device_id = $1 AND epoch = $2`, deviceID, epoch)
	if err != nil {
		return false, fmt.Errorf("release session of device %q: %w", deviceID, err)
	}
	return tag.RowsAffected() > 0, nil
}

func (s *postgresStore) ReleaseReplica(ctx context.Context, replica string) (int, error) {
	if !isText(replica) || replica == "" {
		return 0, nil
	}
	tag, err := s.pool.Exec(ctx, `UPDATE device_sessions SET replica = '' WHERE replica = $1`, replica)
	if err != nil {
		return 0, fmt.Errorf("release sessions of replica %q: %w", replica, err)
	}
	return int(tag.RowsAffected()), nil
}

func (s *postgresStore) GetSession(ctx context.Context, deviceID string) (DeviceSession, error) {
	if !isText(deviceID) {
		return DeviceSession{}, fmt.Errorf("get session of device %q: %w", deviceID, ErrNotFound)
	}
	var ds DeviceSession
	err := s.pool.QueryRow(ctx, `SELECT device_id, epoch, replica, since FROM device_sessions WHERE device_id = $1`, deviceID).
		Scan(&ds.DeviceID, &ds.Epoch, &ds.Replica, &ds.Since)
	if errors.Is(err, pgx.ErrNoRows) {
		return DeviceSession{}, fmt.Errorf("get session of device %q: %w", deviceID, ErrNotFound)
	}
	if err != nil {
		return DeviceSession{}, fmt.Errorf("get session of device %q: %w", deviceID, err)
	}
	ds.Since = ds.Since.UTC()
	return ds, nil
}

func (s *postgresStore) ReplicaSessions(ctx context.Context, replica string) ([]DeviceSession, error) {
	if !isText(replica) || replica == "" {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT device_id, epoch, replica, since FROM device_sessions WHERE replica = $1 ORDER BY device_id`, replica)
	if err != nil {
		return nil, fmt.Errorf("list sessions of replica %q: %w", replica, err)
	}
	defer rows.Close()
	var out []DeviceSession
	for rows.Next() {
		var ds DeviceSession
		if err := rows.Scan(&ds.DeviceID, &ds.Epoch, &ds.Replica, &ds.Since); err != nil {
			return nil, fmt.Errorf("list sessions of replica %q: %w", replica, err)
		}
		ds.Since = ds.Since.UTC()
		out = append(out, ds)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list sessions of replica %q: %w", replica, err)
	}
	return out, nil
}
