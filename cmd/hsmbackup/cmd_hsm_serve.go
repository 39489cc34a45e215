package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"

	"github.com/hsmbackup/hsmbackup/hsmcore/device"
	"github.com/hsmbackup/hsmbackup/hsmcore/server"
	"github.com/urfave/cli/v2"
)

// minTestIterations bounds --password-iterations from below: cheap enough
// for tests, not so cheap that a slip makes passwords free to guess.
const minTestIterations = 1000

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "serve an HSM over HTTP/2 on mutual TLS 1.3 until interrupted",
		Description: "Opens the HSM in --device and serves it on --listen. Once listening it\n" +
			"prints one line, \"listening on HOST:PORT\", with the real address (so\n" +
			"--listen 127.0.0.1:0 picks a free port). Logs go to stderr. SIGINT or\n" +
			"SIGTERM stops it gracefully: calls in flight finish (up to 10 s) and it\n" +
			"exits 0.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "device", Usage: "directory `DIR` of the HSM, as made by 'hsm manufacture'"},
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:2225", Usage: "`ADDR` to listen on"},
			&cli.IntFlag{
				Name:  "max-login-failures",
				Value: device.DefaultMaxLoginFailures,
				Usage: "wrong passwords in a row `N` that lock a user until a crypto officer unlocks it (0: never lock)",
			},
			logFormatFlag(), // also global (logging.go)
			logLevelFlag(),
			&cli.IntFlag{
				Name:   "password-iterations",
				Hidden: true,
				Usage: "TEST ONLY: PBKDF2 iterations `N` for passwords set while serving (0: hsmcore's default, " +
					fmt.Sprint(device.DefaultPasswordIterations) + "; else at least " + fmt.Sprint(minTestIterations) + "); lowering it weakens stored passwords",
			},
		},
		OnUsageError: usageError,
		Action:       action("hsm serve", serve),
	}
}

func serve(c *cli.Context) (err error) {
	stopsItself.Store(true) // a graceful stop of its own, logged
	if err := noArgs(c); err != nil {
		return err
	}
	if err := requireFlags(c, "device", "listen"); err != nil {
		return err
	}
	iter := c.Int("password-iterations")
	if iter != 0 && (iter < minTestIterations || iter > 10_000_000) {
		return fmt.Errorf("--password-iterations %d: want 0 or %d to 10000000", iter, minTestIterations)
	}
	maxFailures := c.Int("max-login-failures")
	if maxFailures < 0 || maxFailures > 1000 {
		return fmt.Errorf("--max-login-failures %d: want 0 to 1000", maxFailures)
	}
	if maxFailures == 0 {
		maxFailures = -1 // device.Options: never lock
	}
	format, level := logSettings(c, false)
	log, err := newLogger(c.App.ErrWriter, format, level)
	if err != nil {
		return err
	}
	dev, err := device.Open(c.String("device"), device.Options{PasswordIterations: iter, MaxLoginFailures: maxFailures})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := dev.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("close device: %w", cerr)
		}
	}()
	srv, err := server.New(server.Config{Device: dev, Logger: log})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", c.String("listen"))
	if err != nil {
		return err
	}
	id := dev.Identity()
	log.Info("serving", "serial", id.Serial, "class", id.Class, "cluster", dev.ClusterID(),
		"cluster_initialized", dev.ClusterInitialized(), "addr", ln.Addr().String())
	if _, err := fmt.Fprintf(c.App.Writer, "listening on %s\n", ln.Addr()); err != nil {
		ln.Close()
		return err
	}
	stopLog := context.AfterFunc(c.Context, func() { log.Info("shutting down", "serial", id.Serial) })
	defer stopLog()
	if err := srv.Serve(c.Context, ln); err != nil {
		return err
	}
	log.Info("stopped", "serial", id.Serial)
	return nil
}

// newLogger returns a slog logger writing to w in format at level.
func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}
