package hsmcore

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/crypto/cryptobyte"

	"github.com/hsmbackup/hsmbackup/hsmcore/internal/stream"
	"github.com/hsmbackup/hsmbackup/internal/ctxio"
	"github.com/hsmbackup/hsmbackup/internal/keywrap"
)

// Image format v1; docs/FORMATS.md is the specification.
var imageMagic = [8]byte{'H', 'S', 'M', 'I', 'M', 'G', '\r', '\n'}

const (
	imageVersion     = 1
	maxHeaderBody    = 4096
	wrapAES256KWP    = 1 // EBK wrapped with AES-256-KWP under PBK
	compressZstd     = 1
	wrappedEBKLength = 40 // KWP of 32 bytes
)

// ImageHeader is the clear-text, authenticated header of an image: what a
// restore checks before it spends any effort on the body.
type ImageHeader struct {
	ImageID        [16]byte
	Created        time.Time
	Source         Identity // the exporting HSM
	ClusterID      string
	PBKFingerprint [32]byte
	WrappedEBK     []byte // AES-KWP(PBK, EBK); opaque outside the HSM
}

// marshal encodes h as the bytes that start an image; they are also the
// body's additional authenticated data.
func (h *ImageHeader) marshal() ([]byte, error) {
	var b cryptobyte.Builder
	b.AddBytes(h.ImageID[:])
	b.AddUint64(uint64(h.Created.UnixNano()))
	for _, s := range []string{h.Source.Serial, h.Source.Class, h.Source.Manufacturer, h.Source.Operator, h.Source.Firmware, h.ClusterID} {
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(s)) })
	}
	b.AddUint8(boolByte(h.Source.FIPS))
	b.AddBytes(h.PBKFingerprint[:])
	b.AddUint8(wrapAES256KWP)
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(h.WrappedEBK) })
	b.AddUint8(compressZstd)
	b.AddUint32(stream.ChunkSize)
	body, err := b.Bytes()
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(imageMagic)+5+len(body))
	out = append(out, imageMagic[:]...)
	out = append(out, imageVersion)
	out = binary.BigEndian.AppendUint32(out, uint32(len(body)))
	return append(out, body...), nil
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// ReadImageHeader reads and parses an image header from r, leaving r at
// the start of the body. It returns the header and its raw bytes. It checks
// the format only; nothing is authenticated until the body is decrypted.
func ReadImageHeader(r io.Reader) (*ImageHeader, []byte, error) {
	pre := make([]byte, len(imageMagic)+5)
	if _, err := io.ReadFull(r, pre); err != nil {
		return nil, nil, fmt.Errorf("image header: %w: %w", ErrMalformed, noEOF(err))
	}
	if !bytes.Equal(pre[:len(imageMagic)], imageMagic[:]) {
		return nil, nil, fmt.Errorf("image header: bad magic: %w", ErrMalformed)
	}
	if v := pre[len(imageMagic)]; v != imageVersion {
		return nil, nil, fmt.Errorf("image header: version %d: %w", v, ErrUnsupportedVersion)
	}
	n := binary.BigEndian.Uint32(pre[len(imageMagic)+1:])
	if n > maxHeaderBody {
		return nil, nil, fmt.Errorf("image header: %d bytes, limit %d: %w", n, maxHeaderBody, ErrMalformed)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, nil, fmt.Errorf("image header: %w: %w", ErrMalformed, noEOF(err))
	}
	h, err := parseHeaderBody(body)
	if err != nil {
		return nil, nil, fmt.Errorf("image header: %w: %w", err, ErrMalformed)
	}
	return h, append(pre, body...), nil
}

func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

