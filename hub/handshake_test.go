package hub

import (
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dsproxy/dsproxy/hub/certs"
)

// handshakeWorld is a handshakeListener on 127.0.0.1:0 with slots
// handshake slots and a queue wait of wait, and a client configuration
// that trusts it.
func handshakeWorld(t *testing.T, slots int, wait time.Duration) (*handshakeListener, *tls.Config) {
	t.Helper()
	b, err := certs.LoadOrCreate(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := newHandshakeListener(flightListener{ln}, b.Config, 5*time.Second, wait, slots, zerolog.Nop())
	t.Cleanup(func() { l.Close() })
	cc, err := certs.ClientConfig(b.CAPEM)
	if err != nil {
		t.Fatal(err)
	}
	cc.ServerName = "127.0.0.1"
	return l, cc
}

// serveEcho accepts from l until it closes and echoes one byte on each
// connection; the returned function waits for it.
func serveEcho(l net.Listener) (wait func()) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				b := make([]byte, 1)
				if _, err := c.Read(b); err == nil {
					_, _ = c.Write(b)
				}
			}()
		}
	}()
	return wg.Wait
}

func dialEcho(l net.Listener, cc *tls.Config) error {
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: cc}
	c, err := d.Dial("tcp", l.Addr().String())
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte{7}); err != nil {
		return err
	}
	b := make([]byte, 1)
	_, err = c.Read(b)
	return err
}

// TestHandshakeQueue: with one handshake slot, 32 clients that connect at
// once all get through: the queued ones wait their turn rather than fail.
func TestHandshakeQueue(t *testing.T) {
	l, cc := handshakeWorld(t, 1, 5*time.Second)
	wait := serveEcho(l)
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- dialEcho(l, cc)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("queued client: %v", err)
		}
	}
	if n := l.shed.Load(); n != 0 {
		t.Errorf("%d handshakes shed, want none", n)
	}
	l.Close()
	wait()
}

// TestHandshakeShed: a ClientHello that finds no free slot within the
// queue wait is refused at once with an alert (the client's handshake
// fails fast), and the next one, with a slot free, gets through.
func TestHandshakeShed(t *testing.T) {
	l, cc := handshakeWorld(t, 1, 50*time.Millisecond)
	wait := serveEcho(l)
	l.slots <- struct{}{} // every slot busy
	start := time.Now()
	err := dialEcho(l, cc)
	if err == nil {
		t.Fatal("handshake succeeded with no slot free")
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || time.Since(start) > 3*time.Second {
		t.Errorf("shed handshake took %s (%v), want a fast failure", time.Since(start), err)
	}
	if n := l.shed.Load(); n != 1 {
		t.Errorf("%d handshakes shed, want 1", n)
	}
	<-l.slots
	if err := dialEcho(l, cc); err != nil {
		t.Errorf("with a free slot: %v", err)
	}
	if n := len(l.slots); n != 0 {
		t.Errorf("%d slots held after the handshakes, want 0", n)
	}
	l.Close()
	wait()
}

// slowAnswer delays the client's writes after its ClientHello: a client
// short of CPU that takes long to answer the hub's flight.
type slowAnswer struct {
	net.Conn
	delay  time.Duration
	writes int
}

func (c *slowAnswer) Write(p []byte) (int, error) {
	if c.writes++; c.writes == 2 {
		time.Sleep(c.delay)
	}
	return c.Conn.Write(p)
}

// TestHandshakeSlowAnswer: a client may take up to the handshake timeout
// to answer the hub's flight, counted from the flight, even when the hub
// took long to send it: the hub's share of the work is done by then, and
// cutting the client off would throw it away (issue 6).
func TestHandshakeSlowAnswer(t *testing.T) {
	const timeout, hubTook, clientTook = 2 * time.Second, 1400 * time.Millisecond, 1400 * time.Millisecond
	b, err := certs.LoadOrCreate(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := b.Config.Clone()
	cert := cfg.Certificates[0]
	cfg.Certificates = nil
	cfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		time.Sleep(hubTook) // after admission, before the flight
		return &cert, nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := newHandshakeListener(flightListener{ln}, cfg, timeout, 5*time.Second, 4, zerolog.Nop())
	wait := serveEcho(l)
	defer func() {
		l.Close()
		wait()
	}()
	cc, err := certs.ClientConfig(b.CAPEM)
	if err != nil {
		t.Fatal(err)
	}
	cc.ServerName = "127.0.0.1"

	nc, err := net.DialTimeout("tcp", l.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(&slowAnswer{Conn: nc, delay: clientTook}, cc)
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	_, err = c.Write([]byte{7})
	if err == nil {
		_, err = c.Read(make([]byte, 1))
	}
	if err != nil {
		t.Errorf("a client that answered %s after the hub's flight, %s after its admission (timeout %s): %v",
			clientTook, hubTook+clientTook, timeout, err)
	}
	t.Logf("echoed after %s", time.Since(start).Round(time.Millisecond))
}
