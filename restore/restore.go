// Package restore restores a verified backup into an HSM: it verifies the
// backup in full, attests the target against what the backup's manifest
// requires, and only then streams the image, opened from its outer
// envelope, into the target, which checks it again and commits it
// atomically.
package restore

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"
	"time"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/hsmbackup/hsmbackup/wrap"
)

// Errors. Restore adds no sentinel of its own for what its callees detect:
// a backup that fails verification wraps backup's sentinel for the layer
// (backup.ErrManifest, backup.ErrObjectHash, backup.ErrOuterLayer,
// backup.ErrInnerHeader) or backup.ErrState; a target whose attestation
// does not verify or meet the backup's requirements wraps
// hsmcore.ErrAttestation; errors from the target's import are passed
// through, so the hsmcore sentinels (hsmcore.ErrHardwareMismatch,
// hsmcore.ErrTampered…) match them. Its own sentinel, ErrNotNew, is in
// cluster.go.

// Target is the HSM to restore into. *hsmcore/client.Client satisfies it;
// an uninitialized HSM imports without a session, an initialized one needs
// a crypto officer's.
type Target interface {
	// Attest returns the target's attestation bound to a nonce.
	hsmcore.Attester
	// Bind pins the target to the HSM whose verified attestation st is:
	// it fails (hsmcore.ErrAttestation) unless the attestation came over a
	// connection to that HSM, and from then on the image goes only to it
	// (see client.Client.Bind).
	Bind(st *hsmcore.Statement) error
	// ImportImage streams an inner image into the target, which commits it
	// only if it authenticates in full.
	ImportImage(ctx context.Context, r io.Reader) (api.ImportResponse, error)
}

// Options are the options of Restore. PublicKey, Identities and both root
// pools are required.
type Options struct {
	// PublicKey verifies the manifest's signature.
	PublicKey ed25519.PublicKey
	// Identities open the outer envelope.
	Identities []wrap.Identity
	// ManufacturerRoots and OperatorRoots verify the target's attestation.
	ManufacturerRoots, OperatorRoots *x509.CertPool
	// Serial, if set, is the serial the target must attest to: another
	// genuine HSM at its address is refused (hsmcore.ErrAttestation).
	// Cluster sets it for each target from its ClusterTarget.
	Serial string
	// DryRun makes every check and stops before the import.
	DryRun bool
	// Force restores into a target that holds users or keys the backup
	// lacks (ErrWouldLose), replacing them.
	Force bool
	// Now is the clock for the attestation's freshness; nil means
	// time.Now.
	Now func() time.Time
}

// Result describes a restore, or with DryRun the restore that would be
// made.
type Result struct {
	BackupID     string
	TargetSerial string
	ImageID      string // lower-case hex
	DryRun       bool
	// Replaced is what the target held that the backup lacks, replaced
	// (with DryRun: to be replaced) under Options.Force; nil if nothing.
	Replaced *Loss
}

// Restore restores backup backupID of clusterID, stored in repo, into
// target. In order: the manifest's signature and state; the target attests
// to a fresh nonce and must be of the source's class, manufacturer and
// operator, firmware no older, FIPS mode if the source was, the same PBK
// fingerprint and opts.Serial if set (hsmcore.ErrAttestation), and is
// bound to (target.Bind): the attestation came over a connection to the
// attested HSM, and the image goes to it only; a target that is a Holder and
// holds users or keys the backup's inventory lacks is refused with a
// *LossError (ErrWouldLose) unless opts.Force; with opts.DryRun, which
// also reads the whole backup first (backup.Verify with Deep: object
// hash, outer layer, inner header), it stops there. Then the object
// streams into the target in one pass: nothing is sent before the
// envelope's and the inner image's headers match the manifest, and the
// target commits nothing unless the object's size and hash, the outer
// layer to its end and the HSM's statement of the image all match (the
// end of the stream is withheld until they do). Errors name the backup
// ("backup <id>: …") or the step on the target; the caller names the
// target.
func Restore(ctx context.Context, repo backup.Repo, clusterID, backupID string, target Target, opts Options) (*Result, error) {
	b, err := verify(ctx, repo, clusterID, backupID, opts)
	if err != nil {
		return nil, err
	}
	return b.into(ctx, target, opts)
}

// verified is a backup that passed every check of its own, ready to
// restore into targets.
type verified struct {
	repo                backup.Repo
	clusterID, backupID string
	m                   *backup.Manifest
	sum                 []byte // the stored object's SHA-256, as the manifest states it
}

