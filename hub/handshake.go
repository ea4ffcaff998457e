package hub

// TLS handshake admission (issue 6, the restart storm). When a hub with
// thousands of devices restarts, they all redial within a second or two.
// net/http would run every TLS handshake at once: on a few cores none
// finishes for seconds, many run into the handshake timeout (net/http's
// ReadHeaderTimeout, the client's own), and every one cut off is CPU
// spent for nothing, just when the hub is busiest.
//
// handshakeListener runs the handshakes itself, at most a few per core
// at a time: a connection takes a slot once its ClientHello is in (a
// client that sends nothing holds none) and gives it back as soon as the
// hub has written its answering flight, which is when the hub's share of
// the handshake's CPU is spent (the client's round trip for its Finished
// holds no slot). The others wait in line, in order, and their handshake
// timeout starts when their turn comes, and again for the client's answer
// once the hub's flight is out; one that cannot get a slot within
// handshakeQueueWait is refused at once with a TLS alert, before any
// cryptography, and its client retries after its backoff. net/http only
// ever sees connections whose handshake is done.

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/dsproxy/dsproxy/internal/batch"
)

// handshakeQueueWait is how long a connection whose ClientHello is in may
// wait for a handshake slot. The wait counts against the client's TLS
// handshake timeout (15 s for hubclient): one third of it leaves the
// handshake itself ample time on a loaded machine, so that the hub's work
// is not thrown away by a client that gave up, and a client refused
// learns it long before it would give up by itself.
const handshakeQueueWait = 5 * time.Second

// handshakeSlots is how many TLS handshakes the hub runs at once: enough
// to keep every core busy while some handshakes wait on a write.
func handshakeSlots() int { return max(4, 2*runtime.GOMAXPROCS(0)) }

// errHandshakeShed refuses a handshake that waited too long for a slot.
var errHandshakeShed = errors.New("hub busy: too many TLS handshakes waiting")

// handshakeListener accepts connections from its inner listener (see
// Run: flightListener under batchListener), wraps each in a TLS server
// connection, runs the handshake under admission (above) and hands out,
// from Accept, only connections whose handshake succeeded. Close stops it
// and waits for its goroutines.
type handshakeListener struct {
	inner   net.Listener
	cfg     *tls.Config // the hub's, with GetConfigForClient taking a slot
	timeout time.Duration
	wait    time.Duration
	slots   chan struct{}
	log     zerolog.Logger

	ready chan *tls.Conn
	errc  chan error // the inner listener's last error
	ctx   context.Context
	stop  context.CancelFunc
	wg    sync.WaitGroup
	once  sync.Once

	// shed counts the handshakes refused for want of a slot; warned is
	// when that was last logged (Unix nanoseconds).
	shed   atomic.Int64
	warned atomic.Int64

	// full and resumed count the handshakes done, with a full key
	// exchange and certificate, and resuming a session from a ticket
	// (issue 6: after a restart the fleet should resume); waited sums, in
	// nanoseconds, how long admitted handshakes waited for their slot.
	full, resumed atomic.Int64
	waited        atomic.Int64
}

// shedWarnEvery is how often, at most, the hub logs that it refuses
// handshakes: an operator must learn that the hub is saturated, but a
// storm must not flood the log.
const shedWarnEvery = 10 * time.Second

// newHandshakeListener serves TLS with cfg on inner; it sets cfg's
// GetConfigForClient, and later changes to cfg (its session ticket keys)
// apply to the handshakes that follow. timeout bounds the wait for a
// ClientHello, the hub's part of a handshake from its admission, and the
// client's answer to the hub's flight; slots handshakes run at once, and
// a connection waits up to wait for a slot.
func newHandshakeListener(inner net.Listener, cfg *tls.Config, timeout, wait time.Duration, slots int, log zerolog.Logger) *handshakeListener {
	l := &handshakeListener{
		inner:   inner,
		cfg:     cfg,
		timeout: timeout,
		wait:    wait,
		slots:   make(chan struct{}, slots),
		log:     log,
		ready:   make(chan *tls.Conn),
		errc:    make(chan error, 1),
	}
	l.cfg.GetConfigForClient = l.admit
	l.ctx, l.stop = context.WithCancel(context.Background())
	l.wg.Add(1)
	go l.acceptLoop()
	return l
}

// Accept returns the next connection whose TLS handshake is done.
func (l *handshakeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case err := <-l.errc:
		l.errc <- err // for the next call
		return nil, err
	case <-l.ctx.Done():
		return nil, net.ErrClosed
	}
}

// Close closes the inner listener, ends the handshakes in progress and
// waits for them. It is idempotent.
func (l *handshakeListener) Close() error {
	var err error
	l.once.Do(func() {
		l.stop()
		err = l.inner.Close()
		l.wg.Wait()
	})
	return err
}

func (l *handshakeListener) Addr() net.Addr { return l.inner.Addr() }

