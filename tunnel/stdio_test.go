package tunnel_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/dsproxy/dsproxy/hubclient"
	"github.com/dsproxy/dsproxy/internal/dsproxytest"
	"github.com/dsproxy/dsproxy/tunnel"
)

// TestCarryOneStdio carries one stream over a pair of pipes, as
// `dsproxy service --stdio` does for ssh's ProxyCommand: EOF on "stdin"
// half-closes the stream, the target answers after reading to EOF, and the
// answer ends with EOF on "stdout".
func TestCarryOneStdio(t *testing.T) {
	w := dsproxytest.NewHub(t)
	target := dsproxytest.Serve(t, func(c *net.TCPConn) {
		data, err := io.ReadAll(c)
		if err != nil {
			return
		}
		sum := sha256.Sum256(data)
		c.Write(sum[:])
		c.CloseWrite()
	})
	w.StartDevice(t, "dev1", "ssh="+target)
	svc, err := tunnel.NewService(tunnel.ServiceConfig{DeviceID: "dev1", StreamName: "ssh"}, w.Service)
	if err != nil {
		t.Fatal(err)
	}

	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- svc.CarryOne(ctx, &tunnel.StdioConn{R: inR, W: outW}) }()

	data := make([]byte, 1<<20)
	rand.Read(data)
	go func() {
		inW.Write(data)
		inW.Close()
	}()
	got, err := io.ReadAll(outR)
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(data)
	if !bytes.Equal(got, want[:]) {
		t.Fatalf("answer %x, want %x", got, want)
	}
	if err := <-done; err != nil {
		t.Fatalf("CarryOne: %v", err)
	}
}

// TestCarryOneRejected: a stream the device refuses is an error with the
// device's reason, for the ProxyCommand to print.
func TestCarryOneRejected(t *testing.T) {
	w := dsproxytest.NewHub(t)
	w.StartDevice(t, "dev1", "ssh="+dsproxytest.Echo(t))
	svc, err := tunnel.NewService(tunnel.ServiceConfig{DeviceID: "dev1", StreamName: "rdp"}, w.Service)
	if err != nil {
		t.Fatal(err)
	}
	inR, inW := io.Pipe()
	defer inW.Close()
	outR, outW := io.Pipe()
	defer outR.Close()
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	err = svc.CarryOne(ctx, &tunnel.StdioConn{R: inR, W: outW})
	var rej *hubclient.RejectedError
	if !errors.As(err, &rej) || !bytes.Contains([]byte(rej.Reason), []byte(`no target named "rdp"`)) {
		t.Fatalf("got %v, want a rejection naming the missing target", err)
	}
}
