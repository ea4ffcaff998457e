package sas

import (
	"errors"
	"strings"
	"testing"
)

func TestParseConnectionString(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want ConnectionString
		// canonical is String()'s output; "" means in is already canonical.
		canonical string
	}{
		{
			name: "device",
			in:   "HostName=myhub.azure-devices.net;DeviceId=dev1;SharedAccessKey=" + testKey,
			want: ConnectionString{HostName: testHub, DeviceID: "dev1", SharedAccessKey: testKey},
		},
		{
			name: "policy",
			in:   "HostName=myhub.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=" + testKey,
			want: ConnectionString{HostName: testHub, SharedAccessKeyName: "iothubowner", SharedAccessKey: testKey},
		},
		{
			name:      "other order",
			in:        "SharedAccessKey=" + testKey + ";DeviceId=dev1;HostName=myhub.azure-devices.net",
			want:      ConnectionString{HostName: testHub, DeviceID: "dev1", SharedAccessKey: testKey},
			canonical: "HostName=myhub.azure-devices.net;DeviceId=dev1;SharedAccessKey=" + testKey,
		},
		{
			name:      "whitespace and empty parts",
			in:        " HostName = myhub.azure-devices.net ;\tDeviceId=dev1 ;; SharedAccessKey= " + testKey + " ;\n",
			want:      ConnectionString{HostName: testHub, DeviceID: "dev1", SharedAccessKey: testKey},
			canonical: "HostName=myhub.azure-devices.net;DeviceId=dev1;SharedAccessKey=" + testKey,
		},
		{
			name:      "GatewayHostName ignored",
			in:        "HostName=myhub.azure-devices.net;DeviceId=dev1;SharedAccessKey=" + testKey + ";GatewayHostName=edge.local",
			want:      ConnectionString{HostName: testHub, DeviceID: "dev1", SharedAccessKey: testKey},
			canonical: "HostName=myhub.azure-devices.net;DeviceId=dev1;SharedAccessKey=" + testKey,
		},
		{
			name:      "x509=false ignored",
			in:        "HostName=myhub.azure-devices.net;DeviceId=dev1;SharedAccessKey=" + testKey + ";x509=False",
			want:      ConnectionString{HostName: testHub, DeviceID: "dev1", SharedAccessKey: testKey},
			canonical: "HostName=myhub.azure-devices.net;DeviceId=dev1;SharedAccessKey=" + testKey,
		},
		{
			name: "device ID with every allowed symbol",
			in:   "HostName=myhub.azure-devices.net;DeviceId=a-.+%_#*?!(),=@$'z;SharedAccessKey=" + testKey,
			want: ConnectionString{HostName: testHub, DeviceID: "a-.+%_#*?!(),=@$'z", SharedAccessKey: testKey},
		},
		{
			name: "host with port",
			in:   "HostName=hub.example.com:8443;DeviceId=dev1;SharedAccessKey=" + testKey,
			want: ConnectionString{HostName: "hub.example.com:8443", DeviceID: "dev1", SharedAccessKey: testKey},
		},
		{
			name: "IPv4 with port",
			in:   "HostName=127.0.0.1:8443;DeviceId=dev1;SharedAccessKey=" + testKey,
			want: ConnectionString{HostName: "127.0.0.1:8443", DeviceID: "dev1", SharedAccessKey: testKey},
		},
		{
			name: "IPv6 with port",
			in:   "HostName=[::1]:8443;SharedAccessKeyName=service;SharedAccessKey=" + testKey,
			want: ConnectionString{HostName: "[::1]:8443", SharedAccessKeyName: "service", SharedAccessKey: testKey},
		},
		{
			name: "IPv6 without port",
			in:   "HostName=[::1];DeviceId=dev1;SharedAccessKey=" + testKey,
			want: ConnectionString{HostName: "[::1]", DeviceID: "dev1", SharedAccessKey: testKey},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseConnectionString(tt.in)
			if err != nil {
				t.Fatalf("ParseConnectionString: %v", err)
			}
			if got != tt.want {
				t.Fatalf("ParseConnectionString = %+v, want %+v", got, tt.want)
			}
			canonical := tt.canonical
			if canonical == "" {
				canonical = tt.in
			}
			if s := got.String(); s != canonical {
				t.Errorf("String = %q, want %q", s, canonical)
			}
			again, err := ParseConnectionString(got.String())
			if err != nil || again != got {
				t.Errorf("re-parse = %+v, %v; want %+v", again, err, got)
			}
			if got.IsDevice() != (tt.want.DeviceID != "") {
				t.Errorf("IsDevice = %v", got.IsDevice())
			}
		})
	}
}

