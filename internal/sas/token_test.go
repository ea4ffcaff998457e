package sas

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"
)

// Fixtures shared by the tests of this package. testKey is bytes 0..31;
// the known answers below were computed with Python's hmac module.
const (
	testKey      = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
	otherKey     = "HxwdHhsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA="
	testHub      = "myhub.azure-devices.net"
	testResource = testHub + "/devices/dev1"
	testSe       = 1700000000
)

var testExpiry = time.Unix(testSe, 0)

// azureSign computes a token signature the way the Azure SDKs document it,
// independently of the package: base64(HMAC-SHA256(key, sr + "\n" + se)).
func azureSign(t *testing.T, key, sr, se string) string {
	t.Helper()
	k, err := base64.StdEncoding.DecodeString(key)
	if err != nil {
		t.Fatal(err)
	}
	mac := hmac.New(sha256.New, k)
	mac.Write([]byte(sr + "\n" + se))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

func TestNewTokenKnownAnswer(t *testing.T) {
	tests := []struct {
		name     string
		resource string
		policy   string
		want     string
	}{
		{
			name:     "device",
			resource: testResource,
			want:     "SharedAccessSignature sr=myhub.azure-devices.net%2fdevices%2fdev1&sig=dUk3ecSsggNPeQNG98fO6Pv16mCcXEgP6lT2QfotQ4s%3d&se=1700000000",
		},
		{
			name:     "policy",
			resource: testHub,
			policy:   "iothubowner",
			want:     "SharedAccessSignature sr=myhub.azure-devices.net&sig=iIzEw6hi6GK79RY5jNXO6QeQkSL%2fAx4zTmy44X2G1VY%3d&se=1700000000&skn=iothubowner",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := NewToken(tt.resource, testKey, tt.policy, testExpiry)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("NewToken =\n%s\nwant\n%s", got, tt.want)
			}

			// The same answer, computed here from the documented recipe.
			sr := strings.ToLower(url.QueryEscape(tt.resource)) // no uppercase letters in these resources
			sig := strings.NewReplacer("+", "%2b", "/", "%2f", "=", "%3d").Replace(azureSign(t, testKey, sr, "1700000000"))
			want := "SharedAccessSignature sr=" + sr + "&sig=" + sig + "&se=1700000000"
			if tt.policy != "" {
				want += "&skn=" + tt.policy
			}
			if got != want {
				t.Errorf("NewToken =\n%s\nindependent computation gives\n%s", got, want)
			}
		})
	}
}

func TestTokenRoundTrip(t *testing.T) {
	const skew = 5 * time.Minute
	tests := []struct {
		name      string
		resource  string
		policy    string
		verifyKey string
		now       time.Time
		want      error
	}{
		{name: "device", resource: testResource, verifyKey: testKey, now: testExpiry.Add(-time.Hour)},
		{name: "policy", resource: testHub, policy: "service", verifyKey: testKey, now: testExpiry.Add(-time.Hour)},
		{name: "policy name needing escapes", resource: testHub, policy: "a b&c=d", verifyKey: testKey, now: testExpiry},
		{name: "device ID needing escapes", resource: DeviceResource(testHub, "a+b%c#d?e=f'g"), verifyKey: testKey, now: testExpiry},
		{name: "host with port", resource: DeviceResource("[::1]:8443", "dev1"), verifyKey: testKey, now: testExpiry},
		{name: "at expiry", resource: testResource, verifyKey: testKey, now: testExpiry},
		{name: "within skew", resource: testResource, verifyKey: testKey, now: testExpiry.Add(skew)},
		{name: "expired beyond skew", resource: testResource, verifyKey: testKey, now: testExpiry.Add(skew + time.Second), want: ErrExpired},
		{name: "wrong key", resource: testResource, verifyKey: otherKey, now: testExpiry, want: ErrBadSignature},
		{name: "wrong key and expired", resource: testResource, verifyKey: otherKey, now: testExpiry.Add(time.Hour), want: ErrBadSignature},
		{name: "bad verify key", resource: testResource, verifyKey: "not base64!", now: testExpiry, want: ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := NewToken(tt.resource, testKey, tt.policy, testExpiry)
			if err != nil {
				t.Fatal(err)
			}
			tok, err := ParseToken(s)
			if err != nil {
				t.Fatalf("ParseToken(%q): %v", s, err)
			}
			if tok.Resource != tt.resource || tok.KeyName != tt.policy || !tok.Expiry.Equal(testExpiry) {
				t.Errorf("ParseToken = %+v, want resource %q, key name %q, expiry %v", tok, tt.resource, tt.policy, testExpiry)
			}
			err = tok.Verify(tt.verifyKey, tt.now, skew)
			if tt.want == nil && err != nil || !errors.Is(err, tt.want) {
				t.Errorf("Verify = %v, want %v", err, tt.want)
			}
		})
	}
}

