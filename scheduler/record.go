package scheduler

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hsmbackup/hsmbackup/internal/strictjson"
	"github.com/hsmbackup/hsmbackup/store"
)

// The kinds of job the scheduler runs for a cluster.
const (
	KindBackup = "backup"
	KindDrill  = "drill"
)

// RunRecord is the result of the last run of one job of one cluster, kept
// in the store (scheduler/runs/CLUSTER/KIND.json) by the replica that
// held the slot's lease, so that any machine can report it.
type RunRecord struct {
	Format   string    `json:"format"`
	Cluster  string    `json:"cluster"`
	Kind     string    `json:"kind"`
	Slot     time.Time `json:"slot"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	OK       bool      `json:"ok"`
	// Error is why the run failed; it never holds a secret.
	Error string `json:"error,omitempty"`
	// BackupID is the backup taken, or the one a drill restored.
	BackupID string `json:"backup_id,omitempty"`
	Bytes    int64  `json:"bytes,omitempty"`
	// RestoreSeconds is a drill's measured restore time (its RTO);
	// Users and Keys what it found matching the backup's inventory.
	RestoreSeconds float64 `json:"restore_seconds,omitempty"`
	Users          int     `json:"users,omitempty"`
	Keys           int     `json:"keys,omitempty"`
	// Holder is the replica that ran it.
	Holder string `json:"holder"`
	// LastSuccess is when a run of this job last succeeded.
	LastSuccess *time.Time `json:"last_success,omitempty"`
	// Failures are the latest failures, newest first.
	Failures []Failure `json:"failures,omitempty"`
}

// Failure is one failed run.
type Failure struct {
	At    time.Time `json:"at"`
	Error string    `json:"error"`
}

const (
	runRecordFormat = "hsmbackup-run-v1"
	maxRunRecord    = 64 << 10
	keptFailures    = 5
	maxErrorText    = 500
)

func runKey(prefix, cluster, kind string) string {
	return prefix + "scheduler/runs/" + cluster + "/" + kind + ".json"
}

// readRun reads a job's run record; nil if there is none or it does
// not parse (it is then rewritten by the next run).
func readRun(ctx context.Context, st store.Store, prefix, cluster, kind string) (*RunRecord, error) {
	rc, err := st.Get(ctx, runKey(prefix, cluster, kind))
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read run record: %w", err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxRunRecord+1))
	if err != nil {
		return nil, fmt.Errorf("read run record: %w", err)
	}
	var r RunRecord
	if len(b) > maxRunRecord || strictjson.Unmarshal(b, &r) != nil || r.Format != runRecordFormat ||
		r.Cluster != cluster || r.Kind != kind {
		return nil, nil
	}
	return &r, nil
}

// writeRun stores r as its job's run record, carrying over the last
// success and the failures of the record before it.
func writeRun(ctx context.Context, st store.Store, prefix string, r *RunRecord) error {
	prev, err := readRun(ctx, st, prefix, r.Cluster, r.Kind)
	if err != nil {
		return err
	}
	r.Format = runRecordFormat
	if len(r.Error) > maxErrorText {
		r.Error = r.Error[:maxErrorText] + "…"
	}
	if prev != nil {
		r.LastSuccess, r.Failures = prev.LastSuccess, prev.Failures
	}
	if r.OK {
		t := r.Finished
		r.LastSuccess = &t
	} else {
		r.Failures = append([]Failure{{At: r.Finished, Error: r.Error}}, r.Failures...)
		if len(r.Failures) > keptFailures {
			r.Failures = r.Failures[:keptFailures]
		}
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := st.Put(ctx, runKey(prefix, r.Cluster, r.Kind), bytes.NewReader(b), store.PutOptions{}); err != nil {
		return fmt.Errorf("write run record: %w", err)
	}
	return nil
}
