package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/urfave/cli/v2"
)

// verifyOptions are the flags of backup verify.
type verifyOptions struct {
	deep, offline bool
}

func verifyBackup(e *env, c *cli.Context, cluster, id string) error {
	return runVerify(c.Context, e, cluster, id, verifyOptions{deep: c.Bool("deep"), offline: c.Bool("offline")})
}

// runVerify checks backup id layer by layer, as far as vopts and the keys
// at hand allow.
func runVerify(ctx context.Context, e *env, cluster, id string, vopts verifyOptions) error {
	pub, err := e.publicKey()
	if err != nil {
		return err
	}
	opts := backup.VerifyOptions{PublicKey: pub, Deep: vopts.deep}
	checks := []string{"signature", "object hash"}
	if !vopts.offline {
		ids, err := e.identities(ctx)
		if err != nil {
			return fmt.Errorf("%w (or use --offline to check without it)", err)
		}
		opts.Identities = ids
		checks = append(checks, "outer layer")
		if opts.Deep {
			checks = append(checks, "inner header")
		}
	}
	if err := backup.Verify(ctx, e.repo, cluster, id, opts); err != nil {
		return err
	}
	if m, err := backup.Describe(ctx, e.repo, cluster, id); err == nil && !m.Bound() {
		e.log.Warn("manifest unbound: it names no location, so it would verify wherever it is copied", "backup", id,
			"note", "written before manifests named their location; 'backup copy' makes a bound copy")
	}
	if e.g.json {
		return writeJSON(e.stdout, struct {
			ID      string   `json:"backup_id"`
			Cluster string   `json:"cluster_id"`
			Checks  []string `json:"checks"`
		}{id, cluster, checks})
	}
	_, err = fmt.Fprintf(e.stdout, "%s of cluster %s: OK (%s)\n", id, cluster, strings.Join(checks, ", "))
	return err
}
