package wire

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// messages are fresh values of the messages codec.go encodes and decodes
// by hand.
func messages() []any {
	return []any{&OpenStream{}, &OpenResult{}, &StreamRequest{}, &StreamResponse{}}
}

// TestCodecPlainPath: the messages of an ordinary stream setup take the
// hand-written path both ways (else the speed-up is silently gone), and
// read back as they were written.
func TestCodecPlainPath(t *testing.T) {
	deadline := time.Now().Add(time.Minute) // with a monotonic reading, as the hub's
	for _, m := range []any{
		&OpenStream{DeviceID: "dev-1", Name: "ssh", ConnectTimeout: 5},
		&OpenResult{StreamID: "2f1c", Status: 200, Accepted: true},
		&OpenResult{StreamID: "2f1c", Status: 200, Accepted: true, MaxFrame: MaxFramePayload},
		&OpenResult{Status: 404, ErrorCode: 404001, Message: "device \"dev-1\" is not registered on this hub"},
		&OpenResult{Status: 200, Reason: "no target named x (it serves ssh)"},
		&StreamRequest{StreamID: "2f1c", Name: "ssh", Deadline: deadline, Inline: true},
		&StreamRequest{StreamID: "2f1c", Name: "ssh", Deadline: deadline, Inline: true, MaxFrame: MaxFramePayload},
		&StreamRequest{StreamID: "2f1c", Name: "ssh", URL: "wss://hub:443/streams/2f1c", AuthToken: "tok", Deadline: deadline.UTC()},
		&StreamResponse{Accepted: true},
		&StreamResponse{Reason: "cannot reach target 127.0.0.1:22: connection refused"},
	} {
		want, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := m.(appender).appendJSON(nil)
		// One message above has a quote in it: encoding/json's path.
		if plain := !bytes.Contains(want, []byte(`\"`)); ok != plain || ok && !bytes.Equal(got, want) {
			t.Errorf("%T: appendJSON = %s, %v; want %s, %v", m, got, ok, want, plain)
			continue
		}
		if !ok {
			continue
		}
		back := reflect.New(reflect.TypeOf(m).Elem()).Interface()
		if !back.(decoder).decodeJSON(want) {
			t.Errorf("%T: decodeJSON(%s) left it to encoding/json", m, want)
			continue
		}
		if sr, ok := m.(*StreamRequest); ok {
			// The wall clock and zone go over the wire, not the monotonic reading.
			sr.Deadline = sr.Deadline.Round(0)
			if !back.(*StreamRequest).Deadline.Equal(sr.Deadline) {
				t.Errorf("deadline %v read back as %v", sr.Deadline, back.(*StreamRequest).Deadline)
			}
			back.(*StreamRequest).Deadline = sr.Deadline
		}
		if !reflect.DeepEqual(back, m) {
			t.Errorf("%T: read back %+v, want %+v", m, back, m)
		}
	}
}

// FuzzCodecDecode: whatever body the hand-written decoder takes, it
// decodes as encoding/json does; whatever it leaves, it leaves untouched.
func FuzzCodecDecode(f *testing.F) {
	for _, m := range []any{
		&OpenStream{DeviceID: "d", Name: "n", ConnectTimeout: 3, ResponseTimeout: -1},
		&OpenResult{StreamID: "s", Status: 429, ErrorCode: 429001, Message: "m", RetryAfter: 2, Replica: "h:1"},
		&OpenResult{StreamID: "s", Status: 200, Accepted: true, MaxFrame: MaxFramePayload},
		&StreamRequest{StreamID: "s", Name: "n", URL: "u", AuthToken: "a", Deadline: time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("", 3600)), Inline: true},
		&StreamRequest{StreamID: "s", Name: "n", Deadline: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Inline: true, MaxFrame: 1 << 18},
		&StreamResponse{Accepted: true, Reason: "r"},
	} {
		b, _ := json.Marshal(m)
		f.Add(b)
	}
	for _, s := range []string{
		`{}`, ` { "accepted" : true } `, `{"accepted":true,}`, `{,}`, `{"a":1}x`, `{"status":01}`,
		`{"status":-0}`, `{"status":1e3}`, `{"status":99999999999999999999}`, `{"STATUS":1}`,
		`{"name":null}`, `{"name":"a\"b"}`, `{"name":"é"}`, `{"x":{"y":1},"name":"n"}`,
		`{"deadline":"2026-01-02T03:04:05Z"}`, `{"deadline":"2026-01-02 03:04:05Z"}`, `{"accepted":tru}`,
		`{"accepted":true "reason":"r"}`, `{"status":-}`, `[]`, `"x"`, ``,
		`{"maxFrame":65536}`, `{"maxFrame":-1}`, `{"maxFrame":"262144"}`, `{"maxFrame":2.5e5}`, `{"MaxFrame":1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, m := range messages() {
			fast := reflect.New(reflect.TypeOf(m).Elem()).Interface()
			if !fast.(decoder).decodeJSON(body) {
				if !reflect.ValueOf(fast).Elem().IsZero() {
					t.Fatalf("%T: decodeJSON(%q) refused but set %+v", m, body, fast)
				}
				continue
			}
			if err := json.Unmarshal(body, m); err != nil {
				t.Fatalf("%T: decodeJSON took %q, encoding/json refuses it: %v", m, body, err)
			}
			if !reflect.DeepEqual(fast, m) {
				t.Fatalf("%T: %q decodes as %+v, encoding/json as %+v", m, body, fast, m)
			}
		}
	})
}

// FuzzCodecEncode: whatever the hand-written encoder writes is what
// encoding/json writes.
func FuzzCodecEncode(f *testing.F) {
	f.Add("dev-1", "ssh", "wss://h:1/streams/x", 200, 404001, true, int64(1767323045000000006), 3600)
	f.Add("a<b", "é", "\x00", -1, 0, false, int64(-62167219200000000), 59)
	f.Add("", "", "", 0, 1<<40, false, int64(253402300800000000), -86400)
	f.Fuzz(func(t *testing.T, s1, s2, s3 string, n1, n2 int, b bool, unixNano int64, offset int) {
		loc := time.UTC
		if offset != 0 {
			loc = time.FixedZone("", offset)
		}
		for _, m := range []any{
			&OpenStream{DeviceID: s1, Name: s2, ConnectTimeout: n1, ResponseTimeout: n2},
			&OpenResult{StreamID: s1, Status: n1, Accepted: b, Reason: s2, ErrorCode: n2, Message: s3, RetryAfter: n1, Replica: s3, MaxFrame: n2},
			&StreamRequest{StreamID: s1, Name: s2, URL: s3, AuthToken: s1, Deadline: time.Unix(0, unixNano).In(loc), Inline: b, MaxFrame: n1},
			&StreamResponse{Accepted: b, Reason: s2},
		} {
			got, ok := m.(appender).appendJSON(nil)
			want, err := json.Marshal(m)
			switch {
			case !ok:
			case err != nil:
				t.Fatalf("%T %+v: appendJSON wrote %s, encoding/json refuses it: %v", m, m, got, err)
			case !bytes.Equal(got, want):
				t.Fatalf("%T %+v: appendJSON wrote %s, encoding/json %s", m, m, got, want)
			}
		}
	})
}
