package backup

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/wrap"
)

// VerifyOptions are the options of Verify. PublicKey is required.
type VerifyOptions struct {
	// PublicKey verifies the manifest's signature.
	PublicKey ed25519.PublicKey
	// Identities, if any, open the outer envelope, which is then
	// authenticated in full. Without them Verify checks the signature and
	// the object's hash only: an offline check with only the public key.
	Identities []wrap.Identity
	// Deep also parses the inner image header inside the envelope and
	// compares it, the inner size and, where the manifest has it (with the
	// HSM's signed statement), the inner SHA-256 with the manifest. It needs
	// Identities. The inner body is encrypted under a key only HSMs hold
	// and is not authenticated here.
	Deep bool
}

// Verify checks backup id of cluster, layer by layer, and returns an error
// wrapping the sentinel of the first layer that fails: ErrManifest (parse,
// location, signature), ErrObjectHash (size or SHA-256 of the stored
// object), ErrOuterLayer (the envelope's header or body), ErrInnerHeader
// (Deep: the inner header). Whatever layer fails, the object is read to its
// end, so that a changed object is always reported as ErrObjectHash. An
// error reading storage wraps the store's error and none of these.
func Verify(ctx context.Context, repo Repo, cluster, id string, opts VerifyOptions) error {
	if opts.Deep && len(opts.Identities) == 0 {
		return errors.New("a deep check needs identities")
	}
	if err := verify(ctx, repo, cluster, id, opts); err != nil {
		return fmt.Errorf("backup %s: %w", id, err)
	}
	return nil
}

func verify(ctx context.Context, repo Repo, cluster, id string, opts VerifyOptions) error {
	m, err := describe(ctx, repo, cluster, id)
	if err != nil {
		return err
	}
	if err := m.Verify(opts.PublicKey); err != nil {
		return err
	}
	if m.State == StateDeleted {
		return fmt.Errorf("%w: it is DELETED and its image purged; only its manifest remains", ErrState)
	}
	rc, err := repo.GetImage(ctx, cluster, id)
	if err != nil {
		return err
	}
	defer rc.Close()

	src := &readErr{r: rc}
	h := sha256.New()
	cnt := &counter{h: h}
	tee := io.TeeReader(src, cnt)
	var layerErr error
	if len(opts.Identities) > 0 {
		layerErr = checkEnvelope(ctx, tee, m, opts)
	}
	if _, err := io.Copy(io.Discard, tee); err != nil {
		return fmt.Errorf("read image: %w", err)
	}
	if src.err != nil {
		return fmt.Errorf("read image: %w", src.err)
	}
	sum := h.Sum(nil)
	want, _ := hex.DecodeString(m.ObjectSHA256)
	if cnt.n != m.ObjectSize || subtle.ConstantTimeCompare(sum, want) != 1 {
		return ErrObjectHash
	}
	return layerErr
}

// CheckObject reads backup m's image object and checks its size and
// SHA-256 against m, as Verify does without keys; it does not check m's
// signature. A mismatch is an error wrapping ErrObjectHash; an error
// reading storage wraps the store's error.
func CheckObject(ctx context.Context, repo Repo, m *Manifest) error {
	if err := checkObject(ctx, repo, m); err != nil {
		return fmt.Errorf("backup %s: %w", m.ID, err)
	}
	return nil
}

// checkObject is CheckObject without naming the backup.
func checkObject(ctx context.Context, repo Repo, m *Manifest) error {
	rc, err := repo.GetImage(ctx, m.ClusterID, m.ID)
	if err != nil {
		return err
	}
	defer rc.Close()
	h := sha256.New()
	n, err := io.Copy(h, rc)
	if err != nil {
		return fmt.Errorf("read image: %w", err)
	}
	want, _ := hex.DecodeString(m.ObjectSHA256)
	if n != m.ObjectSize || subtle.ConstantTimeCompare(h.Sum(nil), want) != 1 {
		return ErrObjectHash
	}
	return nil
}

