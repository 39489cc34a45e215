package backup

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"maps"
	"sort"
	"time"

	"github.com/hsmbackup/hsmbackup/store"
)

// Lifecycle, as AWS CloudHSM's: a READY backup that is deleted goes to
// PENDING_DELETION and stays restorable for PendingDeletionPeriod
// (RestoreDeleted brings it back); Prune then makes it DELETED: the image
// object is removed and the manifest stays as a signed record of what
// existed. Prune also deletes READY backups past their retention.
//
// Every change re-signs the manifest and replaces it, only if it is still
// the version read (compare-and-swap on the store's ETag), so concurrent
// changes from several processes are never lost; a change is refused if
// the stored manifest's signature does not verify, so that a forged
// manifest is never given a valid signature.

// PendingDeletionPeriod is how long a deleted backup stays restorable.
const PendingDeletionPeriod = 7 * 24 * time.Hour

// Retention limits, as CloudHSM's backup retention policy.
const (
	MinRetentionDays = 7
	MaxRetentionDays = 379
)

// ErrState: the backup is not in a state that allows the change.
var ErrState = errors.New("not allowed in this state")

// LifecycleOptions are what every change needs.
type LifecycleOptions struct {
	// SigningKey re-signs the changed manifest; its public key checks the
	// stored one first.
	SigningKey ed25519.PrivateKey
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (o *LifecycleOptions) now() time.Time {
	if o.Now != nil {
		return o.Now().UTC().Round(0)
	}
	return time.Now().UTC().Round(0)
}

// maxUpdateAttempts bounds update's retries when the manifest changes
// under it.
const maxUpdateAttempts = 5

// update reads backup id of cluster, checks its signature, applies change
// and stores the re-signed manifest in its place, if the manifest is still
// the version it read (store.PutOptions.IfMatch); if another writer
// replaced it meanwhile, it starts again from the new version, so that no
// change is lost and change always judges the current state. If change
// returns an error nothing is written.
func update(ctx context.Context, repo Repo, cluster, id string, opts LifecycleOptions, change func(*Manifest) error) (*Manifest, error) {
	if len(opts.SigningKey) != ed25519.PrivateKeySize {
		return nil, errors.New("signing key is not an Ed25519 private key")
	}
	st := repo.Store
	key := repo.ObjectKey(cluster, id, ManifestObject)
	for attempt := 1; ; attempt++ {
		// The version first, then the bytes: if they differ, the Put
		// fails and the loop reads again.
		oi, err := st.Stat(ctx, key)
		if errors.Is(err, store.ErrNotFound) && attempt < maxUpdateAttempts {
			if _, err := describe(ctx, repo, cluster, id); err != nil {
				return nil, err
			}
			continue // it has just appeared
		}
		if err != nil {
			return nil, err
		}
		m, err := describe(ctx, repo, cluster, id)
		if err != nil {
			return nil, err
		}
		if err := m.Verify(opts.SigningKey.Public().(ed25519.PublicKey)); err != nil {
			return nil, err
		}
		before, err := m.Marshal()
		if err != nil {
			return nil, err
		}
		if err := change(m); err != nil {
			return nil, err
		}
		if err := m.Sign(opts.SigningKey); err != nil {
			return nil, err
		}
		b, err := m.Marshal()
		if err != nil {
			return nil, err
		}
		if bytes.Equal(b, before) {
			return m, nil // nothing changed
		}
		// In a bucket with object lock the Put adds a version: it is
		// locked as the backup is, so the record cannot be stripped.
		err = st.Put(ctx, key, bytes.NewReader(b), store.PutOptions{IfMatch: oi.ETag, Retention: manifestRetention(st, m)})
		switch {
		case err == nil:
			return m, nil
		case errors.Is(err, store.ErrConflict) && attempt < maxUpdateAttempts:
			continue
		}
		return nil, fmt.Errorf("write manifest: %w", err)
	}
}

// Delete moves a READY backup to PENDING_DELETION. It stays restorable
// with RestoreDeleted for PendingDeletionPeriod; Prune removes it after.
func Delete(ctx context.Context, repo Repo, cluster, id string, opts LifecycleOptions) (*Manifest, error) {
	now := opts.now()
	m, err := update(ctx, repo, cluster, id, opts, func(m *Manifest) error {
		if m.State != StateReady {
			return fmt.Errorf("%w: it is %s", ErrState, m.State)
		}
		m.State, m.DeletionRequested = StatePendingDeletion, maxTime(now, m.Created)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w", id, err)
	}
	return m, nil
}

// RestoreDeleted moves a PENDING_DELETION backup back to READY.
func RestoreDeleted(ctx context.Context, repo Repo, cluster, id string, opts LifecycleOptions) (*Manifest, error) {
	m, err := update(ctx, repo, cluster, id, opts, func(m *Manifest) error {
		if m.State != StatePendingDeletion {
			return fmt.Errorf("%w: it is %s, not %s", ErrState, m.State, StatePendingDeletion)
		}
		m.State, m.DeletionRequested = StateReady, time.Time{}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w", id, err)
	}
	return m, nil
}

// SetTags adds or replaces the tags in set and removes those in remove
// (removing an absent tag is not an error). The result must pass
// ValidateTags.
func SetTags(ctx context.Context, repo Repo, cluster, id string, set map[string]string, remove []string, opts LifecycleOptions) (*Manifest, error) {
	m, err := update(ctx, repo, cluster, id, opts, func(m *Manifest) error {
		if m.State == StateDeleted {
			return fmt.Errorf("%w: it is %s", ErrState, m.State)
		}
		tags := maps.Clone(m.Tags)
		if tags == nil {
			tags = map[string]string{}
		}
		maps.Copy(tags, set)
		for _, k := range remove {
			delete(tags, k)
		}
		if err := ValidateTags(tags); err != nil {
			return err
		}
		m.Tags = cloneTags(tags)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w", id, err)
	}
	return m, nil
}

// SetNeverExpires pins (never true) or unpins a backup. A pinned backup is
// never removed by retention; unpinning leaves it to the cluster's policy.
func SetNeverExpires(ctx context.Context, repo Repo, cluster, id string, never bool, opts LifecycleOptions) (*Manifest, error) {
	m, err := update(ctx, repo, cluster, id, opts, func(m *Manifest) error {
		if m.State == StateDeleted {
			return fmt.Errorf("%w: it is %s", ErrState, m.State)
		}
		m.NeverExpires = never
		if never {
			m.RetentionDays = 0
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w", id, err)
	}
	return m, nil
}

// Policy is a cluster's retention policy. A READY backup expires when it
// is older than RetentionDays and is not among the cluster's KeepLast
// newest READY backups; a backup's own retention_days, if set, replaces
// RetentionDays for it. Never-expires backups and the newest READY backup
// of a cluster never expire. RetentionDays 0 expires nothing by age.
type Policy struct {
	RetentionDays int
	KeepLast      int
}

// Validate checks the policy's ranges: RetentionDays 0 or 7 to 379,
// KeepLast ≥ 0.
func (p Policy) Validate() error {
	if p.RetentionDays != 0 && (p.RetentionDays < MinRetentionDays || p.RetentionDays > MaxRetentionDays) {
		return fmt.Errorf("retention of %d days: want %d to %d", p.RetentionDays, MinRetentionDays, MaxRetentionDays)
	}
	if p.KeepLast < 0 {
		return fmt.Errorf("keep-last %d: want 0 or more", p.KeepLast)
	}
	return nil
}

// PruneOptions are the options of Prune.
type PruneOptions struct {
	LifecycleOptions
	// ClusterID, if set, prunes only that cluster.
	ClusterID string
	// Policy returns the policy of a cluster.
	Policy func(cluster string) Policy
	// DryRun decides and reports, and changes nothing.
	DryRun bool
	// OrphanGrace is how old a stray object (see Orphans) must be for
	// Prune to remove it; younger ones are left alone (Orphans reports
	// them). Zero means
	// DefaultOrphanGrace; NoOrphanGrace removes every stray object found.
	OrphanGrace time.Duration
}

// NoOrphanGrace, as PruneOptions.OrphanGrace, removes stray objects
// however young: only when no backup is being written to the store.
const NoOrphanGrace time.Duration = -1

// PruneAction is one change Prune made or, with DryRun, would make.
type PruneAction struct {
	ClusterID string `json:"cluster_id"`
	BackupID  string `json:"backup_id"`
	From      State  `json:"from"`
	To        State  `json:"to"`
	Reason    string `json:"reason"`
	// Error is why the change failed; empty if it was made.
	Error string `json:"error,omitempty"`
	// Object, for the removal of a stray object (see Orphans), is its
	// key; From and To are empty.
	Object string `json:"object,omitempty"`
	// Locked: the change was not made because the objects it would
	// delete are under object lock (or would be, in a dry run); it is
	// not a failure. LockedUntil is when the lock ends, if known (zero
	// for a legal hold, or a refusal that did not say).
	Locked      bool      `json:"locked,omitempty"`
	LockedUntil time.Time `json:"locked_until,omitzero"`
}

// Prune applies the lifecycle to the backups in repo: READY backups
// past their retention go to PENDING_DELETION; PENDING_DELETION backups
// deleted more than PendingDeletionPeriod ago become DELETED, and their
// image objects are removed (also retried for DELETED backups whose image
// is still there). It returns every action, including failed ones (their
// Error set); the error is non-nil if the listing failed or any action
// did. Manifests whose signature does not verify are reported and left
// alone. Stray objects in backup directories (Orphans) older than
// opts.OrphanGrace are removed (an action each); younger ones are left.
//
// What is under object lock is left as it is and reported (Locked, not a
// failure): an expired READY backup whose manifest records a lock still
// in force stays READY; a PENDING_DELETION backup, or a stray object,
// whose objects the store says are locked (or whose manifest does) is
// not purged. Locks are judged by the real clock, by which the store
// enforces them, not by opts.Now.
func Prune(ctx context.Context, repo Repo, opts PruneOptions) ([]PruneAction, error) {
	if len(opts.SigningKey) != ed25519.PrivateKeySize || opts.Policy == nil {
		return nil, errors.New("signing key and policy are required")
	}
	pub := opts.SigningKey.Public().(ed25519.PublicKey)
	now := opts.now()
	// Signatures are checked by plan, which reports a forged manifest
	// with the state it claims; Scan reports those that do not parse or
	// are misplaced.
	l, err := Scan(ctx, repo, ListOptions{Filter: Filter{ClusterID: opts.ClusterID}})
	if err != nil {
		return nil, err
	}
	byCluster := map[string][]*Manifest{}
	for _, m := range l.Backups {
		byCluster[m.ClusterID] = append(byCluster[m.ClusterID], m)
	}
	invalid := map[string][]Invalid{}
	for _, inv := range l.Invalid {
		invalid[inv.ClusterID] = append(invalid[inv.ClusterID], inv)
		if _, ok := byCluster[inv.ClusterID]; !ok {
			byCluster[inv.ClusterID] = nil
		}
	}
	clusters := make([]string, 0, len(byCluster))
	for c := range byCluster {
		clusters = append(clusters, c)
	}
	sort.Strings(clusters)

	var actions []PruneAction
	var failed int
	for _, c := range clusters {
		pol := opts.Policy(c)
		if err := pol.Validate(); err != nil {
			return actions, fmt.Errorf("cluster %s: %w", c, err)
		}
		planned, kept := plan(ctx, repo, byCluster[c], pol, pub, now)
		manifests := map[string]*Manifest{}
		for _, m := range byCluster[c] {
			manifests[m.ID] = m
		}
		for _, inv := range invalid[c] {
			planned = append(planned, PruneAction{ClusterID: c, BackupID: inv.BackupID, From: StateInvalid, To: StateInvalid, Reason: "left alone", Error: inv.Reason})
		}
		sort.SliceStable(planned, func(i, j int) bool { return planned[i].BackupID < planned[j].BackupID })
		for _, m := range byCluster[c] {
			// A DELETED backup whose image is still there: an earlier
			// prune stopped between its two steps. One whose signature
			// fails plan has already reported and left alone.
			if m.State == StateDeleted && m.Verify(pub) == nil {
				a := PruneAction{ClusterID: c, BackupID: m.ID, From: m.State, To: m.State, Reason: "image left by an interrupted prune"}
				_, err := repo.Store.Stat(ctx, repo.ObjectKey(c, m.ID, ImageObject))
				switch {
				case err == nil:
					planned = append(planned, a)
				case !errors.Is(err, store.ErrNotFound):
					a.Reason, a.Error = "check for an image left by an interrupted prune", err.Error()
					planned = append(planned, a)
				}
			}
		}
		for _, a := range planned {
			if a.To == StateDeleted && a.Error == "" && !a.Locked {
				// A purge deletes the image: not while it is locked.
				key := repo.ObjectKey(c, a.BackupID, ImageObject)
				if err := checkLock(ctx, repo.Store, key, manifests[a.BackupID], &a); err != nil {
					a.Error = err.Error()
				}
			}
			if !opts.DryRun && a.Error == "" && !a.Locked { // planned errors: left alone
				err := error(nil)
				if a.From == StateReady && a.To == StatePendingDeletion {
					// A concurrent delete may have taken the backup
					// that made this one expendable: check again.
					err = newerVerifiedRemains(ctx, repo, kept, pub)
				}
				if err == nil {
					err = apply(ctx, repo, a, opts.LifecycleOptions)
				}
				switch {
				case errors.Is(err, store.ErrLocked):
					a.Locked = true // locked after all (a lock the checks did not see)
				case err != nil:
					a.Error = err.Error()
				}
			}
			if a.Error != "" {
				failed++
			}
			actions = append(actions, a)
		}
	}
	grace := opts.OrphanGrace
	switch {
	case grace == 0:
		grace = DefaultOrphanGrace
	case grace < 0:
		grace = 0
	}
	stray, sfailed, err := orphanActions(ctx, repo, opts.ClusterID, time.Now(), grace, opts.DryRun)
	if err != nil {
		return actions, err
	}
	actions, failed = append(actions, stray...), failed+sfailed
	if failed > 0 {
		return actions, fmt.Errorf("%d of %d actions failed", failed, len(actions))
	}
	return actions, nil
}

// LockText says why a Locked action was not taken, for listings:
// "locked until 2027-01-02T10:00:00Z" (or "locked", the end unknown).
func (a PruneAction) LockText() string {
	if a.LockedUntil.IsZero() {
		return "locked"
	}
	return "locked until " + a.LockedUntil.UTC().Format(time.RFC3339)
}

// plan decides the actions for one cluster's backups, ms oldest first
// (as List returns them); the actions are sorted by id. It also returns the
// READY backups it counted towards KeepLast and checked, newest first.
// When retention would expire a READY backup, the newer ones counted
// towards KeepLast are first checked (CheckObject: the object's size and
// SHA-256); one that fails is not counted and is reported ("corrupt: not
// counted", with the error) and left alone, and the next one is counted
// (and checked) in its place. A READY backup expires only past KeepLast
// checked ones, so only if a newer checked one remains; if none passes,
// none expires.
func plan(ctx context.Context, repo Repo, ms []*Manifest, pol Policy, pub ed25519.PublicKey, now time.Time) ([]PruneAction, []*Manifest) {
	var actions []PruneAction
	act := func(m *Manifest, to State, reason string) {
		actions = append(actions, PruneAction{ClusterID: m.ClusterID, BackupID: m.ID, From: m.State, To: to, Reason: reason})
	}
	var ready []*Manifest // newest first
	for i := len(ms) - 1; i >= 0; i-- {
		m := ms[i]
		if err := m.Verify(pub); err != nil {
			a := PruneAction{ClusterID: m.ClusterID, BackupID: m.ID, From: m.State, To: m.State, Reason: "left alone", Error: err.Error()}
			actions = append(actions, a)
			continue
		}
		switch m.State {
		case StateReady:
			ready = append(ready, m)
		case StatePendingDeletion:
			if !now.Before(m.DeletionRequested.Add(PendingDeletionPeriod)) {
				act(m, StateDeleted, fmt.Sprintf("deleted on %s, %s ago", m.DeletionRequested.Format(time.DateOnly), days(now.Sub(m.DeletionRequested))))
			}
		}
	}
	keep := max(pol.KeepLast, 1) // the newest checked READY backup always stays
	// The backups counted are checked once retention would expire one
	// (only then does the count decide anything): until then they are
	// counted unchecked, in tentative.
	var kept, tentative []*Manifest
	count := func(m *Manifest) {
		switch err := checkObject(ctx, repo, m); {
		case err == nil:
			kept = append(kept, m)
		case errors.Is(err, ErrObjectHash) || errors.Is(err, store.ErrNotFound):
			actions = append(actions, PruneAction{ClusterID: m.ClusterID, BackupID: m.ID, From: m.State, To: m.State, Reason: "corrupt: not counted", Error: err.Error()})
		default:
			actions = append(actions, PruneAction{ClusterID: m.ClusterID, BackupID: m.ID, From: m.State, To: m.State, Reason: "not checked: not counted", Error: err.Error()})
		}
	}
	checked := false
	for _, m := range ready {
		if len(kept)+len(tentative) < keep {
			if checked {
				count(m)
			} else {
				tentative = append(tentative, m)
			}
			continue
		}
		retention := pol.RetentionDays
		if m.RetentionDays != 0 {
			retention = m.RetentionDays
		}
		age := now.Sub(m.Created)
		if m.NeverExpires || retention == 0 || age <= time.Duration(retention)*24*time.Hour {
			continue
		}
		if !checked {
			checked = true
			for _, t := range tentative {
				count(t)
			}
			tentative = nil
			if len(kept) < keep { // one failed: m is counted in its place
				count(m)
				continue
			}
		}
		act(m, StatePendingDeletion, fmt.Sprintf("%s old, retention %d days", days(age), retention))
		if m.LockedAt(time.Now()) { // expired, but locked: it stays READY
			a := &actions[len(actions)-1]
			a.Locked, a.LockedUntil = true, m.Lock.Until
		}
	}
	sort.Slice(actions, func(i, j int) bool { return actions[i].BackupID < actions[j].BackupID })
	return actions, kept
}

// newerVerifiedRemains checks, just before a READY backup expires, that at
// least one of kept (the backups plan counted, all newer than any it
// expires) is still READY, with a manifest that verifies and describes the
// object checked, and that its image object is still there at its size. A
// concurrent delete of the kept backups between the two is not ruled out,
// but the expired backup then stays restorable (RestoreDeleted) for
// PendingDeletionPeriod.
func newerVerifiedRemains(ctx context.Context, repo Repo, kept []*Manifest, pub ed25519.PublicKey) error {
	var last error
	for _, k := range kept {
		d, err := describe(ctx, repo, k.ClusterID, k.ID)
		if err == nil {
			err = d.Verify(pub)
		}
		switch {
		case err != nil:
		case d.State != StateReady:
			err = fmt.Errorf("it is %s", d.State)
		case d.ObjectSHA256 != k.ObjectSHA256 || d.ObjectSize != k.ObjectSize:
			err = fmt.Errorf("%w: it changed since it was checked", ErrManifest)
		}
		if err == nil {
			var oi store.ObjectInfo
			if oi, err = repo.Store.Stat(ctx, repo.ObjectKey(k.ClusterID, k.ID, ImageObject)); err == nil && oi.Size != k.ObjectSize {
				err = ErrObjectHash
			}
		}
		if err == nil {
			return nil
		}
		last = fmt.Errorf("backup %s: %w", k.ID, err)
	}
	if last == nil {
		return errors.New("not expired: no newer checked READY backup")
	}
	return fmt.Errorf("not expired: no newer checked READY backup remains: %w", last)
}

func days(d time.Duration) string { return fmt.Sprintf("%d days", int(d/(24*time.Hour))) }

// checkLock marks a as Locked if the object at key, which a would delete,
// is under object lock by the real clock: by the lock m records (m may be
// nil), or by the lock or legal hold the store reports for it. An error
// is a failure to ask the store; a missing object is not locked.
func checkLock(ctx context.Context, st store.Store, key string, m *Manifest, a *PruneAction) error {
	now := time.Now()
	if m != nil && m.LockedAt(now) {
		a.Locked, a.LockedUntil = true, m.Lock.Until
		return nil
	}
	l, ok := store.As[store.ObjectLocker](st)
	if !ok {
		return nil
	}
	r, hold, err := l.ObjectLock(ctx, key)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil
	case err != nil:
		return err
	case hold:
		a.Locked = true
	case r.Mode != "" && now.Before(r.Until):
		a.Locked, a.LockedUntil = true, r.Until
	}
	return nil
}

// apply makes one planned change.
func apply(ctx context.Context, repo Repo, a PruneAction, opts LifecycleOptions) error {
	switch {
	case a.From == StateReady && a.To == StatePendingDeletion:
		_, err := Delete(ctx, repo, a.ClusterID, a.BackupID, opts)
		return err
	case a.To == StateDeleted:
		return purge(ctx, repo, a.ClusterID, a.BackupID, opts)
	}
	return nil
}

// purge marks a PENDING_DELETION backup DELETED, then removes its image.
// The manifest changes first: a crash in between leaves a DELETED backup
// whose image the next Prune removes, never a restorable backup without
// an image.
func purge(ctx context.Context, repo Repo, cluster, id string, opts LifecycleOptions) error {
	_, err := update(ctx, repo, cluster, id, opts, func(m *Manifest) error {
		if m.State != StatePendingDeletion && m.State != StateDeleted {
			return fmt.Errorf("%w: it is %s", ErrState, m.State)
		}
		m.State = StateDeleted
		return nil
	})
	if err != nil {
		return fmt.Errorf("backup %s: %w", id, err)
	}
	if err := repo.Store.Delete(ctx, repo.ObjectKey(cluster, id, ImageObject)); err != nil {
		return fmt.Errorf("backup %s: %w", id, err)
	}
	return nil
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
