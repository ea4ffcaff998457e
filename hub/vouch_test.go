package hub_test

import (
	"context"
	"errors"
	"net/http"
	"testing"

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

			c, err := ss.OpenStream(ctxFor(t), "dev1", "echo")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_, err = c.Read(make([]byte, 1))
			var he *hubclient.HubError
			if !errors.As(err, &he) || he.StatusCode != http.StatusNotFound {
				t.Errorf("session stream after the change: %v, want a 404", err)
			}
			if _, err := openEcho(t, w.Service, "dev1"); !errors.As(err, &he) || he.StatusCode != http.StatusNotFound {
				t.Errorf("per-stream stream after the change: %v, want a 404", err)
			}
		})
	}
}
