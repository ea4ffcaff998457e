// Package wire holds what the hub and its clients must agree on byte for
// byte: header names, the control-session messages and the JSON bodies of
// the stream-initiation and error responses.
//
// # Control session
//
// A device dials GET /devices/{id}/control with its SAS token and the
// WebSocket subprotocol [ControlSubprotocol]. The WebSocket carries a yamux
// session in which the device is the yamux server and the hub the client.
// Once the hub has made the session the device's current one, it opens a
// first yamux stream and writes one [SessionReady]: from then on the device
// can be reached. For every stream request the hub then opens one yamux
// stream and writes one [StreamRequest]; the device answers with one
// [StreamResponse] and both ends close the yamux stream. Each message is a 4-byte big-endian length followed
// by that many bytes of JSON; a length above [MaxMessageSize] is refused
// before anything is read, so a peer cannot make the other allocate.
//
// # Stream initiation
//
// POST /twins/{id}/streams/{name} answers 200 whether or not the device
// accepted, with the Azure IoT Hub headers [HeaderIsAccepted] ("True" or
// "False", exactly), [HeaderURL] and [HeaderAuthToken], and an
// [InitiateResponse] body. Failures carry an [Error] body.
//
// # Streaming endpoint
//
// GET /streams/{id} with "Authorization: Bearer <token>" joins one side of a
// stream. Binary messages carry the bytes; a zero-length binary message means
// "no more data from me" (a TCP FIN).
package wire

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// ControlSubprotocol is the WebSocket subprotocol of a device control session.
const ControlSubprotocol = "dsproxy.control.v1"

// Azure IoT Hub device-streams headers.
const (
	HeaderIsAccepted      = "iothub-streaming-is-accepted"
	HeaderURL             = "iothub-streaming-url"
	HeaderAuthToken       = "iothub-streaming-auth-token"
	HeaderConnectTimeout  = "iothub-streaming-connect-timeout-in-seconds"
	HeaderResponseTimeout = "iothub-streaming-response-timeout-in-seconds"
)

// Values of [HeaderIsAccepted]. Azure clients compare them exactly.
const (
	Accepted    = "True"
	NotAccepted = "False"
)

// Close codes the hub sends on the streaming endpoint besides the standard
// ones it relays; 4000–4999 are for applications (RFC 6455 7.4.2). Clients
// turn them into errors that say why the stream ended.
const (
	// ClosePeerLost ends a side whose peer's connection failed without a
	// close frame (crash, reset, network loss), or that aborted.
	ClosePeerLost = 4001
	// CloseHandshakeTimeout ends a side whose peer did not connect before
	// the handshake deadline.
	CloseHandshakeTimeout = 4008
	// CloseIdleTimeout ends both sides of a stream that carried no message
	// for the hub's idle timeout.
	CloseIdleTimeout = 4009
)

// MaxMessageSize bounds one control message.
const MaxMessageSize = 16 << 10

// Limits on fields of control messages.
const (
	MaxStreamNameLen = 128
	MaxReasonLen     = 1024
)

// ErrTooLarge reports a control message longer than [MaxMessageSize].
var ErrTooLarge = errors.New("control message too large")

// SessionReady is the first message of a control session: the hub routes
// stream requests to this session from now on.
type SessionReady struct {
	DeviceID string `json:"deviceId"`
}

// StreamRequest asks a device to accept a stream.
type StreamRequest struct {
	StreamID  string    `json:"streamId"`
	Name      string    `json:"name"`
	URL       string    `json:"url"`
	AuthToken string    `json:"authToken"`
	Deadline  time.Time `json:"deadline"`
	// Inline asks for a session stream (see OpenStream): the answer's
	// yamux stream carries the data, and URL and AuthToken are empty.
	Inline bool `json:"inline,omitempty"`
	// MaxFrame, on an inline request, is the largest data payload the
	// device may send on the stream: what the service accepts. Zero means
	// [LegacyFramePayload] (see [FrameLimit]).
	MaxFrame int `json:"maxFrame,omitempty"`
}

// Validate reports whether r is complete.
func (r *StreamRequest) Validate() error {
	switch {
	case r.StreamID == "":
		return errors.New("stream request: no streamId")
	case r.Name == "" || len(r.Name) > MaxStreamNameLen:
		return fmt.Errorf("stream request: stream name must be 1 to %d bytes", MaxStreamNameLen)
	case r.Inline && (r.URL != "" || r.AuthToken != ""):
		return errors.New("stream request: an inline request has no url or authToken")
	case !r.Inline && r.URL == "":
		return errors.New("stream request: no url")
	case !r.Inline && r.AuthToken == "":
		return errors.New("stream request: no authToken")
	case r.Deadline.IsZero():
		return errors.New("stream request: no deadline")
	}
	return nil
}

