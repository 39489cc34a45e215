package backup

import (
	"context"
	"crypto/ed25519"
	"errors"
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

// StateInvalid is the state a listing gives a manifest it skipped (see
// Invalid). It is never stored: no manifest in that state parses.
const StateInvalid State = "INVALID"

// Invalid is a manifest that a listing skipped: it does not parse, it is
// stored under another backup's key (misplaced), or, when the listing checks
// signatures, its signature does not verify. Its claimed state and tags
// cannot be trusted, so the listing reports it whatever the filter's State
// and Tags (its ClusterID still applies, by key).
type Invalid struct {
	// ClusterID and BackupID are those of the manifest's key.
	ClusterID string `json:"cluster_id"`
	BackupID  string `json:"backup_id"`
	Key       string `json:"key"`
	// Reason is why it was skipped, without the key (Err names it).
	Reason string `json:"reason"`
	// Err is the error, naming the key; it wraps ErrManifest.
	Err error `json:"-"`
}

// ListOptions are the options of Scan.
type ListOptions struct {
	Filter
	// PublicKey, if set, checks every manifest's signature: one that does
	// not verify is Invalid. Without it signatures are not checked.
	PublicKey ed25519.PublicKey
}

// Listing is what Scan returns.
type Listing struct {
	// Backups are the valid manifests that the filter selects, in List's
	// order.
	Backups []*Manifest
	// Invalid are the manifests skipped, in key order.
	Invalid []Invalid
	// SignaturesChecked: ListOptions.PublicKey was given.
	SignaturesChecked bool
}

// Scan lists the backups in repo as List does, but a bad manifest does
// not fail it: it is skipped and reported in Listing.Invalid, and every
// other backup is listed. A manifest deleted while Scan runs is left out.
// An error reading storage (other than a missing manifest) fails it.
func Scan(ctx context.Context, repo Repo, opts ListOptions) (*Listing, error) {
	if opts.PublicKey != nil && len(opts.PublicKey) != ed25519.PublicKeySize {
		return nil, errors.New("public key is not an Ed25519 public key")
	}
	f := opts.Filter
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
	sort.Strings(keys)
	l := &Listing{SignaturesChecked: opts.PublicKey != nil}
	for _, k := range keys {
		parts := strings.Split(strings.TrimPrefix(k, prefix+"clusters/"), "/")
		m, err := readManifest(ctx, st, k, parts[0], parts[2])
		if err == nil && opts.PublicKey != nil {
			if verr := m.Verify(opts.PublicKey); verr != nil {
				err = fmt.Errorf("%s: %w", k, verr)
			}
		}
		switch {
		case errors.Is(err, ErrManifest):
			l.Invalid = append(l.Invalid, Invalid{ClusterID: parts[0], BackupID: parts[2], Key: k,
				Reason: strings.TrimPrefix(err.Error(), k+": "), Err: err})
			continue
		case errors.Is(err, store.ErrNotFound):
			continue // deleted since it was listed
		case err != nil:
			return nil, err
		}
		if f.match(m) {
			l.Backups = append(l.Backups, m)
		}
	}
	sort.SliceStable(l.Backups, func(i, j int) bool {
		a, b := l.Backups[i], l.Backups[j]
		if !a.Created.Equal(b.Created) {
			return a.Created.Before(b.Created)
		}
		if a.ID != b.ID {
			return a.ID < b.ID
		}
		return a.ClusterID < b.ClusterID
	})
	return l, nil
}

// List returns the manifests of the backups in repo that f selects,
// oldest first: by creation time (ids carry it only to the second), then
// id, then cluster. Only manifests are listed: an image object without a manifest
// is not a backup. A manifest that does not parse, or that is stored under
// another backup's key, fails the listing with an error wrapping
// ErrManifest (Scan skips and reports it instead). List does not check
// signatures; Verify does.
func List(ctx context.Context, repo Repo, f Filter) ([]*Manifest, error) {
	l, err := Scan(ctx, repo, ListOptions{Filter: f})
	if err != nil {
		return nil, err
	}
	if len(l.Invalid) > 0 {
		return nil, l.Invalid[0].Err
	}
	return l.Backups, nil
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
	if here := store.KeyPrefix(st) + strings.TrimSuffix(key, ManifestObject); m.Bound() && m.Location != here {
		return nil, fmt.Errorf("%s: %w: it was written for %s", key, ErrManifest, m.Location)
	}
	return m, nil
}

// Find returns the cluster of backup id in repo, by listing keys (no
// manifest is read). A missing backup is an error wrapping
// store.ErrNotFound; one in several clusters (copied there by hand: a
// backup's id is its own) an error wrapping ErrAmbiguous.
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
		return "", fmt.Errorf("backup %s: %w: in clusters %s: name the cluster", id, ErrAmbiguous, strings.Join(found, ", "))
	}
	return found[0], nil
}
