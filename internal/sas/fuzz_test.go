package sas

import (
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"
)

func FuzzParseToken(f *testing.F) {
	for _, s := range []string{
		"SharedAccessSignature sr=myhub.azure-devices.net%2fdevices%2fdev1&sig=dUk3ecSsggNPeQNG98fO6Pv16mCcXEgP6lT2QfotQ4s%3d&se=1700000000",
		"SharedAccessSignature sr=myhub.azure-devices.net&sig=iIzEw6hi6GK79RY5jNXO6QeQkSL%2fAx4zTmy44X2G1VY%3d&se=1700000000&skn=iothubowner",
		"SharedAccessSignature se=1&sig=i%2BYmMcSSZc4KzBi6ejz3l0iL%2B2sN0CE3q6vSm837h2g%3D&sr=h%2Fdevices%2Fx%2F..%2Fy",
		"SharedAccessSignature sr=%&sig=&se=-1&skn",
		"SharedAccessSignature sr=[::1]:8443%2Fdevices%2Fa%252Bb&sig=x&se=99999999999999999999",
		"SharedAccessSignature ",
		"",
	} {
		f.Add(s)
	}
	hosts := []string{"myhub.azure-devices.net", "[::1]:8443", "h"}
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseToken(s)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("ParseToken error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if len(s) > maxTokenLen {
			t.Fatalf("ParseToken accepted %d bytes", len(s))
		}
		if res, err := url.QueryUnescape(tok.RawResource); err != nil || res != tok.Resource || res == "" {
			t.Fatalf("Resource %q does not decode from RawResource %q", tok.Resource, tok.RawResource)
		}
		if _, err := decodeSignature(tok.Signature); err != nil {
			t.Fatalf("accepted signature %q: %v", tok.Signature, err)
		}
		err = tok.Verify(testKey, tok.Expiry, 0)
		if err != nil && !errors.Is(err, ErrBadSignature) {
			t.Fatalf("Verify at expiry = %v, want nil or ErrBadSignature", err)
		}
		for _, target := range []string{"", "/devices/dev1", "/devices/y", "/devices/a+b"} {
			err := tok.Covers(hosts, target)
			if err == nil {
				checkCovered(t, tok.Resource, target)
			} else if !errors.Is(err, ErrScope) {
				t.Fatalf("Covers error %v does not wrap ErrScope", err)
			}
		}
	})
}

// checkCovered fails t unless resource's path, segment by segment, is a
// prefix of target free of dot segments: the property Covers promises.
func checkCovered(t *testing.T, resource, target string) {
	t.Helper()
	_, path, hasPath := strings.Cut(resource, "/")
	if !hasPath {
		return
	}
	have, want := strings.Split(path, "/"), strings.Split(strings.TrimPrefix(target, "/"), "/")
	if target == "" || len(have) > len(want) {
		t.Fatalf("resource %q covers %q", resource, target)
	}
	for i, seg := range have {
		dec, err := url.PathUnescape(seg)
		if err != nil || dec == "." || dec == ".." || !strings.EqualFold(dec, want[i]) {
			t.Fatalf("resource %q covers %q", resource, target)
		}
	}
}

// FuzzTokenRoundTrip checks that every token NewToken makes parses back,
// verifies with its key, and covers the device it was made for.
func FuzzTokenRoundTrip(f *testing.F) {
	f.Add("myhub.azure-devices.net", "dev1", "", int64(1700000000))
	f.Add("[::1]:8443", "a+b%c#d?e=f'g", "service", int64(0))
	f.Add("HUB", "...", "a b&c=d", int64(253402300799))
	f.Fuzz(func(t *testing.T, host, deviceID, policy string, se int64) {
		resource := DeviceResource(host, deviceID)
		expiry := time.Unix(se, 0)
		s, err := NewToken(resource, testKey, policy, expiry)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("NewToken error %v does not wrap ErrMalformed", err)
			}
			return
		}
		tok, err := ParseToken(s)
		if err != nil {
			t.Fatalf("ParseToken(%q): %v", s, err)
		}
		if tok.Resource != resource || tok.KeyName != policy || tok.Expiry.Unix() != se {
			t.Fatalf("ParseToken(%q) = %+v", s, tok)
		}
		if err := tok.Verify(testKey, expiry, 0); err != nil {
			t.Fatalf("Verify: %v", err)
		}
		if err := tok.Verify(otherKey, expiry, 0); !errors.Is(err, ErrBadSignature) {
			t.Fatalf("Verify with other key = %v", err)
		}
		if se < maxExpiry {
			if err := tok.Verify(testKey, expiry.Add(time.Second), 0); !errors.Is(err, ErrExpired) {
				t.Fatalf("Verify after expiry = %v", err)
			}
		}
		if ValidDeviceID(deviceID) != nil || validHostName(host) != nil {
			return
		}
		if err := tok.Covers([]string{host}, "/devices/"+deviceID); err != nil {
			t.Fatalf("token for %q does not cover its device: %v", resource, err)
		}
		if err := tok.Covers([]string{host}, "/devices/"+deviceID+"x"); !errors.Is(err, ErrScope) {
			t.Fatalf("token for %q covers device %q", resource, deviceID+"x")
		}
		if err := tok.Covers([]string{host}, ""); !errors.Is(err, ErrScope) {
			t.Fatalf("token for %q covers the whole hub", resource)
		}
	})
}

func FuzzParseConnectionString(f *testing.F) {
	for _, s := range []string{
		"HostName=myhub.azure-devices.net;DeviceId=dev1;SharedAccessKey=" + testKey,
		"HostName=[::1]:8443;SharedAccessKeyName=service;SharedAccessKey=" + testKey,
		" SharedAccessKey = " + testKey + " ;DeviceId=a=b;;HostName=h:1;GatewayHostName=g;x509=false;",
		"HostName=h;DeviceId=d;ModuleId=m;SharedAccessKey=" + testKey,
		"HostName=h;DeviceId=d;DeviceId=d",
		"=;==;a",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseConnectionString(s)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("ParseConnectionString error %v does not wrap ErrMalformed", err)
			}
			if c != (ConnectionString{}) {
				t.Fatalf("ParseConnectionString returned %+v with an error", c)
			}
			return
		}
		if c.IsDevice() == (c.SharedAccessKeyName != "") {
			t.Fatalf("%+v is both or neither device and policy", c)
		}
		again, err := ParseConnectionString(c.String())
		if err != nil {
			t.Fatalf("re-parse of %q: %v", c.String(), err)
		}
		if again != c || again.String() != c.String() {
			t.Fatalf("round trip: %+v became %+v", c, again)
		}
	})
}
