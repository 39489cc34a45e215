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
			"other command fails on a missing store (exit status 3).\n\n" +
			"With --object-lock the store must be able to lock backups (S3 Object Lock,\n" +
			"for object_lock and 'backup create --lock-mode'): a bucket made is made\n" +
			"with object lock (which S3 turns on only when a bucket is made), an\n" +
			"existing bucket without it is refused, and so is a file store.",
		Flags: append([]cli.Flag{
			&cli.BoolFlag{Name: "create-bucket", Usage: "create a missing S3 bucket (in the region of the URL or $AWS_REGION)"},
			&cli.BoolFlag{Name: "object-lock", Usage: "require a store that can lock backups (S3 Object Lock): a bucket --create-bucket makes is made with object lock, and an existing bucket must have it"},
		}, serviceFlags()...),
		OnUsageError: usageError,
		Action:       envAction("backup init", initStore),
	}
}

func initStore(c *cli.Context, e *env) error {
	return runInit(c.Context, e, storeurl.InitOptions{CreateBucket: c.Bool("create-bucket"), ObjectLock: c.Bool("object-lock")})
}

// initResult is backup init's --json result.
type initResult struct {
	Store      string `json:"store"`
	Created    bool   `json:"created"`
	ObjectLock bool   `json:"object_lock"` // the store can lock objects (checked: --object-lock)
}

func runInit(ctx context.Context, e *env, opts storeurl.InitOptions) error {
	url, err := e.storeURL()
	if err != nil {
		return err
	}
	st, created, err := storeurl.Init(ctx, url, storeurl.Options{}, opts)
	if err != nil {
		return err
	}
	name := url
	if sn, ok := store.As[fmt.Stringer](st); ok {
		name = sn.String() // file:///abs/dir
	}
	if e.g.json {
		return writeJSON(e.stdout, initResult{Store: name, Created: created, ObjectLock: opts.ObjectLock})
	}
	lock := ""
	if opts.ObjectLock {
		lock = ", with object lock"
	}
	if created {
		_, err = fmt.Fprintf(e.stdout, "created store %s%s\n", name, lock)
	} else {
		_, err = fmt.Fprintf(e.stdout, "store %s exists%s\n", name, lock)
	}
	return err
}
