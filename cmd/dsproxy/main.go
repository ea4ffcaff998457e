// Command dsproxy reaches devices behind NAT and firewalls by device ID. One
// binary plays every role: the hub, the device agent, the service proxy,
// the registry client, and an all-in-one development mode.
//
// This package only wires flags to the libraries' configurations.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"
)

// version and commit are set at build time with
// -ldflags "-X main.version=v1.2.3 -X main.commit=abc1234"; without them
// commit comes from the build's VCS stamp when Go recorded one.
var (
	version = "dev"
	commit  = ""
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newApp(os.Stdout, os.Stderr).RunContext(ctx, os.Args)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "dsproxy: %v\n", explain(err))
		os.Exit(1)
	}
}

func newApp(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:  "dsproxy",
		Usage: "reach devices behind NAT and firewalls by device ID",
		Description: `dsproxy carries TCP connections (ssh, RDP, HTTP, databases) to devices that
only make outbound connections. A hub relays; a device agent bridges streams
to local ports on the device; a service proxy listens on the engineer's machine.

Quick start on one machine:
   dsproxy dev --target localhost:22
   ssh -p 2222 localhost`,
		Version:              versionString(),
		Writer:               stdout,
		ErrWriter:            stderr,
		EnableBashCompletion: true,
		Commands: withConfig([]*cli.Command{
			hubCommandWithShow(),
			devicesCommand(),
			deviceCommand(),
			serviceCommand(),
			devCommand(),
			sshConfigCommand(),
			streamsCommand(),
			logsCommand(),
		}),
	}
}

func versionString() string {
	rev, goVersion := commit, "unknown Go"
	if bi, ok := debug.ReadBuildInfo(); ok {
		goVersion = bi.GoVersion
		for _, st := range bi.Settings {
			if st.Key == "vcs.revision" && rev == "" {
				rev = st.Value
			}
		}
	}
	if rev == "" {
		rev = "unknown"
	}
	return fmt.Sprintf("%s (commit %s, %s)", version, rev, goVersion)
}

func logFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{
			Name:    "log-level",
			Value:   "info",
			Usage:   "debug, info, warn or error",
			EnvVars: []string{"DSPROXY_LOG_LEVEL"},
		},
		&cli.StringFlag{
			Name:    "log-format",
			Value:   "console",
			Usage:   "console (human-readable) or json",
			EnvVars: []string{"DSPROXY_LOG_FORMAT"},
		},
	}
}

// newLogger builds the process's logger from --log-level and --log-format.
// Logs go to stderr; stdout is for results scripts capture.
func newLogger(c *cli.Context) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(c.String("log-level"))
	if err != nil || c.String("log-level") == "" {
		return zerolog.Logger{}, fmt.Errorf("--log-level %q: want debug, info, warn or error", c.String("log-level"))
	}
	var w io.Writer = c.App.ErrWriter
	switch c.String("log-format") {
	case "console":
		noColor := true
		if f, ok := w.(*os.File); ok {
			noColor = !isatty.IsTerminal(f.Fd())
		}
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.DateTime, NoColor: noColor}
	case "json":
	default:
		return zerolog.Logger{}, fmt.Errorf("--log-format %q: want console or json", c.String("log-format"))
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}
