package certs_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dsproxy/dsproxy/hub/certs"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// serve runs a TLS server on 127.0.0.1:0 that answers each connection with
// "ok" after the handshake. It returns the address; the server is stopped,
// and its goroutines awaited, by t.Cleanup.
func serve(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if err := c.(*tls.Conn).Handshake(); err != nil {
					return
				}
				io.WriteString(c, "ok")
			})
		}
	})
	return ln.Addr().String()
}

// dial connects to addr with cfg, naming serverName, and reads the server's
// greeting.
func dial(addr, serverName string, cfg *tls.Config) error {
	cfg = cfg.Clone()
	cfg.ServerName = serverName
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: cfg}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if string(b) != "ok" {
		return errors.New("unexpected greeting " + string(b))
	}
	if v := c.(*tls.Conn).ConnectionState().Version; v < tls.VersionTLS12 {
		return errors.New("negotiated a version below TLS 1.2")
	}
	return nil
}

func TestHandshake(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	b, err := certs.LoadOrCreate(dir, []string{"hub.example.com", "10.1.2.3"})
	if err != nil {
		t.Fatalf("LoadOrCreate: %v", err)
	}
	if b.CAFile != filepath.Join(dir, "ca.pem") {
		t.Errorf("CAFile = %q", b.CAFile)
	}
	onDisk, err := os.ReadFile(b.CAFile)
	if err != nil || !bytes.Equal(onDisk, b.CAPEM) {
		t.Errorf("ca.pem differs from CAPEM (%v)", err)
	}
	if b.Config.MinVersion != tls.VersionTLS12 {
		t.Errorf("MinVersion = %#x, want TLS 1.2", b.Config.MinVersion)
	}
	client, err := certs.ClientConfig(b.CAPEM)
	if err != nil {
		t.Fatalf("ClientConfig: %v", err)
	}
	addr := serve(t, b.Config)

	for _, name := range []string{"localhost", "127.0.0.1", "::1", "hub.example.com", "HUB.example.com", "10.1.2.3"} {
		if err := dial(addr, name, client); err != nil {
			t.Errorf("handshake as %q: %v", name, err)
		}
	}
	for _, name := range []string{"other.example.com", "10.1.2.4", "example.com"} {
		if err := dial(addr, name, client); err == nil {
			t.Errorf("handshake as %q succeeded, want a name mismatch", name)
		}
	}

	// Clients trusting another CA, or the system roots, are refused.
	other, err := certs.LoadOrCreate(filepath.Join(t.TempDir(), "tls"), nil)
	if err != nil {
		t.Fatalf("LoadOrCreate: %v", err)
	}
	otherClient, err := certs.ClientConfig(other.CAPEM)
	if err != nil {
		t.Fatalf("ClientConfig: %v", err)
	}
	if err := dial(addr, "localhost", otherClient); err == nil {
		t.Errorf("handshake trusting another CA succeeded")
	}
	if err := dial(addr, "localhost", &tls.Config{}); err == nil {
		t.Errorf("handshake trusting the system roots succeeded")
	}
	old := client.Clone()
	old.MinVersion, old.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
	if err := dial(addr, "localhost", old); err == nil {
		t.Errorf("handshake with TLS 1.1 succeeded")
	}
}

