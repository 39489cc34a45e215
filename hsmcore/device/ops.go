package device

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/internal/keywrap"
)

// Limits on data passed to crypto operations.
const maxData = 1 << 20

// useKey runs fn with key h if the session's crypto user may use it and
// the attribute chosen by allowed is set. fn runs without the lock: keys
// are immutable once stored.
func (s *Session) useKey(op string, h uint64, allowed func(*keyRecord) bool) (*keyRecord, error) {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check(op, hsmcore.CryptoUser); err != nil {
		return nil, err
	}
	k, err := s.usableKey(op, h)
	if err != nil {
		return nil, err
	}
	if !allowed(k) {
		d.audit(s.user, op, fmt.Sprint(h), "denied")
		return nil, fmt.Errorf("%s: key %d: attribute does not allow it: %w", op, h, hsmcore.ErrPermission)
	}
	return k, nil
}

// Encrypt seals plaintext with AES-GCM under AES key h. The result is a
// random 12-byte nonce followed by ciphertext and tag.
func (s *Session) Encrypt(h uint64, plaintext, aad []byte) ([]byte, error) {
	if len(plaintext) > maxData || len(aad) > maxData {
		return nil, fmt.Errorf("encrypt: data over %d bytes: %w", maxData, hsmcore.ErrInvalid)
	}
	k, err := s.useKey("encrypt", h, func(k *keyRecord) bool { return k.Type == hsmcore.AES && k.Encrypt })
	if err != nil {
		return nil, err
	}
	g := newGCM(k.Material)
	nonce := make([]byte, g.NonceSize(), g.NonceSize()+len(plaintext)+g.Overhead())
	rand.Read(nonce)
	return g.Seal(nonce, nonce, plaintext, aad), nil
}

// Decrypt opens what Encrypt sealed.
func (s *Session) Decrypt(h uint64, ciphertext, aad []byte) ([]byte, error) {
	if len(ciphertext) > maxData+28 || len(aad) > maxData {
		return nil, fmt.Errorf("decrypt: data too large: %w", hsmcore.ErrInvalid)
	}
	k, err := s.useKey("decrypt", h, func(k *keyRecord) bool { return k.Type == hsmcore.AES && k.Decrypt })
	if err != nil {
		return nil, err
	}
	g := newGCM(k.Material)
	if len(ciphertext) < g.NonceSize()+g.Overhead() {
		return nil, fmt.Errorf("decrypt: %w", hsmcore.ErrTampered)
	}
	pt, err := g.Open(nil, ciphertext[:g.NonceSize()], ciphertext[g.NonceSize():], aad)
	if err != nil {
		return nil, fmt.Errorf("decrypt: %w", hsmcore.ErrTampered)
	}
	return pt, nil
}

