package hub_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dsproxy/dsproxy/hubclient"
	"github.com/dsproxy/dsproxy/internal/dsproxytest"
	"github.com/dsproxy/dsproxy/internal/sas"
	"github.com/dsproxy/dsproxy/internal/wire"
)

// policyKey returns a default policy's primary key from the hub's registry.
func policyKey(t *testing.T, w *dsproxytest.Hub, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	p, err := w.Server.Registry().GetPolicy(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	return p.PrimaryKey
}

// openStream opens a stream with sc and reports the error, closing any
// stream that opened.
func openStream(t *testing.T, sc *hubclient.ServiceClient, id, name string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	c, err := sc.OpenStream(ctx, id, name)
	if err == nil {
		c.Close()
	}
	return err
}

// TestCredentials: the hub refuses wrong keys, expired tokens, tokens for
// another hub, device tokens where a policy is needed, policies without
// the right permission, and a device's token for another device.
func TestCredentials(t *testing.T) {
	w := dsproxytest.NewHub(t)
	w.StartDevice(t, "dev1", dsproxytest.Echo(t))
	keyB := addDevice(t, w, "devB")
	host := w.Server.Addr()
	owner := ownerKey(t, w)
	hour := time.Now().Add(time.Hour)

	t.Run("service policy opens streams", func(t *testing.T) {
		sc := w.ServiceClient(t, sas.ConnectionString{HostName: host, SharedAccessKeyName: "service", SharedAccessKey: policyKey(t, w, "service")}.String())
		if err := openStream(t, sc, "dev1", "ssh"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("wrong key", func(t *testing.T) {
		sc := w.ServiceClient(t, sas.ConnectionString{HostName: host, SharedAccessKeyName: "iothubowner", SharedAccessKey: sas.NewKey()}.String())
		if err := openStream(t, sc, "dev1", "ssh"); !errors.Is(err, hubclient.ErrUnauthorized) {
			t.Errorf("open stream: %v, want ErrUnauthorized", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
		defer cancel()
		if _, err := sc.ListDevices(ctx); !errors.Is(err, hubclient.ErrUnauthorized) {
			t.Errorf("list devices: %v, want ErrUnauthorized", err)
		}
	})
	t.Run("unknown policy", func(t *testing.T) {
		sc := w.ServiceClient(t, sas.ConnectionString{HostName: host, SharedAccessKeyName: "nobody", SharedAccessKey: owner}.String())
		if err := openStream(t, sc, "dev1", "ssh"); !errors.Is(err, hubclient.ErrUnauthorized) {
			t.Errorf("open stream: %v, want ErrUnauthorized", err)
		}
	})
	t.Run("policy without ServiceConnect", func(t *testing.T) {
		sc := w.ServiceClient(t, sas.ConnectionString{HostName: host, SharedAccessKeyName: "registryRead", SharedAccessKey: policyKey(t, w, "registryRead")}.String())
		if err := openStream(t, sc, "dev1", "ssh"); !errors.Is(err, hubclient.ErrForbidden) {
			t.Errorf("open stream: %v, want ErrForbidden", err)
		}
	})
	t.Run("expired token", func(t *testing.T) {
		// Within the 5 minute clock skew a token still works...
		recent := policyToken(t, w, "iothubowner", owner, time.Now().Add(-time.Minute))
		if st := getStatus(t, w, "/devices", recent); st != http.StatusOK {
			t.Errorf("token expired a minute ago: status %d, want 200 (clock skew)", st)
		}
		// ...beyond it, not.
		old := policyToken(t, w, "iothubowner", owner, time.Now().Add(-10*time.Minute))
		if st := getStatus(t, w, "/devices", old); st != http.StatusUnauthorized {
			t.Errorf("list devices with a token expired 10 minutes ago: status %d, want 401", st)
		}
		if in := initiate(t, w, old, "dev1", "ssh", nil); in.status != http.StatusUnauthorized || in.err.ErrorCode != wire.CodeUnauthorized {
			t.Errorf("initiate with a token expired 10 minutes ago: %d %+v, want 401 %d", in.status, in.err, wire.CodeUnauthorized)
		}
	})
	t.Run("token for another hub", func(t *testing.T) {
		tok, err := sas.NewToken("otherhub.example.com", owner, "iothubowner", hour)
		if err != nil {
			t.Fatal(err)
		}
		if st := getStatus(t, w, "/devices", tok); st != http.StatusUnauthorized {
			t.Errorf("list devices: status %d, want 401", st)
		}
		if in := initiate(t, w, tok, "dev1", "ssh", nil); in.status != http.StatusUnauthorized {
			t.Errorf("initiate: status %d, want 401", in.status)
		}
	})
	t.Run("policy token scoped to another device", func(t *testing.T) {
		tok, err := sas.NewToken(sas.DeviceResource(host, "devB"), owner, "iothubowner", hour)
		if err != nil {
			t.Fatal(err)
		}
		if in := initiate(t, w, tok, "dev1", "ssh", nil); in.status != http.StatusUnauthorized {
			t.Errorf("initiate to dev1 with a token for devB: status %d, want 401", in.status)
		}
	})
	t.Run("device token initiates a stream", func(t *testing.T) {
		tok := deviceToken(t, w, "devB", keyB)
		in := initiate(t, w, tok, "devB", "ssh", nil)
		if in.status != http.StatusForbidden || in.err.ErrorCode != wire.CodeForbidden {
			t.Errorf("initiate with devB's own token: %d %+v, want 403 %d", in.status, in.err, wire.CodeForbidden)
		}
		if in := initiate(t, w, tok, "dev1", "ssh", nil); in.status != http.StatusUnauthorized && in.status != http.StatusForbidden {
			t.Errorf("initiate to dev1 with devB's token: status %d, want 401 or 403", in.status)
		}
	})
	t.Run("device token for another device's control session", func(t *testing.T) {
		// devB's genuine token does not cover dev1.
		c, st := dialWS(t, w, "/devices/dev1/control", http.Header{"Authorization": {deviceToken(t, w, "devB", keyB)}}, wire.ControlSubprotocol)
		if c != nil || (st != http.StatusUnauthorized && st != http.StatusForbidden) {
			t.Errorf("dev1 control session with devB's token: status %d, want 401 or 403", st)
		}
		// A token naming dev1 but signed with devB's key does not verify.
		forged := deviceToken(t, w, "dev1", keyB)
		c, st = dialWS(t, w, "/devices/dev1/control", http.Header{"Authorization": {forged}}, wire.ControlSubprotocol)
		if c != nil || st != http.StatusUnauthorized {
			t.Errorf("dev1 control session with a token signed by devB's key: status %d, want 401", st)
		}
		// A policy token with DeviceConnect (iothubowner) is not a device's.
		c, st = dialWS(t, w, "/devices/devB/control", http.Header{"Authorization": {ownerToken(t, w)}}, wire.ControlSubprotocol)
		if c != nil || st != http.StatusForbidden {
			t.Errorf("devB control session with the owner's token: status %d, want 403", st)
		}
		// devB's own token works.
		connectRawDevice(t, w, "devB", deviceToken(t, w, "devB", keyB))
	})
	t.Run("no or malformed token", func(t *testing.T) {
		for _, auth := range []string{"", "Bearer abc", "SharedAccessSignature sr=x", "SharedAccessSignature sr=" + url.QueryEscape(host) + "&sig=AAAA&se=99999999999"} {
			if in := initiate(t, w, auth, "dev1", "ssh", nil); in.status != http.StatusUnauthorized {
				t.Errorf("initiate with Authorization %q: status %d, want 401", auth, in.status)
			}
		}
	})
}

// azureToken builds a SAS token by hand as the Azure SDKs do, without the
// sas package: sr is the resource URL-encoded once (upper or lower case
// escapes, as writers differ), sig the base64 HMAC-SHA256 over
// sr + "\n" + se with the decoded key.
func azureToken(t *testing.T, resource, key, keyName string, lower bool) string {
	t.Helper()
	enc := url.QueryEscape
	if lower {
		enc = func(s string) string { return lowerEscapes(url.QueryEscape(s)) }
	}
	sr := enc(resource)
	if !strings.Contains(sr, "%2F") && !strings.Contains(sr, "%2f") && strings.Contains(resource, "/") {
		t.Fatalf("sr %q: want an encoded slash", sr)
	}
	se := strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)
	k, err := base64.StdEncoding.DecodeString(key)
	if err != nil {
		t.Fatal(err)
	}
	mac := hmac.New(sha256.New, k)
	mac.Write([]byte(sr + "\n" + se))
	sig := enc(base64.StdEncoding.EncodeToString(mac.Sum(nil)))
	tok := "SharedAccessSignature sr=" + sr + "&sig=" + sig + "&se=" + se
	if keyName != "" {
		tok += "&skn=" + enc(keyName)
	}
	return tok
}

// lowerEscapes turns every %XX escape in s into lower case.
func lowerEscapes(s string) string {
	b := []byte(s)
	for i := 0; i+2 < len(b); i++ {
		if b[i] == '%' {
			b[i+1] = strings.ToLower(string(b[i+1]))[0]
			b[i+2] = strings.ToLower(string(b[i+2]))[0]
			i += 2
		}
	}
	return string(b)
}

// TestAzureStyleTokens: tokens written by hand the Azure way, with upper-
// or lower-case %2F in sr, open a device control session and call the
// REST API. A device ID that needs escaping works whether the writer
// encoded it inside the resource first (as the Azure C and .NET SDKs do)
// or only encoded the resource as a whole.
func TestAzureStyleTokens(t *testing.T) {
	w := dsproxytest.NewHub(t)
	host := w.Server.Addr()
	for _, lower := range []bool{false, true} {
		for _, tc := range []struct {
			name, id, resourceID string
		}{
			{"plain ID", "dev1", "dev1"},
			{"ID encoded in the resource", "odd+id#1", "odd%2Bid%231"},
			{"ID not encoded in the resource", "odd+id#2", "odd+id#2"},
		} {
			name, suffix := tc.name+", upper-case escapes", "U"
			if lower {
				name, suffix = tc.name+", lower-case escapes", "L"
			}
			t.Run(name, func(t *testing.T) {
				id := tc.id + suffix
				key := addDevice(t, w, id)
				tok := azureToken(t, host+"/devices/"+tc.resourceID+suffix, key, "", lower)
				if lower != strings.Contains(tok, "%2f") {
					t.Fatalf("token %q: want %%2f only in the lower-case variant", tok)
				}
				connectRawDevice(t, w, id, tok)

				ptok := azureToken(t, host, ownerKey(t, w), "iothubowner", lower)
				if st := getStatus(t, w, "/devices/"+url.PathEscape(id), ptok); st != http.StatusOK {
					t.Errorf("get device with a hand-made policy token: status %d, want 200", st)
				}
			})
		}
	}
}