// checkEnvelope opens and authenticates the envelope read from r and, with
// opts.Deep, checks the inner header.
func checkEnvelope(ctx context.Context, r io.Reader, m *Manifest, opts VerifyOptions) error {
	plain, err := openEnvelope(ctx, r, m, opts.Identities)
	if err != nil {
		return err
	}
	pc := &readErr{r: plain}
	cr := &counter{} // the inner size and SHA-256, for Deep
	if opts.Deep && m.ImageSHA256 != "" {
		cr.h = sha256.New()
	}
	body := io.TeeReader(pc, cr)
	if opts.Deep {
		err := readInnerHeader(body, m)
		if pc.err != nil {
			return fmt.Errorf("%w: %w", ErrOuterLayer, pc.err)
		}
		if err != nil {
			return err
		}
	}
	if _, err := io.Copy(io.Discard, body); err != nil {
		return fmt.Errorf("%w: %w", ErrOuterLayer, err)
	}
	if opts.Deep && cr.n != m.ImageSize {
		return fmt.Errorf("%w: %d bytes, manifest says %d", ErrInnerHeader, cr.n, m.ImageSize)
	}
	if cr.h != nil && hex.EncodeToString(cr.h.Sum(nil)) != m.ImageSHA256 {
		return fmt.Errorf("%w: SHA-256 differs from the manifest's", ErrInnerHeader)
	}
	return nil
}

// openEnvelope checks that the envelope read from r has the manifest's
// header and opens it with ids; the plaintext authenticates as it is read.
func openEnvelope(ctx context.Context, r io.Reader, m *Manifest, ids []wrap.Identity) (io.Reader, error) {
	hdr, err := wrap.ReadHeader(r)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrOuterLayer, err)
	}
	raw, err := hdr.MarshalBinary()
	if err != nil || !bytes.Equal(raw, m.OuterHeader) {
		return nil, fmt.Errorf("%w: header differs from the manifest's", ErrOuterLayer)
	}
	plain, err := wrap.Decrypt(ctx, io.MultiReader(bytes.NewReader(raw), r), ids...)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrOuterLayer, err)
	}
	return plain, nil
}

// readInnerHeader reads the inner image header from r and checks it
// against m (ErrInnerHeader).
func readInnerHeader(r io.Reader, m *Manifest) error {
	inner, _, err := hsmcore.ReadImageHeader(r)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInnerHeader, err)
	}
	if err := matchInner(inner, m); err != nil {
		return fmt.Errorf("%w: %w", ErrInnerHeader, err)
	}
	return nil
}

// OpenImage reads backup m's stored object from r, in one pass: the
// envelope must have the manifest's header and open with ids
// (ErrOuterLayer), and the inner image header must name what the manifest
// names (ErrInnerHeader) before OpenImage returns. The returned reader
// gives the whole inner image, its header included, as the envelope
// authenticates it; a chunk that fails later is a read error wrapping
// ErrOuterLayer. It does not check the object's size and hash, which only
// its end can tell: a caller streaming into an HSM withholds the end until
// they match.
func OpenImage(ctx context.Context, r io.Reader, m *Manifest, ids ...wrap.Identity) (io.Reader, error) {
	plain, err := openEnvelope(ctx, r, m, ids)
	if err != nil {
		return nil, err
	}
	var head bytes.Buffer
	if err := readInnerHeader(io.TeeReader(plain, &head), m); err != nil {
		return nil, err
	}
	return io.MultiReader(&head, &outerErr{r: plain}), nil
}

// outerErr marks a failure of the envelope's body as ErrOuterLayer.
type outerErr struct{ r io.Reader }

func (o *outerErr) Read(p []byte) (int, error) {
	n, err := o.r.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("%w: %w", ErrOuterLayer, err)
	}
	return n, err
}

func matchInner(h *hsmcore.ImageHeader, m *Manifest) error {
	s := m.Source
	switch {
	case h.Source != s.Identity:
		return errors.New("source identity differs")
	case hex.EncodeToString(h.PBKFingerprint[:]) != s.PBKFingerprint:
		return errors.New("PBK fingerprint differs")
	case hex.EncodeToString(h.ImageID[:]) != m.ImageID:
		return errors.New("image id differs")
	case h.ClusterID != m.ClusterID:
		return errors.New("cluster differs")
	}
	return nil
}

// readErr records the first error other than io.EOF that its reader
// returns, to tell a storage failure from a layer's.
type readErr struct {
	r   io.Reader
	err error
}

func (e *readErr) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF && e.err == nil {
		e.err = err
	}
	return n, err
}
