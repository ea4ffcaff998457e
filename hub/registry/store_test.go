package registry_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dsproxy/dsproxy/hub/registry"
)

// opener opens a store on one database, as often as it is called: the
// stores it returns share their data, as hubs sharing a database do.
type opener func() (registry.Store, error)

// testStore is the contract every Store implementation must meet. fresh
// returns an opener of a new, empty database of the test's own.
func testStore(t *testing.T, fresh func(t testing.TB) opener) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s registry.Store)
	}{
		{"DeviceCRUD", testDeviceCRUD},
		{"DeviceIDCaseSensitive", testDeviceIDCaseSensitive},
		{"DeviceExists", testDeviceExists},
		{"DeviceNotFound", testDeviceNotFound},
		{"DeviceStatus", testDeviceStatus},
		{"IfMatch", testIfMatch},
		{"Policies", testPolicies},
		{"EnsureDefaultPolicies", testEnsureDefaultPolicies},
		{"EnsureDefaultPoliciesKeepsExisting", testEnsureDefaultPoliciesKeepsExisting},
		{"StreamEvents", testStreamEvents},
		{"StreamEventsDefaultLimit", testStreamEventsDefaultLimit},
		{"AddStreamEvents", testAddStreamEvents},
		{"PruneStreamEvents", testPruneStreamEvents},
		{"ConcurrentCreates", testConcurrentCreates},
		{"NoKeysInErrors", testNoKeysInErrors},
		{"Text", testText},
		{"Sessions", testSessions},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.fn(t, mustOpen(t, fresh(t)))
		})
	}
	// The contract across stores on one database: what a hub sees when it
	// restarts, and what hubs sharing the database see.
	shared := []struct {
		name string
		fn   func(t *testing.T, open opener)
	}{
		{"Reopen", testReopen},
		{"ConcurrentOpen", testConcurrentOpen},
		{"TwoStores", testTwoStores},
		{"ConcurrentClaims", testConcurrentClaims},
	}
	for _, tt := range shared {
		t.Run(tt.name, func(t *testing.T) {
			tt.fn(t, fresh(t))
		})
	}
}

