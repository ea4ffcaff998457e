// Package certs provides the hub's TLS server certificate: either one the
// operator supplies ([LoadFiles]), or one issued by a private certificate
// authority that the hub creates in its data directory on first start
// ([LoadOrCreate]). Clients then trust that CA's certificate, ca.pem, and
// nothing else ([ClientConfig]).
//
// The private CA lives in a directory holding:
//
//	ca.pem          the CA certificate: what clients trust (0644)
//	ca-key.pem      the CA private key (0600)
//	server.pem      the server certificate, issued by the CA (0644)
//	server-key.pem  the server private key (0600)
//
// The directory itself is kept 0700. The CA is made once and reused, so that
// clients keep trusting the hub across restarts; the server certificate is
// re-issued whenever it no longer fits (see LoadOrCreate).
package certs

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
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Names of the files in a LoadOrCreate directory.
const (
	caFileName        = "ca.pem"
	caKeyFileName     = "ca-key.pem"
	serverFileName    = "server.pem"
	serverKeyFileName = "server-key.pem"
)

const (
	caValidity     = 10 * 365 * 24 * time.Hour
	serverValidity = 365 * 24 * time.Hour
	// renewBefore is how long before its expiry a server certificate is
	// replaced, so a hub restarted now and then never serves an expired one.
	renewBefore = 30 * 24 * time.Hour
	// backdate tolerates clients whose clocks run a little behind.
	backdate = time.Hour
)

// Bundle is what the hub serves TLS with.
type Bundle struct {
	// Config is the server configuration: TLS 1.2 or later, the server
	// certificate. It sets no NextProtos; the HTTP server adds its own.
	Config *tls.Config
	// CAPEM is the PEM of the private CA's certificate, for clients to
	// trust; nil when the certificate was loaded with LoadFiles.
	CAPEM []byte
	// CAFile is the path of ca.pem; "" when loaded with LoadFiles.
	CAFile string
}

// LoadOrCreate returns a bundle whose server certificate is issued by a
// private CA kept in dir. On first use it creates dir (0700) and the CA: an
// ECDSA P-256 key and a self-signed certificate valid for 10 years. Later
// calls reuse the CA; a ca.pem without its ca-key.pem is an error rather than
// a reason to make a new CA that clients would not trust.
//
// The server certificate (ECDSA P-256, valid for one year) names hosts plus
// "localhost", 127.0.0.1 and ::1; each host is a DNS name (wildcards allowed)
// or an IP address. The existing server certificate is reused unless it is
// missing or unreadable, was not issued by the CA, expires within 30 days, or
// does not name every host; then a new one is issued with a new key.
//
// LoadOrCreate is not safe to call concurrently on the same dir from several
// processes.
func LoadOrCreate(dir string, hosts []string) (Bundle, error) {
	want, err := parseHosts(hosts)
	if err != nil {
		return Bundle{}, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Bundle{}, fmt.Errorf("create tls directory: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return Bundle{}, fmt.Errorf("create tls directory: %w", err)
	}
	now := time.Now()
	ca, err := loadOrCreateCA(dir, now)
	if err != nil {
		return Bundle{}, err
	}
	cert, err := loadServer(dir, ca, want, now)
	if err != nil {
		if cert, err = issueServer(dir, ca, want, now); err != nil {
			return Bundle{}, err
		}
	}
	return Bundle{
		Config: serverConfig(cert),
		CAPEM:  ca.certPEM,
		CAFile: filepath.Join(dir, caFileName),
	}, nil
}

// LoadFiles returns a bundle serving the certificate chain in certFile with
// the private key in keyFile, both PEM. CAPEM and CAFile are left empty: the
// certificate's issuer is the operator's business.
func LoadFiles(certFile, keyFile string) (Bundle, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return Bundle{}, fmt.Errorf("load tls certificate %s and key %s: %w", certFile, keyFile, err)
	}
	return Bundle{Config: serverConfig(cert)}, nil
}

