package hub_test

// Replicas: three hubs on 127.0.0.1, .2 and .3 sharing a PostgreSQL
// registry (a schema of the test's own, see internal/pgtest) and a
// three-node NATS cluster run in process (internal/natstest).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"
	"github.com/nats-io/nats-server/v2/server"

	"github.com/dsproxy/dsproxy/hub"
	"github.com/dsproxy/dsproxy/hub/certs"
	"github.com/dsproxy/dsproxy/hub/registry"
	"github.com/dsproxy/dsproxy/hubclient"
	"github.com/dsproxy/dsproxy/internal/dsproxytest"
	"github.com/dsproxy/dsproxy/internal/natstest"
	"github.com/dsproxy/dsproxy/internal/pgtest"
	"github.com/dsproxy/dsproxy/internal/sas"
	"github.com/dsproxy/dsproxy/internal/wire"
)

// testCluster is n hub replicas, replica i on 127.0.0.(i+1).
type testCluster struct {
	nats []*server.Server
	hubs []*dsproxytest.Hub
}

// newCluster starts the NATS cluster and the replicas. They share one
// certificate (and CA), copied into each data directory, as operators
// share theirs, and accept tokens for "localhost" besides their own
// address, the name clients sign for.
func newCluster(t *testing.T, n int, configure ...func(*hub.Config)) *testCluster {
	t.Helper()
	pgURL := pgtest.URL(t)
	c := &testCluster{nats: natstest.Cluster(t, n)}
	hosts := []string{"localhost"}
	for i := range n {
		hosts = append(hosts, replicaIP(i))
	}
	tlsDir := t.TempDir()
	if _, err := certs.LoadOrCreate(tlsDir, hosts); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
		reg, err := registry.OpenPostgres(ctx, pgURL)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { reg.Close() }) // after the hub, which cleans up first
		cfg := hub.DefaultConfig()
		cfg.DataDir = t.TempDir()
		copyDir(t, tlsDir, filepath.Join(cfg.DataDir, "tls"))
		cfg.HostNames = []string{replicaIP(i), "localhost"}
		cfg.Registry = reg
		cfg.NATS = natstest.URLs(c.nats...)
		cfg.ShutdownGrace = 0
		cfg.Logger = dsproxytest.Logger(t).With().Str("role", "hub").Int("replica", i).Logger()
		for _, f := range configure {
			f(&cfg)
		}
		c.hubs = append(c.hubs, dsproxytest.StartHubAt(t, cfg, replicaIP(i)+":0"))
	}
	return c
}

func replicaIP(i int) string { return fmt.Sprintf("127.0.0.%d", i+1) }

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o700); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// addrs are the replicas' host:port, from replica first and on in order.
func (c *testCluster) addrs(first int) []string {
	var out []string
	for i := range c.hubs {
		out = append(out, c.hubs[(first+i)%len(c.hubs)].Addr)
	}
	return out
}

// onLocalhost is connStr signed for "localhost", a name every replica
// takes, instead of one replica's address.
func onLocalhost(t *testing.T, connStr string) string {
	t.Helper()
	cs, err := sas.ParseConnectionString(connStr)
	if err != nil {
		t.Fatal(err)
	}
	cs.HostName = "localhost"
	return cs.String()
}

// startDevice registers id and runs a device agent that serves an echo
// target and knows the replicas, from replica first on; it waits until
// the device is connected.
func (c *testCluster) startDevice(t *testing.T, id string, first int) *dsproxytest.Device {
	t.Helper()
	h := c.hubs[first]
	connStr := onLocalhost(t, h.AddDevice(t, id))
	return h.RunDevice(t, connStr, func(cfg *hubclient.DeviceConfig) {
		cfg.Hubs = c.addrs(first)
		cfg.KeepAliveInterval = time.Second
		cfg.ConnectionWriteTimeout = time.Second
	}, "echo="+dsproxytest.Echo(t))
}