// TestVerifyAzureEncodings checks tokens built by hand the way different
// Azure SDKs build them: the signature is over sr as sent, whatever the
// case of its percent escapes.
func TestVerifyAzureEncodings(t *testing.T) {
	now := testExpiry.Add(-time.Minute)
	build := func(sr, sigEnc string) string {
		sig := azureSign(t, testKey, sr, "1700000000")
		switch sigEnc {
		case "upper":
			sig = url.QueryEscape(sig)
		case "lower":
			sig = strings.NewReplacer("+", "%2b", "/", "%2f", "=", "%3d").Replace(sig)
		case "raw":
		}
		return "SharedAccessSignature sr=" + sr + "&sig=" + sig + "&se=1700000000"
	}
	tests := []struct {
		name  string
		token string
	}{
		{"uppercase sr (.NET WebUtility, Node encodeURIComponent)", build("myhub.azure-devices.net%2Fdevices%2Fdev1", "upper")},
		{"lowercase sr (C SDK, Azure docs)", build("myhub.azure-devices.net%2fdevices%2fdev1", "lower")},
		{"mixed case sr", build("myhub.azure-devices.net%2Fdevices%2fdev1", "upper")},
		{"device ID encoded twice", build("myhub.azure-devices.net%2Fdevices%2Fa%252Bb", "upper")},
		{"unencoded sig", build("myhub.azure-devices.net%2Fdevices%2Fdev1", "raw")},
		{"fields reordered", func() string {
			sr := "myhub.azure-devices.net%2Fdevices%2Fdev1"
			return "SharedAccessSignature se=1700000000&sig=" + url.QueryEscape(azureSign(t, testKey, sr, "1700000000")) + "&sr=" + sr
		}()},
		// Computed with Python's hmac module over the uppercase form.
		{"known answer, uppercase", "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdev1&sig=i%2BYmMcSSZc4KzBi6ejz3l0iL%2B2sN0CE3q6vSm837h2g%3D&se=1700000000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := ParseToken(tt.token)
			if err != nil {
				t.Fatalf("ParseToken(%q): %v", tt.token, err)
			}
			if err := tok.Verify(testKey, now, 0); err != nil {
				t.Errorf("Verify: %v", err)
			}
			if err := tok.Verify(otherKey, now, 0); !errors.Is(err, ErrBadSignature) {
				t.Errorf("Verify with another key = %v, want ErrBadSignature", err)
			}
		})
	}

	// Re-encoding sr would make the uppercase token verify as lowercase too;
	// signing what was received must not.
	tok, err := ParseToken(strings.ReplaceAll(build("myhub.azure-devices.net%2Fdevices%2Fdev1", "upper"), "%2F", "%2f"))
	if err != nil {
		t.Fatal(err)
	}
	if err := tok.Verify(testKey, now, 0); !errors.Is(err, ErrBadSignature) {
		t.Errorf("Verify with sr case changed after signing = %v, want ErrBadSignature", err)
	}
}

func TestParseTokenFields(t *testing.T) {
	s := "SharedAccessSignature skn=my%20policy&se=0001700000000&sig=i%2BYmMcSSZc4KzBi6ejz3l0iL%2B2sN0CE3q6vSm837h2g%3D&sr=myhub.azure-devices.net%2Fdevices%2Fa%252Bb"
	tok, err := ParseToken(s)
	if err != nil {
		t.Fatal(err)
	}
	want := Token{
		Resource:    "myhub.azure-devices.net/devices/a%2Bb",
		RawResource: "myhub.azure-devices.net%2Fdevices%2Fa%252Bb",
		Signature:   "i+YmMcSSZc4KzBi6ejz3l0iL+2sN0CE3q6vSm837h2g=",
		Expiry:      time.Unix(testSe, 0).UTC(),
		KeyName:     "my policy",
		rawExpiry:   "0001700000000",
	}
	if tok != want {
		t.Errorf("ParseToken =\n%+v\nwant\n%+v", tok, want)
	}
}

