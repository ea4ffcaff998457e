package hub_test

// Tests of the hub's security promises (issue #4, "Security"): no key or
// token ever reaches a log, the data directory and the files holding keys
// are private whatever the umask, and every stream initiation and end is a
// stored event, kept within a size and age bound.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dsproxy/dsproxy/hub"
	"github.com/dsproxy/dsproxy/hub/certs"
	"github.com/dsproxy/dsproxy/hub/registry"
	"github.com/dsproxy/dsproxy/hubclient"
	"github.com/dsproxy/dsproxy/internal/dsproxytest"
	"github.com/dsproxy/dsproxy/internal/sas"
	"github.com/dsproxy/dsproxy/internal/wire"
	"github.com/dsproxy/dsproxy/tunnel"
)

// secrets is a set of strings that must never appear in a log, each also
// looked for in the spellings a token carries it in.
type secrets map[string]string // spelling → what it is

func (s secrets) add(what string, v string) {
	if v == "" {
		return
	}
	for _, sp := range []string{v, url.QueryEscape(v), strings.ToLower(url.QueryEscape(v)), url.PathEscape(v)} {
		s[sp] = what
	}
}

// addToken adds a SAS token and its signature.
func (s secrets) addToken(what, tok string) {
	s.add(what, tok)
	if t, err := sas.ParseToken(tok); err == nil {
		s.add(what+" signature", t.Signature)
	}
}

// addKeys adds every policy's and every device's keys from the registry.
func (s secrets) addKeys(t *testing.T, reg registry.Store) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	ps, err := reg.ListPolicies(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		s.add("policy "+p.Name+" primary key", p.PrimaryKey)
		s.add("policy "+p.Name+" secondary key", p.SecondaryKey)
	}
	ds, err := reg.ListDevices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		s.add("device "+d.ID+" primary key", d.PrimaryKey)
		s.add("device "+d.ID+" secondary key", d.SecondaryKey)
	}
}

// addSigned adds the tokens a client holding key for resource may have
// signed between from and to with the default one-hour lifetime: the
// clients sign their own, so the test cannot see them, but it can sign
// every one they could have made.
func (s secrets) addSigned(t *testing.T, what, resource, key, policy string, from, to time.Time) {
	t.Helper()
	for exp := from.Add(time.Hour).Add(-time.Second); !exp.After(to.Add(time.Hour).Add(time.Second)); exp = exp.Add(time.Second) {
		tok, err := sas.NewToken(resource, key, policy, exp)
		if err != nil {
			t.Fatal(err)
		}
		s.addToken(what, tok)
	}
}

// longRandom matches what looks like a key, signature or token: 40 or more
// characters of base64 or base64url. Nothing a dsproxy log should hold is
// that long (stream IDs are 22, tracking IDs 16).
var longRandom = regexp.MustCompile(`[A-Za-z0-9_\-]{40,}|[A-Za-z0-9+/]{40,}={1,2}`)

// checkNoSecrets fails t if log holds any of s, or anything that looks like
// a credential.
func checkNoSecrets(t *testing.T, log string, s secrets) {
	t.Helper()
	if log == "" {
		t.Fatal("the log is empty: the test would prove nothing")
	}
	for v, what := range s {
		if strings.Contains(log, v) {
			t.Errorf("the log holds the %s", what)
		}
	}
	for _, word := range []string{"SharedAccessSignature", "sig=", "SharedAccessKey", "Bearer "} {
		if strings.Contains(log, word) {
			t.Errorf("the log holds %q", word)
		}
	}
	for _, m := range longRandom.FindAllString(log, 5) {
		t.Errorf("the log holds %q, which looks like a key or token", m)
	}
}

