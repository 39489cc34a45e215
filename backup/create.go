package backup

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/wrap"
)

// CreateOptions are the options of Create. ClusterID may be empty (the
// member's cluster is used); Recipients and SigningKey are required.
type CreateOptions struct {
	// ClusterID names the cluster; if set it must be the cluster the
	// member reports and its image header states.
	ClusterID string
	// Recipients are the outer envelope's recipients (1 to 16).
	Recipients []wrap.Recipient
	// SigningKey is the backup service's manifest signing key.
	SigningKey ed25519.PrivateKey
	// Tags are stored in the manifest; see ValidateTags.
	Tags map[string]string
	// NeverExpires and RetentionDays (0: unset) are stored in the manifest.
	NeverExpires  bool
	RetentionDays int
	// ClusterCertificate and CustomerCA (DER), if given, are stored in the
	// manifest.
	ClusterCertificate, CustomerCA []byte
	// Lock, if its Mode is set, stores every object of the backup under
	// S3 Object Lock retention until the creation time plus Lock.Days
	// (recorded in the manifest). It must last at least RetentionDays
	// (see ObjectLock.Covering), and the store must be able to lock
	// (CheckObjectLock, checked before the member is asked for anything).
	Lock ObjectLock
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// BeforeCommit, if set, is called after the image is stored and
	// before the manifest makes the backup visible; an error fails the
	// backup, which leaves nothing listed. The scheduler checks there that
	// it still holds its lease.
	BeforeCommit func(ctx context.Context) error
}

// Create backs up the member src to repo: it exports the image, wraps it in
// an outer envelope to opts.Recipients and stores it as one object,
// hashing it on the way (memory stays flat whatever the image size), then
// writes the signed manifest last, create-only; with opts.Lock both under
// that object lock. If src is an
// InventorySource, the manifest records its inventory (users and keys),
// unless the member's state changed while the image was exported. If any step fails the image
// object is deleted (best effort) and the error names the step.
func Create(ctx context.Context, src ImageSource, repo Repo, opts CreateOptions) (*Manifest, error) {
	st := repo.Store
	if _, err := repo.prefix(); err != nil {
		return nil, err
	}
	if err := checkCreateOptions(&opts); err != nil {
		return nil, err
	}
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	if opts.Lock.Mode != "" {
		// Before the HSM is asked for anything: a store that cannot lock
		// would refuse only the first Put, after the export began.
		if err := CheckObjectLock(ctx, st); err != nil {
			return nil, err
		}
	}

	health, err := src.Health(ctx)
	if err != nil {
		return nil, fmt.Errorf("check member health: %w", err)
	}
	if !health.ClusterInitialized {
		return nil, fmt.Errorf("check member health: %w: cluster not initialized", ErrSource)
	}
	cluster := health.ClusterID
	if opts.ClusterID != "" && opts.ClusterID != cluster {
		return nil, fmt.Errorf("check member health: %w: member is in cluster %q, not %q", ErrSource, cluster, opts.ClusterID)
	}
	if err := validClusterID(cluster); err != nil {
		return nil, fmt.Errorf("check member health: %w: %w", ErrSource, err)
	}

	created := now().UTC().Round(0)
	id, err := newBackupID(created)
	if err != nil {
		return nil, fmt.Errorf("create backup id: %w", err)
	}
	imageKey := repo.ObjectKey(cluster, id, ImageObject)
	manifestKey := repo.ObjectKey(cluster, id, ManifestObject)

	m := &Manifest{
		Format: ManifestFormat, ID: id, ClusterID: cluster, Location: location(repo, cluster, id), State: StateReady, Created: created,
		Tags: cloneTags(opts.Tags), NeverExpires: opts.NeverExpires, RetentionDays: opts.RetentionDays,
		ClusterCertificate: bytes.Clone(opts.ClusterCertificate), CustomerCA: bytes.Clone(opts.CustomerCA),
		Lock: opts.Lock.lockOf(created),
	}
	var lock store.Retention
	if m.Lock != nil {
		lock = store.Retention{Mode: m.Lock.Mode, Until: m.Lock.Until}
	}
	var inv *Inventory
	if ls, ok := src.(InventorySource); ok {
		if inv, err = inventory(ctx, ls); err != nil {
			return nil, err
		}
	}
	if err := storeImage(ctx, src, st, imageKey, lock, health, opts.Recipients, m); err != nil {
		return nil, cleanupAfter(ctx, st, imageKey, err)
	}
	// The inventory describes the image only if the member's state did not
	// change from before it was listed to after the export. A member that
	// cannot say any more (a daemon stopping after it let the export
	// finish) leaves it out: the image itself is whole, as the HSM stated.
	if after, err := src.Health(ctx); err == nil && after.StateDigest == health.StateDigest {
		m.Inventory = inv
		if len(health.StateVersion) > 0 {
			m.StateVersion = health.StateVersion
		}
	}
	if err := m.Sign(opts.SigningKey); err != nil {
		return nil, cleanupAfter(ctx, st, imageKey, err)
	}
	if opts.BeforeCommit != nil {
		if err := opts.BeforeCommit(ctx); err != nil {
			cleanup(ctx, st, imageKey)
			return nil, fmt.Errorf("commit backup %s: %w", id, err)
		}
	}
	b, err := m.Marshal()
	if err == nil {
		err = st.Put(ctx, manifestKey, bytes.NewReader(b), store.PutOptions{CreateOnly: true, Retention: lock})
	}
	if err != nil {
		err = fmt.Errorf("write manifest %s: %w", id, err)
		// The manifest may be stored all the same, its answer lost: it
		// goes first, so that no backup is ever listed without its image.
		// If it stays, so does the image: a whole backup.
		if derr := cleanup(ctx, st, manifestKey); derr != nil {
			return nil, fmt.Errorf("%w (and its deletion failed: backup %s may be listed, whole: %w)", err, id, derr)
		}
		return nil, cleanupAfter(ctx, st, imageKey, err)
	}
	return m, nil
}

