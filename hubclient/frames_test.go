package hubclient_test

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"slices"
	"testing"

	"github.com/dsproxy/dsproxy/hubclient"
	"github.com/dsproxy/dsproxy/internal/dsproxytest"
	"github.com/dsproxy/dsproxy/internal/wire"
)

// TestSessionFrameSize: the data frames of a session stream are as large
// as the receiving side announced it accepts. Between a device and a
// service that both announce large frames they are of
// wire.MaxFramePayload both ways; a side that does not (as a build before
// them) receives none over wire.LegacyFramePayload, while the other side
// still receives large ones. A 1 MiB transfer each way arrives intact in
// every pairing.
func TestSessionFrameSize(t *testing.T) {
	w := dsproxytest.NewHub(t)
	for _, c := range []struct {
		legacyDevice, legacyService bool
	}{{false, false}, {true, false}, {false, true}, {true, true}} {
		name := fmt.Sprintf("legacyDevice=%v,legacyService=%v", c.legacyDevice, c.legacyService)
		t.Run(name, func(t *testing.T) {
			id := fmt.Sprintf("dev-%v-%v", c.legacyDevice, c.legacyService)
			acc := newAccepter()
			var devCfg []func(*hubclient.DeviceConfig)
			if c.legacyDevice {
				devCfg = append(devCfg, hubclient.LegacyDeviceFrames)
			}
			startDevice(t, w, w.AddDevice(t, id), acc.handle, devCfg...)
			var svcCfg func(*hubclient.ServiceConfig)
			if c.legacyService {
				svcCfg = hubclient.LegacyServiceFrames
			}
			sc := w.SessionClient(t, w.OwnerConnectionString, svcCfg)
			limit := func(legacy bool) int {
				if legacy {
					return wire.LegacyFramePayload
				}
				return wire.MaxFramePayload
			}
			// Up by Write and down on one stream, up by ReadBurst (tunnel's
			// copy) on another.
			svc, dev := openAccepted(t, sc, acc, id)
			transfer(t, "up (Write)", dev, func(p []byte) error {
				_, err := svc.Write(p)
				return err
			}, svc, limit(c.legacyDevice))
			transfer(t, "down", svc, func(p []byte) error {
				_, err := dev.Write(p)
				return err
			}, dev, limit(c.legacyService))
			svc, dev = openAccepted(t, sc, acc, id)
			transfer(t, "up (ReadBurst)", dev, func(p []byte) error {
				_, _, err := svc.(burstReader).ReadBurst(bytes.NewReader(p))
				return err
			}, svc, limit(c.legacyDevice))
		})
	}
}

// openAccepted opens a stream to device id and waits for the hub's
// answer: the service's and the device's sides.
func openAccepted(t *testing.T, sc *hubclient.SessionClient, acc *accepter, id string) (svc, dev hubclient.Stream) {
	t.Helper()
	svc, err := openVia(t, sc, id, "x")
	if err != nil {
		t.Fatal(err)
	}
	if err := handshake(svc); err != nil {
		t.Fatal(err)
	}
	return svc, acc.next(t)
}

// transfer sends 1 MiB with send, then half-closes from, and checks that
// dst's WriteTo gets it intact, in data frames (one Write each) of at most
// limit bytes, the largest of exactly limit.
func transfer(t *testing.T, what string, dst hubclient.Stream, send func([]byte) error, from hubclient.Stream, limit int) {
	t.Helper()
	p := make([]byte, 1<<20)
	rand.Read(p)
	errc := make(chan error, 1)
	go func() {
		err := send(p)
		if err == nil {
			err = from.CloseWrite()
		}
		errc <- err
	}()
	var got sizeWriter
	_, err := dst.(io.WriterTo).WriteTo(&got)
	if serr := <-errc; serr != nil {
		t.Fatalf("%s: send: %v", what, serr)
	}
	if err != nil {
		t.Fatalf("%s: WriteTo after %d of %d bytes: %v", what, got.Len(), len(p), err)
	}
	if !bytes.Equal(got.Bytes(), p) {
		t.Fatalf("%s: got %d bytes, want the %d sent, in order", what, got.Len(), len(p))
	}
	if m := slices.Max(got.sizes); m != limit {
		t.Errorf("%s: largest frame %d bytes, want %d (frames %v)", what, m, limit, got.sizes)
	}
}
