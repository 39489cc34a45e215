package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
)

// oneArg returns the single positional argument in args.
func oneArg(c *cli.Context, args []string, name string) (string, error) {
	switch len(args) {
	case 0:
		return "", usagef("%s is required (run '%s --help')", name, c.Command.HelpName)
	case 1:
		return args[0], nil
	}
	return "", usagef("unexpected argument %q (run '%s --help')", args[1], c.Command.HelpName)
}

// flagsAfterArgs sets the command's flags that follow its positional
// arguments, as docs/CLI.md writes them ("backup tag ID --set K=V"):
// urfave/cli stops parsing flags at the first argument. It returns the
// positional arguments, and whether --help was among the flags, in which
// case it has shown the help and the command must do nothing.
func flagsAfterArgs(c *cli.Context) (args []string, help bool, err error) {
	isBool := map[string]bool{}
	for _, f := range c.Command.Flags {
		_, b := f.(*cli.BoolFlag)
		for _, n := range f.Names() {
			isBool[n] = b
		}
	}
	rest := c.Args().Slice()
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		if a == "--" {
			args = append(args, rest[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			args = append(args, a)
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimPrefix(a[1:], "-"), "=")
		b, known := isBool[name]
		switch {
		case !known:
			return nil, false, usagef("flag provided but not defined: %s (run '%s --help')", a, c.Command.HelpName)
		case hasValue:
		case b:
			value = "true"
		case i+1 < len(rest):
			i++
			value = rest[i]
		default:
			return nil, false, usagef("flag needs an argument: %s (run '%s --help')", a, c.Command.HelpName)
		}
		if err := c.Set(name, value); err != nil {
			return nil, false, usagef("invalid value %q for flag %s: %w (run '%s --help')", value, a, err, c.Command.HelpName)
		}
	}
	if c.Bool("help") {
		return nil, true, cli.ShowCommandHelp(c.Lineage()[1], c.Command.Name)
	}
	return args, false, nil
}

// jsonFlag lets a command that supports --json take it after its name
// too, not only before it as the global flag.
func jsonFlag() cli.Flag {
	return &cli.BoolFlag{Name: "json", Usage: "print machine-readable JSON"}
}

// wantJSON reports whether --json was given, before the command (the
// global flag) or after it. A command's own flag shadows the global one in
// urfave/cli's lookup, so each level is asked.
func wantJSON(c *cli.Context) bool {
	for _, cc := range c.Lineage() {
		if cc.Bool("json") {
			return true
		}
	}
	return false
}

// requireFlags returns an error naming the first of names that is not set.
// It stands in for urfave/cli's Required, which prints the whole help
// instead of one line.
func requireFlags(c *cli.Context, names ...string) error {
	for _, n := range names {
		if c.String(n) == "" {
			return usagef("--%s is required (run '%s --help')", n, c.Command.HelpName)
		}
	}
	return nil
}

// noArgs refuses positional arguments to a command that takes none.
func noArgs(c *cli.Context) error {
	if c.Args().Present() {
		return usagef("unexpected argument %q (run '%s --help')", c.Args().First(), c.Command.HelpName)
	}
	return nil
}

// groupAction is the action of a command that only groups subcommands:
// without one it prints help, with an unknown one it fails.
func groupAction(c *cli.Context) error {
	if c.Args().Present() {
		return usagef("unknown command %q (run '%s --help' for the list)", c.Args().First(), c.Command.HelpName)
	}
	return cli.ShowSubcommandHelp(c)
}

// sliceValue returns the values of string slice flag name given after the
// command or before it, the nearest winning.
func sliceValue(c *cli.Context, name string) []string {
	for _, cc := range c.Lineage() {
		if v := cc.StringSlice(name); len(v) > 0 {
			return v
		}
	}
	return nil
}

// flagOrConfig returns the flag's list if given, else the config's.
func flagOrConfig(flag, config []string) []string {
	if len(flag) > 0 {
		return flag
	}
	return config
}

// flagValue returns the value of string flag name given after the command
// or before it, the nearest winning.
func flagValue(c *cli.Context, name string) string {
	for _, cc := range c.Lineage() {
		if v := cc.String(name); v != "" {
			return v
		}
	}
	return ""
}

// ptr returns a pointer to v: an option that may be left unset.
func ptr[T any](v T) *T { return &v }

// explicitFlag returns the value of string flag name given on the command
// line, before the command's name or after it; "" if it is not given. Given
// at two levels with different values, it is a usage error: neither is
// taken for the other.
func explicitFlag(c *cli.Context, name string) (string, error) {
	v := ""
	for _, cc := range c.Lineage() {
		switch w := cc.String(name); {
		case w == "" || w == v:
		case v == "":
			v = w
		default:
			return "", usagef("--%s given twice, as %q and %q: give it once", name, v, w)
		}
	}
	return v, nil
}

// durationFlag is explicitFlag for a duration flag.
func durationFlag(c *cli.Context, name string) (time.Duration, error) {
	var v time.Duration
	for _, cc := range c.Lineage() {
		switch w := cc.Duration(name); {
		case w == 0 || w == v:
		case v == 0:
			v = w
		default:
			return 0, usagef("--%s given twice, as %s and %s: give it once", name, v, w)
		}
	}
	return v, nil
}

// errUsage marks a usage error: the command line asks for something the
// command cannot do as given (exit code 2).
var errUsage = errors.New("usage error")

// usageErr is an error of the command line; it unwraps to errUsage and to
// its cause, and reads as its message alone.
type usageErr struct{ err error }

func (u usageErr) Error() string   { return u.err.Error() }
func (u usageErr) Unwrap() []error { return []error{errUsage, u.err} }

// usagef is fmt.Errorf for a usage error.
func usagef(format string, args ...any) error {
	return usageErr{fmt.Errorf(format, args...)}
}