func TestCertificates(t *testing.T) {
	dir := t.TempDir()
	b, err := certs.LoadOrCreate(dir, []string{"hub.example.com"})
	if err != nil {
		t.Fatalf("LoadOrCreate: %v", err)
	}
	ca := readCert(t, filepath.Join(dir, "ca.pem"))
	srv := readCert(t, filepath.Join(dir, "server.pem"))
	now := time.Now()

	if !ca.IsCA || !ca.BasicConstraintsValid || ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("CA certificate: IsCA %v, KeyUsage %v", ca.IsCA, ca.KeyUsage)
	}
	if d := ca.NotAfter.Sub(now); d < 9*365*24*time.Hour || d > 11*365*24*time.Hour {
		t.Errorf("CA valid for %v, want 10 years", d)
	}
	if srv.IsCA || srv.KeyUsage != x509.KeyUsageDigitalSignature ||
		len(srv.ExtKeyUsage) != 1 || srv.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
		t.Errorf("server certificate: IsCA %v, KeyUsage %v, ExtKeyUsage %v", srv.IsCA, srv.KeyUsage, srv.ExtKeyUsage)
	}
	if d := srv.NotAfter.Sub(now); d < 360*24*time.Hour || d > 366*24*time.Hour {
		t.Errorf("server certificate valid for %v, want a year", d)
	}
	for _, c := range []*x509.Certificate{ca, srv} {
		k, ok := c.PublicKey.(*ecdsa.PublicKey)
		if !ok || k.Curve != elliptic.P256() {
			t.Errorf("%s: key %T, want ECDSA P-256", c.Subject.CommonName, c.PublicKey)
		}
		if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() < 64 {
			t.Errorf("%s: serial %v, want a large random one", c.Subject.CommonName, c.SerialNumber)
		}
	}
	if ca.SerialNumber.Cmp(srv.SerialNumber) == 0 {
		t.Errorf("CA and server share a serial number")
	}
	if err := srv.CheckSignatureFrom(ca); err != nil {
		t.Errorf("server certificate not signed by the CA: %v", err)
	}
	wantDNS := []string{"hub.example.com", "localhost"}
	if strings.Join(srv.DNSNames, ",") != strings.Join(wantDNS, ",") {
		t.Errorf("DNSNames = %q, want %q", srv.DNSNames, wantDNS)
	}
	var ips []string
	for _, ip := range srv.IPAddresses {
		ips = append(ips, ip.String())
	}
	if strings.Join(ips, ",") != "127.0.0.1,::1" {
		t.Errorf("IPAddresses = %q, want 127.0.0.1 and ::1", ips)
	}
	if got := b.Config.Certificates[0].Leaf; got == nil || !bytes.Equal(got.Raw, srv.Raw) {
		t.Errorf("Config serves another certificate than server.pem")
	}
}

func TestReuse(t *testing.T) {
	dir := t.TempDir()
	hosts := []string{"hub.example.com", "192.0.2.1"}
	first, err := certs.LoadOrCreate(dir, hosts)
	if err != nil {
		t.Fatalf("LoadOrCreate: %v", err)
	}
	srv1 := readFile(t, filepath.Join(dir, "server.pem"))
	key1 := readFile(t, filepath.Join(dir, "server-key.pem"))

	// The same hosts, in another order and case, or fewer of them: reuse.
	for _, hs := range [][]string{hosts, {"192.0.2.1", "HUB.example.com."}, {"hub.example.com"}, nil} {
		again, err := certs.LoadOrCreate(dir, hs)
		if err != nil {
			t.Fatalf("LoadOrCreate(%q): %v", hs, err)
		}
		if !bytes.Equal(again.CAPEM, first.CAPEM) {
			t.Errorf("LoadOrCreate(%q) made a new CA", hs)
		}
		if !bytes.Equal(readFile(t, filepath.Join(dir, "server.pem")), srv1) ||
			!bytes.Equal(readFile(t, filepath.Join(dir, "server-key.pem")), key1) {
			t.Errorf("LoadOrCreate(%q) re-issued the server certificate", hs)
		}
	}
}