func parseHeaderBody(body []byte) (*ImageHeader, error) {
	s := cryptobyte.String(body)
	h := new(ImageHeader)
	var created uint64
	var fields [6]cryptobyte.String
	var fips, wrapAlg, compression uint8
	var wrapped cryptobyte.String
	var chunk uint32
	if !s.CopyBytes(h.ImageID[:]) || !s.ReadUint64(&created) {
		return nil, errors.New("short header")
	}
	for i := range fields {
		if !s.ReadUint8LengthPrefixed(&fields[i]) {
			return nil, errors.New("short header")
		}
	}
	if !s.ReadUint8(&fips) || !s.CopyBytes(h.PBKFingerprint[:]) || !s.ReadUint8(&wrapAlg) ||
		!s.ReadUint16LengthPrefixed(&wrapped) || !s.ReadUint8(&compression) || !s.ReadUint32(&chunk) {
		return nil, errors.New("short header")
	}
	if !s.Empty() {
		return nil, errors.New("trailing bytes in header")
	}
	h.Created = time.Unix(0, int64(created)).UTC()
	h.Source = Identity{Serial: string(fields[0]), Class: string(fields[1]), Manufacturer: string(fields[2]),
		Operator: string(fields[3]), Firmware: string(fields[4]), FIPS: fips == 1}
	h.ClusterID = string(fields[5])
	for i, f := range fields[:4] {
		if err := checkName(string(f)); err != nil {
			return nil, fmt.Errorf("field %d: %w", i, err)
		}
	}
	if _, err := parseFirmware(h.Source.Firmware); err != nil {
		return nil, err
	}
	if h.ClusterID != "" {
		if err := checkName(h.ClusterID); err != nil {
			return nil, fmt.Errorf("cluster id: %w", err)
		}
	}
	switch {
	case fips > 1:
		return nil, errors.New("fips flag not 0 or 1")
	case wrapAlg != wrapAES256KWP:
		return nil, fmt.Errorf("unknown EBK wrap algorithm %d", wrapAlg)
	case len(wrapped) != wrappedEBKLength:
		return nil, fmt.Errorf("wrapped EBK of %d bytes", len(wrapped))
	case compression != compressZstd:
		return nil, fmt.Errorf("unknown compression %d", compression)
	case chunk != stream.ChunkSize:
		return nil, fmt.Errorf("chunk size %d", chunk)
	}
	h.WrappedEBK = []byte(wrapped)
	return h, nil
}