// ClientConfig returns a client configuration that trusts only the CA
// certificates in caPEM, and requires TLS 1.2 or later.
func ClientConfig(caPEM []byte) (*tls.Config, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("tls client config: no CA certificate found in PEM")
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

func serverConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
	}
}

// hostSet is what a server certificate must name.
type hostSet struct {
	dns []string // lower case
	ips []netip.Addr
}

// parseHosts splits hosts into DNS names and IPs, adds the loopback names,
// and drops duplicates.
func parseHosts(hosts []string) (hostSet, error) {
	var hs hostSet
	all := append(slices.Clone(hosts), "localhost", "127.0.0.1", "::1")
	for _, h := range all {
		h = strings.TrimSpace(h)
		if h == "" {
			continue
		}
		if ip, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")); err == nil {
			if ip.Zone() != "" {
				return hostSet{}, fmt.Errorf("invalid tls host %q: an IP with a zone", h)
			}
			if ip = ip.Unmap(); !slices.Contains(hs.ips, ip) {
				hs.ips = append(hs.ips, ip)
			}
			continue
		}
		name := strings.ToLower(strings.TrimSuffix(h, "."))
		if !validDNSName(name) {
			return hostSet{}, fmt.Errorf("invalid tls host %q: not a DNS name or IP address", h)
		}
		if !slices.Contains(hs.dns, name) {
			hs.dns = append(hs.dns, name)
		}
	}
	return hs, nil
}

