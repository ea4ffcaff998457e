// Package registry is the hub's store: the device identity registry, the
// shared access policies, and the stream event log (the equivalent of Azure
// IoT Hub's DeviceStreams resource logs).
//
// [Store] is an interface with two implementations: a single node uses the
// embedded SQLite store from [OpenSQLite]; several hub replicas share one
// PostgreSQL database through [OpenPostgres]. Both follow the same contract,
// written on the interface methods, and are checked by the same test suite.
//
// Device IDs and policy names are compared case-sensitively, as in Azure IoT
// Hub. Times are kept to microsecond precision, in UTC.
package registry

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"strings"
	"time"
	"unicode/utf8"
)

// Errors returned by a [Store], wrapped; test for them with [errors.Is].
var (
	// ErrNotFound means the device or policy does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists means a device with that ID already exists.
	ErrExists = errors.New("already exists")
	// ErrPrecondition means a conditional update or delete named an ETag
	// that is not the device's current one (HTTP 412).
	ErrPrecondition = errors.New("etag mismatch")
	// ErrUnavailable means the store's database could not be reached when
	// it was opened: no server, credentials refused, no such database.
	ErrUnavailable = errors.New("database unavailable")
	// ErrInvalidText means a device ID, policy name or key is not text a
	// store can keep (see [Store]).
	ErrInvalidText = errors.New("not UTF-8 text without NUL bytes")
)

// Rights is the set of permissions a shared access policy grants, as in
// Azure IoT Hub. A device key grants only DeviceConnect, for that device.
type Rights uint8

// The rights of Azure IoT Hub's shared access policies.
const (
	RegistryRead Rights = 1 << iota
	RegistryWrite
	ServiceConnect
	DeviceConnect
)

var rightNames = [...]struct {
	r    Rights
	name string
}{
	{RegistryRead, "RegistryRead"},
	{RegistryWrite, "RegistryWrite"},
	{ServiceConnect, "ServiceConnect"},
	{DeviceConnect, "DeviceConnect"},
}

// Has reports whether r includes every right in want.
func (r Rights) Has(want Rights) bool { return r&want == want }

// String returns the Azure names of the rights in r joined with ", ", as in
// "RegistryRead, ServiceConnect" (the form of Azure's policy JSON). Unknown
// bits are shown in hex; no rights at all is "".
func (r Rights) String() string {
	var names []string
	for _, n := range rightNames {
		if r&n.r != 0 {
			names = append(names, n.name)
			r &^= n.r
		}
	}
	if r != 0 {
		names = append(names, fmt.Sprintf("%#x", uint8(r)))
	}
	return strings.Join(names, ", ")
}

// Status is whether a device may connect.
type Status string

// Device statuses, spelled as in Azure's JSON.
const (
	StatusEnabled  Status = "enabled"
	StatusDisabled Status = "disabled"
)

// Device is a registered device identity.
//
// On CreateDevice and UpdateDevice an empty Status means StatusEnabled, as in
// Azure. The store keeps the keys it is given; it does not generate them.
type Device struct {
	ID           string
	Status       Status
	StatusReason string
	PrimaryKey   string // base64
	SecondaryKey string // base64
	// ETag is opaque and changes on every update. It is never "" or "*",
	// and it carries no HTTP quotes: adding them is the REST layer's job.
	ETag string
	// Generation is Azure's generationId: set at creation, never changed,
	// different for a device deleted and created again with the same ID.
	Generation string
	Created    time.Time
	Updated    time.Time
}

// Policy is a shared access policy: a named pair of keys granting Rights.
type Policy struct {
	Name         string
	PrimaryKey   string // base64
	SecondaryKey string // base64
	Rights       Rights
}

// StreamEvent records one stream, written when it ends or fails to start.
type StreamEvent struct {
	ID        int64 // assigned by the store; ignored by AddStreamEvent
	StreamID  string
	DeviceID  string
	Policy    string // the policy that initiated the stream
	Name      string // stream name
	Result    string // e.g. "accepted", "rejected", "unavailable", "timeout", "ended"
	Reason    string
	BytesUp   int64 // service -> device
	BytesDown int64 // device -> service
	Started   time.Time
	Duration  time.Duration
}

