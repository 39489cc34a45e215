package backup

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/hsmbackup/hsmbackup/store"
)

// Filter selects backups in List. The zero value selects all.
type Filter struct {
	// ClusterID, if set, lists only that cluster's backups.
	ClusterID string
	// State, if set, lists only backups in that state.
	State State
	// Tags, if set, lists only backups that carry every one of these tags
	// with the same value.
	Tags map[string]string
}

func (f *Filter) match(m *Manifest) bool {
	if f.State != "" && m.State != f.State {
		return false
	}
	for k, v := range f.Tags {
		if got, ok := m.Tags[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// List returns the manifests of the backups in repo that f selects,
// oldest first: by creation time (ids carry it only to the second), then
// id, then cluster. Only manifests are listed: an image object without a manifest
// is not a backup. A manifest that does not parse, or that is stored under
// another backup's key, fails the listing with an error wrapping
// ErrManifest. List does not check signatures; Verify does.
func List(ctx context.Context, repo Repo, f Filter) ([]*Manifest, error) {
	st := repo.Store
	prefix, err := repo.prefix()
	if err != nil {
		return nil, err
	}
	root := prefix + "clusters/"
	if f.ClusterID != "" {
		if err := validClusterID(f.ClusterID); err != nil {
			return nil, err
		}
		root = clusterDir(prefix, f.ClusterID)
	}
	var keys []string
	err = st.List(ctx, root, func(oi store.ObjectInfo) error {
		// <prefix>clusters/<cluster>/backups/<id>/manifest.json
		rest, ok := strings.CutPrefix(oi.Key, prefix+"clusters/")
		parts := strings.Split(rest, "/")
		if ok && len(parts) == 4 && parts[1] == "backups" && parts[3] == ManifestObject {
			keys = append(keys, oi.Key)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var out []*Manifest
	for _, k := range keys {
		parts := strings.Split(strings.TrimPrefix(k, prefix+"clusters/"), "/")
		m, err := readManifest(ctx, st, k, parts[0], parts[2])
		if err != nil {
			return nil, err
		}
		if f.match(m) {
			out = append(out, m)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if !a.Created.Equal(b.Created) {
			return a.Created.Before(b.Created)
		}
		if a.ID != b.ID {
			return a.ID < b.ID
		}
		return a.ClusterID < b.ClusterID
	})
	return out, nil
}

// Describe returns the manifest of backup id of cluster, without checking
// its signature (Verify does). A missing backup is an error wrapping
// store.ErrNotFound; a bad manifest one wrapping ErrManifest.
func Describe(ctx context.Context, repo Repo, cluster, id string) (*Manifest, error) {
	m, err := describe(ctx, repo, cluster, id)
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w", id, err)
	}
	return m, nil
}

// describe is Describe without naming the backup, for callers that do.
func describe(ctx context.Context, repo Repo, cluster, id string) (*Manifest, error) {
	if _, err := repo.prefix(); err != nil {
		return nil, err
	}
	if err := validClusterID(cluster); err != nil {
		return nil, err
	}
	if !validBackupID(id) {
		return nil, fmt.Errorf("bad backup id: %w", store.ErrNotFound)
	}
	return readManifest(ctx, repo.Store, repo.ObjectKey(cluster, id, ManifestObject), cluster, id)
}

// readManifest reads and parses the manifest at key, which must be that of
// backup id of cluster. Errors name the key (the store's name it too).
func readManifest(ctx context.Context, st store.Store, key, cluster, id string) (*Manifest, error) {
	rc, err := st.Get(ctx, key)
	if err != nil {
		return nil, err // "get <key>: …"
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, MaxManifestSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	m, err := ParseManifest(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	if m.ID != id || m.ClusterID != cluster {
		return nil, fmt.Errorf("%s: %w: it describes backup %s of cluster %s", key, ErrManifest, m.ID, m.ClusterID)
	}
	return m, nil
}

// Find returns the cluster of backup id in repo, by listing keys (no
// manifest is read). A missing backup is an error wrapping
// store.ErrNotFound.
func Find(ctx context.Context, repo Repo, id string) (string, error) {
	p, err := repo.prefix()
	if err != nil {
		return "", err
	}
	if !validBackupID(id) {
		return "", fmt.Errorf("bad backup id %q: %w", id, store.ErrNotFound)
	}
	var found []string
	err = repo.Store.List(ctx, p+"clusters/", func(oi store.ObjectInfo) error {
		rest := strings.TrimPrefix(oi.Key, p+"clusters/")
		if cl, tail, ok := strings.Cut(rest, "/"); ok && tail == "backups/"+id+"/"+ManifestObject {
			found = append(found, cl)
		}
		return nil
	})
	switch {
	case err != nil:
		return "", err
	case len(found) == 0:
		return "", fmt.Errorf("backup %s: %w", id, store.ErrNotFound)
	case len(found) > 1:
		return "", fmt.Errorf("backup %s: in clusters %v: name the cluster", id, found)
	}
	return found[0], nil
}