// inventory lists what the member holds.
func inventory(ctx context.Context, src InventorySource) (*Inventory, error) {
	hi, err := src.Inventory(ctx, MaxInventoryKeys)
	if err != nil {
		return nil, fmt.Errorf("list users and keys: %w", err)
	}
	return inventoryOf(hi), nil
}

func checkCreateOptions(o *CreateOptions) error {
	if o.ClusterID != "" {
		if err := validClusterID(o.ClusterID); err != nil {
			return err
		}
	}
	if len(o.Recipients) == 0 || len(o.Recipients) > maxRecipients {
		return fmt.Errorf("%d recipients, want 1 to %d", len(o.Recipients), maxRecipients)
	}
	if len(o.SigningKey) != ed25519.PrivateKeySize {
		return errors.New("signing key is not an Ed25519 private key")
	}
	if err := ValidateTags(o.Tags); err != nil {
		return err
	}
	if o.RetentionDays < 0 || (o.NeverExpires && o.RetentionDays != 0) {
		return errors.New("bad retention")
	}
	if err := o.Lock.Validate(); err != nil {
		return err
	}
	if o.Lock.Mode != "" && o.Lock.Days < o.RetentionDays {
		return fmt.Errorf("object lock of %d days is shorter than the backup's retention of %d days", o.Lock.Days, o.RetentionDays)
	}
	return nil
}

func cloneTags(t map[string]string) map[string]string {
	if len(t) == 0 {
		return nil
	}
	c := make(map[string]string, len(t))
	for k, v := range t {
		c[k] = v
	}
	return c
}

// The deletion of the image object of a backup that failed or was
// interrupted runs detached from the (maybe cancelled) context, under a
// deadline of its own: CleanupTimeout if the caller interrupted Create,
// so that it ends within seconds even against a slow store; else
// CleanupPersist, repeating transient failures, since the store fault
// that failed the backup may go on. An image left behind (the deadline
// passed, the process was killed) has no manifest: Orphans reports it and
// Prune removes it.
const (
	CleanupTimeout = 4 * time.Second
	CleanupPersist = 30 * time.Second
)

// cleanup deletes a backup's object after a failure, even if ctx is done,
// and returns the store's error.
func cleanup(ctx context.Context, st store.Store, key string) error {
	bound := CleanupPersist
	if ctx.Err() != nil {
		bound = CleanupTimeout
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), bound)
	defer cancel()
	for wait := 500 * time.Millisecond; ; wait = min(2*wait, 8*time.Second) {
		err := st.Delete(ctx, key)
		if !store.IsTransient(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
	}
}

