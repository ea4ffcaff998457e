package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/dsproxy/dsproxy/hubclient"
)

func devicesCommand() *cli.Command {
	return &cli.Command{
		Name:  "devices",
		Usage: "register, list, show and delete devices",
		Description: `Registry calls with a policy connection string (iothubowner, or registryRead /
registryReadWrite). On the hub's machine, run from the directory that holds
dsproxy-data/, they need no flags.

Examples:
   dsproxy devices add pi-42        # prints the device's connection string
   dsproxy devices list
   dsproxy devices show pi-42
   dsproxy devices delete pi-42`,
		Subcommands: []*cli.Command{
			{
				Name:      "add",
				Usage:     "register a device and print its connection string",
				ArgsUsage: "ID",
				Flags:     clientFlags(),
				Action: registryAction(true, func(c *cli.Context, sc *hubclient.ServiceClient, id string) error {
					d, err := sc.CreateDevice(c.Context, id)
					if err != nil {
						return err
					}
					fmt.Fprintln(c.App.Writer, sc.DeviceConnectionString(d))
					return nil
				}),
			},
			{
				Name:  "list",
				Usage: "list registered devices",
				Flags: append(clientFlags(), &cli.BoolFlag{Name: "json", Usage: "print JSON", EnvVars: []string{"DSPROXY_JSON"}}),
				Action: registryAction(false, func(c *cli.Context, sc *hubclient.ServiceClient, _ string) error {
					ds, err := sc.ListDevices(c.Context)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c, devicesJSON(ds))
					}
					tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "DEVICE\tSTATUS\tCONNECTION")
					for _, d := range ds {
						fmt.Fprintf(tw, "%s\t%s\t%s\n", d.ID, d.Status, d.ConnectionState)
					}
					return tw.Flush()
				}),
			},
			{
				Name:      "show",
				Usage:     "show one device, with its connection string",
				ArgsUsage: "ID",
				Flags:     append(clientFlags(), &cli.BoolFlag{Name: "json", Usage: "print JSON", EnvVars: []string{"DSPROXY_JSON"}}),
				Action: registryAction(true, func(c *cli.Context, sc *hubclient.ServiceClient, id string) error {
					d, err := sc.GetDevice(c.Context, id)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c, devicesJSON([]hubclient.Device{d})[0])
					}
					tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
					fmt.Fprintf(tw, "device:\t%s\n", d.ID)
					fmt.Fprintf(tw, "status:\t%s\n", d.Status)
					fmt.Fprintf(tw, "connection:\t%s\n", d.ConnectionState)
					fmt.Fprintf(tw, "connection string:\t%s\n", sc.DeviceConnectionString(d))
					return tw.Flush()
				}),
			},
			{
				Name:      "delete",
				Usage:     "delete a device; its session ends",
				ArgsUsage: "ID",
				Flags:     clientFlags(),
				Action: registryAction(true, func(c *cli.Context, sc *hubclient.ServiceClient, id string) error {
					return sc.DeleteDevice(c.Context, id)
				}),
			},
		},
	}
}

// registryAction makes a command action that reads the device ID argument
// (when wantID) and calls f with a service client.
func registryAction(wantID bool, f func(c *cli.Context, sc *hubclient.ServiceClient, id string) error) cli.ActionFunc {
	return func(c *cli.Context) error {
		var id string
		if wantID {
			var err error
			if id, err = oneArg(c, "device ID"); err != nil {
				return err
			}
		}
		sc, err := newServiceClient(c)
		if err != nil {
			return err
		}
		defer sc.Close()
		return f(c, sc, id)
	}
}

// deviceOut is a device as `devices list --json` prints it.
type deviceOut struct {
	DeviceID         string `json:"deviceId"`
	Status           string `json:"status"`
	ConnectionState  string `json:"connectionState"`
	ConnectionString string `json:"connectionString,omitempty"`
}

func devicesJSON(ds []hubclient.Device) []deviceOut {
	out := make([]deviceOut, len(ds))
	for i, d := range ds {
		out[i] = deviceOut{DeviceID: d.ID, Status: d.Status, ConnectionState: d.ConnectionState}
	}
	return out
}

func printJSON(c *cli.Context, v any) error {
	enc := json.NewEncoder(c.App.Writer)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func oneArg(c *cli.Context, what string) (string, error) {
	args := c.Args().Slice()
	for _, a := range args[min(1, len(args)):] {
		if strings.HasPrefix(a, "-") {
			return "", fmt.Errorf("flags go before the %s: dsproxy %s [flags] %s", what, c.Command.HelpName[len("dsproxy "):], args[0])
		}
	}
	if len(args) != 1 {
		return "", fmt.Errorf("want exactly one %s; see --help", what)
	}
	return args[0], nil
}

func newServiceClient(c *cli.Context) (*hubclient.ServiceClient, error) {
	cfg, err := serviceConfig(c)
	if err != nil {
		return nil, err
	}
	return hubclient.NewServiceClient(cfg)
}

// serviceConfig is the configuration of the service clients of c: its
// credential, the hub's CA and the logger.
func serviceConfig(c *cli.Context) (hubclient.ServiceConfig, error) {
	log, err := newLogger(c)
	if err != nil {
		return hubclient.ServiceConfig{}, err
	}
	cs, err := connectionString(c, log)
	if err != nil {
		return hubclient.ServiceConfig{}, err
	}
	tlsCfg, err := clientTLS(c, log)
	if err != nil {
		return hubclient.ServiceConfig{}, err
	}
	return hubclient.ServiceConfig{ConnectionString: cs, Hubs: hubList(c), TLSConfig: tlsCfg, Logger: log}, nil
}
