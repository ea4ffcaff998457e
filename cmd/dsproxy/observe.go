package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dsproxy/dsproxy/hub"
	"github.com/dsproxy/dsproxy/hubclient"
)

// hubCommandWithShow is the hub command with `hub show` under it: the hub
// command itself still runs the server.
func hubCommandWithShow() *cli.Command {
	c := hubCommand()
	c.Subcommands = append(c.Subcommands, hubShowCommand())
	return c
}

func hubShowCommand() *cli.Command {
	return &cli.Command{
		Name:  "show",
		Usage: "print the hub's endpoints as JSON",
		Description: `Prints the hub's host name and streaming endpoints, like
az iot hub devicestream show. Any valid connection string may ask.

Example:
   dsproxy hub show --connection-string-file svc.cs --ca-file ca.pem`,
		Flags: clientFlags(),
		Action: registryAction(false, func(c *cli.Context, sc *hubclient.ServiceClient, _ string) error {
			h, err := sc.Hub(c.Context)
			if err != nil {
				return err
			}
			if h.StreamingEndpoints == nil {
				h.StreamingEndpoints = []string{}
			}
			return printJSON(c, h)
		}),
	}
}

// streamOut is an active stream as `streams --json` prints it.
type streamOut struct {
	StreamID   string  `json:"streamId"`
	DeviceID   string  `json:"deviceId"`
	Name       string  `json:"name"`
	Policy     string  `json:"policy"`
	State      string  `json:"state"`
	Mode       string  `json:"mode"`
	StartedAt  string  `json:"startedAt"`
	AgeSeconds float64 `json:"ageSeconds"`
	BytesUp    int64   `json:"bytesUp"`
	BytesDown  int64   `json:"bytesDown"`
}

func streamsCommand() *cli.Command {
	return &cli.Command{
		Name:  "streams",
		Usage: "list the streams running on the hub",
		Description: `Lists the streams the hub carries now, oldest first: those relaying and
those accepted by their device and waiting for a side to connect. Needs a
policy with RegistryRead (iothubowner, registryRead).

Example:
   dsproxy streams
   dsproxy streams --json | jq '.[] | select(.deviceId == "pi-42")'`,
		Flags: append(clientFlags(), &cli.BoolFlag{Name: "json", Usage: "print JSON (ages in seconds, bytes as numbers)", EnvVars: []string{"DSPROXY_JSON"}}),
		Action: registryAction(false, func(c *cli.Context, sc *hubclient.ServiceClient, _ string) error {
			ss, err := sc.Streams(c.Context)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				out := make([]streamOut, len(ss))
				for i, s := range ss {
					out[i] = streamOut{
						StreamID: s.StreamID, DeviceID: s.DeviceID, Name: s.Name, Policy: s.Policy, State: s.State, Mode: s.Mode,
						StartedAt: s.StartedAt.UTC().Format(time.RFC3339), AgeSeconds: s.Age.Seconds(),
						BytesUp: s.BytesUp, BytesDown: s.BytesDown,
					}
				}
				return printJSON(c, out)
			}
			tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "DEVICE\tNAME\tSTATE\tMODE\tAGE\tUP\tDOWN")
			for _, s := range ss {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.DeviceID, s.Name, s.State, s.Mode, humanDuration(s.Age), humanBytes(s.BytesUp), humanBytes(s.BytesDown))
			}
			return tw.Flush()
		}),
	}
}

func logsCommand() *cli.Command {
	return &cli.Command{
		Name:  "logs",
		Usage: "show the hub's stored stream events, newest first",
		Description: `Shows the stream event log (the audit trail): every stream that ended and
every initiation that did not get one, with who asked, the result, the reason
and the bytes each way. Needs a policy with RegistryRead.

Examples:
   dsproxy logs
   dsproxy logs --device pi-42 --since 24h
   dsproxy logs --since 1h --limit 50 --json`,
		Flags: append(clientFlags(),
			&cli.StringFlag{Name: "device", Usage: "only events of device `ID`", EnvVars: []string{"DSPROXY_DEVICE"}},
			&cli.DurationFlag{Name: "since", Usage: "only events that started within `DURATION` (e.g. 30m, 24h)", EnvVars: []string{"DSPROXY_SINCE"}},
			&cli.IntFlag{Name: "limit", Value: 100, Usage: "show at most `N` events", EnvVars: []string{"DSPROXY_LIMIT"}},
			&cli.BoolFlag{Name: "json", Usage: "print JSON (durations in seconds, bytes as numbers)", EnvVars: []string{"DSPROXY_JSON"}},
		),
		Action: func(c *cli.Context) error {
			if c.Args().Len() > 0 {
				return fmt.Errorf("logs takes no arguments (got %q); filter with --device", c.Args().First())
			}
			if c.Duration("since") < 0 {
				return fmt.Errorf("--since %s: want a positive duration such as 24h", c.Duration("since"))
			}
			if n := c.Int("limit"); n < 1 || n > 10000 {
				return fmt.Errorf("--limit %d: want a number from 1 to 10000", n)
			}
			return registryAction(false, func(c *cli.Context, sc *hubclient.ServiceClient, _ string) error {
				q := hubclient.EventQuery{DeviceID: c.String("device"), Limit: c.Int("limit")}
				if d := c.Duration("since"); d > 0 {
					q.Since = time.Now().Add(-d)
				}
				es, err := sc.Events(c.Context, q)
				if err != nil {
					return err
				}
				if c.Bool("json") {
					out := make([]hub.StreamEventJSON, len(es)) // the hub's own JSON of GET /events
					for i, e := range es {
						out[i] = hub.StreamEventJSON{
							StreamID: e.StreamID, DeviceID: e.DeviceID, Policy: e.Policy, Name: e.Name,
							Result: e.Result, Reason: e.Reason, BytesUp: e.BytesUp, BytesDown: e.BytesDown,
							StartedAt: e.StartedAt.UTC().Format(time.RFC3339Nano), DurationSeconds: e.Duration.Seconds(),
						}
					}
					return printJSON(c, out)
				}
				tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "TIME\tDEVICE\tNAME\tRESULT\tUP\tDOWN\tDURATION\tREASON")
				for _, e := range es {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
						e.StartedAt.Local().Format(time.DateTime), e.DeviceID, e.Name, e.Result,
						humanBytes(e.BytesUp), humanBytes(e.BytesDown), humanDuration(e.Duration), oneLine(e.Reason))
				}
				return tw.Flush()
			})(c)
		},
	}
}

// humanBytes formats n bytes with binary units: 512 B, 1.5 KiB, 20 MiB.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	v := float64(n) / float64(div)
	if v < 10 {
		return fmt.Sprintf("%.1f %ciB", v, "KMGTPE"[exp])
	}
	return fmt.Sprintf("%.0f %ciB", v, "KMGTPE"[exp])
}

// humanDuration formats d for a table: 850ms, 42s, 5m3s, 2h10m, 3d4h.
func humanDuration(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < time.Hour:
		d = d.Round(time.Second)
		return fmt.Sprintf("%dm%ds", int(d/time.Minute), int(d%time.Minute/time.Second))
	case d < 24*time.Hour:
		d = d.Round(time.Minute)
		return fmt.Sprintf("%dh%dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	default:
		d = d.Round(time.Hour)
		return fmt.Sprintf("%dd%dh", int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour))
	}
}

// oneLine keeps a reason on its table row.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