// cleanupAfter is cleanup after err, which it returns, saying so if the
// image object stays because it is locked (object lock): a stray object
// that Prune removes once the lock ends.
func cleanupAfter(ctx context.Context, st store.Store, key string, err error) error {
	if cerr := cleanup(ctx, st, key); errors.Is(cerr, store.ErrLocked) {
		return fmt.Errorf("%w (the image object stored stays until its object lock ends; prune removes it then)", err)
	}
	return err
}

// storeImage runs the pipeline
//
//	member → inner header check → wrap.Encrypt → putEnvelope
//
// and fills in m's image fields.
func storeImage(ctx context.Context, src ImageSource, st store.Store, key string, lock store.Retention, health api.Health, recipients []wrap.Recipient, m *Manifest) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rc, err := src.ExportImage(ctx)
	if err != nil {
		return fmt.Errorf("export image: %w", err)
	}
	defer rc.Close()
	var inner *hsmcore.ImageHeader
	var innerSize int64
	var statement *hsmcore.SignedImageStatement
	obj, err := putEnvelope(ctx, st, key, lock, func(w io.Writer) error {
		return produce(ctx, rc, w, health, recipients, &inner, &innerSize, &statement)
	})
	if err != nil {
		return err
	}
	stmt, err := hsmcore.ParseImageStatement(statement.Statement)
	if err != nil {
		return fmt.Errorf("export image: %w", err)
	}
	m.ImageSHA256 = hex.EncodeToString(stmt.SHA256[:])
	m.ImageStatement = statement
	m.Source = Source{Identity: inner.Source, PBKFingerprint: hex.EncodeToString(inner.PBKFingerprint[:])}
	m.ImageID = hex.EncodeToString(inner.ImageID[:])
	m.ImageSize = innerSize
	obj.fill(m)
	return nil
}

// storedEnvelope describes an outer envelope putEnvelope stored.
type storedEnvelope struct {
	header *wrap.Header
	raw    []byte // the header's bytes
	size   int64
	sum    []byte // SHA-256 of the object
}

func (e *storedEnvelope) fill(m *Manifest) {
	m.ObjectSize = e.size
	m.ObjectSHA256 = hex.EncodeToString(e.sum)
	m.Recipients = e.header.Recipients()
	m.OuterHeader = e.raw
}

// putEnvelope stores at key, create-only and under lock (if its Mode is
// set), the outer envelope that produce writes, hashing it on the way
// through an io.Pipe (memory stays flat).
// The object is stored only if produce returns nil: its error reaches the
// store's reader in place of the end of the stream. The error returned is
// produce's if it failed, else the store's.
func putEnvelope(ctx context.Context, st store.Store, key string, lock store.Retention, produce func(io.Writer) error) (*storedEnvelope, error) {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := produce(pw)
		pw.CloseWithError(err) // nil: EOF
		done <- err
	}()

	h := sha256.New()
	cnt := &counter{h: h}
	tee := io.TeeReader(pr, cnt)
	outer, raw, err := readOuterHeader(tee)
	if err == nil {
		err = st.Put(ctx, key, io.MultiReader(bytes.NewReader(raw), tee), store.PutOptions{CreateOnly: true, Retention: lock})
		if err != nil {
			err = fmt.Errorf("store image: %w", err)
		}
	}
	pr.CloseWithError(errAborted) // unblock the producer if Put stopped early
	perr := <-done
	switch {
	case perr != nil && !errors.Is(perr, errAborted):
		return nil, perr // the cause: Put's error, if any, only repeats it
	case err != nil:
		return nil, err
	case perr != nil:
		return nil, perr
	}
	return &storedEnvelope{header: outer, raw: raw, size: cnt.n, sum: h.Sum(nil)}, nil
}

var errAborted = errors.New("image upload stopped")

func readOuterHeader(r io.Reader) (*wrap.Header, []byte, error) {
	h, err := wrap.ReadHeader(r)
	if err != nil {
		return nil, nil, fmt.Errorf("encrypt image: %w", err)
	}
	raw, err := h.MarshalBinary()
	if err != nil {
		return nil, nil, fmt.Errorf("encrypt image: %w", err)
	}
	return h, raw, nil
}