// mustOpen opens a store and closes it at cleanup.
func mustOpen(t testing.TB, open opener) registry.Store {
	t.Helper()
	s, err := open()
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustKey(t *testing.T, seed string) string {
	t.Helper()
	return base64.StdEncoding.EncodeToString([]byte(fmt.Sprintf("%-32s", seed)))
}

func testDeviceCRUD(t *testing.T, s registry.Store) {
	ctx := testCtx(t)
	before := time.Now().Add(-time.Second)

	in := registry.Device{
		ID:           "dev-1",
		Status:       registry.StatusEnabled,
		PrimaryKey:   mustKey(t, "p1"),
		SecondaryKey: mustKey(t, "s1"),
		ETag:         "ignored",
		Generation:   "ignored",
	}
	created, err := s.CreateDevice(ctx, in)
	if err != nil {
		t.Fatalf("CreateDevice: %v", err)
	}
	if created.ETag == "" || created.ETag == "ignored" || created.ETag == "*" {
		t.Errorf("ETag = %q, want a fresh one", created.ETag)
	}
	if created.Generation == "" || created.Generation == "ignored" {
		t.Errorf("Generation = %q, want a fresh one", created.Generation)
	}
	if created.Created.Before(before) || !created.Updated.Equal(created.Created) {
		t.Errorf("Created = %v, Updated = %v, want now and equal", created.Created, created.Updated)
	}
	if created.ID != in.ID || created.PrimaryKey != in.PrimaryKey || created.SecondaryKey != in.SecondaryKey {
		t.Errorf("CreateDevice = %+v, want the fields of %+v", created, in)
	}

	got, err := s.GetDevice(ctx, "dev-1")
	if err != nil {
		t.Fatalf("GetDevice: %v", err)
	}
	assertDevice(t, got, created)

	if _, err := s.CreateDevice(ctx, registry.Device{ID: "dev-0"}); err != nil {
		t.Fatalf("CreateDevice: %v", err)
	}
	if _, err := s.CreateDevice(ctx, registry.Device{ID: "dev-2"}); err != nil {
		t.Fatalf("CreateDevice: %v", err)
	}
	list, err := s.ListDevices(ctx)
	if err != nil {
		t.Fatalf("ListDevices: %v", err)
	}
	if ids := deviceIDs(list); !slices.Equal(ids, []string{"dev-0", "dev-1", "dev-2"}) {
		t.Errorf("ListDevices IDs = %q, want ordered by ID", ids)
	}
	assertDevice(t, list[1], created)

	upd := got
	upd.Status = registry.StatusDisabled
	upd.StatusReason = "stolen"
	upd.PrimaryKey = mustKey(t, "p2")
	upd.SecondaryKey = mustKey(t, "s2")
	upd.Generation = "changed"
	upd.Created = time.Time{}
	updated, err := s.UpdateDevice(ctx, upd, "")
	if err != nil {
		t.Fatalf("UpdateDevice: %v", err)
	}
	if updated.ETag == created.ETag {
		t.Errorf("UpdateDevice kept ETag %q, want a new one", updated.ETag)
	}
	if updated.Generation != created.Generation || !updated.Created.Equal(created.Created) {
		t.Errorf("UpdateDevice changed Generation/Created: %q %v, want %q %v",
			updated.Generation, updated.Created, created.Generation, created.Created)
	}
	if updated.Updated.Before(created.Updated) {
		t.Errorf("Updated = %v, before the creation's %v", updated.Updated, created.Updated)
	}
	if updated.Status != registry.StatusDisabled || updated.StatusReason != "stolen" ||
		updated.PrimaryKey != upd.PrimaryKey || updated.SecondaryKey != upd.SecondaryKey {
		t.Errorf("UpdateDevice = %+v, want status, reason and keys of %+v", updated, upd)
	}
	got, err = s.GetDevice(ctx, "dev-1")
	if err != nil {
		t.Fatalf("GetDevice: %v", err)
	}
	assertDevice(t, got, updated)

	if err := s.DeleteDevice(ctx, "dev-1", ""); err != nil {
		t.Fatalf("DeleteDevice: %v", err)
	}
	if _, err := s.GetDevice(ctx, "dev-1"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("GetDevice after delete: %v, want ErrNotFound", err)
	}
	list, err = s.ListDevices(ctx)
	if err != nil {
		t.Fatalf("ListDevices: %v", err)
	}
	if ids := deviceIDs(list); !slices.Equal(ids, []string{"dev-0", "dev-2"}) {
		t.Errorf("ListDevices IDs after delete = %q", ids)
	}

	// Created again: a new generation, as in Azure.
	again, err := s.CreateDevice(ctx, registry.Device{ID: "dev-1"})
	if err != nil {
		t.Fatalf("CreateDevice again: %v", err)
	}
	if again.Generation == created.Generation {
		t.Errorf("recreated device kept Generation %q", again.Generation)
	}
}

func testDeviceIDCaseSensitive(t *testing.T, s registry.Store) {
	ctx := testCtx(t)
	for _, id := range []string{"Dev", "dev", "DEV"} {
		if _, err := s.CreateDevice(ctx, registry.Device{ID: id, StatusReason: id}); err != nil {
			t.Fatalf("CreateDevice(%q): %v", id, err)
		}
	}
	for _, id := range []string{"Dev", "dev", "DEV"} {
		d, err := s.GetDevice(ctx, id)
		if err != nil {
			t.Fatalf("GetDevice(%q): %v", id, err)
		}
		if d.StatusReason != id {
			t.Errorf("GetDevice(%q) returned %q", id, d.StatusReason)
		}
	}
	if _, err := s.GetDevice(ctx, "dEv"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("GetDevice(dEv): %v, want ErrNotFound", err)
	}
	if err := s.DeleteDevice(ctx, "dev", ""); err != nil {
		t.Fatalf("DeleteDevice: %v", err)
	}
	list, err := s.ListDevices(ctx)
	if err != nil {
		t.Fatalf("ListDevices: %v", err)
	}
	if ids := deviceIDs(list); !slices.Equal(ids, []string{"DEV", "Dev"}) {
		t.Errorf("ListDevices IDs = %q, want [DEV Dev]", ids)
	}
}

func testDeviceExists(t *testing.T, s registry.Store) {
	ctx := testCtx(t)
	first, err := s.CreateDevice(ctx, registry.Device{ID: "d", PrimaryKey: mustKey(t, "first")})
	if err != nil {
		t.Fatalf("CreateDevice: %v", err)
	}
	_, err = s.CreateDevice(ctx, registry.Device{ID: "d", PrimaryKey: mustKey(t, "second")})
	if !errors.Is(err, registry.ErrExists) {
		t.Fatalf("second CreateDevice: %v, want ErrExists", err)
	}
	got, err := s.GetDevice(ctx, "d")
	if err != nil {
		t.Fatalf("GetDevice: %v", err)
	}
	assertDevice(t, got, first)
	if _, err := s.CreateDevice(ctx, registry.Device{}); err == nil {
		t.Errorf("CreateDevice with an empty ID succeeded")
	}
}

func testDeviceNotFound(t *testing.T, s registry.Store) {
	ctx := testCtx(t)
	if _, err := s.GetDevice(ctx, "nope"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("GetDevice: %v, want ErrNotFound", err)
	}
	for _, ifMatch := range []string{"", "*", "some-etag"} {
		if _, err := s.UpdateDevice(ctx, registry.Device{ID: "nope"}, ifMatch); !errors.Is(err, registry.ErrNotFound) {
			t.Errorf("UpdateDevice(ifMatch %q): %v, want ErrNotFound", ifMatch, err)
		}
		if err := s.DeleteDevice(ctx, "nope", ifMatch); !errors.Is(err, registry.ErrNotFound) {
			t.Errorf("DeleteDevice(ifMatch %q): %v, want ErrNotFound", ifMatch, err)
		}
	}
	list, err := s.ListDevices(ctx)
	if err != nil || len(list) != 0 {
		t.Errorf("ListDevices on an empty store = %v, %v; want none", list, err)
	}
}

func testDeviceStatus(t *testing.T, s registry.Store) {
	ctx := testCtx(t)
	d, err := s.CreateDevice(ctx, registry.Device{ID: "d"})
	if err != nil {
		t.Fatalf("CreateDevice: %v", err)
	}
	if d.Status != registry.StatusEnabled {
		t.Errorf("default Status = %q, want enabled", d.Status)
	}
	if got, _ := s.GetDevice(ctx, "d"); got.Status != registry.StatusEnabled {
		t.Errorf("stored default Status = %q, want enabled", got.Status)
	}
	if _, err := s.CreateDevice(ctx, registry.Device{ID: "e", Status: "bogus"}); err == nil {
		t.Errorf("CreateDevice with status bogus succeeded")
	}
	d.Status = "Enabled"
	if _, err := s.UpdateDevice(ctx, d, ""); err == nil {
		t.Errorf("UpdateDevice with status Enabled succeeded")
	}
}

func testIfMatch(t *testing.T, s registry.Store) {
	ctx := testCtx(t)
	v1, err := s.CreateDevice(ctx, registry.Device{ID: "d"})
	if err != nil {
		t.Fatalf("CreateDevice: %v", err)
	}
	v2, err := s.UpdateDevice(ctx, registry.Device{ID: "d", StatusReason: "v2"}, v1.ETag)
	if err != nil {
		t.Fatalf("UpdateDevice with the current ETag: %v", err)
	}
	_, err = s.UpdateDevice(ctx, registry.Device{ID: "d", StatusReason: "stale"}, v1.ETag)
	if !errors.Is(err, registry.ErrPrecondition) {
		t.Fatalf("UpdateDevice with a stale ETag: %v, want ErrPrecondition", err)
	}
	if got, _ := s.GetDevice(ctx, "d"); got.StatusReason != "v2" || got.ETag != v2.ETag {
		t.Errorf("a failed conditional update changed the device: %+v", got)
	}
	v3, err := s.UpdateDevice(ctx, registry.Device{ID: "d", StatusReason: "v3"}, `"`+v2.ETag+`"`)
	if err != nil {
		t.Fatalf("UpdateDevice with the quoted current ETag: %v", err)
	}
	v4, err := s.UpdateDevice(ctx, registry.Device{ID: "d", StatusReason: "v4"}, "*")
	if err != nil {
		t.Fatalf("UpdateDevice with *: %v", err)
	}
	if len(map[string]bool{v1.ETag: true, v2.ETag: true, v3.ETag: true, v4.ETag: true}) != 4 {
		t.Errorf("ETags repeat: %q %q %q %q", v1.ETag, v2.ETag, v3.ETag, v4.ETag)
	}

	if err := s.DeleteDevice(ctx, "d", v3.ETag); !errors.Is(err, registry.ErrPrecondition) {
		t.Fatalf("DeleteDevice with a stale ETag: %v, want ErrPrecondition", err)
	}
	if _, err := s.GetDevice(ctx, "d"); err != nil {
		t.Fatalf("a failed conditional delete removed the device: %v", err)
	}
	if err := s.DeleteDevice(ctx, "d", v4.ETag); err != nil {
		t.Fatalf("DeleteDevice with the current ETag: %v", err)
	}
	if _, err := s.GetDevice(ctx, "d"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("GetDevice after delete: %v, want ErrNotFound", err)
	}

	if _, err := s.CreateDevice(ctx, registry.Device{ID: "e"}); err != nil {
		t.Fatalf("CreateDevice: %v", err)
	}
	if err := s.DeleteDevice(ctx, "e", "*"); err != nil {
		t.Fatalf("DeleteDevice with *: %v", err)
	}
}

func testPolicies(t *testing.T, s registry.Store) {
	ctx := testCtx(t)
	if _, err := s.GetPolicy(ctx, "p"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("GetPolicy: %v, want ErrNotFound", err)
	}
	p := registry.Policy{Name: "p", PrimaryKey: mustKey(t, "a"), SecondaryKey: mustKey(t, "b"), Rights: registry.ServiceConnect}
	if err := s.PutPolicy(ctx, p); err != nil {
		t.Fatalf("PutPolicy: %v", err)
	}
	if got, err := s.GetPolicy(ctx, "p"); err != nil || got != p {
		t.Errorf("GetPolicy = %+v, %v; want %+v", got, err, p)
	}
	p.PrimaryKey, p.Rights = mustKey(t, "c"), registry.RegistryRead|registry.RegistryWrite
	if err := s.PutPolicy(ctx, p); err != nil {
		t.Fatalf("PutPolicy replace: %v", err)
	}
	if got, err := s.GetPolicy(ctx, "p"); err != nil || got != p {
		t.Errorf("GetPolicy after replace = %+v, %v; want %+v", got, err, p)
	}
	if _, err := s.GetPolicy(ctx, "P"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("GetPolicy(P): %v, want ErrNotFound (names are case-sensitive)", err)
	}
	a := registry.Policy{Name: "a", Rights: registry.DeviceConnect}
	if err := s.PutPolicy(ctx, a); err != nil {
		t.Fatalf("PutPolicy: %v", err)
	}
	list, err := s.ListPolicies(ctx)
	if err != nil {
		t.Fatalf("ListPolicies: %v", err)
	}
	if !slices.Equal(list, []registry.Policy{a, p}) {
		t.Errorf("ListPolicies = %+v, want [a p]", list)
	}
	if err := s.PutPolicy(ctx, registry.Policy{}); err == nil {
		t.Errorf("PutPolicy with an empty name succeeded")
	}
}

func testEnsureDefaultPolicies(t *testing.T, s registry.Store) {
	ctx := testCtx(t)
	created, err := registry.EnsureDefaultPolicies(ctx, s)
	if err != nil {
		t.Fatalf("EnsureDefaultPolicies: %v", err)
	}
	if !created {
		t.Errorf("first EnsureDefaultPolicies reported created = false")
	}
	first, err := s.ListPolicies(ctx)
	if err != nil {
		t.Fatalf("ListPolicies: %v", err)
	}
	want := map[string]registry.Rights{
		"iothubowner":       registry.RegistryRead | registry.RegistryWrite | registry.ServiceConnect | registry.DeviceConnect,
		"service":           registry.ServiceConnect,
		"registryRead":      registry.RegistryRead,
		"registryReadWrite": registry.RegistryRead | registry.RegistryWrite,
	}
	if len(first) != len(want) {
		t.Fatalf("ListPolicies = %d policies, want %d", len(first), len(want))
	}
	keys := map[string]bool{}
	for _, p := range first {
		if r, ok := want[p.Name]; !ok || r != p.Rights {
			t.Errorf("policy %q has rights %v, want %v", p.Name, p.Rights, r)
		}
		for _, k := range []string{p.PrimaryKey, p.SecondaryKey} {
			b, err := base64.StdEncoding.DecodeString(k)
			if err != nil || len(b) != 32 {
				t.Errorf("policy %q: key is not 32 bytes of standard base64 (%d bytes, %v)", p.Name, len(b), err)
			}
			keys[k] = true
		}
	}
	if len(keys) != 2*len(want) {
		t.Errorf("policy keys repeat: %d distinct, want %d", len(keys), 2*len(want))
	}

	created, err = registry.EnsureDefaultPolicies(ctx, s)
	if err != nil {
		t.Fatalf("second EnsureDefaultPolicies: %v", err)
	}
	if created {
		t.Errorf("second EnsureDefaultPolicies reported created = true")
	}
	second, err := s.ListPolicies(ctx)
	if err != nil {
		t.Fatalf("ListPolicies: %v", err)
	}
	if !slices.Equal(first, second) {
		t.Errorf("second EnsureDefaultPolicies changed the policies")
	}

	if defaults := registry.DefaultPolicies(); len(defaults) != len(want) {
		t.Fatalf("DefaultPolicies = %d policies, want %d", len(defaults), len(want))
	}
}

func testEnsureDefaultPoliciesKeepsExisting(t *testing.T, s registry.Store) {
	ctx := testCtx(t)
	owner := registry.Policy{Name: "iothubowner", PrimaryKey: mustKey(t, "mine"), Rights: registry.RegistryRead}
	if err := s.PutPolicy(ctx, owner); err != nil {
		t.Fatalf("PutPolicy: %v", err)
	}
	created, err := registry.EnsureDefaultPolicies(ctx, s)
	if err != nil {
		t.Fatalf("EnsureDefaultPolicies: %v", err)
	}
	if created {
		t.Errorf("EnsureDefaultPolicies reported created = true with iothubowner present")
	}
	if got, err := s.GetPolicy(ctx, "iothubowner"); err != nil || got != owner {
		t.Errorf("iothubowner = %+v, %v; want it untouched", got, err)
	}
	if _, err := s.GetPolicy(ctx, "service"); err != nil {
		t.Errorf("GetPolicy(service): %v", err)
	}
}

func testStreamEvents(t *testing.T, s registry.Store) {
	ctx := testCtx(t)
	if es, err := s.StreamEvents(ctx, registry.EventFilter{}); err != nil || len(es) != 0 {
		t.Errorf("StreamEvents on an empty store = %v, %v; want none", es, err)
	}
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 123456000, time.UTC)
	add := func(stream, device string, started time.Time) registry.StreamEvent {
		t.Helper()
		e := registry.StreamEvent{
			StreamID: stream, DeviceID: device, Policy: "service", Name: "ssh",
			Result: "ended", Reason: "reason " + stream, BytesUp: 10, BytesDown: 20,
			Started: started, Duration: 1500 * time.Millisecond,
		}
		if err := s.AddStreamEvent(ctx, e); err != nil {
			t.Fatalf("AddStreamEvent: %v", err)
		}
		return e
	}
	add("s1", "a", t0)
	add("s2", "b", t0.Add(time.Minute))
	add("s3", "a", t0.Add(2*time.Minute))
	add("s4", "A", t0.Add(3*time.Minute))
	add("s5", "a", t0.Add(time.Minute)) // same start as s2, added later

	all, err := s.StreamEvents(ctx, registry.EventFilter{})
	if err != nil {
		t.Fatalf("StreamEvents: %v", err)
	}
	if got := streamIDs(all); !slices.Equal(got, []string{"s4", "s3", "s5", "s2", "s1"}) {
		t.Errorf("StreamEvents = %q, want newest first", got)
	}
	ids := map[int64]bool{}
	for _, e := range all {
		if e.ID == 0 || ids[e.ID] {
			t.Errorf("event %s has ID %d, want a distinct non-zero ID", e.StreamID, e.ID)
		}
		ids[e.ID] = true
	}
	last := all[len(all)-1]
	want := registry.StreamEvent{
		ID: last.ID, StreamID: "s1", DeviceID: "a", Policy: "service", Name: "ssh",
		Result: "ended", Reason: "reason s1", BytesUp: 10, BytesDown: 20,
		Started: t0, Duration: 1500 * time.Millisecond,
	}
	if !last.Started.Equal(want.Started) {
		t.Errorf("Started = %v, want %v", last.Started, want.Started)
	}
	last.Started = want.Started
	if last != want {
		t.Errorf("event = %+v, want %+v", last, want)
	}

	for _, tc := range []struct {
		f    registry.EventFilter
		want []string
	}{
		{registry.EventFilter{DeviceID: "a"}, []string{"s3", "s5", "s1"}},
		{registry.EventFilter{DeviceID: "A"}, []string{"s4"}},
		{registry.EventFilter{DeviceID: "zzz"}, nil},
		{registry.EventFilter{Since: t0.Add(time.Minute)}, []string{"s4", "s3", "s5", "s2"}},
		{registry.EventFilter{DeviceID: "a", Since: t0.Add(time.Minute)}, []string{"s3", "s5"}},
		{registry.EventFilter{Limit: 2}, []string{"s4", "s3"}},
		{registry.EventFilter{DeviceID: "a", Limit: 1}, []string{"s3"}},
		{registry.EventFilter{Since: t0.Add(time.Hour)}, nil},
	} {
		es, err := s.StreamEvents(ctx, tc.f)
		if err != nil {
			t.Fatalf("StreamEvents(%+v): %v", tc.f, err)
		}
		if got := streamIDs(es); !slices.Equal(got, tc.want) {
			t.Errorf("StreamEvents(%+v) = %q, want %q", tc.f, got, tc.want)
		}
	}
}

