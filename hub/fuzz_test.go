package hub_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dsproxy/dsproxy/hub"
	"github.com/dsproxy/dsproxy/hub/registry"
	"github.com/dsproxy/dsproxy/internal/sas"
	"github.com/dsproxy/dsproxy/internal/wire"
)

// fuzzHub is a hub for the fuzz targets: made by hub.New and never Run;
// the targets call its handler directly, which takes every request a
// connection could carry once net/http has parsed it.
type fuzzHub struct {
	h     http.Handler
	reg   registry.Store
	auths []string // Authorization values: owner, registryRead, service, dev1's token
}

func newFuzzHub(f *testing.F) *fuzzHub {
	cfg := hub.DefaultConfig()
	cfg.DataDir = f.TempDir()
	cfg.HostNames = []string{"127.0.0.1"}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	srv, err := hub.New(cfg, ln)
	if err != nil {
		ln.Close()
		f.Fatal(err)
	}
	f.Cleanup(func() { srv.Close() })
	fh := &fuzzHub{h: srv.Handler(), reg: srv.Registry()}
	ctx := context.Background()
	exp := time.Now().Add(24 * time.Hour)
	for _, name := range []string{"iothubowner", "registryRead", "service"} {
		p, err := fh.reg.GetPolicy(ctx, name)
		if err != nil {
			f.Fatal(err)
		}
		tok, err := sas.NewToken(srv.Addr(), p.PrimaryKey, name, exp)
		if err != nil {
			f.Fatal(err)
		}
		fh.auths = append(fh.auths, tok)
	}
	for _, id := range []string{"dev1", "dev1#x", "a+b", "a%2Fb", "victim"} {
		d, err := fh.reg.CreateDevice(ctx, registry.Device{ID: id, PrimaryKey: sas.NewKey(), SecondaryKey: sas.NewKey()})
		if err != nil {
			f.Fatal(err)
		}
		if id == "dev1" {
			tok, err := sas.NewToken(sas.DeviceResource(srv.Addr(), id), d.PrimaryKey, "", exp)
			if err != nil {
				f.Fatal(err)
			}
			fh.auths = append(fh.auths, tok)
		}
	}
	return fh
}