// TestNoSecretsInLogs runs a hub, a device agent (client and proxy) and a
// service proxy through a full flow with every logger at debug level
// writing to one buffer: device added, control session, streams accepted
// and rejected, bytes relayed, a stream token used twice and after its
// stream, a wrong key, a device token used where it does not belong, a
// malformed token holding a real signature. No key, SAS token, signature
// or stream token may appear in the buffer.
func TestNoSecretsInLogs(t *testing.T) {
	var logs logBuffer
	start := time.Now()
	w := dsproxytest.NewHub(t, func(c *hub.Config) { c.Logger = logs.logger("hub") })
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	s := secrets{}

	owner, err := hubclient.NewServiceClient(hubclient.ServiceConfig{
		ConnectionString: w.OwnerConnectionString, TLSConfig: w.ClientTLS, Logger: logs.logger("service-client"),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close()
	dev, err := owner.CreateDevice(ctx, "dev1")
	if err != nil {
		t.Fatal(err)
	}
	devConnStr := owner.DeviceConnectionString(dev)

	// The device agent: the real client and proxy.
	target, err := tunnel.ParseTarget("echo=" + dsproxytest.Echo(t))
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := tunnel.NewDevice(tunnel.DeviceConfig{Targets: []tunnel.Target{target}, Logger: logs.logger("device-proxy")})
	if err != nil {
		t.Fatal(err)
	}
	dc, err := hubclient.NewDeviceClient(hubclient.DeviceConfig{
		ConnectionString: devConnStr, TLSConfig: w.ClientTLS, Logger: logs.logger("device-client"),
	}, proxy.HandleStream)
	if err != nil {
		t.Fatal(err)
	}
	dctx, cancelDevice := context.WithCancel(context.Background())
	devDone := make(chan struct{})
	go func() {
		defer close(devDone)
		if err := dc.Run(dctx); err != nil {
			t.Errorf("device: %v", err)
		}
	}()
	stopDevice := func() {
		cancelDevice()
		<-devDone
	}
	defer stopDevice()
	select {
	case <-dc.Connected():
	case <-time.After(dsproxytest.WaitTimeout):
		t.Fatal("device did not connect")
	}

	// Service proxies: one for a target the device has, one for a name
	// it rejects.
	serve := func(name string) string {
		svc, err := tunnel.NewService(tunnel.ServiceConfig{DeviceID: "dev1", StreamName: name, Logger: logs.logger("service-proxy")}, owner)
		if err != nil {
			t.Fatal(err)
		}
		return dsproxytest.ServeProxy(t, svc)
	}
	echoAddr, nopeAddr := serve("echo"), serve("nope")
	for i := range 3 {
		c, err := net.DialTimeout("tcp", echoAddr, dsproxytest.WaitTimeout)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
		msg := fmt.Sprintf("hello %d", i)
		io.WriteString(c, msg)
		c.(*net.TCPConn).CloseWrite()
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil || string(got) != msg {
			t.Fatalf("echo %q, %v; want %q", got, err, msg)
		}
	}
	if c, err := net.DialTimeout("tcp", nopeAddr, dsproxytest.WaitTimeout); err == nil {
		c.SetDeadline(time.Now().Add(dsproxytest.WaitTimeout))
		io.Copy(io.Discard, c) // the device rejects: the proxy closes
		c.Close()
	}

	// A raw device, so that the test sees both of a stream's tokens; each
	// is used, then used again, and used after the stream ended.
	key2 := addDevice(t, w, "dev2")
	tok2 := deviceToken(t, w, "dev2", key2)
	s.addToken("dev2's SAS token", tok2)
	d2 := connectRawDevice(t, w, "dev2", tok2)
	rs := openRaw(t, w, d2, "dev2", "ssh")
	s.add("service stream token", rs.serviceToken)
	s.add("device stream token", rs.deviceToken)
	sd := dialStream(t, w, rs.deviceURL, rs.deviceToken)
	ss := dialStream(t, w, rs.url, rs.serviceToken)
	if st := dialStreamStatus(t, w, rs.url, rs.serviceToken); st != http.StatusUnauthorized && st != http.StatusNotFound {
		t.Errorf("stream token used twice: %d", st)
	}
	writeMessage(t, ss, []byte("x"))
	readMessage(t, sd)
	ss.Close(1000, "")
	readClose(t, sd)
	if st := dialStreamStatus(t, w, rs.deviceURL, rs.deviceToken); st != http.StatusUnauthorized && st != http.StatusNotFound {
		t.Errorf("stream token used after its stream: %d", st)
	}
	// A rejection seen by a raw device too.
	ownerTok := ownerToken(t, w)
	s.addToken("owner's SAS token", ownerTok)
	answered := make(chan initiation, 1)
	go func() {
		in, err := postInitiate(w, ownerTok, "dev2", "ssh", nil)
		if err != nil {
			t.Error(err)
		}
		answered <- in
	}()
	d2.next(t).answer(t, false, "not now")
	if in := <-answered; in.body.IsAccepted {
		t.Error("the raw device's rejection was taken as acceptance")
	}

	// A wrong key, a device token where it does not belong, a malformed
	// token carrying a real signature.
	wrong := sas.NewKey()
	s.add("wrong key", wrong)
	bad, err := hubclient.NewServiceClient(hubclient.ServiceConfig{
		ConnectionString: sas.ConnectionString{HostName: w.Server.Addr(), SharedAccessKeyName: "iothubowner", SharedAccessKey: wrong}.String(),
		TLSConfig:        w.ClientTLS, Logger: logs.logger("service-client"),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	if _, err := bad.ListDevices(ctx); !errors.Is(err, hubclient.ErrUnauthorized) {
		t.Errorf("wrong key: %v", err)
	}
	for _, c := range []struct{ method, path string }{
		{http.MethodGet, "/devices"},
		{http.MethodPost, "/twins/dev2/streams/ssh"},
		{http.MethodGet, "/streams/" + rs.id},
	} {
		rawRequestStatus(t, w, c.method, c.path, tok2)
	}
	rawRequestStatus(t, w, http.MethodGet, "/streams/"+rs.id, "Bearer "+tok2)
	parsed, _ := sas.ParseToken(ownerTok)
	rawRequestStatus(t, w, http.MethodGet, "/devices", "SharedAccessSignature sig="+url.QueryEscape(parsed.Signature)+"&se=1")
	rawRequestStatus(t, w, http.MethodGet, "/devices", "SharedAccessSignature sr="+url.QueryEscape(ownerTok))

	stopDevice() // logs the session's end
	end := time.Now()

	s.addKeys(t, w.Server.Registry())
	cs, err := sas.ParseConnectionString(w.OwnerConnectionString)
	if err != nil {
		t.Fatal(err)
	}
	s.addSigned(t, "owner client's SAS token", cs.HostName, cs.SharedAccessKey, "iothubowner", start, end)
	devCS, err := sas.ParseConnectionString(devConnStr)
	if err != nil {
		t.Fatal(err)
	}
	s.addSigned(t, "device client's SAS token", sas.DeviceResource(devCS.HostName, "dev1"), devCS.SharedAccessKey, "", start, end)
	s.add("owner connection string", w.OwnerConnectionString)
	s.add("device connection string", devConnStr)

	log := logs.String()
	for _, role := range []string{"hub", "device-client", "device-proxy", "service-proxy"} {
		if !strings.Contains(log, `"role":"`+role+`"`) {
			t.Errorf("nothing logged by %s: the test would not cover it", role)
		}
	}
	checkNoSecrets(t, log, s)
	t.Logf("%d log lines, %d secret spellings checked", strings.Count(log, "\n"), len(s))
}

// TestBinaryLogsNoKeys builds the dsproxy binary and runs `dsproxy hub`
// twice on one data directory with debug JSON logs. On first start it
// prints the owner connection string on stdout, by design; its log
// (stderr) must hold no key or token, on either start, through a device
// session, a rejected stream and a wrong key. Run in Go rather than in a
// script so that it uses the real clients to drive the binary and the real
// registry to learn every key.
func TestBinaryLogsNoKeys(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "dsproxy")
	if out, err := exec.Command(goBin, "build", "-o", bin, "github.com/dsproxy/dsproxy/cmd/dsproxy").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	dataDir := filepath.Join(t.TempDir(), "data")
	start := time.Now()
	s := secrets{}

	// run starts the hub, calls drive with its address, stops it with
	// SIGTERM and returns what it wrote on stdout and stderr.
	run := func(drive func(addr string)) (stdout, stderr string) {
		t.Helper()
		var out, errOut logBuffer
		cmd := exec.Command(bin, "hub", "--listen", "127.0.0.1:0", "--data-dir", dataDir,
			"--hostname", "127.0.0.1", "--log-level", "debug", "--log-format", "json")
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		defer func() {
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case err := <-exited:
				if err != nil {
					t.Errorf("dsproxy hub exited with %v\n%s", err, errOut.String())
				}
			case <-time.After(dsproxytest.WaitTimeout):
				cmd.Process.Kill()
				<-exited
				t.Errorf("dsproxy hub did not stop on SIGTERM")
			}
			stdout, stderr = out.String(), errOut.String()
		}()
		var addr string
		dsproxytest.Eventually(t, "the hub to serve", func() bool {
			sc := bufio.NewScanner(strings.NewReader(errOut.String()))
			for sc.Scan() {
				var l struct{ Message, Addr string }
				if json.Unmarshal(sc.Bytes(), &l) == nil && l.Message == "hub serving" {
					addr = l.Addr
					return true
				}
			}
			return false
		})
		drive(addr)
		return
	}

	var clientCS []string // the connection strings the clients used, each run
	drive := func(addr string) {
		ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
		defer cancel()
		pem, err := os.ReadFile(filepath.Join(dataDir, "tls", "ca.pem"))
		if err != nil {
			t.Fatal(err)
		}
		tlsCfg, err := certs.ClientConfig(pem)
		if err != nil {
			t.Fatal(err)
		}
		cs, err := os.ReadFile(filepath.Join(dataDir, hub.OwnerConnectionStringFile))
		if err != nil {
			t.Fatal(err)
		}
		ownerCS := strings.TrimSpace(string(cs))
		owner, err := hubclient.NewServiceClient(hubclient.ServiceConfig{ConnectionString: ownerCS, TLSConfig: tlsCfg})
		if err != nil {
			t.Fatal(err)
		}
		defer owner.Close()
		d, err := owner.GetDevice(ctx, "dev1")
		if errors.Is(err, hubclient.ErrNotFound) {
			d, err = owner.CreateDevice(ctx, "dev1")
		}
		if err != nil {
			t.Fatal(err)
		}
		clientCS = append(clientCS, ownerCS, owner.DeviceConnectionString(d))
		dc, err := hubclient.NewDeviceClient(hubclient.DeviceConfig{ConnectionString: owner.DeviceConnectionString(d), TLSConfig: tlsCfg},
			func(_ context.Context, req *hubclient.StreamRequest) { req.Reject("no targets here") })
		if err != nil {
			t.Fatal(err)
		}
		dctx, stop := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- dc.Run(dctx) }()
		defer func() {
			stop()
			<-done
		}()
		select {
		case <-dc.Connected():
		case <-time.After(dsproxytest.WaitTimeout):
			t.Fatal("device did not connect to the binary's hub")
		}
		if _, err := owner.OpenStream(ctx, "dev1", "ssh"); !errors.Is(err, hubclient.ErrRejected) {
			t.Errorf("open stream: %v, want a rejection", err)
		}
		wrong, err := hubclient.NewServiceClient(hubclient.ServiceConfig{
			ConnectionString: strings.Replace(ownerCS, "SharedAccessKey=", "SharedAccessKey="+sas.NewKey()+"x", 1),
			TLSConfig:        tlsCfg,
		})
		if err == nil {
			wrong.ListDevices(ctx)
			wrong.Close()
		}
	}

	stdout1, stderr1 := run(drive)
	stdout2, stderr2 := run(drive)
	end := time.Now()

	reg, err := registry.OpenSQLite(filepath.Join(dataDir, "registry.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	s.addKeys(t, reg)
	cs, err := os.ReadFile(filepath.Join(dataDir, hub.OwnerConnectionStringFile))
	if err != nil {
		t.Fatal(err)
	}
	ownerCS := strings.TrimSpace(string(cs))
	parsed, err := sas.ParseConnectionString(ownerCS) // the second start's port
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout1, "SharedAccessKeyName=iothubowner;SharedAccessKey="+parsed.SharedAccessKey) {
		t.Errorf("first start did not print the owner connection string on stdout:\n%s", stdout1)
	}
	if strings.Contains(stdout2, parsed.SharedAccessKey) {
		t.Errorf("second start printed the owner key again:\n%s", stdout2)
	}
	for _, cs := range clientCS {
		c, err := sas.ParseConnectionString(cs)
		if err != nil {
			t.Fatal(err)
		}
		s.add("connection string", cs)
		if c.IsDevice() {
			s.addSigned(t, "device client's SAS token", sas.DeviceResource(c.HostName, c.DeviceID), c.SharedAccessKey, "", start, end)
		} else {
			s.addSigned(t, "owner client's SAS token", c.HostName, c.SharedAccessKey, c.SharedAccessKeyName, start, end)
		}
	}
	checkNoSecrets(t, stderr1+stderr2, s)
}

// TestDataDirModes: with umask 0, a hub's data directory and its
// subdirectories are 0700 and every file in them 0600, except the two
// public certificates; and a data directory and files left too open by
// hand are tightened on the next start.
func TestDataDirModes(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no Unix file modes")
	}
	old := syscall.Umask(0)
	t.Cleanup(func() { syscall.Umask(old) })
	public := map[string]bool{"tls/ca.pem": true, "tls/server.pem": true}

	check := func(t *testing.T, dir string) {
		t.Helper()
		seen := map[string]bool{}
		err := filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(dir, p)
			seen[filepath.ToSlash(rel)] = true
			fi, err := e.Info()
			if err != nil {
				return err
			}
			want := os.FileMode(0o600)
			switch {
			case e.IsDir():
				want = 0o700
			case public[filepath.ToSlash(rel)]:
				want = 0o644
			}
			if fi.Mode().Perm() != want {
				t.Errorf("%s has mode %v, want %v", rel, fi.Mode().Perm(), want)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{".", "registry.db", hub.OwnerConnectionStringFile, hub.ServiceConnectionStringFile, "tls", "tls/ca-key.pem", "tls/server-key.pem"} {
			if !seen[f] {
				t.Errorf("%s is missing from the data directory; it holds %v", f, seen)
			}
		}
	}
	start := func(t *testing.T, dir string) {
		t.Helper()
		cfg := hub.DefaultConfig()
		cfg.DataDir = dir
		cfg.HostNames = []string{"127.0.0.1"}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv, err := hub.New(cfg, ln)
		if err != nil {
			ln.Close()
			t.Fatal(err)
		}
		check(t, dir) // while the registry is open, with its -wal and -shm
		if err := srv.Close(); err != nil {
			t.Fatal(err)
		}
		check(t, dir)
	}

	dir := filepath.Join(t.TempDir(), "fresh")
	t.Run("fresh", func(t *testing.T) { start(t, dir) })
	t.Run("loosened by hand", func(t *testing.T) {
		for _, p := range []string{".", "tls"} {
			os.Chmod(filepath.Join(dir, p), 0o777)
		}
		for _, p := range []string{"registry.db", hub.OwnerConnectionStringFile, hub.ServiceConnectionStringFile} {
			os.Chmod(filepath.Join(dir, p), 0o666)
		}
		start(t, dir)
	})
}

// eventsOf returns the stream events of a device, newest first.
func eventsOf(t *testing.T, w *dsproxytest.Hub, id string) []registry.StreamEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	es, err := w.Server.Registry().StreamEvents(ctx, registry.EventFilter{DeviceID: id})
	if err != nil {
		t.Fatal(err)
	}
	return es
}

// oneEvent waits for the device's only stream event and returns it.
func oneEvent(t *testing.T, w *dsproxytest.Hub, id string) registry.StreamEvent {
	t.Helper()
	var es []registry.StreamEvent
	dsproxytest.Eventually(t, "a stream event for "+id, func() bool {
		es = eventsOf(t, w, id)
		return len(es) > 0
	})
	// Give a second event, which would be a bug, the chance to land.
	time.Sleep(100 * time.Millisecond)
	if es = eventsOf(t, w, id); len(es) != 1 {
		t.Fatalf("%d events for %s, want 1: %+v", len(es), id, es)
	}
	return es[0]
}

// TestAuditTrail: every outcome of a stream initiation, and every end of
// an accepted stream, is one stored event with who asked (the policy), the
// device, the stream name, the result and a reason; an ended stream has
// its bytes each way and its duration.
func TestAuditTrail(t *testing.T) {
	const handshake = 2 * time.Second
	w := dsproxytest.NewHub(t, func(c *hub.Config) { c.HandshakeTimeout = handshake })
	raw := func(id string) *rawDevice {
		return connectRawDevice(t, w, id, deviceToken(t, w, id, addDevice(t, w, id)))
	}
	svcTok := policyToken(t, w, "service", policyKey(t, w, "service"), time.Now().Add(time.Hour))
	// initiateAsync initiates a stream with the service policy.
	initiateAsync := func(id string, hdr http.Header) chan initiation {
		c := make(chan initiation, 1)
		go func() {
			in, err := postInitiate(w, svcTok, id, "ssh", hdr)
			if err != nil {
				t.Error(err)
			}
			c <- in
		}()
		return c
	}
	check := func(t *testing.T, e registry.StreamEvent, id, result, reason string) {
		t.Helper()
		if e.DeviceID != id || e.Policy != "service" || e.Name != "ssh" || e.Result != result || !strings.Contains(e.Reason, reason) || e.Started.IsZero() {
			t.Errorf("event %+v, want device %s, policy service, name ssh, result %s, a reason with %q", e, id, result, reason)
		}
	}

	t.Run("accepted and ended", func(t *testing.T) {
		d := raw("a-ended")
		answered := initiateAsync("a-ended", nil)
		req := d.next(t)
		req.answer(t, true, "")
		in := <-answered
		dev := dialStream(t, w, req.URL, req.AuthToken)
		svc := dialStream(t, w, in.header.Get(wire.HeaderURL), in.header.Get(wire.HeaderAuthToken))
		writeMessage(t, svc, []byte("12345"))
		readMessage(t, dev)
		writeMessage(t, dev, []byte("1234567"))
		readMessage(t, svc)
		time.Sleep(20 * time.Millisecond) // a measurable duration
		svc.Close(1000, "done")
		readClose(t, dev)
		e := oneEvent(t, w, "a-ended")
		check(t, e, "a-ended", "ended", "service closed")
		if e.StreamID != in.body.StreamID || e.BytesUp != 5 || e.BytesDown != 7 || e.Duration < 20*time.Millisecond {
			t.Errorf("event %+v, want stream %s, 5 bytes up, 7 down, at least 20ms", e, in.body.StreamID)
		}
	})
	t.Run("rejected", func(t *testing.T) {
		d := raw("a-rejected")
		answered := initiateAsync("a-rejected", nil)
		d.next(t).answer(t, false, "not today")
		<-answered
		check(t, oneEvent(t, w, "a-rejected"), "a-rejected", "rejected", "not today")
	})
	t.Run("not registered", func(t *testing.T) {
		<-initiateAsync("a-ghost", nil)
		check(t, oneEvent(t, w, "a-ghost"), "a-ghost", "unavailable", "not registered")
	})
	t.Run("not connected", func(t *testing.T) {
		addDevice(t, w, "a-offline")
		<-initiateAsync("a-offline", nil)
		check(t, oneEvent(t, w, "a-offline"), "a-offline", "unavailable", "not connected")
	})
	t.Run("disabled", func(t *testing.T) {
		addDevice(t, w, "a-disabled")
		ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
		defer cancel()
		d, err := w.Service.GetDevice(ctx, "a-disabled")
		if err != nil {
			t.Fatal(err)
		}
		d.Status = "disabled"
		if _, err := w.Service.UpdateDevice(ctx, d); err != nil {
			t.Fatal(err)
		}
		<-initiateAsync("a-disabled", nil)
		check(t, oneEvent(t, w, "a-disabled"), "a-disabled", "unavailable", "disabled")
	})
	t.Run("device drops its session", func(t *testing.T) {
		d := raw("a-dropped")
		answered := initiateAsync("a-dropped", nil)
		d.next(t)
		d.mux.Close()
		<-answered
		check(t, oneEvent(t, w, "a-dropped"), "a-dropped", "unavailable", "disconnected")
	})
	t.Run("invalid answer", func(t *testing.T) {
		d := raw("a-garbage")
		answered := initiateAsync("a-garbage", nil)
		r := d.next(t)
		r.ctl.Write([]byte{0, 0, 0, 2, '{', '{'})
		r.ctl.Close()
		<-answered
		check(t, oneEvent(t, w, "a-garbage"), "a-garbage", "error", "invalid answer")
	})
	t.Run("timeout", func(t *testing.T) {
		d := raw("a-timeout")
		answered := initiateAsync("a-timeout", http.Header{wire.HeaderResponseTimeout: {"1"}})
		r := d.next(t)
		if in := <-answered; in.status != http.StatusGatewayTimeout {
			t.Errorf("status %d, want 504", in.status)
		}
		r.ctl.Close()
		check(t, oneEvent(t, w, "a-timeout"), "a-timeout", "timeout", "did not answer")
	})
	t.Run("canceled", func(t *testing.T) {
		d := raw("a-canceled")
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+w.Addr+"/twins/a-canceled/streams/ssh", nil)
			req.Header.Set("Authorization", svcTok)
			if resp, err := httpClient(w.ClientTLS).Do(req); err == nil {
				resp.Body.Close()
			}
		}()
		r := d.next(t)
		cancel()
		<-done
		e := oneEvent(t, w, "a-canceled")
		r.answer(t, true, "") // too late: nobody is waiting
		check(t, e, "a-canceled", "canceled", "service went away")
	})
	t.Run("accepted, one side never joins", func(t *testing.T) {
		d := raw("a-half")
		answered := initiateAsync("a-half", nil)
		req := d.next(t)
		req.answer(t, true, "")
		<-answered
		dev := dialStream(t, w, req.URL, req.AuthToken)
		readClose(t, dev)
		check(t, oneEvent(t, w, "a-half"), "a-half", "expired", "did not connect")
	})
	t.Run("accepted, nobody joins", func(t *testing.T) {
		d := raw("a-nobody")
		answered := initiateAsync("a-nobody", nil)
		d.next(t).answer(t, true, "")
		<-answered
		check(t, oneEvent(t, w, "a-nobody"), "a-nobody", "expired", "neither side")
	})
	t.Run("accepted after the handshake deadline", func(t *testing.T) {
		d := raw("a-late")
		answered := initiateAsync("a-late", http.Header{wire.HeaderResponseTimeout: {"10"}})
		r := d.next(t)
		time.Sleep(handshake + 500*time.Millisecond) // the device dawdles past the deadline
		r.answer(t, true, "")
		if in := <-answered; in.status != http.StatusGatewayTimeout {
			t.Errorf("status %d %+v, want 504", in.status, in.body)
		}
		check(t, oneEvent(t, w, "a-late"), "a-late", "timeout", "after its handshake deadline")
	})
}

