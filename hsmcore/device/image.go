package device

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/klauspost/compress/zstd"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/device/internal/stream"
	"github.com/hsmbackup/hsmbackup/internal/ctxio"
	"github.com/hsmbackup/hsmbackup/internal/keywrap"
)

// ExportImage returns the device's image: its users, token keys and
// cluster membership, compressed and encrypted by the HSM under a fresh EBK
// that only HSMs of the same class, manufacturer and operator can unwrap.
// The image is produced while it is read, so memory stays flat whatever
// the key count. The caller must Close the reader; cancelling ctx stops the
// export with ctx's error. Crypto officers only.
//
// Once the reader has returned io.EOF, its ImageStatement is the device's
// signed statement of the image's id, length and SHA-256 (docs/FORMATS.md
// 2.6). Zeroizing the device cuts an export in flight: its reader fails.
func (s *Session) ExportImage(ctx context.Context) (*hsmcore.ImageHeader, hsmcore.ImageStream, error) {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check("image.export", hsmcore.CryptoOfficer); err != nil {
		return nil, nil, err
	}
	if err := s.requireQuorum("image.export", hsmcore.ImageExportObject(d.st.clusterID(), d.id.Serial)); err != nil {
		return nil, nil, err
	}
	snap := d.st // immutable: later changes build new contents
	ep := d.ep

	ebk := make([]byte, 32)
	rand.Read(ebk)
	wrapped, err := keywrap.Wrap(d.pbk, ebk)
	if err != nil {
		return nil, nil, fmt.Errorf("export image: %w", err)
	}
	h := &hsmcore.ImageHeader{Version: hsmcore.ImageVersion, Created: d.opts.now(), Source: d.id, ClusterID: snap.clusterID(), PBKFingerprint: pbkFingerprint(d.pbk), WrappedEBK: wrapped}
	rand.Read(h.ImageID[:])
	raw, err := h.Marshal()
	if err != nil {
		return nil, nil, fmt.Errorf("export image: %w", err)
	}
	if err := d.audit(s.user, "image.export", fmt.Sprintf("%x", h.ImageID), "ok"); err != nil {
		return nil, nil, err
	}

	pr, pw := io.Pipe()
	out := &exportStream{PipeReader: pr, done: make(chan struct{})}
	go func() {
		defer clear(ebk)
		// A zeroization cuts the export: the contents it sends are erased.
		defer context.AfterFunc(ep.ctx, func() { pw.CloseWithError(errZeroized) })()
		hw := &hashCounter{w: pw, h: sha256.New()}
		err := writeImage(ctx, hw, raw, ebk, snap)
		if err == nil {
			err = out.sign(d, h.ImageID, hw)
		}
		pw.CloseWithError(err)
	}()
	return h, out, nil
}

// exportStream is an export's reader; its statement is set, and done
// closed, before the pipe's writer reports io.EOF.
type exportStream struct {
	*io.PipeReader
	done chan struct{}
	st   *hsmcore.SignedImageStatement
}

func (e *exportStream) sign(d *Device, id [16]byte, hw *hashCounter) error {
	st := hsmcore.ImageStatement{ImageID: id, Serial: d.id.Serial, Length: hw.n}
	hw.h.Sum(st.SHA256[:0])
	msg, err := st.Marshal()
	if err != nil {
		return fmt.Errorf("export image: %w", err)
	}
	sig, err := d.sign(hsmcore.ImageStatementDomain, msg)
	if err != nil {
		return fmt.Errorf("export image: sign statement: %w", err)
	}
	e.st = &hsmcore.SignedImageStatement{Statement: msg, Signature: sig, Certificate: d.mfrCert}
	close(e.done)
	return nil
}

func (e *exportStream) ImageStatement() (*hsmcore.SignedImageStatement, error) {
	select {
	case <-e.done:
		return e.st, nil
	default:
		return nil, fmt.Errorf("image statement: the image was not read to its end: %w", hsmcore.ErrTruncated)
	}
}