// Sign signs message with EC or RSA key h: ECDSA with SHA-256 (P-256) or
// SHA-384 (P-384), ASN.1 encoded; RSA-PSS with SHA-256 and a salt as long
// as the hash.
func (s *Session) Sign(h uint64, message []byte) ([]byte, error) {
	if len(message) > maxData {
		return nil, fmt.Errorf("sign: message over %d bytes: %w", maxData, hsmcore.ErrInvalid)
	}
	k, err := s.useKey("sign", h, func(k *keyRecord) bool { return k.Class == hsmcore.PrivateKey && k.Sign })
	if err != nil {
		return nil, err
	}
	priv, err := x509.ParsePKCS8PrivateKey(k.Material)
	if err != nil {
		return nil, fmt.Errorf("sign: key %d: %w", h, err)
	}
	hash, digest := hsmcore.SignatureDigest(k.KeyInfo, message)
	switch p := priv.(type) {
	case *ecdsa.PrivateKey:
		return ecdsa.SignASN1(rand.Reader, p, digest)
	case *rsa.PrivateKey:
		return rsa.SignPSS(rand.Reader, p, hash, digest, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
	}
	return nil, fmt.Errorf("sign: key %d: %w", h, hsmcore.ErrInvalid)
}

// Verify checks a signature made by Sign with key h.
func (s *Session) Verify(h uint64, message, sig []byte) error {
	if len(message) > maxData || len(sig) > 1024 {
		return fmt.Errorf("verify: input too large: %w", hsmcore.ErrInvalid)
	}
	k, err := s.useKey("verify", h, func(k *keyRecord) bool { return k.Class == hsmcore.PrivateKey && k.Verify })
	if err != nil {
		return err
	}
	return hsmcore.VerifySignature(k.info(), message, sig)
}

// WrapKey exports key target wrapped with AES-KWP (RFC 5649) under the AES
// key wrapping. The session's crypto user must be able to use both; target
// must be extractable; wrapping must have wrap set; and if target has
// wrap-with-trusted set, wrapping must be trusted. Only 128- and 256-bit
// wrapping keys are supported.
func (s *Session) WrapKey(wrapping, target uint64) ([]byte, error) {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check("key.wrap", hsmcore.CryptoUser); err != nil {
		return nil, err
	}
	w, err := s.usableKey("key.wrap", wrapping)
	if err != nil {
		return nil, err
	}
	t, err := s.usableKey("key.wrap", target)
	if err != nil {
		return nil, err
	}
	var why string
	switch {
	case w.Type != hsmcore.AES || !w.Wrap:
		why = "wrapping key is not an AES key with wrap set"
	case w.Bits == 192:
		why = "wrapping with AES-192 is not supported"
	case !t.Extractable:
		why = "key is not extractable"
	case t.WrapWithTrusted && !w.Trusted:
		why = "key may only be wrapped by a trusted key"
	}
	if why != "" {
		d.audit(s.user, "key.wrap", fmt.Sprintf("%d/%d", wrapping, target), "denied")
		return nil, fmt.Errorf("wrap key %d with %d: %s: %w", target, wrapping, why, hsmcore.ErrPermission)
	}
	out, err := keywrap.Wrap(w.Material, t.Material)
	if err != nil {
		return nil, fmt.Errorf("wrap key %d: %w", target, err)
	}
	if err := d.audit(s.user, "key.wrap", fmt.Sprintf("%d/%d", wrapping, target), "ok"); err != nil {
		return nil, err
	}
	return out, nil
}

// UnwrapKey imports a key wrapped by WrapKey (or any RFC 5649 wrap of raw
// secret bytes or PKCS#8 DER) under the AES key unwrapping, with the
// attributes spec gives; the new key is not local.
func (s *Session) UnwrapKey(unwrapping uint64, wrapped []byte, spec hsmcore.KeySpec) (hsmcore.KeyInfo, error) {
	if err := checkSpec(spec); err != nil {
		return hsmcore.KeyInfo{}, fmt.Errorf("unwrap key: %w", err)
	}
	if len(wrapped) > 16<<10 {
		return hsmcore.KeyInfo{}, fmt.Errorf("unwrap key: wrapped key too large: %w", hsmcore.ErrInvalid)
	}
	w, err := s.useKey("key.unwrap", unwrapping, func(k *keyRecord) bool { return k.Type == hsmcore.AES && k.Unwrap && k.Bits != 192 })
	if err != nil {
		return hsmcore.KeyInfo{}, err
	}
	material, err := keywrap.Unwrap(w.Material, wrapped)
	if err != nil {
		if errors.Is(err, keywrap.ErrUnwrap) {
			err = hsmcore.ErrTampered
		}
		return hsmcore.KeyInfo{}, fmt.Errorf("unwrap key with %d: %w", unwrapping, err)
	}
	rec, err := newKeyRecord(spec, material, s.user, false)
	if err != nil {
		return hsmcore.KeyInfo{}, fmt.Errorf("unwrap key: %v: %w", err, hsmcore.ErrInvalid)
	}
	rec.NeverExtractable = false
	infos, err := s.addKeys("key.unwrap", []*keyRecord{rec})
	if err != nil {
		return hsmcore.KeyInfo{}, err
	}
	return infos[0], nil
}
