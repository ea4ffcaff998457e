package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"

	"github.com/dsproxy/dsproxy/hub"
	"github.com/dsproxy/dsproxy/hub/certs"
)

// defaultDataDir is the hub's data directory unless --data-dir says
// otherwise. Client commands look there for credentials when none are
// given, so they work without flags on the hub's own machine.
const defaultDataDir = "./dsproxy-data"

// clientFlags are the flags of every command that talks to a hub, with the
// log flags.
func clientFlags() []cli.Flag {
	return append(logFlags(),
		&cli.StringFlag{
			Name:    "connection-string",
			Aliases: []string{"c"},
			Usage:   "`CONNSTR` of a shared access policy (service, devices) or of the device (device); default: " + defaultDataDir + "/" + hub.OwnerConnectionStringFile + " when present",
			EnvVars: []string{"DSPROXY_CONNECTION_STRING"},
		},
		&cli.StringFlag{
			Name:    "connection-string-file",
			Usage:   "read the connection string from `FILE` (keeps the key off the command line and out of ssh configs)",
			EnvVars: []string{"DSPROXY_CONNECTION_STRING_FILE"},
		},
		&cli.StringFlag{
			Name:    "ca-file",
			Usage:   "PEM `FILE` of the CA that signed the hub's certificate (the hub's DATA_DIR/tls/ca.pem); default: the system's roots, or " + defaultDataDir + "/tls/ca.pem when present",
			EnvVars: []string{"DSPROXY_CA_FILE"},
		},
		&cli.StringSliceFlag{
			Name:    "hub",
			Usage:   "`HOST:PORT` of a hub replica to connect to instead of the connection string's HostName (repeatable or comma-separated: the client stays with one until it cannot be reached, then moves to the next; tokens are still signed for HostName)",
			EnvVars: []string{"DSPROXY_HUB"},
		},
		&cli.BoolFlag{
			Name:    "insecure-skip-tls-verify",
			Usage:   "DANGEROUS, for development only: accept any certificate from the hub",
			EnvVars: []string{"DSPROXY_INSECURE_SKIP_TLS_VERIFY"},
		},
	)
}

// connectionString returns --connection-string or, failing that, the owner
// connection string of a hub data directory in the working directory.
func connectionString(c *cli.Context, log zerolog.Logger) (string, error) {
	if cs := strings.TrimSpace(c.String("connection-string")); cs != "" {
		return cs, nil
	}
	if f := c.String("connection-string-file"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("--connection-string-file: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	name := filepath.Join(defaultDataDir, hub.OwnerConnectionStringFile)
	b, err := os.ReadFile(name)
	if err != nil {
		return "", errors.New("no connection string: pass --connection-string or set DSPROXY_CONNECTION_STRING (the hub prints the owner's on first start and keeps it in DATA_DIR/" + hub.OwnerConnectionStringFile + ")")
	}
	log.Debug().Str("file", name).Msg("using the owner connection string of the local hub")
	return strings.TrimSpace(string(b)), nil
}

// clientTLS builds the TLS configuration that verifies the hub.
func clientTLS(c *cli.Context, log zerolog.Logger) (*tls.Config, error) {
	if c.Bool("insecure-skip-tls-verify") {
		log.Warn().Msg("TLS verification of the hub is OFF (--insecure-skip-tls-verify): anyone on the path can read and change this traffic")
		return &tls.Config{InsecureSkipVerify: true}, nil
	}
	file := c.String("ca-file")
	if file == "" {
		local := filepath.Join(defaultDataDir, "tls", "ca.pem")
		if _, err := os.Stat(local); err == nil && c.String("connection-string") == "" && c.String("connection-string-file") == "" {
			file = local
		}
	}
	if file == "" {
		return nil, nil // system roots
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("--ca-file: %w", err)
	}
	cfg, err := certs.ClientConfig(pem)
	if err != nil {
		return nil, fmt.Errorf("--ca-file %s: %w", file, err)
	}
	log.Debug().Str("file", file).Msg("trusting the hub's CA")
	return cfg, nil
}

// hubList returns the --hub addresses, split at commas.
func hubList(c *cli.Context) []string {
	var out []string
	for _, v := range c.StringSlice("hub") {
		for _, h := range strings.Split(v, ",") {
			if h = strings.TrimSpace(h); h != "" {
				out = append(out, h)
			}
		}
	}
	return out
}