// StreamResponse is a device's answer to a [StreamRequest].
type StreamResponse struct {
	Accepted bool   `json:"accepted"`
	Reason   string `json:"reason,omitempty"`
}

// Validate reports whether r is acceptable.
func (r *StreamResponse) Validate() error {
	if len(r.Reason) > MaxReasonLen {
		return fmt.Errorf("stream response: reason longer than %d bytes", MaxReasonLen)
	}
	return nil
}

// WriteMessage writes v as one length-prefixed JSON control message.
func WriteMessage(w io.Writer, v any) error {
	var buf []byte
	if a, ok := v.(appender); ok {
		buf, ok = a.appendJSON(make([]byte, 4, 256))
		if !ok {
			buf = nil
		}
	}
	if buf == nil { // not a message of codec.go, or not a plain one
		body, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("encode control message: %w", err)
		}
		buf = append(make([]byte, 4, 4+len(body)), body...)
	}
	body := buf[4:]
	if len(body) > MaxMessageSize {
		return ErrTooLarge
	}
	binary.BigEndian.PutUint32(buf, uint32(len(body)))
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("write control message: %w", err)
	}
	return nil
}

// ReadMessage reads one length-prefixed JSON control message into v. It
// reads exactly the message and nothing past it. A truncated message is
// io.ErrUnexpectedEOF; a clean end before the first byte is io.EOF.
func ReadMessage(r io.Reader, v any) error {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return io.EOF
		}
		return fmt.Errorf("read control message: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > MaxMessageSize {
		return fmt.Errorf("read control message of %d bytes: %w", n, ErrTooLarge)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("read control message: %w", err)
	}
	if d, ok := v.(decoder); ok && d.decodeJSON(body) {
		return nil
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("decode control message: %w", err)
	}
	return nil
}

// InitiateResponse is the JSON body of a 200 answer to a stream initiation.
type InitiateResponse struct {
	StreamID   string `json:"streamId"`
	IsAccepted bool   `json:"isAccepted"`
	URL        string `json:"url,omitempty"`
	AuthToken  string `json:"authToken,omitempty"`
	Reason     string `json:"reason,omitempty"`
}

// Azure IoT Hub error codes used by dsproxy.
const (
	CodeBadRequest          = 400001
	CodeUnauthorized        = 401002
	CodeForbidden           = 403001
	CodeDeviceNotFound      = 404001
	CodeDeviceUnavailable   = 404104
	CodeStreamNotFound      = 404301
	CodeDeviceExists        = 409001
	CodePreconditionFailed  = 412002
	CodeTooManyRequests     = 429001
	CodeInternal            = 500001
	CodeNotImplemented      = 501001 // the device takes no session streams
	CodeBadGateway          = 502101 // the device's answer was not a StreamResponse
	CodeGatewayTimeout      = 504101
	CodeServiceUnavailable  = 503001
	CodeRequestTooLarge     = 413001
	CodeMethodNotAllowed    = 405001
	CodeUnsupportedMedia    = 415001
	CodeStreamTokenRejected = 401003
)

// Error is the JSON body of a failed request, shaped like Azure IoT Hub's:
// the classic "Message"/"ExceptionMessage" pair that older SDKs parse, and
// the numeric errorCode that newer ones read.
type Error struct {
	Message          string `json:"Message"`
	ExceptionMessage string `json:"ExceptionMessage"`
	ErrorCode        int    `json:"errorCode"`
	TrackingID       string `json:"trackingId"`
	TimestampUTC     string `json:"timestampUtc"`
	// Detail is the human-readable message alone.
	Detail string `json:"message"`
}

// NewError builds an [Error] for code with a human-readable message.
func NewError(code int, name, msg, trackingID string, now time.Time) Error {
	ts := now.UTC().Format("2006-01-02T15:04:05.0000000Z")
	return Error{
		Message:          fmt.Sprintf("ErrorCode:%s;%s", name, msg),
		ExceptionMessage: fmt.Sprintf("Tracking ID:%s-TimeStamp:%s", trackingID, ts),
		ErrorCode:        code,
		TrackingID:       trackingID,
		TimestampUTC:     ts,
		Detail:           msg,
	}
}