// serve parses raw as net/http's server would and runs the hub's handler on
// it. ok is false when net/http would have refused the request itself.
func (fh *fuzzHub) serve(raw []byte) (rec *httptest.ResponseRecorder, req *http.Request, ok bool) {
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
	if err != nil {
		return nil, nil, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rec = httptest.NewRecorder()
	fh.h.ServeHTTP(rec, req.WithContext(ctx))
	return rec, req, true
}

var devicePath = regexp.MustCompile(`^/devices/([^/]+)$`)

// FuzzRequest sends the hub's handler arbitrary requests: any method
// among the API's, any path (escapes, dot segments, odd device IDs), any
// Authorization (one of four real credentials, or fuzzed bytes) and any
// body. The hub must never fail with 500, must answer every error as
// Azure-style JSON, and must never answer for another device than the one
// the path names.
func FuzzRequest(f *testing.F) {
	fh := newFuzzHub(f)
	for _, seed := range []struct {
		method byte
		path   string
		auth   byte
		raw    string
		body   string
	}{
		{0, "/devices", 0, "", ""},
		{0, "/devices/dev1", 0, "", ""},
		{0, "/devices/dev1%23x", 1, "", ""},
		{0, "/devices/a%252Fb", 0, "", ""},
		{0, "/devices/a%2Fb", 0, "", ""},
		{0, "/devices/dev1/../victim", 0, "", ""},
		{0, "/devices/%2e%2e/victim", 0, "", ""},
		{1, "/devices/new1", 0, "", `{"deviceId":"new1","status":"disabled"}`},
		{1, "/devices/dev1", 0, "", `{"authentication":{"symmetricKey":{"primaryKey":"AAAA"}}}`},
		{2, "/twins/dev1/streams/ssh?api-version=2020-09-30", 2, "", ""},
		{2, "/twins/dev1/streams/a%2Fb", 0, "", ""},
		{2, "/twins/victim/streams/ssh", 3, "", ""},
		{3, "/devices/victim", 3, "", ""},
		{0, "/streams/abc", 4, "Bearer abc", ""},
		{0, "/devices/dev1/control", 3, "", ""},
		{0, "/hub", 4, "SharedAccessSignature sr=127.0.0.1&sig=AAAA&se=1&skn=iothubowner", ""},
		{0, "/hub", 3, "", ""},
	} {
		f.Add(seed.method, seed.path, seed.auth, seed.raw, []byte(seed.body))
	}
	methods := []string{http.MethodGet, http.MethodPut, http.MethodPost, http.MethodDelete, http.MethodPatch}
	f.Fuzz(func(t *testing.T, method byte, path string, authKind byte, rawAuth string, body []byte) {
		auth := rawAuth
		if int(authKind) < len(fh.auths) {
			auth = fh.auths[authKind]
		}
		m := methods[int(method)%len(methods)]
		raw := fmt.Appendf(nil, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: %s\r\nContent-Length: %d\r\n\r\n%s", m, path, auth, len(body), body)
		rec, req, ok := fh.serve(raw)
		if !ok {
			return
		}
		if rec.Code >= 500 {
			t.Fatalf("%s %q: %d %s", m, path, rec.Code, rec.Body)
		}
		upgrade := strings.HasSuffix(req.URL.Path, "/control") || strings.HasPrefix(req.URL.Path, "/streams/")
		if rec.Code >= 400 && !upgrade {
			var e wire.Error
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.ErrorCode == 0 || e.Detail == "" {
				t.Fatalf("%s %q: %d with a body that is not an Azure-style error: %q", m, path, rec.Code, rec.Body)
			}
		}
		if rec.Code == http.StatusOK && (m == http.MethodGet || m == http.MethodPut) {
			if sub := devicePath.FindStringSubmatch(req.URL.EscapedPath()); sub != nil {
				want, err := url.PathUnescape(sub[1])
				var d hub.DeviceJSON
				if err != nil || json.Unmarshal(rec.Body.Bytes(), &d) != nil || d.DeviceID != want {
					t.Fatalf("%s %q answered for device %q, want %q", m, path, d.DeviceID, want)
				}
			}
		}
	})
}

// FuzzDeviceBody sends the registry arbitrary device JSON in PUT
// /devices/{id}, with or without If-Match. The hub must answer 200 with
// that device and usable keys, or a 4xx error, never 500.
func FuzzDeviceBody(f *testing.F) {
	fh := newFuzzHub(f)
	for _, seed := range []struct{ body, ifMatch string }{
		{``, ""},
		{`{}`, ""},
		{`{"deviceId":"fz","status":"enabled"}`, ""},
		{`{"deviceId":"other"}`, ""},
		{`{"status":"disabled","statusReason":"stolen"}`, "*"},
		{`{"status":"maybe"}`, ""},
		{`{"authentication":{"symmetricKey":{"primaryKey":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","secondaryKey":""}}}`, ""},
		{`{"authentication":{"symmetricKey":{"primaryKey":"AAAA"}}}`, ""},
		{`{"authentication":{"symmetricKey":{"primaryKey":"` + strings.Repeat("A", 100) + `"}}}`, "*"},
		{`{"authentication":{"symmetricKey":7}}`, ""},
		{`[1,2,3]`, ""},
		{`{"deviceId":"fz"`, ""},
		{`null`, "\"stale\""},
	} {
		f.Add([]byte(seed.body), seed.ifMatch)
	}
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, body []byte, ifMatch string) {
		if len(ifMatch) > 200 || strings.ContainsAny(ifMatch, "\r\n") {
			return // not a header value net/http would pass on
		}
		defer fh.reg.DeleteDevice(ctx, "fz", "")
		if ifMatch != "" {
			// An update needs the device to exist.
			if _, err := fh.reg.CreateDevice(ctx, registry.Device{ID: "fz", PrimaryKey: sas.NewKey(), SecondaryKey: sas.NewKey()}); err != nil {
				t.Fatal(err)
			}
		}
		hdr := ""
		if ifMatch != "" {
			hdr = "If-Match: " + ifMatch + "\r\n"
		}
		raw := fmt.Appendf(nil, "PUT /devices/fz HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: %s\r\n%sContent-Length: %d\r\n\r\n%s", fh.auths[0], hdr, len(body), body)
		rec, _, ok := fh.serve(raw)
		if !ok {
			return
		}
		switch rec.Code {
		case http.StatusOK:
			var d hub.DeviceJSON
			if err := json.Unmarshal(rec.Body.Bytes(), &d); err != nil || d.DeviceID != "fz" {
				t.Fatalf("200 with %q", rec.Body)
			}
			for _, k := range []string{d.Authentication.SymmetricKey.PrimaryKey, d.Authentication.SymmetricKey.SecondaryKey} {
				if _, err := sas.DecodeKey(k); err != nil {
					t.Fatalf("device saved with key %q: %v", k, err)
				}
			}
			if d.Status != "enabled" && d.Status != "disabled" {
				t.Fatalf("device saved with status %q", d.Status)
			}
		case http.StatusBadRequest, http.StatusConflict, http.StatusPreconditionFailed, http.StatusRequestEntityTooLarge:
		default:
			t.Fatalf("PUT with %q, If-Match %q: %d %s", body, ifMatch, rec.Code, rec.Body)
		}
	})
}
