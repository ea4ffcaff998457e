package sas

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// maxConnStringLen bounds the input of [ParseConnectionString]; real ones
// are under 300 bytes.
const maxConnStringLen = 4096

// maxKeyNameLen bounds SharedAccessKeyName.
const maxKeyNameLen = 128

// maxHostNameLen bounds HostName: a DNS name plus a port.
const maxHostNameLen = 253 + len(":65535")

// Connection string keys. Azure compares them case-sensitively.
const (
	keyHostName              = "HostName"
	keyDeviceID              = "DeviceId"
	keySharedAccessKeyName   = "SharedAccessKeyName"
	keySharedAccessKey       = "SharedAccessKey"
	keyGatewayHostName       = "GatewayHostName"
	keyModuleID              = "ModuleId"
	keyX509                  = "x509"
	keySharedAccessSignature = "SharedAccessSignature"
)

// ConnectionString is an Azure IoT Hub connection string, in one of two
// forms:
//
//	device: HostName=h;DeviceId=d;SharedAccessKey=k
//	policy: HostName=h;SharedAccessKeyName=n;SharedAccessKey=k
//
// HostName may carry a port ("hub.example.com:8443", "127.0.0.1:8443",
// "[::1]:8443"); dsproxy allows that, Azure doesn't use it.
//
// A ConnectionString holds a secret key: [ConnectionString.String]
// includes it, so never log one.
type ConnectionString struct {
	HostName            string
	DeviceID            string // set for a device connection string
	SharedAccessKeyName string // set for a policy connection string
	SharedAccessKey     string // base64 key, as in the string
}

// ParseConnectionString parses a device or policy connection string.
//
// Parts are separated by ";" and split on their first "=", so values may
// contain "="; whitespace around parts, keys and values is dropped, and
// empty parts are skipped. Keys are case-sensitive and may appear once
// each. HostName and SharedAccessKey are required, and exactly one of
// DeviceId and SharedAccessKeyName. DeviceId must pass [ValidDeviceID] and
// the key [DecodeKey]. GatewayHostName is ignored, as is x509=false; ModuleId
// and x509=true are refused because dsproxy has no modules and no X.509
// authentication, and so is any other key.
//
// Every error wraps [ErrMalformed] (refused features also wrap
// [errors.ErrUnsupported]) and none contains the key or the input.
func ParseConnectionString(s string) (ConnectionString, error) {
	if len(s) > maxConnStringLen {
		return ConnectionString{}, fmt.Errorf("connection string: longer than %d bytes: %w", maxConnStringLen, ErrMalformed)
	}
	var (
		c    ConnectionString
		seen = make(map[string]bool, 4)
		n    int // 1-based index of the part, for errors that cannot name it
	)
	for part := range strings.SplitSeq(s, ";") {
		n++
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			// The part may be a misplaced key: do not quote it.
			return ConnectionString{}, fmt.Errorf("connection string: part %d is not Key=Value: %w", n, ErrMalformed)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch k {
		case keyHostName, keyDeviceID, keySharedAccessKeyName, keySharedAccessKey,
			keyGatewayHostName, keyModuleID, keyX509, keySharedAccessSignature:
		default:
			// Never quote an unknown key: a pasted base64 key splits
			// into "key" and "=" and would be echoed.
			return ConnectionString{}, fmt.Errorf("connection string: part %d has an unknown key (want %s, %s, %s or %s): %w",
				n, keyHostName, keyDeviceID, keySharedAccessKeyName, keySharedAccessKey, ErrMalformed)
		}
		if seen[k] {
			return ConnectionString{}, fmt.Errorf("connection string: %s given twice: %w", k, ErrMalformed)
		}
		seen[k] = true
		if v == "" {
			return ConnectionString{}, fmt.Errorf("connection string: %s is empty: %w", k, ErrMalformed)
		}
		switch k {
		case keyHostName:
			c.HostName = v
		case keyDeviceID:
			c.DeviceID = v
		case keySharedAccessKeyName:
			c.SharedAccessKeyName = v
		case keySharedAccessKey:
			c.SharedAccessKey = v
		case keyModuleID:
			return ConnectionString{}, fmt.Errorf("connection string: %s: module identities are not supported (%w): %w", k, errors.ErrUnsupported, ErrMalformed)
		case keyX509:
			switch strings.ToLower(v) {
			case "false":
			case "true":
				return ConnectionString{}, fmt.Errorf("connection string: %s: X.509 authentication is not supported (%w): %w", k, errors.ErrUnsupported, ErrMalformed)
			default:
				return ConnectionString{}, fmt.Errorf("connection string: %s: want true or false: %w", k, ErrMalformed)
			}
		case keySharedAccessSignature:
			return ConnectionString{}, fmt.Errorf("connection string: %s: a token in place of a key is not supported (%w): %w", k, errors.ErrUnsupported, ErrMalformed)
		}
	}
	if err := c.validate(); err != nil {
		return ConnectionString{}, err
	}
	return c, nil
}

