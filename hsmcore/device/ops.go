package device

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/hsmbackup/hsmbackup/hsmcore"
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

// WrapKey exports key target wrapped under key wrapping with mech. The
// session's crypto user must be able to use both (own or share them);
// target must be extractable; wrapping must be of mech's type with wrap
// set; and if target has wrap-with-trusted set, wrapping must be trusted.
// The audit entry names the mechanism and the target's check value.
func (s *Session) WrapKey(wrapping, target uint64, mech hsmcore.Mechanism) ([]byte, error) {
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
	object := wrapObject(mech, wrapping, target, t.KCV)
	why := checkWrapping(mech, w, false)
	switch {
	case why != "":
	case !t.Extractable:
		why = "key is not extractable"
	case t.WrapWithTrusted && !w.Trusted:
		why = "key may only be wrapped by a trusted key"
	}
	return s.finishWrap(mech, w, t, object, fmt.Sprintf("with %d", wrapping), why)
}

// finishWrap finishes a wrap of t under w whose checks gave why ("" to go
// ahead): refused, or made; audited either way under object. under names
// the wrapping key in errors. The caller holds d.mu.
func (s *Session) finishWrap(mech hsmcore.Mechanism, w, t *keyRecord, object, under, why string) ([]byte, error) {
	d := s.d
	if why != "" {
		d.audit(s.user, "key.wrap", object, "denied")
		return nil, fmt.Errorf("wrap key %d %s (%s): %s: %w", t.Handle, under, mech, why, hsmcore.ErrPermission)
	}
	out, err := wrapMaterial(mech, w, t.Material)
	if err != nil {
		d.audit(s.user, "key.wrap", object, "error")
		return nil, fmt.Errorf("wrap key %d (%s): %v: %w", t.Handle, mech, err, hsmcore.ErrInvalid)
	}
	if err := d.audit(s.user, "key.wrap", object, "ok"); err != nil {
		return nil, err
	}
	return out, nil
}

// WrapKeyToPublic exports key target wrapped with an RSA mechanism under
// pub, a public key from outside the HSM (PKIX DER, RSA 2048 to 4096
// bits): a cloud KMS's import wrapping key. The HSM trusts no outside key,
// so a key with wrap-with-trusted set never leaves this way; otherwise the
// rules are WrapKey's. The audit entry names the mechanism, the SHA-256 of
// pub's DER and the key's check value.
func (s *Session) WrapKeyToPublic(pub []byte, target uint64, mech hsmcore.Mechanism) ([]byte, error) {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check("key.wrap", hsmcore.CryptoUser); err != nil {
		return nil, err
	}
	t, err := s.usableKey("key.wrap", target)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(pub)
	object := fmt.Sprintf("%s pub:%x/%d kcv=%s", mech, sum[:8], target, t.KCV)
	w, err := outsideWrappingKey(pub)
	var why string
	switch {
	case err != nil:
		why = err.Error()
	case mech.WrappingKeyType() != hsmcore.RSA:
		why = fmt.Sprintf("%s does not wrap under a public key", mech)
	case !t.Extractable:
		why = "key is not extractable"
	case t.WrapWithTrusted:
		why = "key may only be wrapped by a trusted key, and no outside key is trusted"
	}
	return s.finishWrap(mech, w, t, object, "under an outside public key", why)
}

// outsideWrappingKey is pub as a wrapping key record: its public half
// only, never stored.
func outsideWrappingKey(pub []byte) (*keyRecord, error) {
	k, err := x509.ParsePKIXPublicKey(pub)
	if err != nil {
		return nil, errors.New("wrapping key is not a PKIX public key")
	}
	rk, ok := k.(*rsa.PublicKey)
	if !ok || rk.N.BitLen() < 2048 || rk.N.BitLen() > 4096 {
		return nil, errors.New("wrapping key is not an RSA key of 2048 to 4096 bits")
	}
	return &keyRecord{KeyInfo: hsmcore.KeyInfo{Type: hsmcore.RSA, Bits: rk.N.BitLen(), Wrap: true, PublicKey: pub}}, nil
}

