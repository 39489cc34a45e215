package api

import (
	"bytes"
	"errors"
	"net/http"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

func TestImageTrailers(t *testing.T) {
	s := &hsmcore.SignedImageStatement{Statement: []byte{1, 2}, Signature: []byte{3}, Certificate: []byte{4, 5, 6}}
	h := http.Header{}
	SetImageStatement(h, s)
	got, err := ImageStatement(h)
	if err != nil || !bytes.Equal(got.Statement, s.Statement) || !bytes.Equal(got.Signature, s.Signature) || !bytes.Equal(got.Certificate, s.Certificate) {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	if _, err := ImageStatement(http.Header{}); !errors.Is(err, hsmcore.ErrTruncated) {
		t.Errorf("no trailers (a stream that ended early): %v", err)
	}
	h.Del(ImageSignatureTrailer)
	if _, err := ImageStatement(h); !errors.Is(err, hsmcore.ErrMalformed) {
		t.Errorf("a trailer missing: %v", err)
	}
}

// FuzzImageTrailers: decoding the trailers never panics and keeps every
// member within its bound.
func FuzzImageTrailers(f *testing.F) {
	f.Add("AQI=", "Aw==", "BAUG")
	f.Add("", "", "")
	f.Add("AQI", "A===", "!!")
	f.Fuzz(func(t *testing.T, stmt, sig, cert string) {
		if len(stmt)+len(sig)+len(cert) > 64<<10 {
			return
		}
		h := http.Header{}
		for k, v := range map[string]string{ImageStatementTrailer: stmt, ImageSignatureTrailer: sig, DeviceCertificateTrailer: cert} {
			if v != "" {
				h.Set(k, v)
			}
		}
		s, err := ImageStatement(h)
		if err != nil {
			if !errors.Is(err, hsmcore.ErrMalformed) && !errors.Is(err, hsmcore.ErrTruncated) {
				t.Fatalf("error without sentinel: %v", err)
			}
			return
		}
		if len(s.Statement) > hsmcore.MaxImageStatementSize || len(s.Signature) > hsmcore.MaxImageSignatureSize || len(s.Certificate) > hsmcore.MaxDeviceCertSize {
			t.Fatalf("decoded beyond the bounds: %d, %d, %d", len(s.Statement), len(s.Signature), len(s.Certificate))
		}
	})
}