func (l *handshakeListener) acceptLoop() {
	defer l.wg.Done()
	var delay time.Duration
	for {
		raw, err := l.inner.Accept()
		if err != nil {
			if l.ctx.Err() != nil {
				return
			}
			var ne interface{ Temporary() bool }
			if errors.As(err, &ne) && ne.Temporary() && !errors.Is(err, net.ErrClosed) {
				// Out of descriptors and the like, as net/http does: wait
				// and try again.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				l.log.Debug().Err(err).Stringer("retry", delay).Msg("accept failed")
				select {
				case <-time.After(delay):
					continue
				case <-l.ctx.Done():
					return
				}
			}
			l.errc <- err
			return
		}
		delay = 0
		l.wg.Add(1)
		go l.handshake(raw)
	}
}

// looksLikeHTTP reports whether a TLS record header is the start of a
// plain HTTP request (as net/http checks it).
func looksLikeHTTP(hdr [5]byte) bool {
	switch string(hdr[:]) {
	case "GET /", "HEAD ", "POST ", "PUT /", "OPTIO":
		return true
	}
	return false
}

// pendingKey is the handshake context's key of its *slotHold.
type pendingKey struct{}

// slotHold is a connection's claim on a handshake slot: taken by admit,
// given back once by release (or by flown).
type slotHold struct {
	l     *handshakeListener
	taken atomic.Bool
}

func (h *slotHold) release() bool {
	if h.taken.CompareAndSwap(true, false) {
		<-h.l.slots
		return true
	}
	return false
}

// flown gives the slot back once the hub's answering flight is written
// on nc, and gives the client the handshake timeout from then on to
// answer it: the hub's share of the handshake is done, and cutting the
// client off now would throw it away (issue 6: in a reconnect storm,
// clients short of CPU took longer than the timeout counted from their
// admission, and every such handshake was done again).
func (h *slotHold) flown(nc net.Conn) {
	if h.release() {
		_ = nc.SetDeadline(time.Now().Add(h.l.timeout))
	}
}

// handshake runs raw's TLS handshake and hands the connection to Accept.
func (l *handshakeListener) handshake(raw net.Conn) {
	defer l.wg.Done()
	hold := &slotHold{l: l}
	fc := flightOf(raw)
	if fc != nil {
		fc.hold = hold
	}
	tc := tls.Server(raw, l.cfg)
	_ = raw.SetDeadline(time.Now().Add(l.timeout)) // for the ClientHello; admit renews it
	ctx := context.WithValue(l.ctx, pendingKey{}, hold)
	err := tc.HandshakeContext(ctx)
	hold.release()
	if fc != nil {
		fc.hold = nil // later writes skip the check
	}
	if err != nil {
		l.log.Debug().Err(err).Str(fieldRemote, raw.RemoteAddr().String()).Msg("tls handshake failed")
		// Plain HTTP to the TLS port gets the answer net/http gives it.
		if re := (tls.RecordHeaderError{}); errors.As(err, &re) && re.Conn != nil && looksLikeHTTP(re.RecordHeader) {
			_ = re.Conn.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = io.WriteString(re.Conn, "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
		}
		tc.Close()
		return
	}
	_ = raw.SetDeadline(time.Time{})
	if tc.ConnectionState().DidResume {
		l.resumed.Add(1)
	} else {
		l.full.Add(1)
	}
	select {
	case l.ready <- tc:
	case <-l.ctx.Done():
		tc.Close()
	}
}

// admit is the TLS configuration's GetConfigForClient: called once the
// ClientHello is in, it waits for a handshake slot, up to l.wait, and then
// gives the handshake its full timeout. It changes nothing in the
// configuration.
func (l *handshakeListener) admit(hello *tls.ClientHelloInfo) (*tls.Config, error) {
	hold, _ := hello.Context().Value(pendingKey{}).(*slotHold)
	if hold == nil {
		return nil, nil
	}
	select {
	case l.slots <- struct{}{}:
	default:
		t := time.NewTimer(l.wait)
		defer t.Stop()
		queued := time.Now()
		select {
		case l.slots <- struct{}{}:
			l.waited.Add(int64(time.Since(queued)))
		case <-t.C:
			n := l.shed.Add(1)
			now, last := time.Now().UnixNano(), l.warned.Load()
			if now-last >= int64(shedWarnEvery) && l.warned.CompareAndSwap(last, now) {
				l.log.Warn().Int64("refused_total", n).Stringer("waited", l.wait).
					Msg("tls handshakes refused: the hub is busy with others; clients retry")
			}
			return nil, errHandshakeShed
		case <-hello.Context().Done():
			return nil, hello.Context().Err()
		}
	}
	hold.taken.Store(true)
	_ = hello.Conn.SetDeadline(time.Now().Add(l.timeout))
	return nil, nil
}

// flightListener wraps each connection in a flightConn.
type flightListener struct{ net.Listener }

func (l flightListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &flightConn{Conn: c}, nil
}

// flightOf finds the flightConn under c's batch.Conn, if any.
func flightOf(c net.Conn) *flightConn {
	for {
		switch t := c.(type) {
		case *flightConn:
			return t
		case *batch.Conn:
			c = t.Conn
		default:
			return nil
		}
	}
}

// flightConn gives the connection's handshake slot back after the first
// write once it holds one: the hub's answering flight, when its part of
// the handshake's work is done; the client's answer then has the
// handshake timeout from there (slotHold.flown).
type flightConn struct {
	net.Conn
	hold *slotHold // set for the handshake only, by its goroutine
}

func (c *flightConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if c.hold != nil {
		c.hold.flown(c.Conn)
	}
	return n, err
}
