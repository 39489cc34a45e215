package backup

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/wrap"
)

// CopyOptions are the options of Copy; all but Now are required.
type CopyOptions struct {
	// PublicKey verifies the source manifest's signature.
	PublicKey ed25519.PublicKey
	// Identities open the source's outer envelope: the first that can.
	Identities []wrap.Identity
	// Recipients are the copy's outer envelope recipients.
	Recipients []wrap.Recipient
	// SigningKey signs the copy's manifest.
	SigningKey ed25519.PrivateKey
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Copy copies READY backup id of cluster from src to dst, as CloudHSM copies a backup to another region: the copy is a new
// backup of the same cluster with a new id, the same inner image, and a
// manifest naming its source backup and cluster. No HSM is involved: the
// outer envelope is re-wrapped to opts.Recipients (wrap.Rewrap: the body
// is copied byte for byte, authenticated on the way) and the source
// object must match its manifest's size and hash, or nothing is stored.
//
// Copy is idempotent: if dst already holds a READY copy of this backup
// (same source backup id and source object hash) wrapped to the same
// recipients, whose manifest opts.SigningKey signed, it returns that
// copy's manifest and stores nothing; CopyOnce says which happened.
func Copy(ctx context.Context, src Repo, cluster, id string, dst Repo, opts CopyOptions) (*Manifest, error) {
	m, _, err := CopyOnce(ctx, src, cluster, id, dst, opts)
	return m, err
}

// CopyOnce is Copy, and reports whether it copied (false: dst already held
// the copy returned).
func CopyOnce(ctx context.Context, src Repo, cluster, id string, dst Repo, opts CopyOptions) (*Manifest, bool, error) {
	m, err := copyOnce(ctx, src, cluster, id, dst, opts)
	if errors.Is(err, errCopied) {
		return m, false, nil
	}
	return m, err == nil, err
}

var errCopied = errors.New("already copied")

func copyOnce(ctx context.Context, src Repo, cluster, id string, dst Repo, opts CopyOptions) (*Manifest, error) {
	if len(opts.Identities) == 0 || len(opts.Recipients) == 0 || len(opts.Recipients) > maxRecipients || len(opts.SigningKey) != ed25519.PrivateKeySize {
		return nil, errors.New("an identity, 1 to 16 recipients and a signing key are required")
	}
	if _, err := dst.prefix(); err != nil {
		return nil, fmt.Errorf("destination: %w", err)
	}
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	sm, err := describe(ctx, src, cluster, id)
	if err == nil {
		err = sm.Verify(opts.PublicKey)
	}
	if err == nil && sm.State != StateReady {
		err = fmt.Errorf("%w: it is %s", ErrState, sm.State)
	}
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w", id, err)
	}
	want, err := hex.DecodeString(sm.ObjectSHA256)
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w: object hash: %w", id, ErrManifest, err)
	}
	if prev, err := findCopy(ctx, dst, sm, opts); err != nil || prev != nil {
		if prev != nil {
			return prev, errCopied
		}
		return nil, fmt.Errorf("destination: %w", err)
	}

	created := now().UTC().Round(0)
	newID, err := newBackupID(created)
	if err != nil {
		return nil, fmt.Errorf("create backup id: %w", err)
	}
	m := *sm
	m.ID, m.Created, m.Signature = newID, maxTime(created, sm.Created), nil
	m.Location = location(dst, cluster, newID) // the copy's own: bound even if its source is not
	m.SourceBackupID, m.SourceClusterID, m.SourceObjectSHA256 = sm.ID, sm.ClusterID, sm.ObjectSHA256
	m.Tags = cloneTags(sm.Tags)
	m.Lock = nil // the source's lock is the source's: the copy is stored without one

	rc, err := src.GetImage(ctx, cluster, id)
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w", id, err)
	}
	defer rc.Close()
	imageKey := dst.ObjectKey(cluster, newID, ImageObject)
	obj, err := putEnvelope(ctx, dst.Store, imageKey, store.Retention{}, func(w io.Writer) error {
		h := sha256.New()
		in := &counter{h: h}
		r := io.TeeReader(rc, in)
		if err := wrap.Rewrap(ctx, r, w, opts.Identities, opts.Recipients...); err != nil {
			return fmt.Errorf("backup %s: %w: %w", id, ErrOuterLayer, err)
		}
		if _, err := io.Copy(io.Discard, r); err != nil {
			return fmt.Errorf("backup %s: read image: %w", id, err)
		}
		if in.n != sm.ObjectSize || subtle.ConstantTimeCompare(h.Sum(nil), want) != 1 {
			return fmt.Errorf("backup %s: %w", id, ErrObjectHash)
		}
		return nil
	})
	if err != nil {
		cleanup(ctx, dst.Store, imageKey)
		return nil, err
	}
	obj.fill(&m)
	if err := m.Sign(opts.SigningKey); err != nil {
		cleanup(ctx, dst.Store, imageKey)
		return nil, err
	}
	b, err := m.Marshal()
	if err == nil {
		err = dst.Store.Put(ctx, dst.ObjectKey(cluster, newID, ManifestObject), bytes.NewReader(b), store.PutOptions{CreateOnly: true})
	}
	if err != nil {
		cleanup(ctx, dst.Store, imageKey)
		return nil, fmt.Errorf("write manifest: %w", err)
	}
	return &m, nil
}

// findCopy returns dst's READY copy of sm wrapped to opts.Recipients and
// signed with opts.SigningKey, or nil.
func findCopy(ctx context.Context, dst Repo, sm *Manifest, opts CopyOptions) (*Manifest, error) {
	ms, err := List(ctx, dst, Filter{ClusterID: sm.ClusterID, State: StateReady})
	if err != nil || len(ms) == 0 {
		return nil, err
	}
	var want []string
	for _, m := range ms {
		if m.SourceBackupID != sm.ID || m.SourceClusterID != sm.ClusterID || m.SourceObjectSHA256 != sm.ObjectSHA256 || m.Verify(opts.SigningKey.Public().(ed25519.PublicKey)) != nil {
			continue
		}
		if want == nil {
			// The stanzas' descriptions, from a throwaway data key.
			dek := make([]byte, 32)
			if _, err := rand.Read(dek); err != nil {
				return nil, err
			}
			for _, r := range opts.Recipients {
				st, err := r.Wrap(ctx, dek)
				if err != nil {
					return nil, fmt.Errorf("wrap: %w", err)
				}
				want = append(want, st.String())
			}
		}
		if slices.Equal(m.Recipients, want) {
			return m, nil
		}
	}
	return nil, nil
}
