package scheduler

import (
	"bytes"
	"context"
	"crypto/ed25519"
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
	// Signature is an Ed25519 signature, by the manifest signing key, of
	// the record without it (see recordSigningBytes): a record edited in
	// the store, a drill marked passed, say, does not verify.
	Signature []byte `json:"signature,omitempty"`
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

// ErrRecordUnverified: a run record's signature is missing or does not
// verify; its contents cannot be trusted.
var ErrRecordUnverified = errors.New("run record does not verify (edited in the store?)")

// recordDomain separates run-record signatures from manifest signatures
// made with the same key.
const recordDomain = "hsmbackup run record v1\n"

func recordSigningBytes(r *RunRecord) ([]byte, error) {
	c := *r
	c.Signature = nil
	b, err := json.Marshal(&c)
	if err != nil {
		return nil, err
	}
	return append([]byte(recordDomain), b...), nil
}

func runKey(prefix, cluster, kind string) string {
	return prefix + "scheduler/runs/" + cluster + "/" + kind + ".json"
}

// readRun reads a job's run record; nil if there is none or it does
// not parse (it is then rewritten by the next run). With pub, a record
// whose signature does not verify is an error wrapping
// ErrRecordUnverified.
func readRun(ctx context.Context, st store.Store, prefix, cluster, kind string, pub ed25519.PublicKey) (*RunRecord, error) {
	r, err := readRunOnce(ctx, st, prefix, cluster, kind, pub)
	for try := 0; try < 3 && errors.Is(err, store.ErrConflict); try++ {
		// Rewritten while read (its replica finished a run): read the
		// new one.
		r, err = readRunOnce(ctx, st, prefix, cluster, kind, pub)
	}
	return r, err
}

func readRunOnce(ctx context.Context, st store.Store, prefix, cluster, kind string, pub ed25519.PublicKey) (*RunRecord, error) {
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
	return parseRun(b, cluster, kind, pub)
}

// parseRun reads b as the run record of cluster's kind of job: nil if it
// is not one (unreadable, too large, another format or job), an error
// wrapping ErrRecordUnverified if pub is set and its signature does not
// verify.
func parseRun(b []byte, cluster, kind string, pub ed25519.PublicKey) (*RunRecord, error) {
	var r RunRecord
	if len(b) > maxRunRecord || strictjson.Unmarshal(b, &r) != nil || r.Format != runRecordFormat ||
		r.Cluster != cluster || r.Kind != kind {
		return nil, nil
	}
	if pub != nil {
		msg, err := recordSigningBytes(&r)
		if err != nil || len(r.Signature) != ed25519.SignatureSize || !ed25519.Verify(pub, msg, r.Signature) {
			return nil, fmt.Errorf("%s %s of cluster %s: %w", kind, "run record", cluster, ErrRecordUnverified)
		}
	}
	return &r, nil
}

// writeRun stores r as its job's run record, signed with priv (if set),
// carrying over the last success and the failures of the record before
// it if that one verifies.
func writeRun(ctx context.Context, st store.Store, prefix string, r *RunRecord, priv ed25519.PrivateKey) error {
	var pub ed25519.PublicKey
	if priv != nil {
		pub = priv.Public().(ed25519.PublicKey)
	}
	prev, err := readRun(ctx, st, prefix, r.Cluster, r.Kind, pub)
	if errors.Is(err, ErrRecordUnverified) {
		prev, err = nil, nil // its history is not carried over
	}
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
	r.Signature = nil
	if priv != nil {
		msg, err := recordSigningBytes(r)
		if err != nil {
			return err
		}
		r.Signature = ed25519.Sign(priv, msg)
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