func TestParseTokenErrors(t *testing.T) {
	const (
		sr  = "sr=myhub.azure-devices.net%2Fdevices%2Fdev1"
		sig = "sig=i%2BYmMcSSZc4KzBi6ejz3l0iL%2B2sN0CE3q6vSm837h2g%3D"
		se  = "se=1700000000"
	)
	tests := []struct {
		name  string
		token string
	}{
		{"empty", ""},
		{"no prefix", sr + "&" + sig + "&" + se},
		{"lowercase prefix", "sharedaccesssignature " + sr + "&" + sig + "&" + se},
		{"Bearer", "Bearer " + sr + "&" + sig + "&" + se},
		{"prefix without space", "SharedAccessSignature" + sr + "&" + sig + "&" + se},
		{"prefix only", "SharedAccessSignature "},
		{"missing sr", "SharedAccessSignature " + sig + "&" + se},
		{"missing sig", "SharedAccessSignature " + sr + "&" + se},
		{"missing se", "SharedAccessSignature " + sr + "&" + sig},
		{"duplicate sr", "SharedAccessSignature " + sr + "&" + sig + "&" + se + "&" + sr},
		{"duplicate skn", "SharedAccessSignature " + sr + "&" + sig + "&" + se + "&skn=a&skn=a"},
		{"unknown field", "SharedAccessSignature " + sr + "&" + sig + "&" + se + "&foo=bar"},
		{"uppercase field name", "SharedAccessSignature SR=x&" + sig + "&" + se},
		{"field without =", "SharedAccessSignature " + sr + "&" + sig + "&" + se + "&skn"},
		{"empty field", "SharedAccessSignature " + sr + "&&" + sig + "&" + se},
		{"trailing &", "SharedAccessSignature " + sr + "&" + sig + "&" + se + "&"},
		{"empty sr", "SharedAccessSignature sr=&" + sig + "&" + se},
		{"empty skn", "SharedAccessSignature " + sr + "&" + sig + "&" + se + "&skn="},
		{"bad escape in sr", "SharedAccessSignature sr=hub%zz&" + sig + "&" + se},
		{"bad escape in skn", "SharedAccessSignature " + sr + "&" + sig + "&" + se + "&skn=%"},
		{"bad escape in sig", "SharedAccessSignature " + sr + "&sig=%2&" + se},
		{"sig not base64", "SharedAccessSignature " + sr + "&sig=" + strings.Repeat("!", 44) + "&" + se},
		{"sig too short", "SharedAccessSignature " + sr + "&sig=AAAA&" + se},
		{"sig unpadded", "SharedAccessSignature " + sr + "&sig=i%2BYmMcSSZc4KzBi6ejz3l0iL%2B2sN0CE3q6vSm837h2g&" + se},
		{"sig with line break", "SharedAccessSignature " + sr + "&sig=i%2BYmMcSSZc4KzBi6ejz3l0iL%2B2sN0CE3q6vSm837h2%0A%3D&" + se},
		{"se negative", "SharedAccessSignature " + sr + "&" + sig + "&se=-1"},
		{"se signed", "SharedAccessSignature " + sr + "&" + sig + "&se=+1700000000"},
		{"se fractional", "SharedAccessSignature " + sr + "&" + sig + "&se=1700000000.5"},
		{"se encoded", "SharedAccessSignature " + sr + "&" + sig + "&se=%31700000000"},
		{"se overflow", "SharedAccessSignature " + sr + "&" + sig + "&se=99999999999999999999"},
		{"se after 9999", "SharedAccessSignature " + sr + "&" + sig + "&se=253402300800"},
		{"too long", "SharedAccessSignature " + sr + "&" + sig + "&" + se + "&skn=" + strings.Repeat("a", maxTokenLen)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := ParseToken(tt.token)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("ParseToken(%q) = %+v, %v; want ErrMalformed", tt.token, tok, err)
			}
			if strings.Contains(err.Error(), "i%2BYmMcSSZc4") || strings.Contains(err.Error(), "i+YmMcSSZc4") {
				t.Errorf("error %q contains the signature", err)
			}
		})
	}
}

