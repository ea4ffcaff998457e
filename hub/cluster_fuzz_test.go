package hub

import (
	"encoding/json"
	"strings"
	"testing"
)

// FuzzRouteMessage feeds arbitrary subjects and payloads to what a replica
// parses from NATS: device subjects must round-trip any device ID and
// never hold a token separator or wildcard in the encoded part, and no
// payload may panic the decoder.
func FuzzRouteMessage(f *testing.F) {
	f.Add("pi-42", []byte(`{"op":"initiate","policy":"service","name":"ssh","connectTimeout":60000000000}`))
	f.Add("a.b*c>d$e", []byte(`{"op":"takeover","epoch":7,"replica":"10.0.0.2:8443"}`))
	f.Add("", []byte(`{"op":"locate"}`))
	f.Add("x", []byte(`{"op":1}`))
	f.Fuzz(func(t *testing.T, id string, payload []byte) {
		subj := deviceSubject(id)
		enc := strings.TrimPrefix(subj, subjectPrefix)
		if strings.ContainsAny(enc, ".*> \t\r\n") {
			t.Fatalf("subject %q for %q holds a separator or wildcard", subj, id)
		}
		got, ok := subjectDevice(subj)
		if id != "" && (!ok || got != id) {
			t.Fatalf("subjectDevice(%q) = %q, %v; want %q", subj, got, ok, id)
		}
		_, _ = subjectDevice(id) // any string as a subject
		var rm routeMsg
		_ = json.Unmarshal(payload, &rm)
		var rep routeReply
		_ = json.Unmarshal(payload, &rep)
	})
}
