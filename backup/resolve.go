package backup

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/hsmbackup/hsmbackup/store"
)

// Latest is the backup reference Resolve reads as the newest READY
// backup of a cluster.
const Latest = "latest"

// noMatch: no backup id starts with the prefix.
type noMatch struct{ ref string }

func (e noMatch) Error() string { return fmt.Sprintf("no backup id starts with %q", e.ref) }
func (e noMatch) Unwrap() error { return store.ErrNotFound }

// Resolve returns the cluster and id of the backup ref names, as restic
// resolves snapshot ids:
//
//   - a full backup id: that backup, of cluster if given, else of the
//     cluster that holds it (Find);
//   - "latest": the newest READY backup of cluster, which may be empty only
//     if the store holds backups of one cluster alone;
//   - a prefix of an id ("backup-2026…"): the one backup whose id starts
//     with it (of cluster, if given); a string that starts no id is a bad
//     id.
//
// A reference that matches no backup is an error wrapping
// store.ErrNotFound; one that matches several, or "latest" without a
// cluster in a store of several, an error wrapping ErrAmbiguous that
// lists the candidates. Only keys are listed, except for "latest", which
// reads the cluster's manifests (their signatures are not checked).
func Resolve(ctx context.Context, repo Repo, cluster, ref string) (string, string, error) {
	p, err := repo.prefix()
	if err != nil {
		return "", "", err
	}
	if cluster != "" {
		if err := validClusterID(cluster); err != nil {
			return "", "", err
		}
	}
	switch {
	case ref == "":
		return "", "", fmt.Errorf("empty backup id: %w", store.ErrNotFound)
	case validBackupID(ref):
		if cluster != "" {
			return cluster, ref, nil
		}
		cl, err := Find(ctx, repo, ref)
		return cl, ref, err
	case ref != Latest && !strings.HasPrefix(ref, idPrefix) && !strings.HasPrefix(idPrefix, ref):
		return "", "", fmt.Errorf("bad backup id %q: %w", ref, store.ErrNotFound) // a prefix of no id, as Find says
	}
	// Every backup's cluster and id, from the keys.
	type found struct{ cluster, id string }
	var all []found
	root := p + "clusters/"
	if cluster != "" {
		root = clusterDir(p, cluster)
	}
	err = repo.Store.List(ctx, root, func(oi store.ObjectInfo) error {
		parts := strings.Split(strings.TrimPrefix(oi.Key, p+"clusters/"), "/")
		if len(parts) == 4 && parts[1] == "backups" && parts[3] == ManifestObject && validBackupID(parts[2]) {
			all = append(all, found{parts[0], parts[2]})
		}
		return nil
	})
	if err != nil {
		return "", "", err
	}
	if ref == Latest {
		if cluster == "" {
			var clusters []string
			for _, f := range all {
				if !slices.Contains(clusters, f.cluster) {
					clusters = append(clusters, f.cluster)
				}
			}
			switch len(clusters) {
			case 0:
				return "", "", fmt.Errorf("latest: the store holds no backup: %w", store.ErrNotFound)
			case 1:
				cluster = clusters[0]
			default:
				slices.Sort(clusters)
				return "", "", fmt.Errorf("latest: %w: the store holds backups of clusters %s: name the cluster", ErrAmbiguous, strings.Join(clusters, ", "))
			}
		}
		ms, err := List(ctx, repo, Filter{ClusterID: cluster, State: StateReady})
		if err != nil {
			return "", "", err
		}
		if len(ms) == 0 {
			return "", "", fmt.Errorf("latest: cluster %s has no READY backup: %w", cluster, store.ErrNotFound)
		}
		return cluster, ms[len(ms)-1].ID, nil
	}
	var hits []found
	for _, f := range all {
		if strings.HasPrefix(f.id, ref) {
			hits = append(hits, f)
		}
	}
	switch len(hits) {
	case 0:
		return "", "", noMatch{ref}
	case 1:
		return hits[0].cluster, hits[0].id, nil
	}
	slices.SortFunc(hits, func(a, b found) int { return strings.Compare(a.id+"/"+a.cluster, b.id+"/"+b.cluster) })
	names := make([]string, len(hits))
	for i, h := range hits {
		names[i] = h.id
		if cluster == "" {
			names[i] += " (" + h.cluster + ")"
		}
	}
	return "", "", fmt.Errorf("%q: %w: %d backups match: %s", ref, ErrAmbiguous, len(hits), strings.Join(names, ", "))
}
