package sas

import (
	"encoding/base64"
	"errors"
	"net/url"
	"strings"
	"testing"
)

// FuzzDecodeKey feeds arbitrary strings to DecodeKey, as a connection
// string or a device's JSON in a PUT /devices request may carry them. A
// key it accepts has 16 to 64 bytes and exactly one spelling.
func FuzzDecodeKey(f *testing.F) {
	for _, s := range []string{
		testKey, otherKey, NewKey(),
		"AAAAAAAAAAAAAAAAAAAAAA==",                       // 16 bytes
		strings.Repeat("A", 88),                          // 66 bytes
		"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",    // no padding
		"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n", // a line break
		"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh_=",   // base64url
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := DecodeKey(s)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("DecodeKey error %v does not wrap ErrMalformed", err)
			}
			if len(s) >= 8 && strings.Contains(err.Error(), s) {
				t.Fatalf("DecodeKey error %q quotes the key", err)
			}
			return
		}
		if len(b) < minKeyLen || len(b) > maxKeyLen {
			t.Fatalf("DecodeKey(%q) accepted %d bytes", s, len(b))
		}
		if again := base64.StdEncoding.EncodeToString(b); again != s {
			t.Fatalf("DecodeKey(%q) accepted a second spelling of %q", s, again)
		}
	})
}

// FuzzDeviceID checks ValidDeviceID and DeviceResource on arbitrary IDs, as
// they arrive in request paths and connection strings: an ID it accepts is
// one path segment that escapes and unescapes to itself, and can never be
// a dot segment.
func FuzzDeviceID(f *testing.F) {
	for _, s := range []string{"dev1", "a#b?c$d=e@f", "x+y%z", "%41", "o'k(1)*!,_-.x", ".", "..", "...", "a/b", "a%2Fb", "", strings.Repeat("d", 129)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		if err := ValidDeviceID(id); err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("ValidDeviceID error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if id == "" || len(id) > maxDeviceIDLen || id == "." || id == ".." || strings.ContainsAny(id, "/\\ \x00") {
			t.Fatalf("ValidDeviceID accepted %q", id)
		}
		res := DeviceResource("hub", id)
		seg, ok := strings.CutPrefix(res, "hub/devices/")
		if !ok || strings.Contains(seg, "/") {
			t.Fatalf("DeviceResource(%q) = %q: not one segment", id, res)
		}
		if dec, err := url.PathUnescape(seg); err != nil || dec != id {
			t.Fatalf("DeviceResource(%q) segment %q unescapes to %q, %v", id, seg, dec, err)
		}
		if dec, err := url.PathUnescape(url.PathEscape(id)); err != nil || dec != id {
			t.Fatalf("path escaping of %q does not round-trip: %q, %v", id, dec, err)
		}
	})
}
