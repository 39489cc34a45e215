package main

import (
	"errors"
	"fmt"
	"maps"
	"strings"

	"github.com/hsmbackup/hsmbackup/backup"
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

func createBackup(s *service, c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	id := c.String("cluster")
	if id == "" {
		return fmt.Errorf("--cluster is required (run '%s --help')", c.Command.HelpName)
	}
	cc, err := s.cluster(id)
	if err != nil {
		return err
	}
	tags, err := parseTags(c.StringSlice("tag"))
	if err != nil {
		return err
	}
	if len(cc.Tags) > 0 { // the config's tags, then the flags'
		merged := maps.Clone(cc.Tags)
		maps.Copy(merged, tags)
		if err := backup.ValidateTags(merged); err != nil {
			return fmt.Errorf("cluster %s: tags: %w", id, err)
		}
		tags = merged
	}
	days := c.Int("retention-days")
	if days != 0 {
		if c.Bool("never-expires") {
			return errors.New("--never-expires and --retention-days exclude each other: a pinned backup has no retention")
		}
		if err := (backup.Policy{RetentionDays: days}).Validate(); err != nil {
			return err
		}
	}
	ctx := c.Context
	recipients, err := s.recipients(ctx)
	if err != nil {
		return err
	}
	key, err := s.signingKey()
	if err != nil {
		return err
	}
	s.removeStaleUploads(ctx)
	member, health, err := s.pickMember(ctx, id)
	if err != nil {
		return err
	}
	defer member.Close()
	defer member.Logout(ctx) //nolint:errcheck // best effort: the session also ends with the connection
	certs, err := member.Certificates(ctx)
	if err != nil {
		return fmt.Errorf("read cluster certificates: %w", err)
	}
	m, err := backup.Create(ctx, member, s.repo, backup.CreateOptions{
		ClusterID: id, Recipients: recipients, SigningKey: key, Tags: tags,
		NeverExpires: c.Bool("never-expires"), RetentionDays: days,
		ClusterCertificate: certs.Cluster, CustomerCA: certs.CustomerCA,
	})
	if err != nil {
		return err
	}
	s.log.Info("backup created", "backup", m.ID, "cluster", id, "serial", health.Serial, "bytes", m.ObjectSize)
	if wantJSON(c) {
		return writeJSON(c.App.Writer, summarize(m))
	}
	_, err = fmt.Fprintf(c.App.Writer, "created %s: cluster %s, from HSM %s, %s stored, sha256 %s\n",
		m.ID, m.ClusterID, m.Source.Serial, sizeText(m.ObjectSize), m.ObjectSHA256)
	return err
}
