package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/dsproxy/dsproxy/config"
)

// configFlagName is the flag that names a command's configuration file.
const configFlagName = "config"

// envVar is the environment variable of flag name: DSPROXY_ and the name
// upper-cased with dashes as underscores (--ca-file is DSPROXY_CA_FILE).
func envVar(name string) string {
	return "DSPROXY_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// withConfig gives every command in cmds that runs something (has an
// Action), and their subcommands, a --config flag and a Before hook that
// applies the file. Flag > environment > file > default: a key is applied
// only when neither the command line nor the flag's environment variable
// set it.
//
// urfave/cli checks required flags before Before runs, so a required flag
// could never come from the file; withConfig makes them optional and checks
// them itself after the file is applied.
func withConfig(cmds []*cli.Command) []*cli.Command {
	for _, cmd := range cmds {
		withConfig(cmd.Subcommands)
		if cmd.Action == nil {
			continue
		}
		var required []string
		for _, f := range cmd.Flags {
			switch f := f.(type) {
			case *cli.StringFlag:
				if f.Required {
					f.Required = false
					required = append(required, f.Name)
				}
			case *cli.StringSliceFlag:
				if f.Required {
					f.Required = false
					required = append(required, f.Name)
				}
			}
		}
		cmd.Flags = append(cmd.Flags, &cli.StringFlag{
			Name:    configFlagName,
			Usage:   "read flags from the YAML `FILE` (keys are long flag names; precedence: flag > DSPROXY_ environment variable > file > default)",
			EnvVars: []string{envVar(configFlagName)},
		})
		before := cmd.Before
		cmd.Before = func(c *cli.Context) error {
			// A parent command (hub) whose subcommand (hub show) runs
			// leaves the file to the subcommand.
			if c.Args().Present() && c.Command.Command(c.Args().First()) != nil {
				return nil
			}
			if err := applyConfig(c); err != nil {
				return err
			}
			var missing []string
			for _, name := range required {
				if !c.IsSet(name) {
					missing = append(missing, name)
				}
			}
			switch len(missing) {
			case 0:
			case 1:
				return fmt.Errorf("required flag %q not set (on the command line, in %s, or in the --config file)", missing[0], envVar(missing[0]))
			default:
				return fmt.Errorf("required flags %q not set", strings.Join(missing, ", "))
			}
			if before != nil {
				return before(c)
			}
			return nil
		}
	}
	return cmds
}

// flagKinds maps the long names of flags to what their values may be in a
// configuration file. --config and --help are not keys.
func flagKinds(flags []cli.Flag) map[string]config.Kind {
	kinds := make(map[string]config.Kind, len(flags))
	for _, f := range flags {
		var k config.Kind
		switch f.(type) {
		case *cli.BoolFlag:
			k = config.Bool
		case *cli.IntFlag, *cli.Int64Flag, *cli.UintFlag, *cli.Uint64Flag:
			k = config.Int
		case *cli.Float64Flag:
			k = config.Float
		case *cli.DurationFlag:
			k = config.Duration
		case *cli.StringSliceFlag, *cli.IntSliceFlag, *cli.Int64SliceFlag, *cli.Float64SliceFlag:
			k = config.List
		default:
			k = config.String
		}
		name := f.Names()[0]
		if name == configFlagName || name == "help" {
			continue
		}
		kinds[name] = k
	}
	return kinds
}

// applyConfig sets each flag the --config file gives unless the command
// line or the environment already set it.
func applyConfig(c *cli.Context) error {
	file := c.String(configFlagName)
	if file == "" {
		return nil
	}
	vals, err := config.Load(file, flagKinds(c.Command.Flags))
	if err != nil {
		return err
	}
	for name, vs := range vals {
		if c.IsSet(name) {
			continue
		}
		for _, v := range vs {
			if err := c.Set(name, v); err != nil {
				return fmt.Errorf("config file %s: %s: %w", file, name, err)
			}
		}
	}
	return nil
}