// validDNSName accepts host names, with an optional leading "*." wildcard.
// Underscores are tolerated: some internal names have them.
func validDNSName(name string) bool {
	name = strings.TrimPrefix(name, "*.")
	if name == "" || len(name) > 253 {
		return false
	}
	for label := range strings.SplitSeq(name, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range []byte(label) {
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// coveredBy reports whether cert names every host in hs.
func (hs hostSet) coveredBy(cert *x509.Certificate) bool {
	for _, name := range hs.dns {
		if !slices.ContainsFunc(cert.DNSNames, func(n string) bool { return strings.EqualFold(n, name) }) {
			return false
		}
	}
	for _, ip := range hs.ips {
		if !slices.ContainsFunc(cert.IPAddresses, func(c net.IP) bool {
			a, ok := netip.AddrFromSlice(c)
			return ok && a.Unmap() == ip
		}) {
			return false
		}
	}
	return true
}

type authority struct {
	cert    *x509.Certificate
	key     crypto.Signer
	certPEM []byte
}

func loadOrCreateCA(dir string, now time.Time) (authority, error) {
	certPath, keyPath := filepath.Join(dir, caFileName), filepath.Join(dir, caKeyFileName)
	certPEM, err := os.ReadFile(certPath)
	if errors.Is(err, fs.ErrNotExist) {
		// No CA certificate means no client can trust this CA yet; any key
		// left over from an interrupted first start is replaced.
		return createCA(dir, now)
	}
	if err != nil {
		return authority{}, fmt.Errorf("load tls ca: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return authority{}, fmt.Errorf("load tls ca key (remove %s to make a new CA): %w", certPath, err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return authority{}, fmt.Errorf("load tls ca %s: %w", certPath, err)
	}
	cert, err := leaf(pair)
	if err != nil {
		return authority{}, fmt.Errorf("load tls ca %s: %w", certPath, err)
	}
	if !cert.IsCA {
		return authority{}, fmt.Errorf("load tls ca %s: not a CA certificate", certPath)
	}
	if now.After(cert.NotAfter) {
		return authority{}, fmt.Errorf("load tls ca %s: expired on %s (remove %s and %s to make a new CA)",
			certPath, cert.NotAfter.Format(time.DateOnly), caFileName, caKeyFileName)
	}
	key, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return authority{}, fmt.Errorf("load tls ca %s: key cannot sign", certPath)
	}
	return authority{cert: cert, key: key, certPEM: certPEM}, nil
}

func createCA(dir string, now time.Time) (authority, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return authority{}, fmt.Errorf("create tls ca: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return authority{}, fmt.Errorf("create tls ca: %w", err)
	}
	id := serial.Text(16)
	if len(id) > 8 {
		id = id[:8]
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{"dsproxy"},
			// A distinct name per hub, so several hubs' CAs can sit in one
			// trust store and be told apart.
			CommonName: "dsproxy private CA " + id,
		},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true, // signs server certificates only, no intermediates
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return authority{}, fmt.Errorf("create tls ca: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return authority{}, fmt.Errorf("create tls ca: %w", err)
	}
	certPEM, err := writePair(dir, caFileName, caKeyFileName, der, key)
	if err != nil {
		return authority{}, fmt.Errorf("create tls ca: %w", err)
	}
	return authority{cert: cert, key: key, certPEM: certPEM}, nil
}

// loadServer returns the server certificate in dir if it is still fit for
// use; any error means it should be issued again.
func loadServer(dir string, ca authority, want hostSet, now time.Time) (tls.Certificate, error) {
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, serverFileName), filepath.Join(dir, serverKeyFileName))
	if err != nil {
		return tls.Certificate{}, err
	}
	cert, err := leaf(pair)
	if err != nil {
		return tls.Certificate{}, err
	}
	switch {
	case cert.CheckSignatureFrom(ca.cert) != nil || !bytes.Equal(cert.RawIssuer, ca.cert.RawSubject):
		return tls.Certificate{}, errors.New("not issued by the ca")
	case now.Before(cert.NotBefore) || now.Add(renewBefore).After(cert.NotAfter):
		return tls.Certificate{}, errors.New("expiring")
	case !want.coveredBy(cert):
		return tls.Certificate{}, errors.New("hosts not covered")
	}
	return pair, nil
}

func issueServer(dir string, ca authority, hs hostSet, now time.Time) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("issue tls server certificate: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("issue tls server certificate: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{Organization: []string{"dsproxy"}, CommonName: hs.commonName()},
		NotBefore:    now.Add(-backdate),
		NotAfter:     now.Add(serverValidity),
		// ECDSA keys sign; they never encipher, so no KeyEncipherment.
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              hs.dns,
	}
	if tmpl.NotAfter.After(ca.cert.NotAfter) {
		tmpl.NotAfter = ca.cert.NotAfter // clients would reject it past then anyway
	}
	for _, ip := range hs.ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(ip.AsSlice()))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("issue tls server certificate: %w", err)
	}
	if _, err := writePair(dir, serverFileName, serverKeyFileName, der, key); err != nil {
		return tls.Certificate{}, fmt.Errorf("issue tls server certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("issue tls server certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// leaf returns the parsed first certificate of pair.
func leaf(pair tls.Certificate) (*x509.Certificate, error) {
	if pair.Leaf != nil {
		return pair.Leaf, nil
	}
	return x509.ParseCertificate(pair.Certificate[0])
}

func (hs hostSet) commonName() string {
	if len(hs.dns) > 0 {
		return hs.dns[0]
	}
	return hs.ips[0].String()
}

// writePair writes the key, then the certificate, each atomically: the
// certificate is the commit point, and a key left without its certificate
// by a crash is simply replaced next time. It returns the certificate PEM.
func writePair(dir, certName, keyName string, der []byte, key *ecdsa.PrivateKey) ([]byte, error) {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if err := writeFile(dir, keyName, keyPEM, 0o600); err != nil {
		return nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := writeFile(dir, certName, certPEM, 0o644); err != nil {
		return nil, err
	}
	return certPEM, nil
}

// writeFile replaces dir/name with data atomically, with exactly mode perm.
func writeFile(dir, name string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(dir, "."+name+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op once renamed
	// CreateTemp makes the file 0600; set perm explicitly, whatever the umask.
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, name))
}

// newSerial returns a random positive serial number of up to 128 bits, as
// RFC 5280 and the CA/Browser Forum ask (at least 64 bits of randomness).
func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}
