package main

import (
	"cmp"
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/store/storeurl"
	"github.com/hsmbackup/hsmbackup/wrap"
	"github.com/urfave/cli/v2"
)

// copyOptions are the flags of backup copy.
type copyOptions struct {
	to        string   // the destination store's URL
	toKeyring string   // a keyring file to wrap the copy to
	toHPKE    []string // HPKE public key files to wrap the copy to
}

func copyBackup(e *env, c *cli.Context, cluster, id string) error {
	opts := copyOptions{to: c.String("to"), toKeyring: c.String("to-keyring"), toHPKE: c.StringSlice("to-hpke")}
	if opts.to == "" {
		return fmt.Errorf("--to is required (run '%s --help')", c.Command.HelpName)
	}
	return runCopy(c.Context, e, cluster, id, opts)
}

// runCopy copies backup id into the store of opts.to, its outer layer
// re-wrapped to the keys opts names (default: the keys new backups are
// wrapped to).
func runCopy(ctx context.Context, e *env, cluster, id string, opts copyOptions) error {
	to := opts.to
	if from := cmp.Or(e.g.store, e.cfg.Store); sameStore(from, to) {
		return fmt.Errorf("--to %s is the store the backup is in (%s): a copy goes to another store, as to another region; a second copy in one store protects against nothing", to, from)
	}
	ids, err := e.identities(ctx)
	if err != nil {
		return err
	}
	pub, err := e.publicKey()
	if err != nil {
		return err
	}
	key, err := e.signingKey()
	if err != nil {
		return err
	}
	var recipients []wrap.Recipient
	for _, p := range opts.toHPKE {
		r, err := wrap.LoadHPKERecipient(p)
		if err != nil {
			return err
		}
		recipients = append(recipients, r)
	}
	switch p := opts.toKeyring; {
	case p != "":
		dk, err := wrap.LoadKeyring(p)
		if err != nil {
			return err
		}
		recipients = append(recipients, dk)
	case len(recipients) == 0:
		if recipients, err = e.recipients(ctx); err != nil {
			return err
		}
	}
	dst, err := storeurl.Open(to, storeurl.Options{Create: true}) // a copy makes its store, as backup create does
	if err != nil {
		return err
	}
	m, copied, err := backup.CopyOnce(ctx, e.repo, cluster, id, backup.Repo{Store: e.prog.wrap(dst)}, backup.CopyOptions{
		PublicKey: pub, Identities: ids, Recipients: recipients, SigningKey: key,
	})
	if err != nil {
		return err
	}
	if !copied {
		e.log.Info("already copied", "backup", id, "copy", m.ID, "to", to)
	}
	if e.g.json {
		return writeJSON(e.stdout, struct {
			backupSummary
			Skipped bool `json:"skipped"`
		}{summarize(m), !copied})
	}
	if !copied {
		_, err = fmt.Fprintf(e.stdout, "skipped %s: %s already holds its copy %s (outer layer: %s)\n", id, to, m.ID, strings.Join(m.Recipients, "; "))
		return err
	}
	_, err = fmt.Fprintf(e.stdout, "copied %s to %s as %s (outer layer: %s)\n", id, to, m.ID, strings.Join(m.Recipients, "; "))
	return err
}

// sameStore reports whether store URLs a and b name the same store: the
// same directory, or the same bucket and prefix.
func sameStore(a, b string) bool {
	norm := func(s string) string {
		scheme, rest, ok := strings.Cut(s, "://")
		if !ok {
			return s
		}
		switch scheme {
		case "file":
			if abs, err := filepath.Abs(rest); err == nil {
				return "file://" + abs
			}
		case "s3":
			if u, err := url.Parse(s); err == nil {
				return "s3://" + u.Host + "/" + strings.Trim(filepath.Clean("/"+u.Path), "/")
			}
		}
		return s
	}
	return a != "" && norm(a) == norm(b)
}
