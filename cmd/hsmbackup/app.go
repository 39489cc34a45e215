package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/urfave/cli/v2"
)

// version is the CLI's version; release builds set it with
// -ldflags "-X main.version=…".
var version = "dev"

// newApp builds the command-line application. It writes results to
// stdout, and logs (log/slog) and progress bars to stderr; errors are
// returned to main, which prints them. It never exits the process.
func newApp(stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:        "hsmbackup",
		Usage:       "back up, verify and restore HSM clusters",
		Description: appDescription + "\n\nEXIT STATUS:\n" + exitStatusText(),
		Version:     version,
		Flags: append([]cli.Flag{
			&cli.BoolFlag{
				Name:  "json",
				Usage: "print machine-readable JSON instead of text (commands that support it)",
			},
			configFlag(),
			storeFlag(),
			timeoutFlag(),
		}, logFlags()...), // logging.go
		Commands: []*cli.Command{
			demoCommand(),
			hsmCommand(),
			clusterCommand(),
			keysCommand(),
			usersCommand(),
			masterkeyCommand(),
			signingKeyCommand(),
			backupCommand(),
			restoreCommand(),
			schedulerCommand(),
			completionCommand(),
			manCommand(),
		},
		Action:               rootAction,
		OnUsageError:         usageError,
		EnableBashCompletion: true,
		Writer:               stdout,
		ErrWriter:            stderr,
		// Only main exits: keep urfave/cli from calling os.Exit on
		// errors that carry an exit code.
		ExitErrHandler: func(*cli.Context, error) {},
	}
	addExamples(app)
	return app
}

// rootAction runs when no command matched: bare "hsmbackup" prints help,
// anything else is an unknown command.
func rootAction(c *cli.Context) error {
	if c.Args().Present() {
		return usagef("unknown command %q (run 'hsmbackup help' for the list)", c.Args().First())
	}
	return cli.ShowAppHelp(c)
}

// usageError turns a flag-parsing error into a returned error, so that it
// is reported once, by main, instead of being printed with the full help.
func usageError(c *cli.Context, err error, isSubcommand bool) error {
	if isSubcommand {
		// "backup create", as action names a command in its errors.
		return usagef("%s: %w (run '%s --help')", strings.TrimPrefix(c.Command.HelpName, c.App.Name+" "), err, c.Command.HelpName)
	}
	return usagef("%w (run '%s --help')", err, c.App.Name)
}

// action runs a command's function and names the command in its error.
func action(name string, fn func(*cli.Context) error) cli.ActionFunc {
	return func(c *cli.Context) error {
		if err := fn(c); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	}
}

// envAction is action for a command that takes no positional arguments and
// works with an env: fn gets it, and it is closed after.
func envAction(name string, fn func(c *cli.Context, e *env) error) cli.ActionFunc {
	return action(name, func(c *cli.Context) error {
		if err := noArgs(c); err != nil {
			return err
		}
		e, err := newEnv(c)
		if err != nil {
			return err
		}
		defer e.close()
		return fn(c, e)
	})
}