// verify checks the backup: step 1 of Restore. A dry run reads the whole
// backup (backup.Verify with Deep); a restore checks the manifest here and
// the object as it streams into the target (into, step 4), so that it
// downloads the object once.
func verify(ctx context.Context, repo backup.Repo, clusterID, backupID string, opts Options) (*verified, error) {
	if len(opts.Identities) == 0 || opts.PublicKey == nil || opts.ManufacturerRoots == nil || opts.OperatorRoots == nil {
		return nil, errors.New("public key, identities and both attestation roots are required")
	}
	if opts.DryRun {
		vopts := backup.VerifyOptions{PublicKey: opts.PublicKey, Identities: opts.Identities, Deep: true}
		if err := backup.Verify(ctx, repo, clusterID, backupID, vopts); err != nil {
			return nil, err // names the backup
		}
	}
	m, err := backup.Describe(ctx, repo, clusterID, backupID)
	if err != nil {
		return nil, err
	}
	// The manifest may have changed since Verify read it.
	if err := m.Verify(opts.PublicKey); err != nil {
		return nil, fmt.Errorf("backup %s: %w", backupID, err)
	}
	if m.State != backup.StateReady {
		return nil, fmt.Errorf("backup %s: %w: backup is %s; only READY backups are restored (restore a deleted one first)", backupID, backup.ErrState, m.State)
	}
	want, err := hex.DecodeString(m.ObjectSHA256)
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w: object hash: %w", backupID, backup.ErrManifest, err)
	}
	return &verified{repo: repo, clusterID: clusterID, backupID: backupID, m: m, sum: want}, nil
}

// into restores the verified backup into target: steps 2 to 4 of Restore.
func (b *verified) into(ctx context.Context, target Target, opts Options) (*Result, error) {
	repo, clusterID, backupID, m, want := b.repo, b.clusterID, b.backupID, b.m, b.sum
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}

	// 2. The target.
	stmt, err := attest(ctx, target, m, opts, now())
	if err != nil {
		return nil, err
	}
	if err := target.Bind(stmt); err != nil {
		return nil, err
	}
	res := &Result{BackupID: m.ID, TargetSerial: stmt.Serial, ImageID: m.ImageID, DryRun: opts.DryRun}
	// The backup's image statement, if it has one, must come from a device
	// certificate of the manufacturer roots that attested the target.
	if err := m.CheckImageStatement(opts.ManufacturerRoots); err != nil {
		return nil, fmt.Errorf("backup %s: %w", backupID, err)
	}

	// 2b. What the target holds that the backup lacks is lost, unless
	// forced.
	if h, ok := target.(Holder); ok {
		held, err := h.Holdings(ctx)
		if err != nil {
			return nil, err
		}
		if loss := lost(m.Inventory, held); loss != nil {
			if !opts.Force {
				return nil, &LossError{Loss: loss}
			}
			res.Replaced = loss
		}
	}

	// 3. A dry run stops before anything is sent.
	if opts.DryRun {
		return res, nil
	}

	// 4. Stream: store → outer envelope → target, in one pass.
	//
	// The envelope's header and the inner image's header are checked
	// against the manifest before the first byte goes to the target. The
	// rest is checked as it streams, and the target changes nothing unless
	// all of it passes: the outer envelope is authenticated to its end by
	// wrap.Decrypt, the inner image end to end by the HSM under a key only
	// HSMs of the source's hardware hold, before the HSM commits anything;
	// a swapped or corrupted object fails one of the two. That leaves a
	// swap for another genuine image (say an older backup of the same
	// hardware, re-wrapped to our recipients). To refuse that too, the
	// object is hashed as it streams and the plaintext's end of stream is
	// withheld until the hash matches the manifest's: the HSM reads to the
	// end of its stream before it commits (it refuses trailing data), so a
	// mismatch reaches it as a read error and it commits nothing.
	rc, err := repo.GetImage(ctx, clusterID, backupID)
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w", backupID, err)
	}
	defer rc.Close()
	h := sha256.New()
	obj := &countingReader{r: io.TeeReader(rc, h)}
	g := &guard{obj: obj, h: h, size: m.ObjectSize, sum: want}
	plain, err := backup.OpenImage(ctx, obj, m, opts.Identities...)
	if err != nil {
		// A changed object is reported as such, as backup.Verify does.
		return nil, fmt.Errorf("backup %s: %w", backupID, g.settle(err))
	}
	g.r = plain
	if m.ImageSHA256 != "" { // the inner image as the HSM stated it
		g.inner = &countingReader{r: plain}
		g.innerHash = sha256.New()
		g.r = io.TeeReader(g.inner, g.innerHash)
		g.innerSize = m.ImageSize
		g.innerSum, _ = hex.DecodeString(m.ImageSHA256)
	}
	resp, err := target.ImportImage(ctx, g)
	if g.err != nil {
		return nil, fmt.Errorf("backup %s: %w", backupID, g.err) // as backup.Verify says it
	}
	if err != nil {
		if !strings.HasPrefix(err.Error(), "import image: ") { // the HSM's refusals name it already
			err = fmt.Errorf("import image: %w", err)
		}
		return nil, err
	}
	if id := hex.EncodeToString(resp.ImageID); id != m.ImageID {
		return nil, fmt.Errorf("import image: target imported image %s, manifest says %s", id, m.ImageID)
	}
	return res, nil
}

