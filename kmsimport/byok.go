package kmsimport

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"

	"github.com/hsmbackup/hsmbackup/internal/strictjson"
)

// A .byok file (Azure Key Vault BYOK specification): JSON of
//
//	{"schema_version":"1.0.0",
//	 "header":{"kid":"<KEK id URL with version>","alg":"dir","enc":"CKM_RSA_AES_KEY_WRAP"},
//	 "ciphertext":"<base64url, unpadded, of the CKM_RSA_AES_KEY_WRAP blob>",
//	 "generator":"<tool and HSM>"}
//
// az keyvault key import --byok-file takes it.

// BYOK is a .byok file's fields.
type BYOK struct {
	SchemaVersion string     `json:"schema_version"`
	Header        BYOKHeader `json:"header"`
	Ciphertext    string     `json:"ciphertext"`
	Generator     string     `json:"generator"`
}

// BYOKHeader names the key-exchange key and the layout.
type BYOKHeader struct {
	KID string `json:"kid"`
	Alg string `json:"alg"`
	Enc string `json:"enc"`
}

const (
	byokSchema = "1.0.0"
	byokAlg    = "dir"
	byokEnc    = "CKM_RSA_AES_KEY_WRAP"
	// maxBYOK bounds a .byok file: a PKCS#8 RSA-4096 key wrapped under a
	// 4096-bit KEK is under 4 KiB of base64.
	maxBYOK = 64 << 10
	// maxBlob bounds the wrapped key a .byok file carries.
	maxBlob = 16 << 10
)

// EncodeBYOK returns the .byok file of blob, a CKM_RSA_AES_KEY_WRAP blob
// (rsa-aes-sha1) under the key-exchange key kid.
func EncodeBYOK(kid string, blob []byte, generator string) ([]byte, error) {
	if err := checkKID(kid); err != nil {
		return nil, err
	}
	if len(blob) == 0 || len(blob) > maxBlob {
		return nil, fmt.Errorf("byok: a wrapped key of %d bytes", len(blob))
	}
	b, err := json.MarshalIndent(BYOK{
		SchemaVersion: byokSchema,
		Header:        BYOKHeader{KID: kid, Alg: byokAlg, Enc: byokEnc},
		Ciphertext:    base64.RawURLEncoding.EncodeToString(blob),
		Generator:     generator,
	}, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// ParseBYOK reads a .byok file and returns it with the blob it carries. It
// takes what EncodeBYOK writes: the one schema, algorithm and layout, a
// kid URL, base64url with or without padding; its input is bounded.
func ParseBYOK(b []byte) (BYOK, []byte, error) {
	var f BYOK
	if len(b) > maxBYOK {
		return f, nil, errors.New("byok: file too large")
	}
	if err := strictjson.Unmarshal(b, &f); err != nil {
		return f, nil, fmt.Errorf("byok: %w", err)
	}
	switch {
	case f.SchemaVersion != byokSchema:
		return f, nil, fmt.Errorf("byok: schema_version %q, want %s", f.SchemaVersion, byokSchema)
	case f.Header.Alg != byokAlg || f.Header.Enc != byokEnc:
		return f, nil, fmt.Errorf("byok: alg %q, enc %q; want %s, %s", f.Header.Alg, f.Header.Enc, byokAlg, byokEnc)
	}
	if err := checkKID(f.Header.KID); err != nil {
		return f, nil, err
	}
	enc := base64.RawURLEncoding
	if len(f.Ciphertext)%4 == 0 {
		enc = base64.URLEncoding
	}
	blob, err := enc.DecodeString(f.Ciphertext)
	if err != nil || len(blob) == 0 || len(blob) > maxBlob {
		return f, nil, errors.New("byok: ciphertext is not base64url of a wrapped key")
	}
	return f, blob, nil
}

// checkKID checks a key-exchange key's identifier: an https URL.
func checkKID(kid string) error {
	u, err := url.Parse(kid)
	if err != nil || u.Scheme != "https" || u.Host == "" || len(kid) > 1024 {
		return errors.New("byok: the key-exchange key id (--kid) must be its https URL, with its version")
	}
	return nil
}
