package main

import (
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/store"
)

// objectLockConfig is a cluster entry's object_lock: every backup of the
// cluster is stored under S3 Object Lock retention in Mode for Days days
// from its creation, and at least as long as its retention (docs/CLI.md,
// "Object lock"; docs/STORAGE.md).
type objectLockConfig struct {
	Mode string `yaml:"mode"` // GOVERNANCE or COMPLIANCE (any case)
	Days int    `yaml:"days"` // 1 to backup.MaxLockDays
}

// lockFlags are backup create's --lock-mode and --lock-days; the zero
// value of each is "not given".
type lockFlags struct {
	mode string
	days int
}

// lockMode parses a lock mode, in any case.
func lockMode(s string) (store.RetentionMode, bool) {
	switch m := store.RetentionMode(strings.ToUpper(s)); m {
	case store.Governance, store.Compliance:
		return m, true
	}
	return "", false
}

// objectLock returns the object lock of a new backup of cluster id: each
// of the flags (--lock-mode, --lock-days) over the cluster entry's
// object_lock setting of the same name (docs/CLI.md, "Precedence"); none
// if neither names a mode. The lock lasts at least the backup's retention:
// retentionDays, the backup's own (--retention-days; 0 for none), else its
// cluster's policy (the entry's retention.days, else the file's); it is
// extended to that, never refused. A backup that never expires keeps the
// lock as set.
//
// The scheduler's runs pass lockFlags{} (the config alone decides) and the
// backup's own retention, and hand the result to backup.CreateOptions.Lock.
func (e *env) objectLock(id string, f lockFlags, retentionDays int, neverExpires bool) (backup.ObjectLock, error) {
	var cfg objectLockConfig
	if cc := e.cfg.Clusters[id]; cc != nil && cc.ObjectLock != nil {
		cfg = *cc.ObjectLock
	}
	modeText, days := cfg.Mode, cfg.Days
	if f.mode != "" {
		modeText = f.mode
	}
	if f.days != 0 {
		days = f.days
	}
	switch {
	case modeText == "" && days == 0:
		return backup.ObjectLock{}, nil
	case modeText == "":
		return backup.ObjectLock{}, usagef("--lock-days needs a lock mode: give --lock-mode GOVERNANCE|COMPLIANCE, or set object_lock in cluster %s's config", id)
	case days == 0:
		return backup.ObjectLock{}, usagef("--lock-mode needs a number of days: give --lock-days N, or set object_lock in cluster %s's config", id)
	}
	mode, ok := lockMode(modeText)
	if !ok {
		return backup.ObjectLock{}, usagef("lock mode %q: want %s or %s", modeText, store.Governance, store.Compliance)
	}
	lock := backup.ObjectLock{Mode: mode, Days: days}
	if err := lock.Validate(); err != nil {
		return backup.ObjectLock{}, usagef("%v", err)
	}
	if neverExpires {
		return lock, nil
	}
	retention := retentionDays
	if retention == 0 {
		retention = e.clusterRetention(id).Days
	}
	if l := lock.Covering(retention); l.Days != lock.Days {
		e.log.Info("object lock extended to the backup's retention", "cluster", id, "lock_days", lock.Days, "retention_days", retention)
		lock = l
	}
	return lock, nil
}

// clusterRetention is cluster id's retention policy as the config sets
// it: the entry's retention, else the file's default (as prune reads it).
func (e *env) clusterRetention(id string) retentionConfig {
	if cc := e.cfg.Clusters[id]; cc != nil && cc.Retention != nil {
		return *cc.Retention
	}
	return e.cfg.Retention
}

// objectLockValue checks a setting under a cluster entry's object_lock
// (path clusters.ID.object_lock[.KEY]), whose node n has the right shape.
// It reports whether path was one.
func (k *checker) objectLockValue(n *yaml.Node, path string, parts []string) bool {
	if len(parts) < 3 || parts[0] != "clusters" || parts[2] != "object_lock" {
		return false
	}
	switch {
	case len(parts) == 3 && n.Kind == yaml.MappingNode:
		for _, req := range []string{"mode", "days"} {
			if !hasKey(n, req) {
				k.add(n, path, "%s is required", req)
			}
		}
	case len(parts) == 4 && parts[3] == "mode":
		if _, ok := lockMode(n.Value); !ok {
			k.add(n, path, "%q: want %s or %s", n.Value, store.Governance, store.Compliance)
		}
	case len(parts) == 4 && parts[3] == "days":
		var d int
		if n.Decode(&d) == nil && (d < 1 || d > backup.MaxLockDays) {
			k.add(n, path, "%d: want 1 to %d (a lock shorter than the cluster's retention is extended to it)", d, backup.MaxLockDays)
		}
	}
	return true
}