// attest has target attest to a fresh nonce and checks the attestation
// against opts' roots and what the manifest's source requires.
func attest(ctx context.Context, target Target, m *backup.Manifest, opts Options, now time.Time) (*hsmcore.Statement, error) {
	fp, err := hex.DecodeString(m.Source.PBKFingerprint)
	if err != nil || len(fp) == 0 {
		return nil, fmt.Errorf("backup %s: %w: bad PBK fingerprint", m.ID, backup.ErrManifest)
	}
	s := m.Source
	stmt, err := hsmcore.Challenge(ctx, target, hsmcore.ChallengeOptions{
		ManufacturerRoots: opts.ManufacturerRoots,
		OperatorRoots:     opts.OperatorRoots,
		Now:               now,
		Expect: hsmcore.Expectation{
			Serial: opts.Serial, Class: s.Class, Manufacturer: s.Manufacturer, Operator: s.Operator,
			MinFirmware: s.Firmware, FIPS: s.FIPS, PBKFingerprint: fp,
		},
	})
	if errors.Is(err, hsmcore.ErrAttestation) {
		return nil, err // names the check
	}
	if err != nil {
		return nil, fmt.Errorf("attest: %w", err)
	}
	return stmt, nil
}

// countingReader counts the bytes read from r and records its first
// error other than io.EOF, to tell a storage failure from the envelope's.
type countingReader struct {
	r   io.Reader
	n   int64
	err error
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if err != nil && err != io.EOF && c.err == nil {
		c.err = err
	}
	return n, err
}

// guard passes the plaintext r through; at its end it reads the rest of
// the stored object and reports io.EOF only if the object has the
// manifest's size and hash. Otherwise it fails with an error wrapping
// backup.ErrObjectHash, recorded in err, so that the
// importer sees a failed stream and commits nothing. A failure of r (the
// envelope does not authenticate, storage fails) is recorded too.
type guard struct {
	r    io.Reader
	obj  *countingReader
	h    hash.Hash
	size int64
	sum  []byte
	err  error
	// The inner image's size and SHA-256, where the manifest has them
	// (inner nil otherwise): a mismatch is backup.ErrInnerHeader.
	inner     *countingReader
	innerHash hash.Hash
	innerSize int64
	innerSum  []byte
}

func (g *guard) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	n, err := g.r.Read(p)
	if err == nil {
		return n, nil
	}
	if err = g.settle(err); err == nil {
		return n, io.EOF
	}
	return n, err
}

// settle decides, at the plaintext's end (err io.EOF) or when it failed
// with err, what the stream's outcome is: the stored object decides
// first, so that a changed object is always reported as such, as
// backup.Verify does. It returns nil for a stream that ended as the
// manifest says.
func (g *guard) settle(err error) error {
	if _, cerr := io.Copy(io.Discard, g.obj); cerr != nil || g.obj.err != nil {
		g.err = fmt.Errorf("read image: %w", cmp.Or(g.obj.err, cerr))
	} else if g.obj.n != g.size || subtle.ConstantTimeCompare(g.h.Sum(nil), g.sum) != 1 {
		g.err = backup.ErrObjectHash
	} else if err != io.EOF {
		g.err = err
		if !errors.Is(err, backup.ErrOuterLayer) && !errors.Is(err, backup.ErrInnerHeader) {
			g.err = fmt.Errorf("%w: %w", backup.ErrOuterLayer, err)
		}
	} else if g.inner != nil && (g.inner.n != g.innerSize || subtle.ConstantTimeCompare(g.innerHash.Sum(nil), g.innerSum) != 1) {
		g.err = fmt.Errorf("%w: size or SHA-256 differs from the HSM's statement", backup.ErrInnerHeader)
	}
	return g.err
}