func TestVerifyErrors(t *testing.T) {
	s, err := NewToken(testResource, testKey, "", testExpiry)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := ParseToken(s)
	if err != nil {
		t.Fatal(err)
	}

	if err := (Token{}).Verify(testKey, testExpiry, 0); !errors.Is(err, ErrMalformed) {
		t.Errorf("zero Token: Verify = %v, want ErrMalformed", err)
	}

	// Fields a caller can change are not what is checked.
	later := tok
	later.Expiry = testExpiry.Add(24 * time.Hour)
	if err := later.Verify(testKey, testExpiry.Add(time.Hour), 0); !errors.Is(err, ErrExpired) {
		t.Errorf("Expiry field moved: Verify = %v, want ErrExpired", err)
	}
	moved := tok
	moved.RawResource = "myhub.azure-devices.net%2fdevices%2fdev2"
	if err := moved.Verify(testKey, testExpiry, 0); !errors.Is(err, ErrBadSignature) {
		t.Errorf("RawResource changed: Verify = %v, want ErrBadSignature", err)
	}
	forged := tok
	forged.Signature = "not base64"
	if err := forged.Verify(testKey, testExpiry, 0); !errors.Is(err, ErrBadSignature) {
		t.Errorf("bad Signature: Verify = %v, want ErrBadSignature", err)
	}

	// A negative skew makes the check stricter.
	if err := tok.Verify(testKey, testExpiry, -time.Second); !errors.Is(err, ErrExpired) {
		t.Errorf("negative skew: Verify = %v, want ErrExpired", err)
	}
}

func TestNewTokenErrors(t *testing.T) {
	tests := []struct {
		name     string
		resource string
		key      string
		expiry   time.Time
	}{
		{"empty resource", "", testKey, testExpiry},
		{"empty key", testResource, "", testExpiry},
		{"bad key", testResource, "%%%%", testExpiry},
		{"short key", testResource, "AAAA", testExpiry},
		{"before 1970", testResource, testKey, time.Unix(-1, 0)},
		{"after 9999", testResource, testKey, time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)},
		{"too long", strings.Repeat("/", maxTokenLen/3), testKey, testExpiry},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := NewToken(tt.resource, tt.key, "", tt.expiry)
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("NewToken = %q, %v; want ErrMalformed", s, err)
			}
		})
	}
}