func TestParseConnectionStringErrors(t *testing.T) {
	// A key whose text is easy to spot in an error message.
	const key = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"
	const (
		host   = "HostName=myhub.azure-devices.net"
		device = "DeviceId=dev1"
		policy = "SharedAccessKeyName=service"
		sak    = "SharedAccessKey=" + key
	)
	join := func(parts ...string) string { return strings.Join(parts, ";") }
	tests := []struct {
		name        string
		in          string
		unsupported bool
	}{
		{name: "empty", in: ""},
		{name: "only separators", in: " ; ; "},
		{name: "no HostName", in: join(device, sak)},
		{name: "no key", in: join(host, device)},
		{name: "neither device nor policy", in: join(host, sak)},
		{name: "both device and policy", in: join(host, device, policy, sak)},
		{name: "duplicate HostName", in: join(host, host, device, sak)},
		{name: "duplicate DeviceId", in: join(host, device, "DeviceId=dev2", sak)},
		{name: "duplicate key", in: join(host, device, sak, sak)},
		{name: "duplicate GatewayHostName", in: join(host, device, sak, "GatewayHostName=a", "GatewayHostName=b")},
		{name: "key name case", in: join("hostname=myhub.azure-devices.net", device, sak)},
		{name: "unknown key", in: join(host, device, sak, "Foo=bar")},
		{name: "pasted bare key", in: join(host, device, key+"=")},
		{name: "part without =", in: join(host, device, key)},
		{name: "empty key name", in: join(host, device, sak, "=x")},
		{name: "empty HostName", in: join("HostName=", device, sak)},
		{name: "empty DeviceId", in: join(host, "DeviceId= ", sak)},
		{name: "empty SharedAccessKey", in: join(host, device, "SharedAccessKey=")},
		{name: "key not base64", in: join(host, device, "SharedAccessKey=not*base64"+key)},
		{name: "key unpadded", in: join(host, device, "SharedAccessKey="+strings.TrimRight(testKey, "="))},
		{name: "key too short", in: join(host, device, "SharedAccessKey=c2VjcmV0")},
		{name: "key with space", in: join(host, device, "SharedAccessKey=c2Vj cmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0")},
		{name: "device ID with space", in: join(host, "DeviceId=dev 1", sak)},
		{name: "device ID with slash", in: join(host, "DeviceId=a/b", sak)},
		{name: "device ID dot-dot", in: join(host, "DeviceId=..", sak)},
		{name: "device ID too long", in: join(host, "DeviceId="+strings.Repeat("d", 129), sak)},
		{name: "policy name with control character", in: join(host, "SharedAccessKeyName=a\x01b", sak)},
		{name: "policy name too long", in: join(host, "SharedAccessKeyName="+strings.Repeat("n", 129), sak)},
		{name: "host too long", in: join("HostName="+strings.Repeat("h", 260), device, sak)},
		{name: "host with path", in: join("HostName=hub/x", device, sak)},
		{name: "host with scheme", in: join("HostName=https://hub", device, sak)},
		{name: "host with space", in: join("HostName=hub x", device, sak)},
		{name: "host with user", in: join("HostName=u@hub", device, sak)},
		{name: "host empty port", in: join("HostName=hub:", device, sak)},
		{name: "host bad port", in: join("HostName=hub:http", device, sak)},
		{name: "host port zero", in: join("HostName=hub:0", device, sak)},
		{name: "host port too big", in: join("HostName=hub:65536", device, sak)},
		{name: "host two colons", in: join("HostName=hub:1:2", device, sak)},
		{name: "bare IPv6", in: join("HostName=::1", device, sak)},
		{name: "bracketed IPv4", in: join("HostName=[127.0.0.1]", device, sak)},
		{name: "bracketed junk", in: join("HostName=[hub]:8443", device, sak)},
		{name: "unclosed bracket", in: join("HostName=[::1:8443", device, sak)},
		{name: "junk after bracket", in: join("HostName=[::1]x", device, sak)},
		{name: "x509 junk", in: join(host, device, sak, "x509=maybe")},
		{name: "too long", in: join(host, device, sak, "GatewayHostName="+strings.Repeat("g", maxConnStringLen))},
		{name: "ModuleId", in: join(host, device, "ModuleId=m1", sak), unsupported: true},
		{name: "x509=true", in: join(host, device, "x509=true"), unsupported: true},
		{name: "SharedAccessSignature", in: join(host, device, "SharedAccessSignature=SharedAccessSignature sr=x&sig=y&se=1"), unsupported: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConnectionString(tt.in)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("ParseConnectionString(%q) = %+v, %v; want ErrMalformed", tt.in, c, err)
			}
			if got := errors.Is(err, errors.ErrUnsupported); got != tt.unsupported {
				t.Errorf("errors.Is(%v, ErrUnsupported) = %v, want %v", err, got, tt.unsupported)
			}
			if strings.Contains(err.Error(), key[:8]) {
				t.Errorf("error %q contains the key", err)
			}
		})
	}
}

func TestConnectionStringString(t *testing.T) {
	// String is total: fields set by hand come out in canonical order.
	c := ConnectionString{SharedAccessKey: "k", HostName: "h", SharedAccessKeyName: "n", DeviceID: "d"}
	if got, want := c.String(), "HostName=h;DeviceId=d;SharedAccessKeyName=n;SharedAccessKey=k"; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
	if got := (ConnectionString{}).String(); got != "" {
		t.Errorf("zero String = %q, want empty", got)
	}
}
