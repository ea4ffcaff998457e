package sas

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strings"
)

// Bounds Azure IoT Hub puts on shared access keys, in decoded bytes.
const (
	minKeyLen = 16
	maxKeyLen = 64
)

// newKeyLen is the size of keys made by [NewKey], the size Azure generates.
const newKeyLen = 32

// DecodeKey returns the bytes of a shared access key written in padded
// standard base64, as in a connection string. Like Azure IoT Hub it
// requires 16 to 64 bytes. Errors wrap [ErrMalformed] and never contain the
// key.
func DecodeKey(key string) ([]byte, error) {
	if key == "" {
		return nil, fmt.Errorf("shared access key: empty: %w", ErrMalformed)
	}
	if len(key) > base64.StdEncoding.EncodedLen(maxKeyLen) {
		return nil, fmt.Errorf("shared access key: longer than %d bytes: %w", maxKeyLen, ErrMalformed)
	}
	// The decoder skips '\r' and '\n'; a key holding them was mangled, and
	// accepting it would give one key two spellings.
	if strings.ContainsAny(key, "\r\n") {
		return nil, fmt.Errorf("shared access key: contains a line break: %w", ErrMalformed)
	}
	b, err := base64.StdEncoding.Strict().DecodeString(key)
	if err != nil {
		// err holds only an offset, but a short phrase says enough.
		return nil, fmt.Errorf("shared access key: not padded standard base64: %w", ErrMalformed)
	}
	if len(b) < minKeyLen || len(b) > maxKeyLen {
		return nil, fmt.Errorf("shared access key: %d bytes, must be %d to %d: %w", len(b), minKeyLen, maxKeyLen, ErrMalformed)
	}
	return b, nil
}

// NewKey returns a new random 32-byte key from crypto/rand in padded
// standard base64, the form Azure IoT Hub generates.
func NewKey() string {
	b := make([]byte, newKeyLen)
	// crypto/rand.Read never returns an error; it crashes the program if
	// the system has no randomness.
	_, _ = rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// maxDeviceIDLen is the longest device ID Azure IoT Hub allows.
const maxDeviceIDLen = 128

// ValidDeviceID reports whether id follows Azure IoT Hub's rule for device
// IDs: 1 to 128 ASCII letters, digits and any of - . + % _ # * ? ! ( ) , = @ $ '.
// It also refuses "." and "..", which the rule allows but which would be
// dot segments in a resource path. The error wraps [ErrMalformed] and names
// the first character that is not allowed.
func ValidDeviceID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("device ID: empty: %w", ErrMalformed)
	case len(id) > maxDeviceIDLen:
		return fmt.Errorf("device ID: %d bytes, longer than %d: %w", len(id), maxDeviceIDLen, ErrMalformed)
	case id == "." || id == "..":
		return fmt.Errorf("device ID: %q is a path segment: %w", id, ErrMalformed)
	}
	for i := 0; i < len(id); i++ {
		if !deviceIDChar(id[i]) {
			return fmt.Errorf("device ID: character %q at offset %d not allowed: %w", id[i:i+1], i, ErrMalformed)
		}
	}
	return nil
}

func deviceIDChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("-.+%_#*?!(),=@$'", c) >= 0
}

// DeviceResource returns the resource URI of a device, the sr of its
// tokens before URL encoding: hostName + "/devices/" + the device ID with
// every byte other than an RFC 3986 unreserved character (letters, digits,
// "-", ".", "_", "~") percent-encoded, as the Azure SDKs do. For example
// ("myhub.azure-devices.net", "a+b") gives
// "myhub.azure-devices.net/devices/a%2Bb".
func DeviceResource(hostName, deviceID string) string {
	return hostName + "/devices/" + escapeSegment(deviceID)
}

// escapeSegment percent-encodes everything but RFC 3986 unreserved
// characters. url.PathEscape would leave "+", "=", "@", "$" and "," as they
// are, which the Azure SDKs encode.
func escapeSegment(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '-', c == '.', c == '_', c == '~':
			b.WriteByte(c)
		default:
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
		}
	}
	return b.String()
}
