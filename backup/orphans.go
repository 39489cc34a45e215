package backup

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hsmbackup/hsmbackup/store"
)

// DefaultOrphanGrace is how old a stray object must be before Prune
// removes it: an image object without a manifest may be a backup still
// being written (Create stores the image first and the manifest last), so
// younger ones are only reported. It is the CLI's stale-upload age too.
const DefaultOrphanGrace = 24 * time.Hour

// Orphan is a stray object in a backup's directory
// (<prefix>clusters/<cluster>/backups/<id>/): an image object (or any
// other object) in a directory without a manifest, which is no backup and
// which nothing else reports, or an object of unknown name beside a
// manifest. A backup create killed after its image was stored and before
// its manifest was, or whose cleanup was cut short, leaves one.
type Orphan struct {
	ClusterID string    `json:"cluster_id"`
	BackupID  string    `json:"backup_id"`
	Key       string    `json:"key"` // the store key
	Size      int64     `json:"size"`
	Modified  time.Time `json:"modified"`
	// Stale: older than the grace period (last modified before
	// Orphans' olderThan), so Prune removes it. A younger one may belong
	// to a backup still being written.
	Stale bool `json:"stale"`
	// Reason says why the object is stray.
	Reason string `json:"reason"`
}

// Orphans returns the stray objects under the backup directories of repo
// (of cluster clusterID only, if set), in key order; those last modified
// before olderThan are marked Stale. It lists keys and reads no object.
func Orphans(ctx context.Context, repo Repo, clusterID string, olderThan time.Time) ([]Orphan, error) {
	prefix, err := repo.prefix()
	if err != nil {
		return nil, err
	}
	root := prefix + "clusters/"
	if clusterID != "" {
		if err := validClusterID(clusterID); err != nil {
			return nil, err
		}
		root = clusterDir(prefix, clusterID)
	}
	type dir struct {
		cluster, id string
		manifest    bool
		objects     []store.ObjectInfo
	}
	var dirs []*dir
	byKey := map[string]*dir{}
	err = repo.Store.List(ctx, root, func(oi store.ObjectInfo) error {
		// <prefix>clusters/<cluster>/backups/<id>/<name…>
		parts := strings.SplitN(strings.TrimPrefix(oi.Key, prefix+"clusters/"), "/", 4)
		if len(parts) < 4 || parts[1] != "backups" {
			return nil // not in a backup's directory
		}
		dk := parts[0] + "/" + parts[2]
		d := byKey[dk]
		if d == nil {
			d = &dir{cluster: parts[0], id: parts[2]}
			byKey[dk] = d
			dirs = append(dirs, d)
		}
		if parts[3] == ManifestObject {
			d.manifest = true
		} else {
			d.objects = append(d.objects, oi)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var out []Orphan
	for _, d := range dirs {
		for _, oi := range d.objects {
			name := strings.TrimPrefix(oi.Key, prefix+"clusters/"+d.cluster+"/backups/"+d.id+"/")
			var reason string
			switch {
			case !d.manifest && name == ImageObject:
				reason = "image object without a manifest"
			case !d.manifest:
				reason = "object in a backup directory without a manifest"
			case name != ImageObject:
				reason = "object of unknown name in a backup's directory"
			default:
				continue // a backup's image
			}
			out = append(out, Orphan{ClusterID: d.cluster, BackupID: d.id, Key: oi.Key, Size: oi.Size,
				Modified: oi.ModTime, Stale: oi.ModTime.Before(olderThan), Reason: reason})
		}
	}
	return out, nil
}

// removeOrphan deletes a stale orphan, unless its manifest has appeared
// since it was listed (its backup was being written after all).
func removeOrphan(ctx context.Context, repo Repo, o Orphan) error {
	if o.Reason != "object of unknown name in a backup's directory" {
		_, err := repo.Store.Stat(ctx, repo.ObjectKey(o.ClusterID, o.BackupID, ManifestObject))
		switch {
		case err == nil:
			return errors.New("its manifest has appeared: left")
		case !errors.Is(err, store.ErrNotFound):
			return err
		}
	}
	return repo.Store.Delete(ctx, o.Key)
}

// orphanActions plans (and unless dryRun makes) the removal of the stale
// stray objects Orphans finds; younger ones are left. It returns the
// actions and how many failed.
func orphanActions(ctx context.Context, repo Repo, clusterID string, now time.Time, grace time.Duration, dryRun bool) ([]PruneAction, int, error) {
	orphans, err := Orphans(ctx, repo, clusterID, now.Add(-grace))
	if err != nil {
		return nil, 0, err
	}
	var actions []PruneAction
	var failed int
	for _, o := range orphans {
		if !o.Stale {
			continue
		}
		a := PruneAction{ClusterID: o.ClusterID, BackupID: o.BackupID, Object: o.Key,
			Reason: fmt.Sprintf("%s, %s old", o.Reason, AgeText(now.Sub(o.Modified)))}
		// An image left by a backup whose manifest was never written may
		// be locked: it stays until its lock ends.
		err := checkLock(ctx, repo.Store, o.Key, nil, &a)
		if err == nil && !dryRun && !a.Locked {
			err = removeOrphan(ctx, repo, o)
			if errors.Is(err, store.ErrLocked) {
				a.Locked, err = true, nil
			}
		}
		if err != nil {
			a.Error = err.Error()
			failed++
		}
		actions = append(actions, a)
	}
	return actions, failed, nil
}

// AgeText prints an age coarsely: days, hours, minutes or seconds.
func AgeText(d time.Duration) string {
	switch {
	case d >= 48*time.Hour:
		return fmt.Sprintf("%d days", int(d/(24*time.Hour)))
	case d >= 2*time.Hour:
		return fmt.Sprintf("%d hours", int(d/time.Hour))
	case d >= 2*time.Minute:
		return fmt.Sprintf("%d minutes", int(d/time.Minute))
	case d < 0:
		d = 0
	}
	return fmt.Sprintf("%d s", int(d/time.Second))
}
