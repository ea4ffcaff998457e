package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/dsproxy/dsproxy/hub"
)

func sshConfigCommand() *cli.Command {
	return &cli.Command{
		Name:  "ssh-config",
		Usage: "print ~/.ssh/config blocks that reach devices through dsproxy",
		Description: `Prints a Host block per device that uses dsproxy as ssh's ProxyCommand, so
"ssh pi-42" works with no local port. Without --device-id it lists every
device the credential may read (needs RegistryRead: iothubowner or
registryRead); with --device-id it prints that one block without asking the
hub. The blocks pass the credential as --connection-string-file and
--ca-file with absolute paths, so keys never land in the ssh config.

Examples:
   dsproxy ssh-config --connection-string-file ~/.dsproxy/service.cs --ca-file ~/.dsproxy/ca.pem \
     --device-id pi-42 --user pi >> ~/.ssh/config
   ssh pi-42`,
		Flags: append(clientFlags(),
			&cli.StringSliceFlag{Name: "device-id", Usage: "`ID` of a device to print a block for (repeatable); default: every registered device", EnvVars: []string{"DSPROXY_DEVICE_ID"}},
			&cli.StringFlag{Name: "user", Usage: "ssh `USER` on the devices", EnvVars: []string{"DSPROXY_USER"}},
			&cli.StringFlag{Name: "stream-name", Value: "ssh", Usage: "stream `NAME` the devices serve ssh under", EnvVars: []string{"DSPROXY_STREAM_NAME"}},
			&cli.StringFlag{Name: "host-prefix", Usage: "`PREFIX` for the Host names (\"dsp-\" gives \"Host dsp-pi-42\")", EnvVars: []string{"DSPROXY_HOST_PREFIX"}},
		),
		Action: runSSHConfig,
	}
}

func runSSHConfig(c *cli.Context) error {
	ids := c.StringSlice("device-id")
	if len(ids) == 0 {
		sc, err := newServiceClient(c)
		if err != nil {
			return err
		}
		defer sc.Close()
		ds, err := sc.ListDevices(c.Context)
		if err != nil {
			return fmt.Errorf("%w (or name devices with --device-id)", err)
		}
		for _, d := range ds {
			ids = append(ids, d.ID)
		}
	}
	self, err := os.Executable()
	if err != nil {
		self = "dsproxy"
	}
	cmd := []string{quoteSSH(self), "service", "--stdio"}
	csFile, caFile := c.String("connection-string-file"), c.String("ca-file")
	if csFile == "" && c.String("connection-string") == "" {
		// On the hub's machine: the service policy's file, the least
		// privilege that opens streams.
		if local := filepath.Join(defaultDataDir, hub.ServiceConnectionStringFile); exists(local) {
			csFile = local
			if caFile == "" && exists(filepath.Join(defaultDataDir, "tls", "ca.pem")) {
				caFile = filepath.Join(defaultDataDir, "tls", "ca.pem")
			}
		}
	}
	if f := csFile; f != "" {
		abs, err := filepath.Abs(f)
		if err != nil {
			return err
		}
		cmd = append(cmd, "--connection-string-file", quoteSSH(abs))
	} else if c.String("connection-string") != "" {
		return errors.New("ssh-config will not write a key into an ssh config: put the connection string in a file (mode 0600) and pass --connection-string-file")
	}
	if f := caFile; f != "" {
		abs, err := filepath.Abs(f)
		if err != nil {
			return err
		}
		cmd = append(cmd, "--ca-file", quoteSSH(abs))
	}
	if n := c.String("stream-name"); n != "ssh" {
		cmd = append(cmd, "--stream-name", quoteSSH(n))
	}
	w := c.App.Writer
	fmt.Fprintf(w, "# dsproxy: devices reached through the hub\n")
	if csFile == "" {
		fmt.Fprintf(w, "# The ProxyCommand reads DSPROXY_CONNECTION_STRING from the environment ssh runs in.\n")
	}
	for _, id := range ids {
		// Host lines treat * ? ! , as patterns; % starts a ProxyCommand token.
		if strings.ContainsAny(id, " \t\"'%*?!,") {
			fmt.Fprintf(w, "\n# skipped device %q: its ID cannot be an ssh host name\n", id)
			continue
		}
		fmt.Fprintf(w, "\nHost %s%s\n", c.String("host-prefix"), id)
		line := strings.Join(append(cmd, "--device-id", quoteSSH(id)), " ")
		fmt.Fprintf(w, "  ProxyCommand %s\n", strings.ReplaceAll(line, "%", "%%"))
		if u := c.String("user"); u != "" {
			fmt.Fprintf(w, "  User %s\n", u)
		}
		// One key per device ID, whatever the Host alias.
		fmt.Fprintf(w, "  HostKeyAlias dsproxy-%s\n", id)
	}
	return nil
}

func exists(name string) bool {
	_, err := os.Stat(name)
	return err == nil
}

// quoteSSH quotes s for a ProxyCommand line, which ssh runs with the
// user's shell.
func quoteSSH(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t'\"\\$`!*?[]#~;&|<>(){}") {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
