package main

import (
	"fmt"
	"strings"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/urfave/cli/v2"
)

func verifyBackup(e *env, c *cli.Context, cluster, id string) error {
	pub, err := e.publicKey()
	if err != nil {
		return err
	}
	opts := backup.VerifyOptions{PublicKey: pub, Deep: c.Bool("deep")}
	checks := []string{"signature", "object hash"}
	if !c.Bool("offline") {
		ids, err := e.identities(c.Context)
		if err != nil {
			return fmt.Errorf("%w (or use --offline to check without it)", err)
		}
		opts.Identities = ids
		checks = append(checks, "outer layer")
		if opts.Deep {
			checks = append(checks, "inner header")
		}
	}
	if err := backup.Verify(c.Context, e.repo, cluster, id, opts); err != nil {
		return err
	}
	if wantJSON(c) {
		return writeJSON(c.App.Writer, struct {
			ID      string   `json:"backup_id"`
			Cluster string   `json:"cluster_id"`
			Checks  []string `json:"checks"`
		}{id, cluster, checks})
	}
	_, err = fmt.Fprintf(c.App.Writer, "%s of cluster %s: OK (%s)\n", id, cluster, strings.Join(checks, ", "))
	return err
}
