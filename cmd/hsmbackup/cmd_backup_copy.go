package main

import (
	"fmt"
	"strings"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/store/storeurl"
	"github.com/hsmbackup/hsmbackup/wrap"
	"github.com/urfave/cli/v2"
)

func copyBackup(e *env, c *cli.Context, cluster, id string) error {
	to := c.String("to")
	if to == "" {
		return fmt.Errorf("--to is required (run '%s --help')", c.Command.HelpName)
	}
	ids, err := e.identities(c.Context)
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
	for _, p := range c.StringSlice("to-hpke") {
		r, err := wrap.LoadHPKERecipient(p)
		if err != nil {
			return err
		}
		recipients = append(recipients, r)
	}
	switch p := c.String("to-keyring"); {
	case p != "":
		dk, err := wrap.LoadKeyring(p)
		if err != nil {
			return err
		}
		recipients = append(recipients, dk)
	case len(recipients) == 0:
		if recipients, err = e.recipients(c.Context); err != nil {
			return err
		}
	}
	dst, err := storeurl.Open(to, storeurl.Options{})
	if err != nil {
		return err
	}
	m, err := backup.Copy(c.Context, e.repo, cluster, id, backup.Repo{Store: e.prog.wrap(dst)}, backup.CopyOptions{
		PublicKey: pub, Identities: ids, Recipients: recipients, SigningKey: key,
	})
	if err != nil {
		return err
	}
	if wantJSON(c) {
		return writeJSON(c.App.Writer, summarize(m))
	}
	_, err = fmt.Fprintf(c.App.Writer, "copied %s to %s as %s (outer layer: %s)\n", id, to, m.ID, strings.Join(m.Recipients, "; "))
	return err
}