// testAddStreamEvents: a batch of events lands whole, each as if added on
// its own, odd text cleaned the same way.
func testAddStreamEvents(t *testing.T, s registry.Store) {
	ctx := testCtx(t)
	base := time.Now().Add(-time.Hour).Truncate(time.Microsecond)
	var batch []registry.StreamEvent
	for i := range 300 {
		batch = append(batch, registry.StreamEvent{
			StreamID: fmt.Sprintf("s%03d", i), DeviceID: "dev1", Policy: "service", Name: "ssh",
			Result: "ended", Reason: "bad \xff byte", BytesUp: int64(i), BytesDown: 2 * int64(i),
			Started: base.Add(time.Duration(i) * time.Second), Duration: time.Duration(i) * time.Millisecond,
		})
	}
	if err := s.AddStreamEvents(ctx, batch); err != nil {
		t.Fatal(err)
	}
	got, err := s.StreamEvents(ctx, registry.EventFilter{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(batch) {
		t.Fatalf("%d events stored, want %d", len(got), len(batch))
	}
	newest := got[0]
	want := batch[len(batch)-1]
	if newest.StreamID != want.StreamID || newest.BytesDown != want.BytesDown || !newest.Started.Equal(want.Started) ||
		newest.Duration != want.Duration || newest.Reason != "bad \uFFFD byte" {
		t.Errorf("newest event %+v, want %+v with the bad byte replaced", newest, want)
	}
	// Every event, every field, across the statements a batch is split
	// into (64, 16, 4 and 1 events each).
	for i, e := range batch {
		g := got[len(got)-1-i]
		e.ID, e.Reason = g.ID, "bad \uFFFD byte"
		if !g.Started.Equal(e.Started) {
			t.Errorf("event %d started %v, want %v", i, g.Started, e.Started)
		}
		g.Started = e.Started
		if g != e {
			t.Errorf("event %d stored as %+v, want %+v", i, g, e)
		}
	}
	// Events that started at the same time keep the batch's order (by ID).
	same := make([]registry.StreamEvent, 130)
	for i := range same {
		same[i] = registry.StreamEvent{StreamID: fmt.Sprintf("same%03d", i), DeviceID: "dev2", Started: base}
	}
	if err := s.AddStreamEvents(ctx, same); err != nil {
		t.Fatal(err)
	}
	got, err = s.StreamEvents(ctx, registry.EventFilter{DeviceID: "dev2", Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(same) {
		t.Fatalf("%d events stored, want %d", len(got), len(same))
	}
	for i, g := range got {
		if want := same[len(same)-1-i].StreamID; g.StreamID != want {
			t.Fatalf("event %d (newest first) is %s, want %s", i, g.StreamID, want)
		}
	}
	if err := s.AddStreamEvents(ctx, nil); err != nil {
		t.Errorf("an empty batch: %v", err)
	}
}

func testStreamEventsDefaultLimit(t *testing.T, s registry.Store) {
	ctx := testCtx(t)
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	const n = 1003
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			errs <- s.AddStreamEvent(ctx, registry.StreamEvent{
				StreamID: fmt.Sprint(i), DeviceID: "d", Started: t0.Add(time.Duration(i) * time.Second),
			})
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("AddStreamEvent: %v", err)
		}
	}
	es, err := s.StreamEvents(ctx, registry.EventFilter{})
	if err != nil {
		t.Fatalf("StreamEvents: %v", err)
	}
	if len(es) != 1000 {
		t.Fatalf("StreamEvents returned %d events, want the default limit 1000", len(es))
	}
	if es[0].StreamID != fmt.Sprint(n-1) || es[999].StreamID != fmt.Sprint(n-1000) {
		t.Errorf("StreamEvents returned %s..%s, want the newest 1000", es[0].StreamID, es[999].StreamID)
	}
}

func testPruneStreamEvents(t *testing.T, s registry.Store) {
	ctx := testCtx(t)
	if n, err := s.PruneStreamEvents(ctx, time.Now(), 1); err != nil || n != 0 {
		t.Fatalf("PruneStreamEvents on an empty store = %d, %v; want 0, nil", n, err)
	}
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	// e0..e9 start a minute apart; e10 starts with e5, added later, so it
	// is newer than e5 in the order of StreamEvents.
	for i := range 10 {
		if err := s.AddStreamEvent(ctx, registry.StreamEvent{StreamID: fmt.Sprintf("e%d", i), DeviceID: "d", Started: t0.Add(time.Duration(i) * time.Minute)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AddStreamEvent(ctx, registry.StreamEvent{StreamID: "e10", DeviceID: "d", Started: t0.Add(5 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	remaining := func() []string {
		t.Helper()
		es, err := s.StreamEvents(ctx, registry.EventFilter{})
		if err != nil {
			t.Fatal(err)
		}
		return streamIDs(es)
	}
	for _, step := range []struct {
		name      string
		olderThan time.Time
		keep      int
		deleted   int
		want      []string
	}{
		{"no bound", time.Time{}, 0, 0, []string{"e9", "e8", "e7", "e6", "e10", "e5", "e4", "e3", "e2", "e1", "e0"}},
		{"bounds above the log", t0, 100, 0, []string{"e9", "e8", "e7", "e6", "e10", "e5", "e4", "e3", "e2", "e1", "e0"}},
		{"age", t0.Add(2 * time.Minute), 0, 2, []string{"e9", "e8", "e7", "e6", "e10", "e5", "e4", "e3", "e2"}},
		{"count, splitting equal start times", time.Time{}, 5, 4, []string{"e9", "e8", "e7", "e6", "e10"}},
		{"both, age wins", t0.Add(8 * time.Minute), 4, 3, []string{"e9", "e8"}},
		{"both, count wins", t0, 1, 1, []string{"e9"}},
		{"negative keep is no bound", time.Time{}, -1, 0, []string{"e9"}},
	} {
		n, err := s.PruneStreamEvents(ctx, step.olderThan, step.keep)
		if err != nil {
			t.Fatalf("%s: PruneStreamEvents: %v", step.name, err)
		}
		if n != step.deleted {
			t.Errorf("%s: PruneStreamEvents deleted %d, want %d", step.name, n, step.deleted)
		}
		if got := remaining(); !slices.Equal(got, step.want) {
			t.Fatalf("%s: events left %q, want %q", step.name, got, step.want)
		}
	}
	// Events added after a prune are kept and counted afresh.
	if err := s.AddStreamEvent(ctx, registry.StreamEvent{StreamID: "e11", DeviceID: "d", Started: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if n, err := s.PruneStreamEvents(ctx, time.Time{}, 1); err != nil || n != 1 {
		t.Errorf("PruneStreamEvents = %d, %v; want 1, nil", n, err)
	}
	if got := remaining(); !slices.Equal(got, []string{"e11"}) {
		t.Errorf("events left %q, want [e11]", got)
	}
}

func testConcurrentCreates(t *testing.T, s registry.Store) {
	ctx := testCtx(t)
	const workers, each = 20, 5
	var wg sync.WaitGroup
	var mu sync.Mutex
	var won int
	var errs []error
	for w := range workers {
		wg.Go(func() {
			fail := func(err error) {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
			for i := range each {
				if _, err := s.CreateDevice(ctx, registry.Device{ID: fmt.Sprintf("w%02d-%d", w, i)}); err != nil {
					fail(err)
				}
				if _, err := s.ListDevices(ctx); err != nil {
					fail(err)
				}
			}
			// Everyone races for the same ID: exactly one wins.
			_, err := s.CreateDevice(ctx, registry.Device{ID: "shared"})
			switch {
			case err == nil:
				mu.Lock()
				won++
				mu.Unlock()
			case !errors.Is(err, registry.ErrExists):
				fail(err)
			}
			if _, err := s.UpdateDevice(ctx, registry.Device{ID: "shared", StatusReason: fmt.Sprint(w)}, "*"); err != nil {
				fail(err)
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d errors, first: %v", len(errs), errs[0])
	}
	if won != 1 {
		t.Errorf("%d goroutines created the shared device, want 1", won)
	}
	list, err := s.ListDevices(ctx)
	if err != nil {
		t.Fatalf("ListDevices: %v", err)
	}
	if len(list) != workers*each+1 {
		t.Errorf("ListDevices = %d devices, want %d", len(list), workers*each+1)
	}
}

func testNoKeysInErrors(t *testing.T, s registry.Store) {
	ctx := testCtx(t)
	key := mustKey(t, "secret-key")
	d, err := s.CreateDevice(ctx, registry.Device{ID: "d", PrimaryKey: key, SecondaryKey: key})
	if err != nil {
		t.Fatalf("CreateDevice: %v", err)
	}
	var got []error
	_, err = s.CreateDevice(ctx, registry.Device{ID: "d", PrimaryKey: key, SecondaryKey: key})
	got = append(got, err)
	_, err = s.UpdateDevice(ctx, registry.Device{ID: "d", PrimaryKey: key, SecondaryKey: key}, "stale")
	got = append(got, err)
	_, err = s.UpdateDevice(ctx, registry.Device{ID: "d", Status: "bogus", PrimaryKey: key, SecondaryKey: key}, d.ETag)
	got = append(got, err)
	_, err = s.UpdateDevice(ctx, registry.Device{ID: "e", PrimaryKey: key, SecondaryKey: key}, "")
	got = append(got, err)
	got = append(got, s.PutPolicy(ctx, registry.Policy{PrimaryKey: key, SecondaryKey: key}))
	for _, err := range got {
		if err == nil {
			t.Errorf("want an error")
			continue
		}
		if strings.Contains(err.Error(), key) {
			t.Errorf("error %q contains a key", err)
		}
	}
}

// testText checks what stores do with strings that are not UTF-8 text
// without NULs, which PostgreSQL cannot hold: identifiers and keys are
// refused, free text is kept with U+FFFD in place of the bad bytes.
func testText(t *testing.T, s registry.Store) {
	ctx := testCtx(t)
	const ok = "ünï-ök"
	bad := []string{"a\x00b", "a\xffb", "\xc3"}
	for _, b := range bad {
		if _, err := s.CreateDevice(ctx, registry.Device{ID: b}); !errors.Is(err, registry.ErrInvalidText) {
			t.Errorf("CreateDevice(ID %q): %v, want ErrInvalidText", b, err)
		}
		if _, err := s.CreateDevice(ctx, registry.Device{ID: "d", PrimaryKey: b}); !errors.Is(err, registry.ErrInvalidText) || strings.Contains(err.Error(), b) {
			t.Errorf("CreateDevice(PrimaryKey %q): %v, want ErrInvalidText without the key", b, err)
		}
		if _, err := s.GetDevice(ctx, b); !errors.Is(err, registry.ErrNotFound) {
			t.Errorf("GetDevice(%q): %v, want ErrNotFound", b, err)
		}
		if _, err := s.UpdateDevice(ctx, registry.Device{ID: b}, ""); !errors.Is(err, registry.ErrNotFound) {
			t.Errorf("UpdateDevice(%q): %v, want ErrNotFound", b, err)
		}
		if err := s.DeleteDevice(ctx, b, ""); !errors.Is(err, registry.ErrNotFound) {
			t.Errorf("DeleteDevice(%q): %v, want ErrNotFound", b, err)
		}
		if err := s.PutPolicy(ctx, registry.Policy{Name: b}); !errors.Is(err, registry.ErrInvalidText) {
			t.Errorf("PutPolicy(name %q): %v, want ErrInvalidText", b, err)
		}
		if err := s.PutPolicy(ctx, registry.Policy{Name: "p", SecondaryKey: b}); !errors.Is(err, registry.ErrInvalidText) {
			t.Errorf("PutPolicy(SecondaryKey %q): %v, want ErrInvalidText", b, err)
		}
		if _, err := s.GetPolicy(ctx, b); !errors.Is(err, registry.ErrNotFound) {
			t.Errorf("GetPolicy(%q): %v, want ErrNotFound", b, err)
		}
	}
	if _, err := s.GetPolicy(ctx, "p"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("a refused PutPolicy stored the policy: %v", err)
	}

	d, err := s.CreateDevice(ctx, registry.Device{ID: ok, StatusReason: "x\x00y\xffz " + ok})
	if err != nil {
		t.Fatalf("CreateDevice: %v", err)
	}
	const cleaned = "x\uFFFDy\uFFFDz " + ok
	if got, err := s.GetDevice(ctx, ok); err != nil || got.StatusReason != cleaned || d.StatusReason != cleaned {
		t.Errorf("StatusReason = %q (returned %q), %v; want %q", got.StatusReason, d.StatusReason, err, cleaned)
	}
	if _, err := s.UpdateDevice(ctx, registry.Device{ID: ok}, "\xff"); !errors.Is(err, registry.ErrPrecondition) {
		t.Errorf("UpdateDevice with If-Match \\xff: %v, want ErrPrecondition", err)
	}
	d, err = s.UpdateDevice(ctx, registry.Device{ID: ok, StatusReason: "\x00"}, d.ETag)
	if err != nil || d.StatusReason != "\uFFFD" {
		t.Errorf("UpdateDevice = %q, %v; want StatusReason U+FFFD", d.StatusReason, err)
	}
	if err := s.DeleteDevice(ctx, ok, "a\x00"); !errors.Is(err, registry.ErrPrecondition) {
		t.Errorf("DeleteDevice with If-Match a\\x00: %v, want ErrPrecondition", err)
	}

	e := registry.StreamEvent{StreamID: "s\x00", DeviceID: "d\xff", Policy: "p\x00", Name: "n\xff",
		Result: "r\x00", Reason: "device said \x00\xfe\xff", Started: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	if err := s.AddStreamEvent(ctx, e); err != nil {
		t.Fatalf("AddStreamEvent with odd bytes: %v", err)
	}
	es, err := s.StreamEvents(ctx, registry.EventFilter{DeviceID: "d\xff"})
	if err != nil || len(es) != 1 {
		t.Fatalf("StreamEvents(DeviceID d\\xff) = %d events, %v; want 1", len(es), err)
	}
	got := es[0]
	want := registry.StreamEvent{ID: got.ID, StreamID: "s\uFFFD", DeviceID: "d\uFFFD", Policy: "p\uFFFD", Name: "n\uFFFD",
		Result: "r\uFFFD", Reason: "device said \uFFFD\uFFFD", Started: e.Started}
	got.Started = got.Started.UTC()
	if got != want {
		t.Errorf("event = %+v, want %+v", got, want)
	}
}

func testReopen(t *testing.T, open opener) {
	ctx := testCtx(t)
	s, err := open()
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	created, err := registry.EnsureDefaultPolicies(ctx, s)
	if err != nil || !created {
		t.Fatalf("EnsureDefaultPolicies = %v, %v; want true", created, err)
	}
	before, err := s.ListPolicies(ctx)
	if err != nil {
		t.Fatalf("ListPolicies: %v", err)
	}
	dev, err := s.CreateDevice(ctx, registry.Device{ID: "d", PrimaryKey: "aGVsbG8="})
	if err != nil {
		t.Fatalf("CreateDevice: %v", err)
	}
	if err := s.AddStreamEvent(ctx, registry.StreamEvent{StreamID: "s", DeviceID: "d", Started: time.Now()}); err != nil {
		t.Fatalf("AddStreamEvent: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.GetDevice(ctx, "d"); err == nil {
		t.Errorf("GetDevice on a closed store succeeded")
	}

	for range 2 { // the schema step is idempotent, whatever the number of starts
		s, err = open()
		if err != nil {
			t.Fatalf("open again: %v", err)
		}
		created, err = registry.EnsureDefaultPolicies(ctx, s)
		if err != nil || created {
			t.Fatalf("EnsureDefaultPolicies after reopen = %v, %v; want false", created, err)
		}
		after, err := s.ListPolicies(ctx)
		if err != nil {
			t.Fatalf("ListPolicies: %v", err)
		}
		if !slices.Equal(after, before) {
			t.Errorf("policies changed across reopen: %d then %d", len(before), len(after))
		}
		got, err := s.GetDevice(ctx, "d")
		if err != nil {
			t.Fatalf("GetDevice after reopen: %v", err)
		}
		assertDevice(t, got, dev)
		if es, err := s.StreamEvents(ctx, registry.EventFilter{}); err != nil || len(es) != 1 {
			t.Errorf("StreamEvents after reopen = %d events, %v; want 1", len(es), err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
}

// testConcurrentOpen is hubs starting at once on one empty database: every
// one brings the schema up to date, or finds it done, and they agree on
// the policies one of them created.
func testConcurrentOpen(t *testing.T, open opener) {
	ctx := testCtx(t)
	const hubs = 4
	stores := make([]registry.Store, hubs)
	firsts := make([]bool, hubs)
	errs := make([]error, hubs)
	var wg sync.WaitGroup
	for i := range hubs {
		wg.Go(func() {
			s, err := open()
			if err != nil {
				errs[i] = err
				return
			}
			stores[i] = s
			firsts[i], errs[i] = registry.EnsureDefaultPolicies(ctx, s)
		})
	}
	wg.Wait()
	for _, s := range stores {
		if s != nil {
			t.Cleanup(func() { s.Close() })
		}
	}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("hub %d: %v", i, err)
		}
	}
	if n := slices.Index(firsts, true); n < 0 || slices.Contains(firsts[n+1:], true) {
		t.Errorf("EnsureDefaultPolicies reported a first start %v, want exactly once", firsts)
	}
	want, err := stores[0].ListPolicies(ctx)
	if err != nil || len(want) != len(registry.DefaultPolicies()) {
		t.Fatalf("ListPolicies = %d policies, %v; want %d", len(want), err, len(registry.DefaultPolicies()))
	}
	for i, s := range stores[1:] {
		got, err := s.ListPolicies(ctx)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("hub %d sees other policies (%v)", i+1, err)
		}
	}
}

// testTwoStores is two hubs on one database: each sees what the other
// writes, and neither fails for the other's writes.
func testTwoStores(t *testing.T, open opener) {
	ctx := testCtx(t)
	stores := [2]registry.Store{mustOpen(t, open), mustOpen(t, open)}
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := range 200 {
		wg.Go(func() {
			s := stores[i%2]
			err := s.AddStreamEvent(ctx, registry.StreamEvent{StreamID: "x", DeviceID: "d"})
			if err == nil {
				_, err = s.StreamEvents(ctx, registry.EventFilter{Limit: 1})
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent use of two stores: %v", err)
		}
	}
	es, err := stores[0].StreamEvents(ctx, registry.EventFilter{})
	if err != nil || len(es) != 200 {
		t.Fatalf("StreamEvents = %d events, %v; want 200", len(es), err)
	}
	d, err := stores[0].CreateDevice(ctx, registry.Device{ID: "d"})
	if err != nil {
		t.Fatalf("CreateDevice: %v", err)
	}
	got, err := stores[1].GetDevice(ctx, "d")
	if err != nil {
		t.Fatalf("GetDevice on the other store: %v", err)
	}
	assertDevice(t, got, d)
	if _, err := stores[1].UpdateDevice(ctx, registry.Device{ID: "d"}, d.ETag); err != nil {
		t.Fatalf("UpdateDevice on the other store: %v", err)
	}
	if err := stores[0].DeleteDevice(ctx, "d", d.ETag); !errors.Is(err, registry.ErrPrecondition) {
		t.Errorf("DeleteDevice with the ETag the other store replaced: %v, want ErrPrecondition", err)
	}
}

func assertDevice(t *testing.T, got, want registry.Device) {
	t.Helper()
	if !got.Created.Equal(want.Created) || !got.Updated.Equal(want.Updated) {
		t.Errorf("device times = %v, %v; want %v, %v", got.Created, got.Updated, want.Created, want.Updated)
	}
	got.Created, got.Updated = want.Created, want.Updated
	if got != want {
		t.Errorf("device = %+v, want %+v", got, want)
	}
}

func deviceIDs(ds []registry.Device) []string {
	var ids []string
	for _, d := range ds {
		ids = append(ids, d.ID)
	}
	return ids
}

func streamIDs(es []registry.StreamEvent) []string {
	var ids []string
	for _, e := range es {
		ids = append(ids, e.StreamID)
	}
	return ids
}

func testSessions(t *testing.T, s registry.Store) {
	ctx := testCtx(t)
	if _, err := s.GetSession(ctx, "d1"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("GetSession of a device that never claimed one: %v, want ErrNotFound", err)
	}
	for want := int64(1); want <= 3; want++ {
		e, err := s.ClaimSession(ctx, "d1", "10.0.0.1:443")
		if err != nil || e != want {
			t.Fatalf("ClaimSession #%d = %d, %v; want %d", want, e, err, want)
		}
	}
	if ok, err := s.ReleaseSession(ctx, "d1", 2); err != nil || ok {
		t.Fatalf("ReleaseSession of a replaced epoch = %v, %v; want false", ok, err)
	}
	ds, err := s.GetSession(ctx, "d1")
	if err != nil || ds.Epoch != 3 || ds.Replica != "10.0.0.1:443" || ds.Since.IsZero() {
		t.Fatalf("GetSession = %+v, %v; want epoch 3 live on 10.0.0.1:443", ds, err)
	}
	if ok, err := s.ReleaseSession(ctx, "d1", 3); err != nil || !ok {
		t.Fatalf("ReleaseSession of the current epoch = %v, %v; want true", ok, err)
	}
	if ds, _ := s.GetSession(ctx, "d1"); ds.Replica != "" || ds.Epoch != 3 {
		t.Fatalf("after release: %+v, want epoch 3 and no replica", ds)
	}
	// Epochs never go back, not even after a release.
	if e, err := s.ClaimSession(ctx, "d1", "10.0.0.2:443"); err != nil || e != 4 {
		t.Fatalf("ClaimSession after release = %d, %v; want 4", e, err)
	}
	for _, id := range []string{"d3", "d2", "a.*>$"} {
		if _, err := s.ClaimSession(ctx, id, "10.0.0.1:443"); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.ReplicaSessions(ctx, "10.0.0.1:443")
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, ds := range got {
		ids = append(ids, ds.DeviceID)
	}
	if want := []string{"a.*>$", "d2", "d3"}; !slices.Equal(ids, want) {
		t.Fatalf("ReplicaSessions = %v, want %v (d1 moved to another replica)", ids, want)
	}
	if n, err := s.ReleaseReplica(ctx, "10.0.0.1:443"); err != nil || n != 3 {
		t.Fatalf("ReleaseReplica = %d, %v; want 3", n, err)
	}
	if got, _ := s.ReplicaSessions(ctx, "10.0.0.1:443"); len(got) != 0 {
		t.Fatalf("after ReleaseReplica: %v", got)
	}
	if ds, _ := s.GetSession(ctx, "d1"); ds.Replica != "10.0.0.2:443" {
		t.Fatalf("ReleaseReplica released another replica's session: %+v", ds)
	}
	if _, err := s.ClaimSession(ctx, "d1", ""); err == nil {
		t.Fatal("ClaimSession with no replica succeeded")
	}
	if _, err := s.ClaimSession(ctx, "bad\x00id", "r"); !errors.Is(err, registry.ErrInvalidText) {
		t.Fatalf("ClaimSession of a NUL device ID: %v, want ErrInvalidText", err)
	}
}

// testConcurrentClaims claims one device's session from several stores
// on one database at once, as replicas do when a device reconnects in a
// storm: every claim gets its own epoch.
func testConcurrentClaims(t *testing.T, open opener) {
	ctx := testCtx(t)
	stores := []registry.Store{mustOpen(t, open), mustOpen(t, open), mustOpen(t, open)}
	const n = 60
	epochs := make([]int64, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			e, err := stores[i%len(stores)].ClaimSession(ctx, "storm", fmt.Sprintf("replica-%d", i%len(stores)))
			if err != nil {
				t.Errorf("claim %d: %v", i, err)
			}
			epochs[i] = e
		})
	}
	wg.Wait()
	slices.Sort(epochs)
	for i, e := range epochs {
		if e != int64(i+1) {
			t.Fatalf("epochs = %v, want 1..%d each once", epochs, n)
		}
	}
	ds, err := stores[0].GetSession(ctx, "storm")
	if err != nil || ds.Epoch != n {
		t.Fatalf("GetSession = %+v, %v; want epoch %d", ds, err, n)
	}
}
