package hsmcore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"golang.org/x/crypto/cryptobyte"
)

// Image format; docs/FORMATS.md is the specification.
var imageMagic = [8]byte{'H', 'S', 'M', 'I', 'M', 'G', '\r', '\n'}

// ImageVersion is the version of the images HSMs write now: 2, whose
// contents are binary records. Version 1 (JSON contents, the same header)
// is still read.
const ImageVersion = 2

const (
	maxHeaderBody    = 4096
	wrapAES256KWP    = 1 // EBK wrapped with AES-256-KWP under PBK
	compressZstd     = 1
	wrappedEBKLength = 40 // KWP of 32 bytes
)

// ImageChunkSize is the plaintext size of every chunk of an image body
// but the last.
const ImageChunkSize = 64 << 10

// ImageHeader is the clear-text, authenticated header of an image: what a
// restore checks before it spends any effort on the body.
type ImageHeader struct {
	Version        uint8 // 1 or 2; 0 means ImageVersion
	ImageID        [16]byte
	Created        time.Time
	Source         Identity // the exporting HSM
	ClusterID      string
	PBKFingerprint [32]byte
	WrappedEBK     []byte // AES-KWP(PBK, EBK); opaque outside the HSM
}

// marshal encodes h as the bytes that start an image; they are also the
// body's additional authenticated data.
func (h *ImageHeader) Marshal() ([]byte, error) {
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
	b.AddUint32(ImageChunkSize)
	body, err := b.Bytes()
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(imageMagic)+5+len(body))
	out = append(out, imageMagic[:]...)
	v := h.Version
	if v == 0 {
		v = ImageVersion
	}
	if v < 1 || v > ImageVersion {
		return nil, fmt.Errorf("image header: version %d: %w", v, ErrUnsupportedVersion)
	}
	out = append(out, v)
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
	v := pre[len(imageMagic)]
	if v < 1 || v > ImageVersion {
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
	h.Version = v
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
		if err := CheckName(string(f)); err != nil {
			return nil, fmt.Errorf("field %d: %w", i, err)
		}
	}
	if _, err := ParseFirmware(h.Source.Firmware); err != nil {
		return nil, err
	}
	if h.ClusterID != "" {
		if err := CheckName(h.ClusterID); err != nil {
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
	case chunk != ImageChunkSize:
		return nil, fmt.Errorf("chunk size %d", chunk)
	}
	h.WrappedEBK = []byte(wrapped)
	return h, nil
}