// ExportImage returns the device's image: its users, token keys and
// cluster membership, compressed and encrypted by the HSM under a fresh EBK
// that only HSMs of the same class, manufacturer and operator can unwrap.
// The image is produced while it is read, so memory stays flat whatever
// the key count. The caller must Close the reader; cancelling ctx stops the
// export with ctx's error. Crypto officers only.
func (s *Session) ExportImage(ctx context.Context) (*ImageHeader, io.ReadCloser, error) {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check("image.export", CryptoOfficer); err != nil {
		return nil, nil, err
	}
	if err := s.requireQuorum("image.export", ""); err != nil {
		return nil, nil, err
	}
	snap := d.st // immutable: later changes build new contents

	ebk := make([]byte, 32)
	rand.Read(ebk)
	wrapped, err := keywrap.Wrap(d.pbk, ebk)
	if err != nil {
		return nil, nil, fmt.Errorf("export image: %w", err)
	}
	h := &ImageHeader{Created: d.opts.now(), Source: d.id, ClusterID: snap.clusterID(), PBKFingerprint: pbkFingerprint(d.pbk), WrappedEBK: wrapped}
	rand.Read(h.ImageID[:])
	raw, err := h.marshal()
	if err != nil {
		return nil, nil, fmt.Errorf("export image: %w", err)
	}
	if err := d.audit(s.user, "image.export", fmt.Sprintf("%x", h.ImageID), "ok"); err != nil {
		return nil, nil, err
	}

	pr, pw := io.Pipe()
	go func() {
		defer clear(ebk)
		pw.CloseWithError(writeImage(ctx, pw, raw, ebk, snap))
	}()
	return h, pr, nil
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
// and cluster membership. A device without users accepts an image without
// a session (restoring into a new HSM); otherwise s must be a crypto
// officer's session on this device.
//
// The checks, in order (docs/FORMATS.md numbers them): the header parses;
// class, manufacturer and operator equal the device's, and so does the PBK
// fingerprint (ErrHardwareMismatch); the device's firmware is not older
// (ErrFirmwareDowngrade); FIPS mode is kept (ErrFIPSMode); the EBK unwraps
// under the PBK; every chunk authenticates, in order, up to the last
// (ErrTampered, ErrTruncated, ErrTrailingData); the contents parse and fit.
// The new contents are staged in memory and committed, sealed to disk
// atomically, only after all of that; on any error the device is
// unchanged.
func (d *Device) ImportImage(ctx context.Context, s *Session, r io.Reader) (*ImageHeader, error) {
	if err := d.authorizeImport(s); err != nil {
		return nil, err
	}
	h, raw, err := ReadImageHeader(r)
	if err != nil {
		d.auditImport(s, "", "malformed")
		return nil, fmt.Errorf("import image: %w", err)
	}
	id := fmt.Sprintf("%x", h.ImageID)
	staged, err := d.stageImage(ctx, h, raw, r)
	if err != nil {
		d.auditImport(s, id, "refused")
		return nil, fmt.Errorf("import image %s: %w", id, err)
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.authorizeImportLocked(s); err != nil {
		return nil, err
	}
	if s != nil {
		if err := s.requireQuorum("image.import", ""); err != nil {
			return nil, err
		}
	}
	if err := d.commit(staged); err != nil {
		d.audit(sessionUser(s), "image.import", id, "error")
		return nil, fmt.Errorf("import image %s: %w", id, err)
	}
	if err := d.audit(sessionUser(s), "image.import", id, "ok"); err != nil {
		return nil, err
	}
	return h, nil
}

func sessionUser(s *Session) string {
	if s == nil {
		return ""
	}
	return s.user
}

func (d *Device) authorizeImport(s *Session) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.authorizeImportLocked(s)
}

func (d *Device) authorizeImportLocked(s *Session) error {
	if s == nil {
		if len(d.st.Users) > 0 {
			d.audit("", "image.import", "", "denied")
			return fmt.Errorf("import image: device is initialized: a crypto officer must import: %w", ErrPermission)
		}
		return nil
	}
	if s.d != d {
		return fmt.Errorf("import image: session belongs to another device: %w", ErrPermission)
	}
	return s.check("image.import", CryptoOfficer)
}

func (d *Device) auditImport(s *Session, id, result string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.audit(sessionUser(s), "image.import", id, result)
}

// stageImage runs every check on an image and returns its contents,
// without touching the device's state.
func (d *Device) stageImage(ctx context.Context, h *ImageHeader, raw []byte, r io.Reader) (*contents, error) {
	src, dst := h.Source, d.id
	if src.Class != dst.Class || src.Manufacturer != dst.Manufacturer || src.Operator != dst.Operator {
		return nil, fmt.Errorf("image from %s/%s/%s, device is %s/%s/%s: %w",
			src.Manufacturer, src.Class, src.Operator, dst.Manufacturer, dst.Class, dst.Operator, ErrHardwareMismatch)
	}
	if h.PBKFingerprint != pbkFingerprint(d.pbk) {
		return nil, fmt.Errorf("image PBK fingerprint differs from the device's: %w", ErrHardwareMismatch)
	}
	srcFW, _ := parseFirmware(src.Firmware) // checked by ReadImageHeader
	dstFW, _ := parseFirmware(dst.Firmware)
	if dstFW.less(srcFW) {
		return nil, fmt.Errorf("image from firmware %s, device runs %s: %w", src.Firmware, dst.Firmware, ErrFirmwareDowngrade)
	}
	if src.FIPS && !dst.FIPS {
		return nil, fmt.Errorf("import image: %w", ErrFIPSMode)
	}
	ebk, err := keywrap.Unwrap(d.pbk, h.WrappedEBK)
	if err != nil || len(ebk) != 32 {
		return nil, fmt.Errorf("unwrap EBK: %w", ErrTampered)
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
	c, err := readContents(zr, d.capacity)
	if body.err != nil {
		return nil, classifyStreamErr(body.err)
	}
	if err != nil {
		return nil, err
	}
	if c.clusterID() != h.ClusterID {
		return nil, fmt.Errorf("contents are of cluster %q, header says %q: %w", c.clusterID(), h.ClusterID, ErrMalformed)
	}
	// The contents ended: the body must now end at its authenticated last
	// chunk, with nothing after it.
	if n, err := io.Copy(io.Discard, body); err != nil {
		return nil, classifyStreamErr(err)
	} else if n != 0 {
		return nil, fmt.Errorf("%d bytes after the contents: %w", n, ErrMalformed)
	}
	return c, nil
}

// classifyStreamErr maps the body decryptor's errors to the package's
// sentinels, keeping the chunk named in the message.
func classifyStreamErr(err error) error {
	switch {
	case errors.Is(err, stream.ErrTruncated):
		return fmt.Errorf("%w: %w", err, ErrTruncated)
	case errors.Is(err, stream.ErrTrailingData):
		return fmt.Errorf("%w: %w", err, ErrTrailingData)
	case errors.Is(err, stream.ErrTampered):
		return fmt.Errorf("%w: %w", err, ErrTampered)
	}
	return err
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
