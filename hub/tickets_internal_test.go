package hub

import (
	"path/filepath"
	"testing"
	"time"
)

// TestRotateTicketKeys: a key older than the rotation period gets a new
// one in front of it, at most ticketKeys are kept, newest first, and they
// read back as written.
func TestRotateTicketKeys(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	keys, changed, err := rotateTicketKeys(nil, now)
	if err != nil || !changed || len(keys) != 1 {
		t.Fatalf("from none: %d keys, changed %v, %v", len(keys), changed, err)
	}
	if _, changed, _ := rotateTicketKeys(keys, now.Add(ticketRotation-time.Second)); changed {
		t.Error("rotated before the period was over")
	}
	for i := 1; i <= ticketKeys+1; i++ {
		keys, changed, err = rotateTicketKeys(keys, now.Add(time.Duration(i)*ticketRotation))
		if err != nil || !changed {
			t.Fatalf("rotation %d: changed %v, %v", i, changed, err)
		}
	}
	if len(keys) != ticketKeys || !keys[0].made.Equal(now.Add(time.Duration(ticketKeys+1)*ticketRotation)) {
		t.Fatalf("%d keys, newest made %v", len(keys), keys[0].made)
	}
	path := filepath.Join(t.TempDir(), "tls", TicketKeysFile)
	if err := writeTicketKeys(path, keys); err != nil {
		t.Fatal(err)
	}
	back, err := readTicketKeys(path)
	if err != nil || len(back) != len(keys) {
		t.Fatalf("read back %d keys, %v", len(back), err)
	}
	for i := range keys {
		if back[i].key != keys[i].key || !back[i].made.Equal(keys[i].made) {
			t.Errorf("key %d read back differently", i)
		}
	}
}
