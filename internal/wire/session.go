package wire

// # Session streams (the fast path)
//
// A service proxy may hold one session to the hub instead of dialling a
// WebSocket per stream: GET /service/session with a policy's SAS token and
// the WebSocket subprotocol [SessionSubprotocol]. The WebSocket carries a
// yamux session in which the service is the yamux client and the hub the
// server. Each yamux stream the service opens is one stream to a device:
//
//  1. The service writes one [OpenStream] message, and may go on at once
//     with data frames (below): the hub holds them, within the stream's
//     window, until the device has the request.
//  2. The hub checks the policy still allows it, opens a yamux stream on the
//     device's control session and writes a [StreamRequest] with Inline set
//     (no URL or token), followed by whatever data the service sent.
//  3. The device answers with one [StreamResponse] on that yamux stream. On
//     acceptance the same yamux stream carries the data; on rejection the
//     device closes it.
//  4. The hub answers the service with one [OpenResult], then relays frames
//     both ways until the stream ends.
//
// Frames carry the data of a session stream in both directions, so that a
// stream can end with a reason, as the streaming endpoint's close codes do:
// a 4-byte header (1 byte type, 3 bytes big-endian payload length) and the
// payload. [FrameData] carries bytes; [FrameFin] (no payload) means "no more
// data from me", a TCP FIN; [FrameClose] ends the stream in both
// directions with a 2-byte close code (the streaming endpoint's codes:
// 1000 normal, [ClosePeerLost], …) and a UTF-8 reason. A close frame may
// follow a fin frame. A yamux stream that ends without a close frame
// means its peer was lost.
//
// Frame size: a peer accepts data frames of up to [MaxFramePayload] bytes
// if it announces [FeatureLargeFrames] in [HeaderFeatures] when it opens
// its session (the device on its control session, the service on its
// service session), and of up to [LegacyFramePayload] otherwise, as
// builds before the feature do. The hub tells each side what the other
// accepts: the device in [StreamRequest].MaxFrame, the service in
// [OpenResult].MaxFrame, zero meaning LegacyFramePayload. Until the
// service has the hub's answer it sends frames of at most
// LegacyFramePayload. The hub ends a stream whose sender exceeds what the
// other side accepts with close code 1002 (protocol error) instead of
// relaying the frame.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"unicode/utf8"
)

// SessionSubprotocol is the WebSocket subprotocol of a service session.
const SessionSubprotocol = "dsproxy.session.v1"

// HeaderFeatures lists, comma-separated, what a device's control session
// or a service session supports beyond the base protocol ([FeatureInline],
// [FeatureLargeFrames]). A hub ignores tokens it does not know.
const HeaderFeatures = "dsproxy-features"

// FeatureInline: the device takes [StreamRequest]s with Inline set.
const FeatureInline = "inline-streams"

// FeatureLargeFrames: the device or service accepts data frames of up to
// [MaxFramePayload] bytes on its session streams, not only
// [LegacyFramePayload].
const FeatureLargeFrames = "frames-256k"

// OpenStream is the first message of a session stream: the device and the
// stream name, and optionally the timeouts of an Azure initiation (whole
// seconds; zero leaves the hub's defaults).
type OpenStream struct {
	DeviceID        string `json:"deviceId"`
	Name            string `json:"name"`
	ConnectTimeout  int    `json:"connectTimeoutInSeconds,omitempty"`
	ResponseTimeout int    `json:"responseTimeoutInSeconds,omitempty"`
}

// Validate reports whether o is complete. The hub checks the device ID and
// name further, as it does for a POST.
func (o *OpenStream) Validate() error {
	switch {
	case o.DeviceID == "":
		return errors.New("open stream: no deviceId")
	case o.Name == "" || len(o.Name) > MaxStreamNameLen:
		return fmt.Errorf("open stream: stream name must be 1 to %d bytes", MaxStreamNameLen)
	case o.ConnectTimeout < 0 || o.ResponseTimeout < 0:
		return errors.New("open stream: negative timeout")
	}
	return nil
}

// OpenResult is the hub's answer to an [OpenStream]. Status is the HTTP
// status a POST would have had: 200 with Accepted true or false (Reason is
// the device's), or a failure with ErrorCode and Message as in [Error] and,
// for 429, RetryAfter seconds.
type OpenResult struct {
	StreamID   string `json:"streamId,omitempty"`
	Status     int    `json:"status"`
	Accepted   bool   `json:"accepted"`
	Reason     string `json:"reason,omitempty"`
	ErrorCode  int    `json:"errorCode,omitempty"`
	Message    string `json:"message,omitempty"`
	RetryAfter int    `json:"retryAfter,omitempty"`
	// Replica, with Status StatusRedirect, is the host:port of the hub
	// replica that holds the device's session: open the stream on a
	// session to it.
	Replica string `json:"replica,omitempty"`
	// MaxFrame, on an accepted stream, is the largest data payload the
	// service may send on it: what the device accepts. Zero means
	// [LegacyFramePayload] (see [FrameLimit]).
	MaxFrame int `json:"maxFrame,omitempty"`
}