// EventFilter selects stream events. Zero values select everything.
type EventFilter struct {
	DeviceID string    // only this device (exact match)
	Since    time.Time // only events that started at or after Since
	Limit    int       // at most this many; 0 (or less) means 1000
}

// defaultEventLimit is the number of events StreamEvents returns when the
// filter's Limit is 0.
const defaultEventLimit = 1000

// Store is the hub's registry. It is safe for concurrent use.
//
// Strings are kept as given when they are UTF-8 without NUL bytes, which is
// what PostgreSQL's text holds; every store treats other strings alike. A
// device ID, policy name or key that is not such text is refused with
// ErrInvalidText when it would be stored, and names no device or policy
// when it is looked up (ErrNotFound). Free text (a device's StatusReason,
// the strings of a StreamEvent, an EventFilter's DeviceID) is stored with
// invalid bytes and NULs replaced by U+FFFD, so that a peer's odd bytes
// never cost an event.
//
// Errors are wrapped with the operation and the device ID or policy name;
// they never contain keys.
type Store interface {
	// GetDevice returns the device, or ErrNotFound.
	GetDevice(ctx context.Context, id string) (Device, error)
	// ListDevices returns every device, ordered by ID (bytewise).
	ListDevices(ctx context.Context) ([]Device, error)
	// CreateDevice stores a new device and returns it with ETag,
	// Generation, Created and Updated set (any given values are ignored).
	// It returns ErrExists if the ID is taken.
	CreateDevice(ctx context.Context, d Device) (Device, error)
	// UpdateDevice replaces the Status, StatusReason and keys of device
	// d.ID and returns it with a new ETag and Updated. ifMatch "" or "*"
	// updates unconditionally; any other value must equal the current ETag
	// (HTTP quotes around it are ignored) or the update fails with
	// ErrPrecondition. It returns ErrNotFound if
	// the device does not exist.
	UpdateDevice(ctx context.Context, d Device, ifMatch string) (Device, error)
	// DeleteDevice deletes the device, with the same ifMatch rules as
	// UpdateDevice. It returns ErrNotFound if the device does not exist.
	DeleteDevice(ctx context.Context, id string, ifMatch string) error

	// GetPolicy returns the policy, or ErrNotFound.
	GetPolicy(ctx context.Context, name string) (Policy, error)
	// ListPolicies returns every policy, ordered by name.
	ListPolicies(ctx context.Context) ([]Policy, error)
	// PutPolicy creates the policy or replaces the one with the same name.
	PutPolicy(ctx context.Context, p Policy) error

	// AddStreamEvent appends e to the stream event log.
	AddStreamEvent(ctx context.Context, e StreamEvent) error
	// AddStreamEvents appends es to the stream event log in one
	// transaction: all of them or none.
	AddStreamEvents(ctx context.Context, es []StreamEvent) error
	// StreamEvents returns the events matching f, newest first (by
	// Started, then by ID).
	StreamEvents(ctx context.Context, f EventFilter) ([]StreamEvent, error)
	// PruneStreamEvents bounds the event log: it deletes every event that
	// started before olderThan, and every event beyond the newest keep (in
	// the order of StreamEvents), and returns how many it deleted. A zero
	// olderThan sets no age bound; keep <= 0 sets no count bound.
	PruneStreamEvents(ctx context.Context, olderThan time.Time, keep int) (int, error)

	// ClaimSession records that replica now holds device's newest control
	// session and returns that session's epoch: one more than the last
	// epoch the device had (1 for its first), atomically, so concurrent
	// claims of one device get distinct epochs and the highest is the
	// newest. Hub replicas sharing a registry use it to agree on which
	// session wins (see [DeviceSession]).
	ClaimSession(ctx context.Context, deviceID, replica string) (int64, error)
	// ReleaseSession records that the device's session of the given epoch
	// ended. It changes nothing and returns false when a newer session has
	// claimed the device since.
	ReleaseSession(ctx context.Context, deviceID string, epoch int64) (bool, error)
	// ReleaseReplica records that every session replica held has ended
	// (a replica that restarts holds none) and returns how many it found.
	ReleaseReplica(ctx context.Context, replica string) (int, error)
	// GetSession returns the device's last claimed session, live
	// (Replica set) or released (Replica ""), or ErrNotFound if the device
	// never claimed one.
	GetSession(ctx context.Context, deviceID string) (DeviceSession, error)
	// ReplicaSessions returns the live sessions recorded for replica,
	// ordered by device ID.
	ReplicaSessions(ctx context.Context, replica string) ([]DeviceSession, error)

	// Close releases the store. Calls made after Close fail.
	Close() error
}