// echoVia opens a stream through sc and checks that bytes come back.
func echoVia(ctx context.Context, sc interface {
	OpenStream(context.Context, string, string) (hubclient.Stream, error)
}, id string) error {
	st, err := sc.OpenStream(ctx, id, "echo")
	if err != nil {
		return err
	}
	defer st.Close()
	msg := []byte("through the replicas")
	if _, err := st.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	_ = st.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(st, got); err != nil {
		return err
	}
	if string(got) != string(msg) {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

// streamsWorkAgain opens streams through sc to the device until one
// echoes, and returns how long after since that was; it gives up 10 s
// after since with the last error.
func streamsWorkAgain(ctx context.Context, sc *hubclient.ServiceClient, id string, since time.Time) (time.Duration, error) {
	for {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := echoVia(sctx, sc, id)
		cancel()
		if err == nil {
			return time.Since(since), nil
		}
		if time.Since(since) > 10*time.Second {
			return 0, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// connectedTo returns the index of the replica that holds the device's
// session, or -1.
func (c *testCluster) connectedTo(t *testing.T, id string) int {
	t.Helper()
	at := -1
	for i, h := range c.hubs {
		if h.Server.Connected(id) {
			if at >= 0 {
				t.Errorf("device %q is connected to replicas %d and %d", id, at, i)
			}
			at = i
		}
	}
	return at
}

// TestClusterRoutesToTheDevicesReplica reaches a device connected to
// replica B through replica A: the stream's URL is on B, and the bytes
// flow there.
func TestClusterRoutesToTheDevicesReplica(t *testing.T) {
	c := newCluster(t, 3)
	c.startDevice(t, "dev-b", 1)
	if at := c.connectedTo(t, "dev-b"); at != 1 {
		t.Fatalf("device connected to replica %d, want 1", at)
	}
	a := c.hubs[0]
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()

	// The initiation, by hand: the URL names replica B.
	in := initiate(t, a, ownerToken(t, a), "dev-b", "echo", nil)
	if in.status != http.StatusOK || !in.body.IsAccepted {
		t.Fatalf("initiation through replica A: %d %+v", in.status, in.err)
	}
	u, err := url.Parse(in.body.URL)
	if err != nil || u.Host != c.hubs[1].Addr {
		t.Fatalf("stream URL %q, want one on replica B (%s)", in.body.URL, c.hubs[1].Addr)
	}
	// And a whole stream through the SDK: the service talks to A only.
	if err := echoVia(ctx, a.Service, "dev-b"); err != nil {
		t.Fatalf("stream through replica A to a device on B: %v", err)
	}

	// Session mode: A sends the service to B, and the stream's first
	// bytes, written before the answer, are replayed there.
	onA := func(cfg *hubclient.ServiceConfig) { cfg.Hubs = []string{a.Addr} }
	sess := a.SessionClient(t, onLocalhost(t, a.OwnerConnectionString), onA)
	for i := range 3 { // the first redirected, the next straight to B
		if err := echoVia(ctx, sess, "dev-b"); err != nil {
			t.Fatalf("session stream %d through replica A to a device on B: %v", i, err)
		}
	}
	big, err := sess.OpenStream(ctx, "dev-b", "echo")
	if err != nil {
		t.Fatal(err)
	}
	sessionEchoMore(t, big, 1<<20) // more than a redirect keeps
	sess2 := a.SessionClient(t, onLocalhost(t, a.OwnerConnectionString), onA)
	big, err = sess2.OpenStream(ctx, "dev-b", "echo")
	if err != nil {
		t.Fatal(err)
	}
	sessionEchoMore(t, big, 1<<20) // the first stream, redirected

	_, ma := scrape(t, a)
	_, mb := scrape(t, c.hubs[1])
	if sample(t, ma, `dsproxy_hub_routed_requests_total{outcome="sent"}`) < 1 ||
		sample(t, mb, `dsproxy_hub_routed_requests_total{outcome="served"}`) < 1 ||
		sample(t, ma, `dsproxy_hub_nats_connected`) != 1 {
		t.Error("metrics: want requests sent by A and served by B, and A connected to NATS")
	}

	// A registered device that no replica holds: 404 at once.
	a.AddDevice(t, "dev-offline")
	start := time.Now()
	in = initiate(t, a, ownerToken(t, a), "dev-offline", "echo", nil)
	if in.status != http.StatusNotFound || in.err.ErrorCode != wire.CodeDeviceUnavailable {
		t.Fatalf("initiation to an offline device: %d %+v, want 404 %d", in.status, in.err, wire.CodeDeviceUnavailable)
	}
	t.Logf("404 for a device no replica holds in %s", time.Since(start).Round(time.Microsecond))
	_, err = a.Service.OpenStream(ctx, "dev-offline", "echo")
	if !errors.Is(err, hubclient.ErrDeviceUnavailable) {
		t.Fatalf("OpenStream to an offline device: %v, want ErrDeviceUnavailable", err)
	}
}

// TestClusterReplicaDies kills the replica a device is connected to: the
// device moves to another replica, and streams through any replica work
// again within the 10 s goal.
func TestClusterReplicaDies(t *testing.T) {
	c := newCluster(t, 3)
	c.startDevice(t, "dev-b", 1)
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	a := c.hubs[0]
	if err := echoVia(ctx, a.Service, "dev-b"); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	c.hubs[1].Kill()
	back, err := streamsWorkAgain(ctx, a.Service, "dev-b", killed)
	if err != nil {
		t.Fatalf("device not reachable through replica A 10 s after its replica died (connected to %d): %v", c.connectedTo(t, "dev-b"), err)
	}
	at := c.connectedTo(t, "dev-b")
	t.Logf("device back on replica %d, streams working %s after its replica died", at, back.Round(time.Millisecond))
	if at != 0 && at != 2 {
		t.Fatalf("device connected to replica %d, want 0 or 2", at)
	}
	if err := echoVia(ctx, c.hubs[2].Service, "dev-b"); err != nil {
		t.Fatalf("stream through replica C: %v", err)
	}
}

// TestClusterNATSNodeDies stops a NATS node: a running stream is
// untouched, and new streams work again within about a second.
func TestClusterNATSNodeDies(t *testing.T) {
	c := newCluster(t, 3)
	c.startDevice(t, "dev-b", 1)
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	a := c.hubs[0]
	running, err := a.Service.OpenStream(ctx, "dev-b", "echo")
	if err != nil {
		t.Fatal(err)
	}
	defer running.Close()
	roundTrip := func(msg string) error {
		if _, err := running.Write([]byte(msg)); err != nil {
			return err
		}
		got := make([]byte, len(msg))
		_ = running.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(running, got); err != nil {
			return err
		}
		if string(got) != msg {
			return fmt.Errorf("echo %q, want %q", got, msg)
		}
		return nil
	}
	if err := roundTrip("before"); err != nil {
		t.Fatal(err)
	}
	// Stop the nodes replicas are connected to (each replica picks one
	// at random), all but one node at most.
	var victims []*server.Server
	for _, n := range c.nats {
		if n.NumClients() > 0 && len(victims) < len(c.nats)-1 {
			victims = append(victims, n)
		}
	}
	if len(victims) == 0 {
		t.Fatal("no replica is connected to a NATS node")
	}
	for _, n := range victims {
		clients := n.NumClients()
		stopped := time.Now()
		n.Shutdown()
		n.WaitForShutdown()
		if err := roundTrip("during"); err != nil {
			t.Fatalf("running stream after a NATS node stopped: %v", err)
		}
		again, err := streamsWorkAgain(ctx, a.Service, "dev-b", stopped)
		if err != nil {
			t.Fatalf("no new stream 10 s after a NATS node stopped: %v", err)
		}
		t.Logf("new streams work %s after a NATS node with %d replicas on it stopped", again.Round(time.Millisecond), clients)
	}
	if err := roundTrip("after"); err != nil {
		t.Fatalf("running stream: %v", err)
	}
}

// TestClusterNewestSessionWins opens 200 control sessions of one device at
// once, spread over the replicas: exactly one stays, and it is the one
// streams reach.
func TestClusterNewestSessionWins(t *testing.T) {
	c := newCluster(t, 3)
	key := addDevice(t, c.hubs[0], "storm")
	tok, err := sas.NewToken(sas.DeviceResource("localhost", "storm"), key, "", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	sessions := make([]*stormSession, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			sessions[i] = dialStorm(c.hubs[i%len(c.hubs)], "storm", tok)
		})
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, s := range sessions {
			s.close()
		}
	})
	var live []*stormSession
	dsproxytest.Eventually(t, "one live session", func() bool {
		live = live[:0]
		for _, s := range sessions {
			if s.live() {
				live = append(live, s)
			}
		}
		return len(live) == 1
	})
	time.Sleep(500 * time.Millisecond) // no late takeover ends the last one
	live = live[:0]
	for _, s := range sessions {
		if s.live() {
			live = append(live, s)
		}
	}
	if len(live) != 1 {
		t.Fatalf("%d live sessions, want 1", len(live))
	}
	if at := c.connectedTo(t, "storm"); at < 0 {
		t.Fatal("no replica holds the surviving session")
	}
	var takenOver float64
	for _, h := range c.hubs {
		_, m := scrape(t, h)
		takenOver += sample(t, m, `dsproxy_hub_control_sessions_total{event="taken_over"}`)
	}
	t.Logf("%.0f of %d sessions ended by a takeover from another replica", takenOver, n)
	// A stream request from any replica reaches the survivor.
	for i, h := range c.hubs {
		done := make(chan initiation, 1)
		go func() { done <- initiate(t, h, ownerToken(t, h), "storm", "s", nil) }()
		if !live[0].answerOne(true) {
			t.Fatalf("the surviving session got no stream request from replica %d", i)
		}
		if in := <-done; in.status != http.StatusOK || !in.body.IsAccepted {
			t.Fatalf("initiation through replica %d: %d %+v", i, in.status, in.err)
		}
	}
}

// stormSession is one raw control session of TestClusterNewestSessionWins.
type stormSession struct {
	ws     *websocket.Conn
	mux    *yamux.Session
	closed atomic.Bool
}

// dialStorm opens a control session and, when the hub takes it, serves
// it until the hub closes it.
func dialStorm(h *dsproxytest.Hub, id, tok string) *stormSession {
	s := &stormSession{}
	s.closed.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "wss://"+h.Addr+"/devices/"+id+"/control?api-version=2020-09-30", &websocket.DialOptions{
		HTTPClient:   httpClient(h.ClientTLS),
		HTTPHeader:   http.Header{"Authorization": {tok}},
		Subprotocols: []string{wire.ControlSubprotocol},
	})
	if err != nil {
		return s
	}
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	mux, err := yamux.Server(websocket.NetConn(context.Background(), ws, websocket.MessageBinary), cfg)
	if err != nil {
		ws.CloseNow()
		return s
	}
	s.ws, s.mux = ws, mux
	s.closed.Store(false)
	go func() {
		<-mux.CloseChan()
		s.closed.Store(true)
	}()
	return s
}

func (s *stormSession) live() bool { return !s.closed.Load() }

func (s *stormSession) close() {
	if s.mux != nil {
		s.mux.Close()
		s.ws.CloseNow()
	}
}

// answerOne reads stream requests (SessionReady first) until one asks for
// a stream, and answers it.
func (s *stormSession) answerOne(accept bool) bool {
	for {
		st, err := s.mux.AcceptStream()
		if err != nil {
			return false
		}
		_ = st.SetReadDeadline(time.Now().Add(dsproxytest.WaitTimeout))
		var req wire.StreamRequest
		if err := wire.ReadMessage(st, &req); err != nil || req.StreamID == "" {
			st.Close() // SessionReady
			continue
		}
		err = wire.WriteMessage(st, &wire.StreamResponse{Accepted: accept})
		st.Close()
		return err == nil
	}
}

// sessionEchoMore writes n bytes through an echo stream before reading
// any, and checks they all come back.
func sessionEchoMore(t *testing.T, st hubclient.Stream, n int) {
	t.Helper()
	defer st.Close()
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(i * 7)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := st.Write(data)
		if err == nil {
			err = st.CloseWrite()
		}
		errc <- err
	}()
	_ = st.SetReadDeadline(time.Now().Add(dsproxytest.WaitTimeout))
	got, err := io.ReadAll(st)
	if err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("echoed %d bytes, want %d equal ones", len(got), len(data))
	}
}

