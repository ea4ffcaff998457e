package dsproxytest

import (
	"context"
	"testing"
	"time"

	"github.com/dsproxy/dsproxy/hubclient"
)

// SessionClient runs a session client for connStr that trusts the hub,
// until cleanup. configure, when not nil, adjusts its configuration.
func (h *Hub) SessionClient(t testing.TB, connStr string, configure func(*hubclient.ServiceConfig)) *hubclient.SessionClient {
	t.Helper()
	cfg := hubclient.ServiceConfig{
		ConnectionString: connStr,
		TLSConfig:        h.ClientTLS,
		MinBackoff:       50 * time.Millisecond,
		MaxBackoff:       500 * time.Millisecond,
		Logger:           Logger(t).With().Str("role", "session").Logger(),
	}
	if configure != nil {
		configure(&cfg)
	}
	sc, err := hubclient.NewSessionClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("session client stopped with: %v", err)
			}
		case <-time.After(WaitTimeout):
			t.Errorf("session client did not stop within %s", WaitTimeout)
		}
	})
	return sc
}

// StartSessionService runs a service proxy that carries its connections
// over a session with the owner's credential, on 127.0.0.1:0, and returns
// its address.
func (h *Hub) StartSessionService(t testing.TB, deviceID, name string) string {
	t.Helper()
	return h.StartServiceWith(t, h.SessionClient(t, h.OwnerConnectionString, nil), deviceID, name)
}
