package main

import (
	"cmp"
	"io"
	"log/slog"
	"os"

	"github.com/urfave/cli/v2"
)

// logFlags are the global flags of output and logging: --quiet,
// --log-format and --log-level, given before the command's name. `hsm
// serve` takes the last two after its name too.
func logFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "no progress bars and no info logs: only results, warnings and errors"},
		logFormatFlag(),
		logLevelFlag(),
	}
}

// The flags have no Value, so that a command's own (hsm serve's) does not
// shadow the global one in flagValue's lookup; the defaults are applied by
// logSettings.
func logFormatFlag() cli.Flag {
	return &cli.StringFlag{Name: "log-format", Usage: "log `FORMAT` on stderr: text or json", DefaultText: "text; json with --json"}
}

func logLevelFlag() cli.Flag {
	return &cli.StringFlag{Name: "log-level", Usage: "log `LEVEL`: debug, info, warn or error", DefaultText: "info; warn with --quiet"}
}

// wantQuiet reports whether --quiet was given.
func wantQuiet(c *cli.Context) bool {
	for _, cc := range c.Lineage() {
		if cc.Bool("quiet") {
			return true
		}
	}
	return false
}

// logSettings returns the log format and level of the flags: the format
// defaults to JSON lines with --json and for the scheduler daemon, whose
// logs machines read, else text; the level to info, or
// warn with --quiet (which never lowers a level given).
func logSettings(c *cli.Context, json bool) (format, level string) {
	format = flagValue(c, "log-format")
	if format == "" && (json || c.Command.HelpName == c.App.Name+" scheduler run") {
		format = "json"
	}
	level = cmp.Or(flagValue(c, "log-level"), "info")
	if wantQuiet(c) {
		var lv slog.Level
		if lv.UnmarshalText([]byte(level)) == nil && lv < slog.LevelWarn {
			level = "warn"
		}
	}
	return cmp.Or(format, "text"), level
}

// newOutput sets up what a command draws and logs on stderr: progress
// bars on a terminal (none with --json or --quiet), and the logger, above
// the bars while they are drawn.
func newOutput(c *cli.Context, json bool) (*progress, *slog.Logger, error) {
	format, level := logSettings(c, json)
	prog := newProgress(c.Context, c.App.ErrWriter, json || wantQuiet(c))
	log, err := newLogger(prog.logTo(c.App.ErrWriter), format, level)
	if err != nil {
		return nil, nil, err
	}
	if c.App.ErrWriter == os.Stderr {
		notices.Store(&struct{ w io.Writer }{prog.logTo(os.Stderr)})
	}
	return prog, log, nil
}