func TestReissueOnHostChange(t *testing.T) {
	dir := t.TempDir()
	first, err := certs.LoadOrCreate(dir, []string{"a.example.com"})
	if err != nil {
		t.Fatalf("LoadOrCreate: %v", err)
	}
	srv1 := readCert(t, filepath.Join(dir, "server.pem"))
	for _, hosts := range [][]string{{"b.example.com"}, {"b.example.com", "198.51.100.7"}, {"[2001:db8::1]"}} {
		b, err := certs.LoadOrCreate(dir, hosts)
		if err != nil {
			t.Fatalf("LoadOrCreate(%q): %v", hosts, err)
		}
		if !bytes.Equal(b.CAPEM, first.CAPEM) {
			t.Errorf("LoadOrCreate(%q) made a new CA", hosts)
		}
		srv := readCert(t, filepath.Join(dir, "server.pem"))
		if srv.SerialNumber.Cmp(srv1.SerialNumber) == 0 {
			t.Errorf("LoadOrCreate(%q) did not re-issue", hosts)
		}
		for _, h := range hosts {
			h = strings.Trim(h, "[]")
			if err := srv.VerifyHostname(h); err != nil {
				t.Errorf("re-issued certificate: %v", err)
			}
		}
		if err := srv.VerifyHostname("localhost"); err != nil {
			t.Errorf("re-issued certificate: %v", err)
		}
		if got := b.Config.Certificates[0].Leaf; !bytes.Equal(got.Raw, srv.Raw) {
			t.Errorf("Config serves another certificate than server.pem")
		}
	}
}

func TestReissueExpiring(t *testing.T) {
	dir := t.TempDir()
	if _, err := certs.LoadOrCreate(dir, nil); err != nil {
		t.Fatalf("LoadOrCreate: %v", err)
	}
	ca := readCert(t, filepath.Join(dir, "ca.pem"))
	caKey := readKey(t, filepath.Join(dir, "ca-key.pem"))
	// A certificate for the right names, from the right CA, with 10 days left.
	writeServer(t, dir, ca, caKey, time.Now().Add(10*24*time.Hour))
	short := readCert(t, filepath.Join(dir, "server.pem"))

	if _, err := certs.LoadOrCreate(dir, nil); err != nil {
		t.Fatalf("LoadOrCreate: %v", err)
	}
	srv := readCert(t, filepath.Join(dir, "server.pem"))
	if srv.SerialNumber.Cmp(short.SerialNumber) == 0 {
		t.Fatalf("a certificate expiring in 10 days was kept")
	}
	if time.Until(srv.NotAfter) < 300*24*time.Hour {
		t.Errorf("re-issued certificate expires at %v", srv.NotAfter)
	}

	// With 60 days left it is kept.
	writeServer(t, dir, ca, caKey, time.Now().Add(60*24*time.Hour))
	kept := readCert(t, filepath.Join(dir, "server.pem"))
	if _, err := certs.LoadOrCreate(dir, nil); err != nil {
		t.Fatalf("LoadOrCreate: %v", err)
	}
	if srv := readCert(t, filepath.Join(dir, "server.pem")); srv.SerialNumber.Cmp(kept.SerialNumber) != 0 {
		t.Errorf("a certificate with 60 days left was re-issued")
	}
}

