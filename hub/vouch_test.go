package hub_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/dsproxy/dsproxy/hubclient"
	"github.com/dsproxy/dsproxy/internal/dsproxytest"
	"github.com/dsproxy/dsproxy/internal/sas"
)

// TestRevocationStopsNewStreams: a new stream initiated as soon as the
// registry call that disabled or deleted a device, or replaced both its
// keys, has returned is refused with 404, in both modes, although the
// device's session vouched for the device on the streams before (the hub
// then skips the registry read).
func TestRevocationStopsNewStreams(t *testing.T) {
	cases := []struct {
		name   string
		change func(ctx context.Context, sc *hubclient.ServiceClient, d hubclient.Device) error
	}{
		{"disable", func(ctx context.Context, sc *hubclient.ServiceClient, d hubclient.Device) error {
			d.Status = "disabled"
			_, err := sc.UpdateDevice(ctx, d)
			return err
		}},
		{"delete", func(ctx context.Context, sc *hubclient.ServiceClient, d hubclient.Device) error {
			return sc.DeleteDevice(ctx, d.ID)
		}},
		{"new keys", func(ctx context.Context, sc *hubclient.ServiceClient, d hubclient.Device) error {
			d.PrimaryKey, d.SecondaryKey = sas.NewKey(), sas.NewKey()
			_, err := sc.UpdateDevice(ctx, d)
			return err
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := dsproxytest.NewHub(t)
			a := runAgent(t, w.ClientTLS, w.AddDevice(t, "dev1"), nil, "echo="+dsproxytest.Echo(t))
			a.waitConnected(t)
			ss := w.SessionClient(t, w.OwnerConnectionString, nil)
			// Several streams first, so that the session has vouched.
			for range 3 {
				sessionEcho(t, ss, "dev1").Close()
				c, err := openEcho(t, w.Service, "dev1")
				if err != nil {
					t.Fatal(err)
				}
				if err := echoOnce(c, "y"); err != nil {
					t.Fatal(err)
				}
				c.Close()
			}
			d, err := w.Service.GetDevice(ctxFor(t), "dev1")
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.change(ctxFor(t), w.Service, d); err != nil {
				t.Fatal(err)
			}

			if err := sessionOpenErr(t, ss, "dev1"); !isStatus(err, http.StatusNotFound) {
				t.Errorf("session stream after the change: %v, want a 404", err)
			}
			if _, err := openEcho(t, w.Service, "dev1"); !isStatus(err, http.StatusNotFound) {
				t.Errorf("per-stream stream after the change: %v, want a 404", err)
			}
		})
	}
}

// TestSessionPolicyKeyChange: a service session's streams are authorized
// against the policy's current keys, however many streams the token
// verified for before: once both keys change in the registry, the next
// stream is refused with 401; with the old key back, streams go again.
func TestSessionPolicyKeyChange(t *testing.T) {
	w := dsproxytest.NewHub(t)
	w.StartDevice(t, "dev1", "echo="+dsproxytest.Echo(t))
	ss := w.SessionClient(t, w.OwnerConnectionString, nil)
	for range 3 {
		sessionEcho(t, ss, "dev1").Close()
	}
	reg := w.Server.Registry()
	old, err := reg.GetPolicy(ctxFor(t), "iothubowner")
	if err != nil {
		t.Fatal(err)
	}
	changed := old
	changed.PrimaryKey, changed.SecondaryKey = sas.NewKey(), sas.NewKey()
	if err := reg.PutPolicy(ctxFor(t), changed); err != nil {
		t.Fatal(err)
	}
	if err := sessionOpenErr(t, ss, "dev1"); !isStatus(err, http.StatusUnauthorized) {
		t.Errorf("stream after the key change: %v, want a 401", err)
	}
	if err := reg.PutPolicy(ctxFor(t), old); err != nil {
		t.Fatal(err)
	}
	sessionEcho(t, ss, "dev1").Close()
}

// sessionOpenErr opens a session stream to the echo target of deviceID
// and returns the error of its first read: the hub's refusal, if any.
func sessionOpenErr(t *testing.T, ss *hubclient.SessionClient, deviceID string) error {
	t.Helper()
	c, err := ss.OpenStream(ctxFor(t), deviceID, "echo")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
	_, err = c.Read(make([]byte, 1))
	return err
}

// isStatus reports whether err is a HubError with the given status.
func isStatus(err error, status int) bool {
	var he *hubclient.HubError
	return errors.As(err, &he) && he.StatusCode == status
}