// TestEventRetention: the hub bounds its stream event log by age and by
// count, when it starts and periodically after; zero bounds keep
// everything.
func TestEventRetention(t *testing.T) {
	restore := hub.SetPruneInterval(100 * time.Millisecond)
	t.Cleanup(restore)
	ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
	defer cancel()
	now := time.Now()
	add := func(t *testing.T, reg registry.Store, prefix string, n int, started time.Time) {
		t.Helper()
		for i := range n {
			if err := reg.AddStreamEvent(ctx, registry.StreamEvent{
				StreamID: fmt.Sprintf("%s%d", prefix, i), DeviceID: "d", Result: "ended",
				Started: started.Add(time.Duration(i) * time.Second),
			}); err != nil {
				t.Fatal(err)
			}
		}
	}
	ids := func(t *testing.T, reg registry.Store) []string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), dsproxytest.WaitTimeout)
		defer cancel()
		es, err := reg.StreamEvents(ctx, registry.EventFilter{Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range es {
			out = append(out, e.StreamID)
		}
		return out
	}

	dir := t.TempDir()
	reg, err := registry.OpenSQLite(filepath.Join(dir, "registry.db"))
	if err != nil {
		t.Fatal(err)
	}
	add(t, reg, "old", 3, now.Add(-2*time.Hour))
	add(t, reg, "new", 7, now.Add(-time.Minute))
	if err := reg.Close(); err != nil {
		t.Fatal(err)
	}

	w := dsproxytest.NewHub(t, func(c *hub.Config) {
		c.DataDir = dir
		c.EventRetention = time.Hour
		c.MaxEvents = 5
	})
	reg = w.Server.Registry()
	want := "[new6 new5 new4 new3 new2]"
	dsproxytest.Eventually(t, "the hub to prune on start", func() bool { return fmt.Sprint(ids(t, reg)) == want })

	// And periodically: more events, and an old one, while it runs.
	add(t, reg, "later", 4, now)
	add(t, reg, "stale", 1, now.Add(-3*time.Hour))
	want = "[later3 later2 later1 later0 new6]"
	dsproxytest.Eventually(t, "the hub to prune while running, to "+want, func() bool { return fmt.Sprint(ids(t, reg)) == want })

	t.Run("no bounds", func(t *testing.T) {
		w := dsproxytest.NewHub(t, func(c *hub.Config) { c.EventRetention, c.MaxEvents = 0, 0 })
		reg := w.Server.Registry()
		add(t, reg, "e", 3, now.Add(-24*365*time.Hour))
		time.Sleep(300 * time.Millisecond) // three prune intervals
		if got := ids(t, reg); len(got) != 3 {
			t.Errorf("events %v, want all 3 kept", got)
		}
	})
	t.Run("defaults and validation", func(t *testing.T) {
		cfg := hub.DefaultConfig()
		if cfg.EventRetention != 30*24*time.Hour || cfg.MaxEvents != 1_000_000 {
			t.Errorf("defaults: EventRetention %s, MaxEvents %d; want 720h and 1000000", cfg.EventRetention, cfg.MaxEvents)
		}
		cfg.DataDir = t.TempDir()
		for _, f := range []func(*hub.Config){
			func(c *hub.Config) { c.EventRetention = -time.Second },
			func(c *hub.Config) { c.MaxEvents = -1 },
		} {
			c := cfg
			f(&c)
			if err := c.Validate(); err == nil {
				t.Errorf("config %+v validated", c)
			}
		}
	})
}
