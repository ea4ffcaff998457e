package sas

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

func TestDecodeKey(t *testing.T) {
	tests := []struct {
		name string
		key  string
		want []byte // nil: want ErrMalformed
	}{
		{"32 bytes", testKey, func() []byte {
			b := make([]byte, 32)
			for i := range b {
				b[i] = byte(i)
			}
			return b
		}()},
		{"16 bytes", base64.StdEncoding.EncodeToString(make([]byte, 16)), make([]byte, 16)},
		{"64 bytes", base64.StdEncoding.EncodeToString(make([]byte, 64)), make([]byte, 64)},
		{"15 bytes", base64.StdEncoding.EncodeToString(make([]byte, 15)), nil},
		{"65 bytes", base64.StdEncoding.EncodeToString(make([]byte, 65)), nil},
		{"empty", "", nil},
		{"unpadded", strings.TrimRight(testKey, "="), nil},
		{"URL alphabet", base64.URLEncoding.EncodeToString(bytes.Repeat([]byte{0xfb}, 32)), nil},
		{"line break", testKey[:20] + "\n" + testKey[20:], nil},
		{"space", " " + testKey, nil},
		{"non-zero padding bits", testKey[:len(testKey)-2] + "9=", nil},
		{"very long", strings.Repeat("A", 1<<20), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeKey(tt.key)
			if tt.want == nil {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("DecodeKey = %x, %v; want ErrMalformed", got, err)
				}
				if tt.key != "" && strings.Contains(err.Error(), tt.key[:4]) {
					t.Errorf("error %q contains the key", err)
				}
				return
			}
			if err != nil || !bytes.Equal(got, tt.want) {
				t.Errorf("DecodeKey = %x, %v; want %x", got, err, tt.want)
			}
		})
	}
}

func TestNewKey(t *testing.T) {
	a, b := NewKey(), NewKey()
	if a == b {
		t.Errorf("NewKey returned %q twice", a)
	}
	for _, k := range []string{a, b} {
		raw, err := DecodeKey(k)
		if err != nil || len(raw) != 32 {
			t.Errorf("DecodeKey(NewKey()) = %d bytes, %v; want 32", len(raw), err)
		}
	}
}

func TestValidDeviceID(t *testing.T) {
	tests := []struct {
		id      string
		wantErr string // substring of the error; "" for valid
	}{
		{"dev1", ""},
		{"a-.+%_#*?!(),=@$'z", ""},
		{"ABCxyz0189", ""},
		{strings.Repeat("d", 128), ""},
		{"...", ""},
		{"", "empty"},
		{strings.Repeat("d", 129), "longer than 128"},
		{".", "path segment"},
		{"..", "path segment"},
		{"dev 1", `" " at offset 3`},
		{"a/b", `"/" at offset 1`},
		{"a;b", `";"`},
		{"a&b", `"&"`},
		{"a\\b", `"\\"`},
		{"a\x00", `"\x00" at offset 1`},
		{"caf\u00e9", `"\xc3" at offset 3`},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			err := ValidDeviceID(tt.id)
			if tt.wantErr == "" {
				if err != nil {
					t.Errorf("ValidDeviceID(%q) = %v", tt.id, err)
				}
				return
			}
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ValidDeviceID(%q) = %v, want ErrMalformed mentioning %q", tt.id, err, tt.wantErr)
			}
		})
	}
}

func TestDeviceResource(t *testing.T) {
	tests := []struct{ host, id, want string }{
		{testHub, "dev1", testHub + "/devices/dev1"},
		{testHub, "a.b-c_d", testHub + "/devices/a.b-c_d"},
		{testHub, "a+b", testHub + "/devices/a%2Bb"},
		{testHub, "-.+%_#*?!(),=@$'", testHub + "/devices/-.%2B%25_%23%2A%3F%21%28%29%2C%3D%40%24%27"},
		{"[::1]:8443", "dev1", "[::1]:8443/devices/dev1"},
	}
	for _, tt := range tests {
		if got := DeviceResource(tt.host, tt.id); got != tt.want {
			t.Errorf("DeviceResource(%q, %q) = %q, want %q", tt.host, tt.id, got, tt.want)
		}
	}
}
