package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/wrap"
	"github.com/urfave/cli/v2"
)

// parseTags parses KEY=VALUE flags.
func parseTags(kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	tags := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("tag %q: want KEY=VALUE", kv)
		}
		tags[k] = v
	}
	if err := backup.ValidateTags(tags); err != nil {
		return nil, err
	}
	return tags, nil
}

// createOptions are the flags of backup create.
type createOptions struct {
	cluster       string
	member        string // the member to back up; "" for the one PickMember chooses
	tags          []string
	neverExpires  bool
	retentionDays int
	lock          lockFlags // --lock-mode, --lock-days
}

func createBackup(e *env, c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	opts := createOptions{cluster: c.String("cluster"), member: c.String("member"), tags: c.StringSlice("tag"),
		neverExpires: c.Bool("never-expires"), retentionDays: c.Int("retention-days"),
		lock: lockFlags{mode: c.String("lock-mode"), days: c.Int("lock-days")}}
	if opts.cluster == "" {
		return fmt.Errorf("--cluster is required (run '%s --help')", c.Command.HelpName)
	}
	if c.IsSet("lock-mode") && opts.lock.mode == "" {
		return usagef("--lock-mode is empty: want GOVERNANCE or COMPLIANCE (run '%s --help')", c.Command.HelpName)
	}
	if c.IsSet("lock-days") && (opts.lock.days < 1 || opts.lock.days > backup.MaxLockDays) {
		return usagef("--lock-days %d: want 1 to %d (run '%s --help')", opts.lock.days, backup.MaxLockDays, c.Command.HelpName)
	}
	return runCreate(c.Context, e, opts)
}

// runCreate backs up cluster opts.cluster from the member
// cluster.PickMember chooses, or opts.member: if the members' states
// differ, only a member named is backed up.
func runCreate(ctx context.Context, e *env, opts createOptions) error {
	m, err := takeBackup(ctx, e, nil, opts, nil)
	if err != nil {
		return err
	}
	if e.g.json {
		return writeJSON(e.stdout, summarize(m))
	}
	_, err = fmt.Fprintf(e.stdout, "created %s: cluster %s, from HSM %s, %s stored, sha256 %s\n",
		m.ID, m.ClusterID, m.Source.Serial, sizeText(m.ObjectSize), m.ObjectSHA256)
	if err == nil && m.Lock != nil {
		_, err = fmt.Fprintf(e.stdout, "locked %s: %s until %s\n", m.ID, m.Lock.Mode, m.Lock.Until.Format(time.RFC3339))
	}
	return err
}

// backupKeys are the keys a backup is made with: the master keys it is
// wrapped to and the manifest signing key.
type backupKeys struct {
	recipients []wrap.Recipient
	signing    ed25519.PrivateKey
}

// serviceKeys reads the keys backups are made with.
func (e *env) serviceKeys(ctx context.Context) (backupKeys, error) {
	recipients, err := e.recipients(ctx)
	if err != nil {
		return backupKeys{}, err
	}
	key, err := e.signingKey()
	if err != nil {
		return backupKeys{}, err
	}
	return backupKeys{recipients, key}, nil
}

// takeBackup is one backup of a configured cluster, as backup create and
// the scheduler take it: with keys, or if nil the env's, read once the
// options are checked. commit, if set, is called before the manifest is
// written (backup.CreateOptions.BeforeCommit).
func takeBackup(ctx context.Context, e *env, keys *backupKeys, opts createOptions, commit func(context.Context) error) (*backup.Manifest, error) {
	id := opts.cluster
	cc, err := e.cluster(id)
	if err != nil {
		return nil, err
	}
	tags, err := parseTags(opts.tags)
	if err != nil {
		return nil, err
	}
	if len(cc.Tags) > 0 { // the config's tags, then the flags'
		merged := maps.Clone(cc.Tags)
		maps.Copy(merged, tags)
		if err := backup.ValidateTags(merged); err != nil {
			return nil, fmt.Errorf("cluster %s: tags: %w", id, err)
		}
		tags = merged
	}
	days := opts.retentionDays
	if days != 0 {
		if opts.neverExpires {
			return nil, errors.New("--never-expires and --retention-days exclude each other: a pinned backup has no retention")
		}
		if err := (backup.Policy{RetentionDays: days}).Validate(); err != nil {
			return nil, err
		}
	}
	lock, err := e.objectLock(id, opts.lock, days, opts.neverExpires)
	if err != nil {
		return nil, err
	}
	if lock.Mode != "" {
		// Before any HSM is reached: a store that cannot lock fails now.
		if err := backup.CheckObjectLock(ctx, e.repo.Store); err != nil {
			return nil, err
		}
	}
	if keys == nil {
		k, err := e.serviceKeys(ctx)
		if err != nil {
			return nil, err
		}
		keys = &k
	}
	t, err := e.clusterTarget(id, true)
	if err != nil {
		return nil, err
	}
	e.removeStaleUploads(ctx)
	member, health, err := t.pick(ctx, e.log, opts.member)
	if err != nil {
		return nil, err
	}
	defer member.Close()
	defer member.Logout(ctx) //nolint:errcheck // best effort: the session also ends with the connection
	certs, err := member.Certificates(ctx)
	if err != nil {
		return nil, fmt.Errorf("read cluster certificates: %w", err)
	}
	m, err := backup.Create(ctx, member, e.repo, backup.CreateOptions{
		ClusterID: id, Recipients: keys.recipients, SigningKey: keys.signing, Tags: tags,
		NeverExpires: opts.neverExpires, RetentionDays: days, Lock: lock,
		ClusterCertificate: certs.Cluster, CustomerCA: certs.CustomerCA,
		BeforeCommit: commit,
	})
	if err != nil {
		return nil, err
	}
	e.log.Info("backup created", "backup", m.ID, "cluster", id, "serial", health.Serial, "bytes", m.ObjectSize)
	return m, nil
}
