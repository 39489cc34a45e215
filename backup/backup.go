// Package backup makes, lists and verifies backups of an HSM cluster: the
// image exported by one healthy member, wrapped again in the outer envelope
// (package wrap) and stored (package store) with a signed manifest.
//
// # Storage layout
//
// Backups live in a Repo: a store and a key prefix in it. A backup is two
// objects:
//
//	<prefix>clusters/<cluster-id>/backups/<backup-id>/image
//	<prefix>clusters/<cluster-id>/backups/<backup-id>/manifest.json
//
// where a non-empty prefix ends with a slash (one is added if missing).
// The image is written first, the manifest last and create-only: a backup
// without a manifest does not exist, and List ignores such image objects.
// Backup ids sort by creation time (to the second).
package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/hsmbackup/hsmbackup/store"
)

// Sentinel errors. Each is wrapped with the step that failed; test with
// errors.Is. Verify names the layer that failed with one of the first four.
var (
	// ErrManifest: a manifest does not parse, is not where its id and
	// cluster say it should be, or its signature does not verify.
	ErrManifest = errors.New("invalid manifest")
	// ErrObjectHash: the stored image object's SHA-256 or size differs
	// from the manifest's, or the object is missing.
	ErrObjectHash = errors.New("image object does not match its manifest")
	// ErrOuterLayer: the outer envelope does not open (no identity given
	// holds a key for it: wrap.ErrUnknownKey), does not authenticate
	// (wrap.ErrTampered, wrap.ErrTruncated), or its header differs from
	// the manifest's.
	ErrOuterLayer = errors.New("outer layer does not open")
	// ErrInnerHeader: the inner image header inside the envelope does not
	// parse, or does not match the manifest's source identity, image id,
	// PBK fingerprint, cluster or size.
	ErrInnerHeader = errors.New("inner image does not match its manifest")
	// ErrSource: the member asked for the image is not fit to back up
	// (cluster not initialized) or exported an image of another HSM or
	// cluster than its health reports.
	ErrSource = errors.New("unsuitable backup source")
	// ErrAmbiguous: a backup id prefix (Resolve) matches more than one
	// backup, or "latest" names no one cluster.
	ErrAmbiguous = errors.New("ambiguous backup reference")
)

// ImageSource is one healthy member of the cluster to back up.
// *hsmcore/client.Client, logged in as a crypto officer, satisfies it; the
// caller picks the member.
type ImageSource interface {
	// ExportImage streams the member's image and, after io.EOF, its
	// signed statement of the image's length and digest; the caller
	// closes it.
	ExportImage(ctx context.Context) (hsmcore.ImageStream, error)
	// Health reports the member's identity and state.
	Health(ctx context.Context) (api.Health, error)
}

// Object names within a backup's directory.
const (
	ImageObject    = "image"
	ManifestObject = "manifest.json"
)

// Repo is where backups live: a store and a key prefix within it (see
// the package comment). The empty prefix is the store's root.
type Repo struct {
	Store  store.Store
	Prefix string
}

// prefix returns r's prefix, ending with a slash if not empty, or an
// error if it is not a valid prefix.
func (r Repo) prefix() (string, error) {
	return normPrefix(r.Prefix)
}

// ObjectKey returns the key of object (ImageObject or ManifestObject) of
// backup id of cluster in r.
func (r Repo) ObjectKey(cluster, id, object string) string {
	return r.clusterDir(cluster) + id + "/" + object
}

// GetImage opens the image object of backup id of cluster. A missing
// object is ErrObjectHash (and store.ErrNotFound): a backup whose manifest
// is there and whose image is not fails its check, as a changed one does.
func (r Repo) GetImage(ctx context.Context, cluster, id string) (io.ReadCloser, error) {
	rc, err := r.Store.Get(ctx, r.ObjectKey(cluster, id, ImageObject))
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: the image object is missing (%w)", ErrObjectHash, err)
	}
	return rc, err
}

// clusterDir returns the key prefix of cluster's backups in r.
func (r Repo) clusterDir(cluster string) string {
	p, err := r.prefix()
	if err != nil {
		p = r.Prefix
	}
	return clusterDir(p, cluster)
}

func normPrefix(prefix string) (string, error) {
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	if err := store.ValidPrefix(prefix); err != nil {
		return "", err
	}
	return prefix, nil
}

func clusterDir(prefix, cluster string) string {
	return prefix + "clusters/" + cluster + "/backups/"
}
