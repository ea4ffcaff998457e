package hubclient

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/dsproxy/dsproxy/internal/wire"
)

// Errors that OpenStream and the registry calls return, to be matched with
// errors.Is. The concrete error is a [*HubError] or a [*RejectedError] with
// the hub's or the device's words.
var (
	// ErrRejected: the device refused the stream (see RejectedError.Reason).
	ErrRejected = errors.New("stream rejected by the device")
	// ErrDeviceUnavailable: the device is unknown, disabled or not connected.
	ErrDeviceUnavailable = errors.New("device unavailable")
	// ErrTimeout: the device did not answer in time.
	ErrTimeout = errors.New("device did not answer in time")
	// ErrUnauthorized: the hub refused the credential (wrong key, expired
	// or malformed token, unknown policy or device).
	ErrUnauthorized = errors.New("unauthorized")
	// ErrForbidden: the credential is valid but lacks the permission.
	ErrForbidden = errors.New("forbidden")
	// ErrNotFound: the registry has no such device.
	ErrNotFound = errors.New("not found")
	// ErrExists: the registry already has the device.
	ErrExists = errors.New("already exists")
	// ErrRateLimited: the hub asks to retry later (after
	// HubError.RetryAfter).
	ErrRateLimited = errors.New("rate limited")
	// ErrSessionLost: the session to the hub that carried a session stream
	// ended (the hub went away, or stopped answering keepalives).
	ErrSessionLost = errors.New("session to the hub lost")
)

// HubError is a request the hub answered with an error status.
type HubError struct {
	Op         string // what was attempted, e.g. "open stream to device \"x\""
	StatusCode int    // HTTP status
	Code       int    // Azure error code, e.g. 404104
	Message    string // the hub's message

	// RetryAfter is how long the hub asked the caller to wait before
	// trying again (its Retry-After header, sent with 429 Too Many
	// Requests when a stream limit or a policy's initiation rate is
	// reached); zero when the answer carried none.
	RetryAfter time.Duration
}

func (e *HubError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.StatusCode)
	}
	return fmt.Sprintf("%s: %s (%d)", e.Op, msg, e.StatusCode)
}

// Is maps the hub's answer onto the package's sentinel errors.
func (e *HubError) Is(target error) bool {
	switch target {
	case ErrUnauthorized:
		return e.StatusCode == http.StatusUnauthorized
	case ErrForbidden:
		return e.StatusCode == http.StatusForbidden
	case ErrDeviceUnavailable:
		return e.StatusCode == http.StatusNotFound && (e.Code == wire.CodeDeviceNotFound || e.Code == wire.CodeDeviceUnavailable)
	case ErrNotFound:
		return e.StatusCode == http.StatusNotFound
	case ErrTimeout:
		return e.StatusCode == http.StatusGatewayTimeout
	case ErrExists:
		return e.StatusCode == http.StatusConflict
	case ErrRateLimited:
		return e.StatusCode == http.StatusTooManyRequests
	}
	return false
}

// RejectedError is a stream the device refused.
type RejectedError struct {
	DeviceID string
	Name     string
	Reason   string // the device's reason
}

func (e *RejectedError) Error() string {
	return fmt.Sprintf("device %q rejected stream %q: %s", e.DeviceID, e.Name, e.Reason)
}

// Is reports ErrRejected.
func (e *RejectedError) Is(target error) bool { return target == ErrRejected }