// DeviceSession is the record of a device's newest control session,
// shared by the hub replicas of one registry.
type DeviceSession struct {
	DeviceID string
	// Epoch numbers the device's sessions: each claim takes the next one,
	// and it never goes back, not even after a release.
	Epoch int64
	// Replica names the replica that holds the session (its advertised
	// host:port), or is "" once the session was released.
	Replica string
	// Since is when the session was claimed.
	Since time.Time
}

// isText reports whether s is UTF-8 without NUL bytes: a string every
// store keeps as given.
func isText(s string) bool { return utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 }

// cleanText is s with each run of invalid bytes, and each NUL, replaced by
// U+FFFD.
func cleanText(s string) string {
	if isText(s) {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

// checkKeys returns ErrInvalidText, saying which, if a key is not text. It
// never shows the key.
func checkKeys(primary, secondary string) error {
	if !isText(primary) {
		return fmt.Errorf("primary key: %w", ErrInvalidText)
	}
	if !isText(secondary) {
		return fmt.Errorf("secondary key: %w", ErrInvalidText)
	}
	return nil
}

// checkPolicy returns ErrInvalidText, saying which, if p's name or a key
// is not text.
func checkPolicy(p Policy) error {
	if !isText(p.Name) {
		return fmt.Errorf("policy name: %w", ErrInvalidText)
	}
	return checkKeys(p.PrimaryKey, p.SecondaryKey)
}

// eventColumns are the stream_events columns an event is written to, in
// the order of sqliteEventArgs and postgresEventArgs.
const eventColumns = `stream_id, device_id, policy, name, result, reason, bytes_up, bytes_down, started, duration`

// eventInsertSizes are the numbers of events that the INSERT statements
// of a batch write, largest first: a batch is written as a few multi-row
// INSERTs rather than a statement per event, which is most of the cost of
// a small event (issue 7), and from a few fixed statements, which each
// store prepares once (SQLite spends more parsing a 64-row INSERT than
// running it). The 640 parameters of the largest are far below the limits
// of SQLite (32766) and PostgreSQL (65535).
var eventInsertSizes = [...]int{64, 16, 4, 1}

// eventChunks yields es in order, split into chunks of eventInsertSizes,
// each with the index of its size.
func eventChunks(es []StreamEvent) iter.Seq2[int, []StreamEvent] {
	return func(yield func(int, []StreamEvent) bool) {
		for i, n := range eventInsertSizes {
			for len(es) >= n {
				if !yield(i, es[:n]) {
					return
				}
				es = es[n:]
			}
		}
	}
}

// insertEventsSQL is an INSERT of rows events into stream_events, with
// parameters written by param(i) for i from 1 up.
func insertEventsSQL(rows int, param func(i int) string) string {
	var b strings.Builder
	b.WriteString("INSERT INTO stream_events (" + eventColumns + ") VALUES ")
	const cols = 10
	for r := range rows {
		if r > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('(')
		for c := range cols {
			if c > 0 {
				b.WriteByte(',')
			}
			b.WriteString(param(r*cols + c + 1))
		}
		b.WriteByte(')')
	}
	return b.String()
}

// cleanEvent applies cleanText to the strings of e.
func cleanEvent(e StreamEvent) StreamEvent {
	for _, p := range []*string{&e.StreamID, &e.DeviceID, &e.Policy, &e.Name, &e.Result, &e.Reason} {
		*p = cleanText(*p)
	}
	return e
}