// widerThan reports whether template a allows anything b does not.
func widerThan(a, b *hsmcore.UnwrapTemplate) bool {
	return b.WrapWithTrusted && !a.WrapWithTrusted ||
		b.Exceeds(hsmcore.KeySpec{Encrypt: a.Encrypt, Decrypt: a.Decrypt, Sign: a.Sign, Verify: a.Verify,
			Wrap: a.Wrap, Unwrap: a.Unwrap, Extractable: a.Extractable}) != ""
}

// wrapObject is the audit object of a wrap or unwrap: the mechanism, the
// wrapping key's handle, the wrapped key's (0 before an unwrap) and its
// check value.
func wrapObject(mech hsmcore.Mechanism, wrapping, target uint64, kcv string) string {
	return fmt.Sprintf("%s %d/%d kcv=%s", mech, wrapping, target, kcv)
}

// UnwrapKey imports a key wrapped with mech under key unwrapping (by
// WrapKey, or by any implementation of the mechanism, of raw secret bytes
// or PKCS#8 DER), with the attributes spec gives; the new key is not
// local and was extractable before.
func (s *Session) UnwrapKey(unwrapping uint64, mech hsmcore.Mechanism, wrapped []byte, spec hsmcore.KeySpec) (hsmcore.KeyInfo, error) {
	if err := checkSpec(spec); err != nil {
		return hsmcore.KeyInfo{}, fmt.Errorf("unwrap key: %w", err)
	}
	if len(wrapped) > maxWrapped {
		return hsmcore.KeyInfo{}, fmt.Errorf("unwrap key: wrapped key too large: %w", hsmcore.ErrInvalid)
	}
	w, err := s.useKey("key.unwrap", unwrapping, func(k *keyRecord) bool { return checkWrapping(mech, k, true) == "" })
	if err != nil {
		return hsmcore.KeyInfo{}, err
	}
	if t := w.UnwrapTemplate; t != nil {
		if what := t.Exceeds(spec); what != "" {
			s.d.mu.Lock()
			s.d.audit(s.user, "key.unwrap", wrapObject(mech, unwrapping, 0, ""), "denied")
			s.d.mu.Unlock()
			return hsmcore.KeyInfo{}, fmt.Errorf("unwrap key with %d: its unwrap template does not allow %s: %w", unwrapping, what, hsmcore.ErrPermission)
		}
		spec.WrapWithTrusted = spec.WrapWithTrusted || t.WrapWithTrusted
		// A key unwrapped here that unwraps in turn is bound as tightly.
		switch {
		case spec.Unwrap && spec.UnwrapTemplate == nil:
			spec.UnwrapTemplate = cloneTemplate(t)
		case spec.UnwrapTemplate != nil && widerThan(spec.UnwrapTemplate, t):
			return hsmcore.KeyInfo{}, fmt.Errorf("unwrap key with %d: an unwrap template wider than its own: %w", unwrapping, hsmcore.ErrPermission)
		}
	}
	if spec.UnwrapTemplate != nil && !spec.Unwrap {
		return hsmcore.KeyInfo{}, fmt.Errorf("unwrap key: an unwrap template on a key without unwrap: %w", hsmcore.ErrInvalid)
	}
	material, err := unwrapMaterial(mech, w, wrapped)
	if err != nil {
		s.d.mu.Lock()
		s.d.audit(s.user, "key.unwrap", wrapObject(mech, unwrapping, 0, ""), "refused")
		s.d.mu.Unlock()
		return hsmcore.KeyInfo{}, fmt.Errorf("unwrap key with %d (%s): %w", unwrapping, mech, err)
	}
	rec, err := newKeyRecord(spec, material, s.user, false)
	if err != nil {
		return hsmcore.KeyInfo{}, fmt.Errorf("unwrap key: %v: %w", err, hsmcore.ErrInvalid)
	}
	rec.NeverExtractable = false
	rec.Bound = cloneTemplate(w.UnwrapTemplate)
	infos, err := s.addKeys("key.unwrap", []*keyRecord{rec}, fmt.Sprintf("%s from %d kcv=%s", mech, unwrapping, rec.KCV))
	if err != nil {
		return hsmcore.KeyInfo{}, err
	}
	return infos[0], nil
}
