package api

import (
	"encoding/base64"
	"fmt"
	"net/http"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

// The trailers of GET /v1/image (docs/FORMATS.md 2.6): after the image's
// last byte the daemon sends the device's signed statement of the image's
// id, length and SHA-256 as three HTTP/2 trailers, each the standard,
// padded base64 of its bytes. An export that fails after the answer began
// resets the stream instead, so a reader sees an error, never a clean end
// without them.
const (
	ImageStatementTrailer    = "Hsm-Image-Statement"
	ImageSignatureTrailer    = "Hsm-Image-Signature"
	DeviceCertificateTrailer = "Hsm-Device-Certificate"
)

// ImageTrailers is the value of the Trailer header of an export's answer.
const ImageTrailers = ImageStatementTrailer + ", " + ImageSignatureTrailer + ", " + DeviceCertificateTrailer

// SetImageStatement sets the export's trailers in h.
func SetImageStatement(h http.Header, s *hsmcore.SignedImageStatement) {
	h.Set(ImageStatementTrailer, base64.StdEncoding.EncodeToString(s.Statement))
	h.Set(ImageSignatureTrailer, base64.StdEncoding.EncodeToString(s.Signature))
	h.Set(DeviceCertificateTrailer, base64.StdEncoding.EncodeToString(s.Certificate))
}

// ImageStatement decodes an export's trailers. Each must be present
// exactly once, canonical base64 within its bound; what the bytes say is
// checked by SignedImageStatement.Verify. Errors wrap hsmcore.ErrTruncated
// when none is there (the stream ended without them), else
// hsmcore.ErrMalformed.
func ImageStatement(h http.Header) (*hsmcore.SignedImageStatement, error) {
	if len(h.Values(ImageStatementTrailer))+len(h.Values(ImageSignatureTrailer))+len(h.Values(DeviceCertificateTrailer)) == 0 {
		return nil, fmt.Errorf("the image stream ended without the HSM's statement of its length and digest: %w", hsmcore.ErrTruncated)
	}
	var s hsmcore.SignedImageStatement
	for _, f := range []struct {
		name string
		max  int
		out  *[]byte
	}{
		{ImageStatementTrailer, hsmcore.MaxImageStatementSize, &s.Statement},
		{ImageSignatureTrailer, hsmcore.MaxImageSignatureSize, &s.Signature},
		{DeviceCertificateTrailer, hsmcore.MaxDeviceCertSize, &s.Certificate},
	} {
		v := h.Values(f.name)
		if len(v) != 1 || len(v[0]) == 0 || len(v[0]) > base64.StdEncoding.EncodedLen(f.max) {
			return nil, fmt.Errorf("image trailer %s: missing, repeated or too long: %w", f.name, hsmcore.ErrMalformed)
		}
		b, err := base64.StdEncoding.Strict().DecodeString(v[0])
		if err != nil {
			return nil, fmt.Errorf("image trailer %s: %w: %w", f.name, err, hsmcore.ErrMalformed)
		}
		*f.out = b
	}
	return &s, nil
}