// produce reads the inner image from rc, checks its header against the
// member's health, writes it encrypted to w, and completes the envelope
// only once the image received is the one the HSM's signed statement
// describes (length and SHA-256); a stream cut at any point fails here.
func produce(ctx context.Context, rc hsmcore.ImageStream, w io.Writer, health api.Health, recipients []wrap.Recipient, inner **hsmcore.ImageHeader, size *int64, statement **hsmcore.SignedImageStatement) error {
	hdr, raw, err := hsmcore.ReadImageHeader(rc)
	if err != nil {
		return fmt.Errorf("read image header: %w", err)
	}
	if hdr.Source != health.Identity || hdr.ClusterID != health.ClusterID ||
		!bytes.Equal(hdr.PBKFingerprint[:], health.PBKFingerprint) {
		return fmt.Errorf("read image header: %w: the image is not the member's", ErrSource)
	}
	enc, err := wrap.Encrypt(ctx, w, recipients...)
	if err != nil {
		return fmt.Errorf("encrypt image: %w", err)
	}
	if _, err := enc.Write(raw); err != nil {
		return fmt.Errorf("encrypt image: %w", err)
	}
	h := sha256.New()
	h.Write(raw)
	n, err := io.Copy(enc, io.TeeReader(rc, h))
	if err != nil {
		return fmt.Errorf("export image: %w", err)
	}
	got := int64(len(raw)) + n
	stmt, err := checkStatement(rc, hdr, got, [32]byte(h.Sum(nil)))
	if err != nil {
		return fmt.Errorf("export image: %w", err)
	}
	// Only a whole image, as the HSM stated it, gets a complete envelope.
	if err := enc.Close(); err != nil {
		return fmt.Errorf("encrypt image: %w", err)
	}
	*inner, *size, *statement = hdr, got, stmt
	return nil
}

// checkStatement verifies the HSM's signed statement that rc carried after
// the image, and checks the image received against it: the image id, the
// exporting HSM (the device certificate names its serial, class and
// manufacturer), the length and the SHA-256.
func checkStatement(rc hsmcore.ImageStream, hdr *hsmcore.ImageHeader, length int64, sum [32]byte) (*hsmcore.SignedImageStatement, error) {
	signed, err := rc.ImageStatement()
	if err != nil {
		return nil, err
	}
	st, cert, err := signed.Verify(hsmcore.ImageStatementOptions{})
	if err != nil {
		return nil, err
	}
	if err := certNames(cert, hdr.Source); err != nil {
		return nil, fmt.Errorf("image statement: %w: %w", err, hsmcore.ErrTampered)
	}
	if err := st.Check(hdr.ImageID, length, sum); err != nil {
		return nil, err
	}
	return signed, nil
}

// certNames checks that a device certificate names the HSM id: its serial
// and class in the subject, its manufacturer as the issuer (as
// hsmcore.VerifyAttestation requires of the same certificate).
func certNames(cert *x509.Certificate, id hsmcore.Identity) error {
	switch {
	case cert.Subject.SerialNumber != id.Serial:
		return fmt.Errorf("device certificate names serial %q, not %q", cert.Subject.SerialNumber, id.Serial)
	case len(cert.Subject.OrganizationalUnit) != 1 || cert.Subject.OrganizationalUnit[0] != id.Class:
		return fmt.Errorf("device certificate does not name class %q", id.Class)
	case len(cert.Issuer.Organization) != 1 || cert.Issuer.Organization[0] != id.Manufacturer:
		return fmt.Errorf("device certificate not issued by %q", id.Manufacturer)
	}
	return nil
}

// counter is an io.Writer that counts, and hashes if it has a hash.
type counter struct {
	h hash.Hash // nil: count only
	n int64
}

func (c *counter) Write(p []byte) (int, error) {
	if c.h != nil {
		c.h.Write(p)
	}
	c.n += int64(len(p))
	return len(p), nil
}

func newBackupID(t time.Time) (string, error) {
	var r [idRandLen]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", err
	}
	for i := range r {
		r[i] = base32Lower[r[i]&31]
	}
	return idPrefix + t.UTC().Format(idTimeLayout) + "-" + string(r[:]), nil
}
