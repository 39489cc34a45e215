package main

import (
	"context"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/store/storeurl"
)

// initCommand is backup init: it makes the store ready for backups. The
// commands that only read a store never create one, so that a mistyped
// store is an error and not an empty store.
func initCommand() *cli.Command {
	return &cli.Command{
		Name:  "init",
		Usage: "create the store: a file store's directory; with --create-bucket an S3 bucket",
		Description: "Creates the store of --store (or $" + storeEnv + ", or the config's store) if\n" +
			"it does not exist, and succeeds if it does. A file store is its directory\n" +
			"(mode 0700), which 'backup create' also makes. An S3 bucket must exist:\n" +
			"init checks that it does, and creates it only with --create-bucket. Every\n" +
			"other command fails on a missing store (exit status 3).",
		Flags: append([]cli.Flag{
			&cli.BoolFlag{Name: "create-bucket", Usage: "create a missing S3 bucket (in the region of the URL or $AWS_REGION)"},
		}, serviceFlags()...),
		OnUsageError: usageError,
		Action:       envAction("backup init", initStore),
	}
}

func initStore(c *cli.Context, e *env) error {
	return runInit(c.Context, e, c.Bool("create-bucket"))
}

// initResult is backup init's --json result.
type initResult struct {
	Store   string `json:"store"`
	Created bool   `json:"created"`
}

func runInit(ctx context.Context, e *env, createBucket bool) error {
	url, err := e.storeURL()
	if err != nil {
		return err
	}
	st, created, err := storeurl.Init(ctx, url, storeurl.Options{}, storeurl.InitOptions{CreateBucket: createBucket})
	if err != nil {
		return err
	}
	name := url
	if sn, ok := store.As[fmt.Stringer](st); ok {
		name = sn.String() // file:///abs/dir
	}
	if e.g.json {
		return writeJSON(e.stdout, initResult{Store: name, Created: created})
	}
	if created {
		_, err = fmt.Fprintf(e.stdout, "created store %s\n", name)
	} else {
		_, err = fmt.Fprintf(e.stdout, "store %s exists\n", name)
	}
	return err
}
