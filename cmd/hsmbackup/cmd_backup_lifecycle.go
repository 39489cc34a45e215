package main

import (
	"errors"
	"fmt"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/urfave/cli/v2"
)

// change runs a lifecycle change and prints the backup's new state: the
// run function of delete, restore-deleted, tag and set-never-expires.
func change(e *env, verb string, fn func(backup.LifecycleOptions) (*backup.Manifest, error)) error {
	key, err := e.signingKey()
	if err != nil {
		return err
	}
	m, err := fn(backup.LifecycleOptions{SigningKey: key})
	if err != nil {
		return err
	}
	if e.g.json {
		return writeJSON(e.stdout, summarize(m))
	}
	_, err = fmt.Fprintf(e.stdout, "%s %s: %s, expiry %s, tags %s\n", verb, m.ID, m.State, expiryText(m), tagsText(m.Tags))
	return err
}

func deleteBackup(e *env, c *cli.Context, cluster, id string) error {
	return change(e, "deleted", func(o backup.LifecycleOptions) (*backup.Manifest, error) {
		return backup.Delete(c.Context, e.repo, cluster, id, o)
	})
}

func restoreDeleted(e *env, c *cli.Context, cluster, id string) error {
	return change(e, "restored", func(o backup.LifecycleOptions) (*backup.Manifest, error) {
		return backup.RestoreDeleted(c.Context, e.repo, cluster, id, o)
	})
}

func tagBackup(e *env, c *cli.Context, cluster, id string) error {
	set, err := parseTags(c.StringSlice("set"))
	if err != nil {
		return err
	}
	if len(set) == 0 && len(c.StringSlice("remove")) == 0 {
		return errors.New("nothing to do: give --set KEY=VALUE or --remove KEY")
	}
	return change(e, "tagged", func(o backup.LifecycleOptions) (*backup.Manifest, error) {
		return backup.SetTags(c.Context, e.repo, cluster, id, set, c.StringSlice("remove"), o)
	})
}

func setNeverExpires(e *env, c *cli.Context, cluster, id string) error {
	verb := "pinned"
	if c.Bool("off") {
		verb = "unpinned"
	}
	return change(e, verb, func(o backup.LifecycleOptions) (*backup.Manifest, error) {
		return backup.SetNeverExpires(c.Context, e.repo, cluster, id, !c.Bool("off"), o)
	})
}
