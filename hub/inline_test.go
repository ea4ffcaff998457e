package hub_test

import (
	"context"
	"net/http"
	"testing"

	"github.com/dsproxy/dsproxy/hubclient"
	"github.com/dsproxy/dsproxy/internal/dsproxytest"
)

// TestSessionStreamNoTokens: a session stream has no stream tokens (its
// data never goes through the streaming endpoint), so while the device
// decides, the streaming endpoint refuses its ID whatever the token.
func TestSessionStreamNoTokens(t *testing.T) {
	w := dsproxytest.NewHub(t)
	reqs := make(chan *hubclient.StreamRequest, 1)
	release := make(chan struct{})
	w.RunDeviceHandler(t, w.AddDevice(t, "dev1"), nil,
		func(ctx context.Context, req *hubclient.StreamRequest) {
			reqs <- req
			select {
			case <-release:
			case <-ctx.Done():
			}
			req.Reject("test over")
		})

	sc := w.SessionClient(t, w.OwnerConnectionString, nil)
	c, err := sc.OpenStream(ctxFor(t), "dev1", "s")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var req *hubclient.StreamRequest
	select {
	case req = <-reqs:
	case <-ctxFor(t).Done():
		t.Fatal("the device got no stream request")
	}
	for _, tok := range []string{"x", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"} {
		st, msg := upgradeStatus(t, w, "/streams/"+req.ID, http.Header{"Authorization": {"Bearer " + tok}})
		if st != http.StatusNotFound {
			t.Errorf("streaming endpoint with the session stream's ID and token %q: %d %s, want 404", tok, st, msg)
		}
	}
	close(release)
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("read from a rejected stream succeeded")
	}
}