// tokenFor returns a parsed token whose decoded resource is resource.
func tokenFor(t *testing.T, resource string) Token {
	t.Helper()
	s, err := NewToken(resource, testKey, "", testExpiry)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := ParseToken(s)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestCovers(t *testing.T) {
	hosts := []string{"hub.example.com:8443", "127.0.0.1:8443", "[::1]:8443", "plain.example.com"}
	tests := []struct {
		name     string
		resource string // decoded
		target   string
		ok       bool
	}{
		{"hub covers device", "hub.example.com", "/devices/x", true},
		{"hub covers hub", "hub.example.com", "", true},
		{"hub covers deep path", "hub.example.com", "/devices/x/streams/s", true},
		{"device covers itself", "hub.example.com/devices/x", "/devices/x", true},
		{"device covers below itself", "hub.example.com/devices/x", "/devices/x/streams/s", true},
		{"devices covers any device", "hub.example.com/devices", "/devices/y", true},
		{"device does not cover hub", "hub.example.com/devices/x", "", false},
		{"device does not cover devices", "hub.example.com/devices/x", "/devices", false},
		{"device does not cover other device", "hub.example.com/devices/x", "/devices/y", false},
		{"device does not cover longer ID", "hub.example.com/devices/x", "/devices/xy", false},
		{"device does not cover shorter ID", "hub.example.com/devices/xy", "/devices/x", false},

		{"host with port in token", "hub.example.com:8443/devices/x", "/devices/x", true},
		{"host with other port in token", "hub.example.com:9999/devices/x", "/devices/x", true},
		{"host without port in hostNames", "plain.example.com:443/devices/x", "/devices/x", true},
		{"host case", "HUB.Example.COM/devices/x", "/devices/x", true},
		{"IPv4 host", "127.0.0.1/devices/x", "/devices/x", true},
		{"IPv6 host", "[::1]/devices/x", "/devices/x", true},
		{"IPv6 host with port", "[::1]:8443/devices/x", "/devices/x", true},
		{"other host", "evil.example.com/devices/x", "/devices/x", false},
		{"host suffix", "hub.example.com.evil.com/devices/x", "/devices/x", false},
		{"host prefix", "ub.example.com/devices/x", "/devices/x", false},
		{"empty host", "/devices/x", "/devices/x", false},
		{"host Unicode fold", "hub.example.com/devices/\u212a", "/devices/k", false},

		{"path case", "hub.example.com/DEVICES/X", "/devices/x", true},
		{"escaped device ID", DeviceResource("hub.example.com", "a+b=c"), "/devices/a+b=c", true},
		{"escaped device ID, other case", "hub.example.com/devices/a%2bb%3dc", "/devices/a+b=c", true},
		{"unescaped device ID", "hub.example.com/devices/a+b", "/devices/a+b", true},
		{"ID with percent", DeviceResource("hub.example.com", "a%41"), "/devices/a%41", true},
		{"ID with percent, not the decoded one", DeviceResource("hub.example.com", "a%41"), "/devices/aA", false},

		{"dot-dot in token", "hub.example.com/devices/x/../y", "/devices/y", false},
		{"dot-dot in token, same target", "hub.example.com/devices/x/..", "/devices/x/..", false},
		{"dot in token", "hub.example.com/devices/./x", "/devices/x", false},
		{"encoded dot-dot in token", "hub.example.com/devices/x/%2e%2e/y", "/devices/y", false},
		{"encoded dot-dot upper", "hub.example.com/devices/%2E%2E", "/devices", false},
		{"encoded slash in token", "hub.example.com/devices%2fx", "/devices/x", false},
		{"encoded slash in device", "hub.example.com/devices/x%2F..%2Fy", "/devices/y", false},
		{"bad escape in token", "hub.example.com/devices/%zz", "/devices/%zz", false},
		{"empty segment", "hub.example.com//devices/x", "/devices/x", false},
		{"trailing slash", "hub.example.com/devices/x/", "/devices/x", false},
		{"host and slash", "hub.example.com/", "/devices/x", false},

		{"target with dot-dot", "hub.example.com/devices/x", "/devices/x/../y", false},
		{"target with empty segment", "hub.example.com", "/devices//x", false},
		{"target not absolute", "hub.example.com", "devices/x", false},
		{"target trailing slash", "hub.example.com", "/devices/x/", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := tokenFor(t, tt.resource)
			err := tok.Covers(hosts, tt.target)
			if tt.ok && err != nil {
				t.Errorf("Covers(%q) for %q: %v", tt.target, tok.Resource, err)
			}
			if !tt.ok && !errors.Is(err, ErrScope) {
				t.Errorf("Covers(%q) for %q = %v, want ErrScope", tt.target, tok.Resource, err)
			}
		})
	}

	t.Run("no host names", func(t *testing.T) {
		if err := tokenFor(t, "hub.example.com").Covers(nil, ""); !errors.Is(err, ErrScope) {
			t.Errorf("Covers = %v, want ErrScope", err)
		}
	})
	t.Run("empty host name", func(t *testing.T) {
		if err := tokenFor(t, "hub.example.com").Covers([]string{""}, ""); !errors.Is(err, ErrScope) {
			t.Errorf("Covers = %v, want ErrScope", err)
		}
	})
	t.Run("Resource edited", func(t *testing.T) {
		tok := tokenFor(t, "hub.example.com/devices/x")
		tok.Resource = "hub.example.com"
		if err := tok.Covers(hosts, "/devices/y"); !errors.Is(err, ErrScope) {
			t.Errorf("Covers = %v, want ErrScope", err)
		}
	})
	t.Run("zero Token", func(t *testing.T) {
		if err := (Token{}).Covers(hosts, ""); !errors.Is(err, ErrScope) {
			t.Errorf("Covers = %v, want ErrScope", err)
		}
	})
}

func TestURLEncode(t *testing.T) {
	tests := []struct{ in, want string }{
		{"myhub.azure-devices.net/devices/dev1", "myhub.azure-devices.net%2fdevices%2fdev1"},
		{"Hub/Devices/A%2Bb", "Hub%2fDevices%2fA%252Bb"}, // only escapes are lowercased
		{"a b+c", "a+b%2bc"},
		{"\xff", "%ff"},
	}
	for _, tt := range tests {
		if got := urlEncode(tt.in); got != tt.want {
			t.Errorf("urlEncode(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