func TestReissueForeignOrBroken(t *testing.T) {
	dir := t.TempDir()
	first, err := certs.LoadOrCreate(dir, nil)
	if err != nil {
		t.Fatalf("LoadOrCreate: %v", err)
	}
	// A server certificate from another CA, as if the files were mixed up.
	otherDir := t.TempDir()
	if _, err := certs.LoadOrCreate(otherDir, nil); err != nil {
		t.Fatalf("LoadOrCreate: %v", err)
	}
	for _, name := range []string{"server.pem", "server-key.pem"} {
		if err := os.WriteFile(filepath.Join(dir, name), readFile(t, filepath.Join(otherDir, name)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	b, err := certs.LoadOrCreate(dir, nil)
	if err != nil {
		t.Fatalf("LoadOrCreate: %v", err)
	}
	if !bytes.Equal(b.CAPEM, first.CAPEM) {
		t.Errorf("a new CA was made")
	}
	ca := readCert(t, filepath.Join(dir, "ca.pem"))
	if err := readCert(t, filepath.Join(dir, "server.pem")).CheckSignatureFrom(ca); err != nil {
		t.Errorf("a foreign server certificate was kept: %v", err)
	}

	// A key that does not match the certificate, then garbage.
	if err := os.WriteFile(filepath.Join(dir, "server-key.pem"), readFile(t, filepath.Join(otherDir, "server-key.pem")), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := certs.LoadOrCreate(dir, nil); err != nil {
		t.Fatalf("LoadOrCreate with a mismatched key: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "server.pem"), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	b, err = certs.LoadOrCreate(dir, nil)
	if err != nil {
		t.Fatalf("LoadOrCreate with a garbage certificate: %v", err)
	}
	client, err := certs.ClientConfig(b.CAPEM)
	if err != nil {
		t.Fatal(err)
	}
	if err := dial(serve(t, b.Config), "localhost", client); err != nil {
		t.Errorf("handshake after re-issue: %v", err)
	}
}

func TestCAFiles(t *testing.T) {
	dir := t.TempDir()
	if _, err := certs.LoadOrCreate(dir, nil); err != nil {
		t.Fatalf("LoadOrCreate: %v", err)
	}
	// The CA certificate without its key cannot sign, and silently making a
	// new CA would break every client that trusts the old one.
	keyPEM := readFile(t, filepath.Join(dir, "ca-key.pem"))
	if err := os.Remove(filepath.Join(dir, "ca-key.pem")); err != nil {
		t.Fatal(err)
	}
	if _, err := certs.LoadOrCreate(dir, nil); err == nil || !strings.Contains(err.Error(), "ca") {
		t.Errorf("LoadOrCreate without ca-key.pem: %v, want an error", err)
	}
	// A garbage CA is an error too, never replaced.
	if err := os.WriteFile(filepath.Join(dir, "ca-key.pem"), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	caPEM := readFile(t, filepath.Join(dir, "ca.pem"))
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := certs.LoadOrCreate(dir, nil); err == nil {
		t.Errorf("LoadOrCreate with a garbage ca.pem succeeded")
	}
	if !bytes.Equal(readFile(t, filepath.Join(dir, "ca.pem")), []byte("garbage")) {
		t.Errorf("a garbage ca.pem was replaced")
	}
	// Without ca.pem there is no CA anyone trusts: a new one is made,
	// replacing a leftover key.
	if err := os.Remove(filepath.Join(dir, "ca.pem")); err != nil {
		t.Fatal(err)
	}
	b, err := certs.LoadOrCreate(dir, nil)
	if err != nil {
		t.Fatalf("LoadOrCreate without ca.pem: %v", err)
	}
	if bytes.Equal(b.CAPEM, caPEM) {
		t.Errorf("ca.pem came back unchanged")
	}
	if bytes.Equal(readFile(t, filepath.Join(dir, "ca-key.pem")), keyPEM) {
		t.Errorf("the leftover CA key was kept")
	}
	ca := readCert(t, filepath.Join(dir, "ca.pem"))
	if err := readCert(t, filepath.Join(dir, "server.pem")).CheckSignatureFrom(ca); err != nil {
		t.Errorf("server certificate not re-issued by the new CA: %v", err)
	}
}

func TestFileModes(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no Unix file modes")
	}
	old := syscall.Umask(0)
	t.Cleanup(func() { syscall.Umask(old) })

	parent := t.TempDir()
	dir := filepath.Join(parent, "tls")
	if err := os.Mkdir(dir, 0o755); err != nil { // an existing, too open directory
		t.Fatal(err)
	}
	if _, err := certs.LoadOrCreate(dir, nil); err != nil {
		t.Fatalf("LoadOrCreate: %v", err)
	}
	want := map[string]os.FileMode{
		".":              0o700,
		"ca.pem":         0o644,
		"ca-key.pem":     0o600,
		"server.pem":     0o644,
		"server-key.pem": 0o600,
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(want)-1 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("dir holds %q, want only the four files", names)
	}
	for name, mode := range want {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s has mode %v, want %v", name, fi.Mode().Perm(), mode)
		}
	}
}

func TestInvalidHosts(t *testing.T) {
	for _, h := range []string{"hub example.com", "hub.example.com:443", "http://hub", "-bad.example.com", "a..b", "fe80::1%eth0"} {
		dir := t.TempDir()
		if _, err := certs.LoadOrCreate(dir, []string{h}); err == nil {
			t.Errorf("LoadOrCreate(%q) succeeded", h)
		} else if !strings.Contains(err.Error(), h) {
			t.Errorf("LoadOrCreate(%q): error %q does not name the host", h, err)
		}
	}
	if _, err := certs.LoadOrCreate(t.TempDir(), []string{"*.hub.example.com", " ", "hub_1.internal"}); err != nil {
		t.Errorf("LoadOrCreate with a wildcard: %v", err)
	}
}

func TestLoadFiles(t *testing.T) {
	dir := t.TempDir()
	created, err := certs.LoadOrCreate(dir, nil)
	if err != nil {
		t.Fatalf("LoadOrCreate: %v", err)
	}
	b, err := certs.LoadFiles(filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem"))
	if err != nil {
		t.Fatalf("LoadFiles: %v", err)
	}
	if b.CAPEM != nil || b.CAFile != "" {
		t.Errorf("LoadFiles set CAPEM/CAFile: %q %q", b.CAPEM, b.CAFile)
	}
	if b.Config.MinVersion != tls.VersionTLS12 {
		t.Errorf("MinVersion = %#x, want TLS 1.2", b.Config.MinVersion)
	}
	client, err := certs.ClientConfig(created.CAPEM)
	if err != nil {
		t.Fatal(err)
	}
	if err := dial(serve(t, b.Config), "127.0.0.1", client); err != nil {
		t.Errorf("handshake with loaded files: %v", err)
	}

	garbage := filepath.Join(t.TempDir(), "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	keyPEM := readFile(t, filepath.Join(dir, "server-key.pem"))
	for _, tc := range []struct{ cert, key, want string }{
		{garbage, filepath.Join(dir, "server-key.pem"), "PEM data"},
		{filepath.Join(dir, "server.pem"), garbage, "PEM data"},
		{filepath.Join(dir, "missing.pem"), filepath.Join(dir, "server-key.pem"), "no such file"},
		{filepath.Join(dir, "ca.pem"), filepath.Join(dir, "server-key.pem"), "does not match"},
	} {
		_, err := certs.LoadFiles(tc.cert, tc.key)
		if err == nil {
			t.Errorf("LoadFiles(%s, %s) succeeded", tc.cert, tc.key)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, tc.cert) || !strings.Contains(msg, tc.want) {
			t.Errorf("LoadFiles(%s, %s): error %q, want one naming the file and %q", tc.cert, tc.key, msg, tc.want)
		}
		if strings.Contains(msg, string(keyPEM[40:80])) {
			t.Errorf("error %q contains key material", msg)
		}
	}
}

func TestClientConfig(t *testing.T) {
	if _, err := certs.ClientConfig([]byte("garbage")); err == nil {
		t.Errorf("ClientConfig(garbage) succeeded")
	}
	if _, err := certs.ClientConfig(nil); err == nil {
		t.Errorf("ClientConfig(nil) succeeded")
	}
	cfg, err := certs.ClientConfig(mustCreate(t).CAPEM)
	if err != nil {
		t.Fatalf("ClientConfig: %v", err)
	}
	if cfg.MinVersion != tls.VersionTLS12 || cfg.RootCAs == nil || cfg.InsecureSkipVerify {
		t.Errorf("ClientConfig = MinVersion %#x, RootCAs %v, InsecureSkipVerify %v", cfg.MinVersion, cfg.RootCAs, cfg.InsecureSkipVerify)
	}
}

func mustCreate(t *testing.T) certs.Bundle {
	t.Helper()
	b, err := certs.LoadOrCreate(t.TempDir(), nil)
	if err != nil {
		t.Fatalf("LoadOrCreate: %v", err)
	}
	return b
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(readFile(t, path))
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("%s: no certificate", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func readKey(t *testing.T, path string) crypto.Signer {
	t.Helper()
	block, _ := pem.Decode(readFile(t, path))
	if block == nil {
		t.Fatalf("%s: no key", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k.(crypto.Signer)
}

// writeServer replaces the server certificate in dir with one for the
// default names, issued by ca, expiring at notAfter.
func writeServer(t *testing.T, dir string, ca *x509.Certificate, caKey crypto.Signer, notAfter time.Time) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "server.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "server-key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
}
