package scheduler

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"time"

	"github.com/hsmbackup/hsmbackup/backup"
)

// Colour is a cluster's state at a glance.
type Colour string

const (
	// Green: the newest READY backup covers the last slot and the last
	// drill (if any) succeeded.
	Green Colour = "green"
	// Amber: a slot's backup is due and may be under way, or the last
	// run failed while the last slot is still covered.
	Amber Colour = "amber"
	// Red: a slot went without a backup for longer than its grace, or
	// the last drill failed.
	Red Colour = "red"
)

// ClusterStatus is one cluster's readiness, from the store alone.
type ClusterStatus struct {
	Cluster  string `json:"cluster"`
	Schedule string `json:"schedule,omitempty"`
	// PeriodSeconds is the time between the schedule's last two slots.
	PeriodSeconds float64 `json:"period_seconds,omitempty"`
	// NewestReady and NewestBackup are the newest READY backup's.
	NewestReady  *time.Time `json:"newest_ready,omitempty"`
	NewestBackup string     `json:"newest_backup,omitempty"`
	// RPOSeconds is the newest READY backup's age: what a loss now
	// would cost.
	RPOSeconds float64    `json:"rpo_seconds,omitempty"`
	LastSlot   *time.Time `json:"last_slot,omitempty"`
	NextRun    *time.Time `json:"next_run,omitempty"`
	// LastRun is the last scheduled backup run's record.
	LastRun *RunRecord   `json:"last_run,omitempty"`
	Drill   *DrillStatus `json:"drill,omitempty"`
	Colour  Colour       `json:"colour"`
	// Problems say why the cluster is not green.
	Problems []string `json:"problems,omitempty"`
}

// DrillStatus is a cluster's drill schedule and last result.
type DrillStatus struct {
	Schedule string     `json:"schedule"`
	NextRun  *time.Time `json:"next_run,omitempty"`
	Last     *RunRecord `json:"last,omitempty"`
}

// Grace is how long past its slot a backup may take before the cluster
// turns red: a quarter of the period, and at least two lease durations
// (time for a replica to die and another to take the slot over).
func Grace(period, lease time.Duration) time.Duration {
	return max(period/4, 2*lease)
}

// Collect reports the readiness of every cluster from the store: the
// newest READY backup of each (manifests checked with pub if given, so
// that a forged manifest does not pass for a backup), and the run
// records the scheduler's replicas left.
func Collect(ctx context.Context, repo backup.Repo, pub ed25519.PublicKey, clusters []Cluster, s Settings, now time.Time) ([]ClusterStatus, error) {
	l, err := backup.Scan(ctx, repo, backup.ListOptions{Filter: backup.Filter{State: backup.StateReady}, PublicKey: pub})
	if err != nil {
		return nil, fmt.Errorf("list backups: %w", err)
	}
	newest := map[string]*backup.Manifest{}
	for _, m := range l.Backups { // oldest first
		newest[m.ClusterID] = m
	}
	invalid := map[string][]backup.Invalid{}
	for _, inv := range l.Invalid {
		invalid[inv.ClusterID] = append(invalid[inv.ClusterID], inv)
	}
	prefix := repoPrefix(repo)
	out := make([]ClusterStatus, 0, len(clusters))
	for _, c := range clusters {
		cs := ClusterStatus{Cluster: c.ID, Colour: Green}
		if m := newest[c.ID]; m != nil {
			t := m.Created
			cs.NewestReady, cs.NewestBackup = &t, m.ID
			cs.RPOSeconds = now.Sub(t).Seconds()
		}
		var unverified []string
		cs.LastRun, err = readRun(ctx, repo.Store, prefix, c.ID, KindBackup, pub)
		if errors.Is(err, ErrRecordUnverified) {
			unverified, err = append(unverified, "the backup run record does not verify (edited in the store?)"), nil
		}
		if err != nil {
			return nil, err
		}
		if !c.Backup.IsZero() {
			cs.Schedule = c.Backup.Spec()
			assess(&cs, c.Backup, s, now)
		}
		for _, p := range unverified {
			if cs.Colour == Green {
				cs.Colour = Amber
			}
			cs.Problems = append(cs.Problems, p)
		}
		for _, inv := range invalid[c.ID] {
			// Skipped by every listing and never pruned, but someone wrote
			// it: worth a look.
			if cs.Colour == Green {
				cs.Colour = Amber
			}
			cs.Problems = append(cs.Problems, "INVALID manifest "+inv.BackupID+" (skipped): "+inv.Reason)
		}
		if !c.Drill.IsZero() {
			d := &DrillStatus{Schedule: c.Drill.Spec(), NextRun: timePtr(Next(c.Drill, now))}
			d.Last, err = readRun(ctx, repo.Store, prefix, c.ID, KindDrill, pub)
			if errors.Is(err, ErrRecordUnverified) {
				// Whether the last drill passed is unknown: red.
				cs.Colour, err = Red, nil
				cs.Problems = append(cs.Problems, "the drill run record does not verify (edited in the store?): last drill unknown")
			}
			if err != nil {
				return nil, err
			}
			if d.Last != nil && !d.Last.OK {
				cs.Colour = Red
				cs.Problems = append(cs.Problems, "last drill failed: "+d.Last.Error)
			}
			cs.Drill = d
		}
		out = append(out, cs)
	}
	return out, nil
}

// assess colours a scheduled cluster by its newest READY backup against
// its last slot.
func assess(cs *ClusterStatus, sched Schedule, s Settings, now time.Time) {
	last := Last(sched, now)
	cs.NextRun = timePtr(Next(sched, now))
	if last.IsZero() {
		return
	}
	cs.LastSlot = timePtr(last)
	period := Next(sched, last).Sub(last)
	if prev := Last(sched, last.Add(-time.Second)); !prev.IsZero() {
		period = last.Sub(prev)
	}
	cs.PeriodSeconds = period.Seconds()
	covered := cs.NewestReady != nil && !cs.NewestReady.Before(last)
	switch {
	case covered:
		if cs.LastRun != nil && !cs.LastRun.OK {
			cs.Colour = Amber
			cs.Problems = append(cs.Problems, "last run failed: "+cs.LastRun.Error)
		}
	case now.Sub(last) < Grace(period, s.LeaseDuration):
		cs.Colour = Amber
		cs.Problems = append(cs.Problems, "backup of the "+last.UTC().Format(time.RFC3339)+" slot due")
	default:
		cs.Colour = Red
		p := "no READY backup since the " + last.UTC().Format(time.RFC3339) + " slot"
		if cs.LastRun != nil && !cs.LastRun.OK {
			p += "; last run failed: " + cs.LastRun.Error
		}
		cs.Problems = append(cs.Problems, p)
	}
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// repoPrefix is repo's prefix ending with a slash, or "".
func repoPrefix(repo backup.Repo) string {
	p := repo.Prefix
	if p != "" && p[len(p)-1] != '/' {
		p += "/"
	}
	return p
}
