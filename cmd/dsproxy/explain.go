package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"

	"github.com/dsproxy/dsproxy/hub/registry"
	"github.com/dsproxy/dsproxy/hubclient"
)

// explain turns an error into one line that says what to do. The hub's own
// messages already do (they name the device and the cause); what needs help
// is the network and TLS underneath.
func explain(err error) error {
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	var cv *tls.CertificateVerificationError
	var dns *net.DNSError
	var op *net.OpError
	switch {
	case errors.Is(err, registry.ErrUnavailable):
		// The hub's own database: says what failed already, and the
		// network cases below are about reaching a hub.
		return err
	case errors.As(err, &ua) || (errors.As(err, &cv) && errors.As(cv.Err, &ua)):
		return fmt.Errorf("the hub's certificate is not signed by a CA this machine trusts: pass --ca-file with the hub's DATA_DIR/tls/ca.pem (%w)", err)
	case errors.As(err, &hn):
		return fmt.Errorf("the hub's certificate is not valid for %q: start the hub with --hostname for that name, or use a name the certificate covers (%w)", hn.Host, err)
	case errors.As(err, &op) && op.Op == "proxyconnect":
		return fmt.Errorf("cannot reach the hub through the proxy in HTTPS_PROXY: check it, or list the hub's name in NO_PROXY (%w)", err)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("cannot reach the hub: connection refused: is dsproxy hub running at the connection string's HostName? (%w)", err)
	case errors.As(err, &dns):
		return fmt.Errorf("cannot resolve the hub's name %q: check HostName in the connection string (%w)", dns.Name, err)
	case errors.Is(err, hubclient.ErrUnauthorized) && strings.Contains(err.Error(), "expired"):
		return fmt.Errorf("%w: check this machine's clock", err)
	case errors.Is(err, hubclient.ErrForbidden):
		return fmt.Errorf("%w: use a policy with the needed permission (iothubowner has all)", err)
	}
	return err
}