// hashCounter counts and hashes what it writes to w.
type hashCounter struct {
	w io.Writer
	h hash.Hash
	n int64
}

func (c *hashCounter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.h.Write(p[:n])
	c.n += int64(n)
	return n, err
}

// writeImage writes header, then the encrypted, compressed contents.
func writeImage(ctx context.Context, w io.Writer, header, ebk []byte, c *contents) error {
	w = ctxio.Writer(ctx, w)
	if _, err := w.Write(header); err != nil {
		return err
	}
	enc, err := stream.NewWriter(w, ebk, header)
	if err != nil {
		return err
	}
	zw, err := zstd.NewWriter(enc, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(2))
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(zw, 64<<10)
	if err := writeContents(bw, c); err != nil {
		zw.Close()
		return fmt.Errorf("export image: %w", err)
	}
	if err := bw.Flush(); err != nil {
		zw.Close()
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return enc.Close()
}

// ImportImage restores an image into the device, replacing its users, keys
// and cluster membership, as the crypto officer of session s on this
// device, or, with s nil, into a device without users whose cluster is
// initialized (its daemon has checked the caller's client certificate).
// ClaimImage imports into a new HSM.
//
// The checks, in order (docs/FORMATS.md numbers them): the header parses;
// class, manufacturer and operator equal the device's, and so does the PBK
// fingerprint (ErrHardwareMismatch); the device's firmware is not older
// (ErrFirmwareDowngrade); FIPS mode is kept (ErrFIPSMode); the EBK unwraps
// under the PBK; every chunk authenticates, in order, up to the last
// (ErrTampered, ErrTruncated, ErrTrailingData); the contents parse and fit.
// The new contents are staged in memory and committed, sealed to disk
// atomically, only after all of that; on any error the device is
// unchanged. An image still being staged when the device is zeroized is
// discarded, never committed into the zeroized device.
//
// If the quorum policy protects "image.import", the approvals must be of
// a token for hsmcore.ImageImportObject of the SHA-256 of the bytes read
// from r, which must end right after the image. They are checked, and
// the token spent, only once the whole image has been read and verified.
func (d *Device) ImportImage(ctx context.Context, s *Session, r io.Reader) (*hsmcore.ImageHeader, error) {
	return d.importImage(ctx, importer{s: s}, r)
}

// ClaimImage imports an image into a new HSM (no cluster, no users) for
// the holder of its claim secret: p is a proof for hsmcore.ClaimImport
// with an empty object. This is how a new member is cloned.
func (d *Device) ClaimImage(ctx context.Context, p *hsmcore.ClaimProof, r io.Reader) (*hsmcore.ImageHeader, error) {
	return d.importImage(ctx, importer{claim: p}, r)
}

// importer is who imports: an officer's session, the holder of a claim,
// or neither (a device whose cluster is initialized and has no users).
type importer struct {
	s     *Session
	claim *hsmcore.ClaimProof
}

func (d *Device) importImage(ctx context.Context, by importer, r io.Reader) (*hsmcore.ImageHeader, error) {
	ep, err := d.authorizeImport(by)
	if err != nil {
		return nil, err
	}
	// Only an officer's import can need the image's digest (for a quorum
	// token): the claim holder's and an unauthenticated one never do.
	hr := &hashReader{r: r}
	if by.s != nil {
		hr.h = sha256.New()
	}
	h, raw, err := hsmcore.ReadImageHeader(hr)
	if err != nil {
		d.auditImport(by, "", "malformed")
		return nil, fmt.Errorf("import image: %w", err)
	}
	id := fmt.Sprintf("%x", h.ImageID)
	// A zeroization while the image is staged discards it.
	sctx, stop := ep.bind(ctx)
	defer stop()
	staged, err := d.stageImage(sctx, h, raw, hr)
	var sum [32]byte
	if err == nil {
		sum, err = hr.sumToEnd()
	}
	if err != nil && ep.ended() {
		err = errZeroized
	}
	if err != nil {
		d.auditImport(by, id, "refused")
		return nil, fmt.Errorf("import image %s: %w", id, err)
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ep != ep {
		d.auditImportLocked(by, id, "refused")
		return nil, fmt.Errorf("import image %s: %w", id, errZeroized)
	}
	if err := d.authorizeImportLocked(by); err != nil {
		return nil, err
	}
	if by.s != nil {
		if err := by.s.requireQuorum("image.import", hsmcore.ImageImportObject(sum)); err != nil {
			return nil, err
		}
	}
	if err := d.commit(staged); err != nil {
		d.auditImportLocked(by, id, "error")
		return nil, fmt.Errorf("import image %s: %w", id, err)
	}
	if by.claim != nil {
		d.claims.issued = nil // claimed: no nonce outlives it
	}
	if err := d.auditImportLocked(by, id, "ok"); err != nil {
		return nil, err
	}
	return h, nil
}

// authorizeImport checks who imports, spends a claim proof, and returns
// the epoch the import begins in.
func (d *Device) authorizeImport(by importer) (*epoch, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.authorizeImportLocked(by); err != nil {
		return nil, err
	}
	if by.claim != nil {
		if err := d.proveClaim(by.claim, hsmcore.ClaimImport, ""); err != nil {
			return nil, fmt.Errorf("import image: %w", err)
		}
	}
	if by.s == nil {
		if err := d.limitUnauth("image.import"); err != nil {
			return nil, fmt.Errorf("import image: %w", err)
		}
	}
	return d.ep, nil
}

// authorizeImportLocked checks, at the start of an import and again before
// it commits, that by may import into the device as it is now. The caller
// holds d.mu.
func (d *Device) authorizeImportLocked(by importer) error {
	if s := by.s; s != nil {
		if s.d != d {
			return fmt.Errorf("import image: session belongs to another device: %w", hsmcore.ErrPermission)
		}
		return s.check("image.import", hsmcore.CryptoOfficer)
	}
	switch {
	case len(d.st.Users) > 0:
		d.auditUnauth("image.import", "", "denied")
		return fmt.Errorf("import image: device is initialized: a crypto officer must import: %w", hsmcore.ErrPermission)
	case by.claim == nil && !d.st.clusterInitialized():
		if d.claim == nil {
			return fmt.Errorf("import image: %w", hsmcore.ErrNoClaim)
		}
		d.auditUnauth("image.import", "", "denied")
		return fmt.Errorf("import image: HSM %s is not claimed yet: a claim proof is required (the claim file hsm manufacture wrote for it): %w", d.id.Serial, hsmcore.ErrPermission)
	case by.claim != nil && d.st.clusterInitialized():
		d.auditUnauth("image.import", "", "denied")
		return fmt.Errorf("import image: HSM %s is set up already: its cluster is initialized: %w", d.id.Serial, hsmcore.ErrPermission)
	}
	return nil
}

func (d *Device) auditImport(by importer, id, result string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.auditImportLocked(by, id, result)
}

// auditImportLocked records an import by an officer, by the claim holder,
// or as an unauthenticated call. The caller holds d.mu.
func (d *Device) auditImportLocked(by importer, id, result string) error {
	switch {
	case by.s != nil:
		return d.audit(by.s.user, "image.import", id, result)
	case by.claim != nil:
		return d.appendAudit(hsmcore.ClaimHolder, "image.import", id, result)
	}
	return d.auditUnauth("image.import", id, result)
}

// stageImage runs every check on an image and returns its contents,
// without touching the device's state.
func (d *Device) stageImage(ctx context.Context, h *hsmcore.ImageHeader, raw []byte, r io.Reader) (*contents, error) {
	src, dst := h.Source, d.id
	if src.Class != dst.Class || src.Manufacturer != dst.Manufacturer || src.Operator != dst.Operator {
		return nil, fmt.Errorf("image from %s/%s/%s, device is %s/%s/%s: %w",
			src.Manufacturer, src.Class, src.Operator, dst.Manufacturer, dst.Class, dst.Operator, hsmcore.ErrHardwareMismatch)
	}
	if h.PBKFingerprint != pbkFingerprint(d.pbk) {
		return nil, fmt.Errorf("image PBK fingerprint differs from the device's: %w", hsmcore.ErrHardwareMismatch)
	}
	srcFW, _ := hsmcore.ParseFirmware(src.Firmware) // checked by ReadImageHeader
	dstFW, _ := hsmcore.ParseFirmware(dst.Firmware)
	if dstFW.Less(srcFW) {
		return nil, fmt.Errorf("image from firmware %s, device runs %s: %w", src.Firmware, dst.Firmware, hsmcore.ErrFirmwareDowngrade)
	}
	if src.FIPS && !dst.FIPS {
		return nil, fmt.Errorf("import image: %w", hsmcore.ErrFIPSMode)
	}
	ebk, err := keywrap.Unwrap(d.pbk, h.WrappedEBK)
	if err != nil || len(ebk) != 32 {
		return nil, fmt.Errorf("unwrap EBK: %w", hsmcore.ErrTampered)
	}
	defer clear(ebk)

	dec, err := stream.NewReader(ctxio.Reader(ctx, r), ebk, raw)
	if err != nil {
		return nil, err
	}
	// The decompressor reports a failing source as a premature end; keep
	// the source's own error, which says what went wrong.
	body := &errRecorder{r: dec}
	zr, err := zstd.NewReader(body, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(8<<20), zstd.WithDecoderMaxMemory(64<<20))
	if err != nil {
		return nil, err
	}
	defer zr.Close()
	c, err := readContents(zr, int(h.Version), d.capacity)
	if body.err != nil {
		return nil, classifyStreamErr(body.err)
	}
	if err != nil {
		return nil, err
	}
	if c.clusterID() != h.ClusterID {
		return nil, fmt.Errorf("contents are of cluster %q, header says %q: %w", c.clusterID(), h.ClusterID, hsmcore.ErrMalformed)
	}
	// The contents ended: the body must now end at its authenticated last
	// chunk, with nothing after it.
	if n, err := io.Copy(io.Discard, body); err != nil {
		return nil, classifyStreamErr(err)
	} else if n != 0 {
		return nil, fmt.Errorf("%d bytes after the contents: %w", n, hsmcore.ErrMalformed)
	}
	return c, nil
}

// classifyStreamErr maps the body decryptor's errors to the package's
// sentinels, keeping the chunk named in the message.
func classifyStreamErr(err error) error {
	switch {
	case errors.Is(err, stream.ErrTruncated):
		return fmt.Errorf("%w: %w", err, hsmcore.ErrTruncated)
	case errors.Is(err, stream.ErrTrailingData):
		return fmt.Errorf("%w: %w", err, hsmcore.ErrTrailingData)
	case errors.Is(err, stream.ErrTampered):
		return fmt.Errorf("%w: %w", err, hsmcore.ErrTampered)
	}
	return err
}

// hashReader hashes what it reads from r, if h is set.
type hashReader struct {
	r io.Reader
	h hash.Hash
}

func (h *hashReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	if h.h != nil {
		h.h.Write(p[:n])
	}
	return n, err
}

// sumToEnd requires r to have ended and returns the SHA-256 of all it
// gave (zero if it hashed nothing): the digest an image.import approval
// names.
func (h *hashReader) sumToEnd() ([32]byte, error) {
	var b [1]byte
	for {
		n, err := h.r.Read(b[:])
		if n > 0 {
			return [32]byte{}, fmt.Errorf("data after the image: %w", hsmcore.ErrTrailingData)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return [32]byte{}, err
		}
	}
	var sum [32]byte
	if h.h != nil {
		h.h.Sum(sum[:0])
	}
	return sum, nil
}

// errRecorder remembers the first error other than io.EOF its reader
// returned.
type errRecorder struct {
	r   io.Reader
	err error
}

func (e *errRecorder) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF && e.err == nil {
		e.err = err
	}
	return n, err
}
