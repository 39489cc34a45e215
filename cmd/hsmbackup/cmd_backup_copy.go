package main

import (
	"context"
	"fmt"
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
	m, err := backup.Copy(ctx, e.repo, cluster, id, backup.Repo{Store: e.prog.wrap(dst)}, backup.CopyOptions{
		PublicKey: pub, Identities: ids, Recipients: recipients, SigningKey: key,
	})
	if err != nil {
		return err
	}
	if e.g.json {
		return writeJSON(e.stdout, summarize(m))
	}
	_, err = fmt.Fprintf(e.stdout, "copied %s to %s as %s (outer layer: %s)\n", id, to, m.ID, strings.Join(m.Recipients, "; "))
	return err
}