// TestClusterRevocation disables, through replica A, a device whose
// session and stream are on replica B: B ends both.
func TestClusterRevocation(t *testing.T) {
	c := newCluster(t, 3)
	dev := c.startDevice(t, "dev-b", 1)
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	a := c.hubs[0]
	st, err := a.Service.OpenStream(ctx, "dev-b", "echo")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := a.Service.UpdateDevice(ctx, hubclient.Device{ID: "dev-b", Status: "disabled"}); err != nil {
		t.Fatal(err)
	}
	_ = st.SetReadDeadline(time.Now().Add(dsproxytest.WaitTimeout))
	_, err = st.Read(make([]byte, 1))
	var se *hubclient.StreamEndError
	if !errors.As(err, &se) || se.Code != int(websocket.StatusPolicyViolation) {
		t.Fatalf("stream on B after the device was disabled through A: %v, want close 1008", err)
	}
	dsproxytest.Eventually(t, "replica B to drop the device's session", func() bool { return !c.hubs[1].Server.Connected("dev-b") })
	dev.Stop(t)
}

// TestClusterNATSUnreachable: a replica that cannot reach NATS at start
// says so in one line, without the URL's password, in bounded time.
func TestClusterNATSUnreachable(t *testing.T) {
	pgURL := pgtest.URL(t)
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	reg, err := registry.OpenPostgres(ctx, pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	cfg := hub.DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.HostNames = []string{"127.0.0.1"}
	cfg.Registry = reg
	cfg.NATS = "nats://dsproxy:s3cret@" + dsproxytest.ClosedPort(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	srv, err := hub.New(cfg, ln)
	if err == nil {
		srv.Close()
		t.Fatal("hub started without NATS")
	}
	ln.Close()
	msg := err.Error()
	if !strings.Contains(msg, "connect to NATS") || strings.Contains(msg, "s3cret") || strings.Contains(msg, "\n") {
		t.Fatalf("error %q: want one line naming NATS, without the password", msg)
	}
	t.Logf("refused in %s: %v", time.Since(start).Round(time.Millisecond), err)

	cfg.Registry = nil
	cfg.NATS = "nats://127.0.0.1:4222"
	if _, err := hub.New(cfg, ln); err == nil || !strings.Contains(err.Error(), "share a registry") {
		t.Fatalf("replica without a shared registry: %v", err)
	}
}

// TestPublicAddr: connection strings name the shared name, stream URLs the
// replica's own address, and tokens for the shared name are accepted.
func TestPublicAddr(t *testing.T) {
	w := dsproxytest.NewHub(t, func(c *hub.Config) { c.PublicAddr = "hub.example.test:8443" })
	cs, err := sas.ParseConnectionString(w.OwnerConnectionString)
	if err != nil || cs.HostName != "hub.example.test:8443" {
		t.Fatalf("owner connection string names %q (%v), want the public address", cs.HostName, err)
	}
	// Registered through the registry: the hub's own clients would dial
	// the public name, which resolves nowhere here.
	key := sas.NewKey()
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	if _, err := w.Server.Registry().CreateDevice(ctx, registry.Device{ID: "pub", Status: registry.StatusEnabled, PrimaryKey: key, SecondaryKey: sas.NewKey()}); err != nil {
		t.Fatal(err)
	}
	tok, err := sas.NewToken(sas.DeviceResource("hub.example.test:8443", "pub"), key, "", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	d := connectRawDevice(t, w, "pub", tok)
	done := make(chan initiation, 1)
	go func() { done <- initiate(t, w, ownerToken(t, w), "pub", "s", nil) }()
	req := d.next(t)
	req.answer(t, true, "")
	in := <-done
	u, err := url.Parse(in.body.URL)
	if in.status != http.StatusOK || err != nil || u.Host != w.Server.Addr() {
		t.Fatalf("initiation %d, stream URL %q: want one on the hub's own address %s", in.status, in.body.URL, w.Server.Addr())
	}
}
