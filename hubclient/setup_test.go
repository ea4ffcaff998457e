package hubclient_test

import (
	"context"
	"net/http/httptrace"
	"sync/atomic"
	"testing"

	"github.com/dsproxy/dsproxy/hubclient"
	"github.com/dsproxy/dsproxy/internal/dsproxytest"
)

// TestInitiationKeepsConnection checks that stream initiations, accepted
// and rejected, go over one kept-alive connection to the hub: a new one
// per POST costs a TCP connection and a TLS handshake on every setup.
func TestInitiationKeepsConnection(t *testing.T) {
	w := dsproxytest.NewHub(t)
	cs := w.AddDevice(t, "dev")
	a := newAccepter()
	startDevice(t, w, cs, func(ctx context.Context, req *hubclient.StreamRequest) {
		if req.Name == "no" {
			req.Reject("not this one")
			return
		}
		a.handle(ctx, req)
	})
	sc := w.ServiceClient(t, w.OwnerConnectionString)
	var posts, fresh atomic.Int32
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) {
			if info.Reused {
				return
			}
			fresh.Add(1)
		},
		WroteHeaders: func() { posts.Add(1) },
	})
	ctx, cancel := context.WithTimeout(ctx, dsproxytest.WaitTimeout)
	defer cancel()
	for i := range 4 {
		name := "yes"
		if i == 2 {
			name = "no"
		}
		c, err := sc.OpenStream(ctx, "dev", name)
		if name == "no" {
			if err == nil {
				t.Fatal("rejected stream opened")
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		a.next(t)
		c.Close()
	}
	// One connection for the POSTs, one per accepted stream's WebSocket.
	if got, want := fresh.Load(), int32(1+3); got != want {
		t.Errorf("%d new connections for %d requests, want %d", got, posts.Load(), want)
	}
}