// validate checks a connection string assembled from its parts.
func (c ConnectionString) validate() error {
	switch {
	case c.HostName == "":
		return fmt.Errorf("connection string: no %s: %w", keyHostName, ErrMalformed)
	case c.SharedAccessKey == "":
		return fmt.Errorf("connection string: no %s: %w", keySharedAccessKey, ErrMalformed)
	case c.DeviceID == "" && c.SharedAccessKeyName == "":
		return fmt.Errorf("connection string: need %s or %s: %w", keyDeviceID, keySharedAccessKeyName, ErrMalformed)
	case c.DeviceID != "" && c.SharedAccessKeyName != "":
		return fmt.Errorf("connection string: both %s and %s given: %w", keyDeviceID, keySharedAccessKeyName, ErrMalformed)
	}
	if err := validHostName(c.HostName); err != nil {
		return fmt.Errorf("connection string: %s: %w", keyHostName, err)
	}
	if c.DeviceID != "" {
		if err := ValidDeviceID(c.DeviceID); err != nil {
			return fmt.Errorf("connection string: %w", err)
		}
	}
	if c.SharedAccessKeyName != "" {
		if err := validKeyName(c.SharedAccessKeyName); err != nil {
			return fmt.Errorf("connection string: %s: %w", keySharedAccessKeyName, err)
		}
	}
	if _, err := DecodeKey(c.SharedAccessKey); err != nil {
		return fmt.Errorf("connection string: %w", err)
	}
	return nil
}

// String formats c in canonical order, HostName;DeviceId;SharedAccessKey or
// HostName;SharedAccessKeyName;SharedAccessKey, leaving out empty fields.
// The result holds the secret key. For a c returned by
// [ParseConnectionString], parsing the result gives c again.
func (c ConnectionString) String() string {
	var b strings.Builder
	add := func(k, v string) {
		if v == "" {
			return
		}
		if b.Len() > 0 {
			b.WriteByte(';')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(v)
	}
	add(keyHostName, c.HostName)
	add(keyDeviceID, c.DeviceID)
	add(keySharedAccessKeyName, c.SharedAccessKeyName)
	add(keySharedAccessKey, c.SharedAccessKey)
	return b.String()
}

// IsDevice reports whether c names a device (DeviceID set) rather than a
// shared access policy.
func (c ConnectionString) IsDevice() bool {
	return c.DeviceID != ""
}

// validHostName checks a HostName: a DNS name or IPv4 address, or a
// bracketed IPv6 address, with an optional ":port".
func validHostName(h string) error {
	if len(h) > maxHostNameLen {
		return fmt.Errorf("longer than %d bytes: %w", maxHostNameLen, ErrMalformed)
	}
	host, port, ok := splitHostPort(h)
	if !ok {
		return fmt.Errorf("want host or host:port: %w", ErrMalformed)
	}
	if port != "" {
		if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
			return fmt.Errorf("bad port %q: %w", port, ErrMalformed)
		}
	}
	if strings.HasPrefix(h, "[") {
		if ip := net.ParseIP(host); ip == nil || ip.To4() != nil {
			return fmt.Errorf("bad IPv6 address %q: %w", host, ErrMalformed)
		}
		return nil
	}
	for i := 0; i < len(host); i++ {
		c := host[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '.', c == '_':
		default:
			return fmt.Errorf("character %q at offset %d not allowed: %w", host[i:i+1], i, ErrMalformed)
		}
	}
	return nil
}

// splitHostPort splits "host", "host:port", "[v6]" or "[v6]:port". Unlike
// net.SplitHostPort the port is optional. ok is false when h has an empty
// host or port, unbalanced brackets, or several colons outside brackets.
func splitHostPort(h string) (host, port string, ok bool) {
	if rest, found := strings.CutPrefix(h, "["); found {
		host, rest, found = strings.Cut(rest, "]")
		if !found || host == "" {
			return "", "", false
		}
		if rest == "" {
			return host, "", true
		}
		port, found = strings.CutPrefix(rest, ":")
		return host, port, found && port != ""
	}
	host, port, found := strings.Cut(h, ":")
	if host == "" || strings.ContainsAny(host, "[]") || (found && (port == "" || strings.Contains(port, ":"))) {
		return "", "", false
	}
	return host, port, true
}

// validKeyName checks a shared access policy name: printable ASCII without
// spaces.
func validKeyName(n string) error {
	if len(n) > maxKeyNameLen {
		return fmt.Errorf("longer than %d bytes: %w", maxKeyNameLen, ErrMalformed)
	}
	for i := 0; i < len(n); i++ {
		if n[i] <= ' ' || n[i] >= 0x7f {
			return fmt.Errorf("character %q at offset %d not allowed: %w", n[i:i+1], i, ErrMalformed)
		}
	}
	return nil
}