// StatusRedirect is the OpenResult status of a stream to a device whose
// session another hub replica holds (OpenResult.Replica).
const StatusRedirect = 307

// Frame types of a session stream.
const (
	FrameData  byte = 0
	FrameFin   byte = 1
	FrameClose byte = 2
)

// FrameHeaderSize is the size of a frame header.
const FrameHeaderSize = 4

// MaxFramePayload bounds a frame's payload: it is the most a peer of this
// build accepts, and the most it sends to a peer that announced
// [FeatureLargeFrames]; larger writes are split. Each frame costs a
// hand-off between goroutines and a yamux frame on every leg, so larger
// frames move a stream's bytes with less CPU; a frame never exceeds a
// stream's yamux window (4 MiB).
const MaxFramePayload = 256 << 10

// LegacyFramePayload is the largest payload every peer accepts, builds
// before [FeatureLargeFrames] included: what a side sends until it knows
// the other accepts more.
const LegacyFramePayload = 64 << 10

// FrameLimit is the largest data payload to send to a peer whose
// acceptance the hub announced as maxFrame ([OpenResult].MaxFrame,
// [StreamRequest].MaxFrame): [LegacyFramePayload] for zero (nothing
// announced) or less, and never more than [MaxFramePayload], the most
// this build's buffers hold.
func FrameLimit(maxFrame int) int {
	if maxFrame <= 0 {
		return LegacyFramePayload
	}
	return min(maxFrame, MaxFramePayload)
}

// MaxCloseReason bounds the reason of a close frame, as RFC 6455 bounds a
// close frame's.
const MaxCloseReason = 123

// ErrBadFrame reports a frame header or close frame that breaks the rules
// above.
var ErrBadFrame = errors.New("bad frame")

// frameBuffers holds buffers of one whole frame, taken only while a frame
// is copied, so an idle stream holds none.
var frameBuffers = sync.Pool{New: func() any {
	b := make([]byte, FrameHeaderSize+MaxFramePayload)
	return &b
}}

// FrameBuffer returns a buffer that holds a frame's header and the largest
// payload; give it back with PutFrameBuffer.
func FrameBuffer() *[]byte { return frameBuffers.Get().(*[]byte) }

// PutFrameBuffer gives back a buffer from FrameBuffer.
func PutFrameBuffer(b *[]byte) { frameBuffers.Put(b) }

// PutFrameHeader writes the header of a frame of typ with an n-byte payload
// into h.
func PutFrameHeader(h []byte, typ byte, n int) {
	binary.BigEndian.PutUint32(h, uint32(typ)<<24|uint32(n))
}

// ParseFrameHeader reads a frame header: its type and payload length. It
// refuses unknown types, payloads over [MaxFramePayload], a fin frame with
// a payload and a close frame whose payload cannot hold a code and a
// reason of at most [MaxCloseReason] bytes.
func ParseFrameHeader(h []byte) (typ byte, n int, err error) {
	v := binary.BigEndian.Uint32(h)
	typ, n = byte(v>>24), int(v&0xffffff)
	switch {
	case typ == FrameData && n <= MaxFramePayload:
	case typ == FrameFin && n == 0:
	case typ == FrameClose && n >= 2 && n <= 2+MaxCloseReason:
	default:
		return 0, 0, fmt.Errorf("frame type %d with %d bytes: %w", typ, n, ErrBadFrame)
	}
	return typ, n, nil
}

// AppendClose appends a whole close frame with code and reason (cut to
// [MaxCloseReason] bytes, on a rune boundary) to b.
func AppendClose(b []byte, code int, reason string) []byte {
	if len(reason) > MaxCloseReason {
		reason = reason[:MaxCloseReason]
		for len(reason) > 0 && !utf8.ValidString(reason) {
			reason = reason[:len(reason)-1]
		}
	}
	var h [FrameHeaderSize]byte
	PutFrameHeader(h[:], FrameClose, 2+len(reason))
	b = append(b, h[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(code))
	return append(b, reason...)
}

// ParseClose reads the payload of a close frame.
func ParseClose(p []byte) (code int, reason string, err error) {
	if len(p) < 2 || len(p) > 2+MaxCloseReason {
		return 0, "", fmt.Errorf("close frame of %d bytes: %w", len(p), ErrBadFrame)
	}
	if !utf8.Valid(p[2:]) {
		return 0, "", fmt.Errorf("close frame reason is not UTF-8: %w", ErrBadFrame)
	}
	return int(binary.BigEndian.Uint16(p)), string(p[2:]), nil
}
