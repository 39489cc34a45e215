package device

import (
	"cmp"
	"crypto/aes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hpke"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"slices"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

// keyRecord is a key as stored and imaged.
type keyRecord struct {
	hsmcore.KeyInfo
	Material []byte `json:"material"` // raw for secret keys, PKCS#8 DER for private keys

	session *Session // owner of a session key; nil for token keys
}

func (k *keyRecord) clone() *keyRecord {
	c := *k
	c.ID = slices.Clone(k.ID)
	c.SharedWith = slices.Clone(k.SharedWith)
	c.PublicKey = slices.Clone(k.PublicKey)
	c.UnwrapTemplate = cloneTemplate(k.UnwrapTemplate)
	c.Bound = cloneTemplate(k.Bound)
	return &c
}

func cloneTemplate(t *hsmcore.UnwrapTemplate) *hsmcore.UnwrapTemplate {
	if t == nil {
		return nil
	}
	c := *t
	return &c
}

// withinBound reports what of k exceeds the unwrap template it was
// unwrapped under, or "".
func (k *keyRecord) withinBound() string {
	b := k.Bound
	if b == nil {
		return ""
	}
	if b.WrapWithTrusted && !k.WrapWithTrusted {
		return "wrap-with-trusted unset"
	}
	return b.Exceeds(hsmcore.KeySpec{Encrypt: k.Encrypt, Decrypt: k.Decrypt, Sign: k.Sign, Verify: k.Verify,
		Wrap: k.Wrap, Unwrap: k.Unwrap, Extractable: k.Extractable})
}

func (k *keyRecord) info() hsmcore.KeyInfo { return k.clone().KeyInfo }

// firstSessionHandle starts the handle range of session keys.
const firstSessionHandle = 1 << 62

const (
	maxLabel = 128
	maxID    = 64
)

// checkSpec validates the parts of a key spec shared by generation and
// unwrap.
func checkSpec(s hsmcore.KeySpec) error {
	if len(s.Label) > maxLabel || len(s.ID) > maxID {
		return fmt.Errorf("label over %d bytes or id over %d bytes: %w", maxLabel, maxID, hsmcore.ErrInvalid)
	}
	switch s.Type {
	case hsmcore.AES:
		if s.Bits != 128 && s.Bits != 192 && s.Bits != 256 {
			return fmt.Errorf("aes key of %d bits: %w", s.Bits, hsmcore.ErrInvalid)
		}
		if s.Sign || s.Verify {
			return fmt.Errorf("aes key cannot sign or verify: %w", hsmcore.ErrInvalid)
		}
	case hsmcore.GenericSecret:
		if s.Bits < 8 || s.Bits > 4096 || s.Bits%8 != 0 {
			return fmt.Errorf("generic secret of %d bits: %w", s.Bits, hsmcore.ErrInvalid)
		}
		if s.Encrypt || s.Decrypt || s.Wrap || s.Unwrap || s.Sign || s.Verify {
			return fmt.Errorf("generic secret supports no operation here: %w", hsmcore.ErrInvalid)
		}
	case hsmcore.EC:
		if s.Curve != "P-256" && s.Curve != "P-384" {
			return fmt.Errorf("ec curve %q: %w", s.Curve, hsmcore.ErrInvalid)
		}
		if s.Encrypt || s.Decrypt || s.Wrap || s.Unwrap {
			return fmt.Errorf("ec key can only sign and verify: %w", hsmcore.ErrInvalid)
		}
	case hsmcore.RSA:
		if s.Bits != 2048 && s.Bits != 3072 && s.Bits != 4096 {
			return fmt.Errorf("rsa key of %d bits: %w", s.Bits, hsmcore.ErrInvalid)
		}
		if s.Encrypt || s.Decrypt {
			return fmt.Errorf("rsa key can only sign, verify, wrap and unwrap here: %w", hsmcore.ErrInvalid)
		}
	case hsmcore.HPKE:
		if s.Bits != 768 {
			return fmt.Errorf("hpke key of %d bits (768: ML-KEM-768 + X25519): %w", s.Bits, hsmcore.ErrInvalid)
		}
		if s.Encrypt || s.Decrypt || s.Sign || s.Verify {
			return fmt.Errorf("hpke key can only wrap and unwrap: %w", hsmcore.ErrInvalid)
		}
	default:
		return fmt.Errorf("key type %q: %w", s.Type, hsmcore.ErrInvalid)
	}
	return nil
}

// generateMaterial makes new key material for a checked spec.
func generateMaterial(s hsmcore.KeySpec) ([]byte, error) {
	switch s.Type {
	case hsmcore.AES, hsmcore.GenericSecret:
		b := make([]byte, s.Bits/8)
		rand.Read(b)
		return b, nil
	case hsmcore.EC:
		curve := elliptic.P256()
		if s.Curve == "P-384" {
			curve = elliptic.P384()
		}
		k, err := ecdsa.GenerateKey(curve, rand.Reader)
		if err != nil {
			return nil, err
		}
		return x509.MarshalPKCS8PrivateKey(k)
	case hsmcore.RSA:
		k, err := rsa.GenerateKey(rand.Reader, s.Bits)
		if err != nil {
			return nil, err
		}
		return x509.MarshalPKCS8PrivateKey(k)
	case hsmcore.HPKE:
		k, err := hpke.MLKEM768X25519().GenerateKey()
		if err != nil {
			return nil, err
		}
		return k.Bytes()
	}
	panic("hsmcore: unchecked key spec")
}

// newKeyRecord builds a key from a checked spec and its material, deriving
// class, public key and KCV from the material.
func newKeyRecord(s hsmcore.KeySpec, material []byte, owner string, local bool) (*keyRecord, error) {
	k := &keyRecord{
		KeyInfo: hsmcore.KeyInfo{
			Label: s.Label, ID: slices.Clone(s.ID), Type: s.Type, Bits: s.Bits, Curve: s.Curve,
			Token: !s.Session, Extractable: s.Extractable, Sensitive: true,
			NeverExtractable: !s.Extractable, Local: local,
			Encrypt: s.Encrypt, Decrypt: s.Decrypt, Sign: s.Sign, Verify: s.Verify, Wrap: s.Wrap, Unwrap: s.Unwrap,
			WrapWithTrusted: s.WrapWithTrusted, Owner: owner,
		},
		Material: material,
	}
	k.UnwrapTemplate = cloneTemplate(s.UnwrapTemplate)
	if err := k.derive(); err != nil {
		return nil, err
	}
	return k, nil
}

// derive computes class, public key and KCV from the material, checking
// that the material matches type and size.
func (k *keyRecord) derive() error {
	switch k.Type {
	case hsmcore.AES, hsmcore.GenericSecret:
		if len(k.Material)*8 != k.Bits {
			return fmt.Errorf("key material of %d bytes for a %d-bit key", len(k.Material), k.Bits)
		}
		k.Class = hsmcore.SecretKey
		k.PublicKey = nil
		k.KCV = kcv(k.Type, k.Material, nil)
		return nil
	case hsmcore.HPKE:
		priv, err := hpke.MLKEM768X25519().NewPrivateKey(k.Material)
		if err != nil || k.Bits != 768 {
			return fmt.Errorf("hpke private key: not an ML-KEM-768 + X25519 key")
		}
		k.Class = hsmcore.PrivateKey
		k.PublicKey = priv.PublicKey().Bytes()
		k.KCV = kcv(k.Type, nil, k.PublicKey)
		return nil
	case hsmcore.EC, hsmcore.RSA:
		priv, err := x509.ParsePKCS8PrivateKey(k.Material)
		if err != nil {
			return fmt.Errorf("private key: %w", err)
		}
		var pub any
		switch p := priv.(type) {
		case *ecdsa.PrivateKey:
			if k.Type != hsmcore.EC || p.Curve.Params().Name != k.Curve {
				return fmt.Errorf("private key is not %s %s", k.Type, k.Curve)
			}
			k.Bits = p.Curve.Params().BitSize
			pub = &p.PublicKey
		case *rsa.PrivateKey:
			if k.Type != hsmcore.RSA || p.N.BitLen() != k.Bits {
				return fmt.Errorf("private key is not rsa-%d", k.Bits)
			}
			pub = &p.PublicKey
		default:
			return fmt.Errorf("unsupported private key type %T", priv)
		}
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return err
		}
		k.Class = hsmcore.PrivateKey
		k.PublicKey = der
		k.KCV = kcv(k.Type, nil, der)
		return nil
	}
	return fmt.Errorf("key type %q", k.Type)
}

// minCheckedSecretBits is the smallest generic secret given a check value:
// the check value of a shorter one would let anyone who may list it try
// every candidate secret against it (2^8, 2^16, 2^24... SHA-1 sums).
const minCheckedSecretBits = 128

// kcv is the key check value: for AES the first 3 bytes of the encryption
// of a zero block (the classic KCV); otherwise the first 3 bytes of SHA-1
// of the secret value or public key, as PKCS#11 3.0 CKA_CHECK_VALUE. A
// generic secret of fewer than minCheckedSecretBits bits has none (empty).
func kcv(t hsmcore.KeyType, secret, public []byte) string {
	if t == hsmcore.GenericSecret && len(secret)*8 < minCheckedSecretBits {
		return ""
	}
	return plainKCV(t, secret, public)
}

// plainKCV is kcv without the exception for short secrets: what hsmcore
// gave every key before that exception, which images may still carry.
func plainKCV(t hsmcore.KeyType, secret, public []byte) string {
	var sum []byte
	switch {
	case t == hsmcore.AES:
		b, err := aes.NewCipher(secret)
		if err != nil {
			panic("hsmcore: " + err.Error())
		}
		var block [aes.BlockSize]byte
		b.Encrypt(block[:], block[:])
		sum = block[:]
	case public != nil:
		h := sha1.Sum(public)
		sum = h[:]
	default:
		h := sha1.Sum(secret)
		sum = h[:]
	}
	return hex.EncodeToString(sum[:3])
}

// check validates an imported or unsealed key record against the users of
// c and recomputes what is derived from the material.
func (k *keyRecord) check(c *contents) error {
	if k.Handle == 0 || k.Handle >= c.NextHandle {
		return fmt.Errorf("key handle %d outside 1..%d", k.Handle, c.NextHandle-1)
	}
	if c.Keys.Has(k.Handle) {
		return fmt.Errorf("duplicate key handle %d", k.Handle)
	}
	if !k.Token {
		return fmt.Errorf("key %d: session key in stored state", k.Handle)
	}
	spec := hsmcore.KeySpec{Type: k.Type, Bits: k.Bits, Curve: k.Curve, Label: k.Label, ID: k.ID,
		Encrypt: k.Encrypt, Decrypt: k.Decrypt, Sign: k.Sign, Verify: k.Verify, Wrap: k.Wrap, Unwrap: k.Unwrap}
	if err := checkSpec(spec); err != nil {
		return fmt.Errorf("key %d: %w", k.Handle, err)
	}
	owner := c.Users[k.Owner]
	if owner == nil || owner.Role != hsmcore.CryptoUser {
		return fmt.Errorf("key %d: owner is not a crypto user", k.Handle)
	}
	for _, u := range k.SharedWith {
		if cu := c.Users[u]; cu == nil || cu.Role != hsmcore.CryptoUser || u == k.Owner {
			return fmt.Errorf("key %d: shared with %q, not another crypto user", k.Handle, u)
		}
	}
	if !k.Sensitive || (k.NeverExtractable && k.Extractable) {
		return fmt.Errorf("key %d: inconsistent attributes", k.Handle)
	}
	if what := k.withinBound(); what != "" {
		return fmt.Errorf("key %d: %s, beyond the unwrap template it was unwrapped under", k.Handle, what)
	}
	want := k.KCV
	if err := k.derive(); err != nil {
		return fmt.Errorf("key %d: %w", k.Handle, err)
	}
	if k.KCV != want && !k.legacyKCV(want) {
		return fmt.Errorf("key %d: check value mismatch", k.Handle)
	}
	return nil
}

// legacyKCV reports whether kcv is the check value that images and sealed
// state written before short generic secrets lost theirs carry for k: such
// records still import, and derive has already replaced the value.
func (k *keyRecord) legacyKCV(kcv string) bool {
	return k.Type == hsmcore.GenericSecret && k.KCV == "" && kcv == plainKCV(k.Type, k.Material, nil)
}

// GenerateKey creates a key owned by the session's crypto user and returns
// its attributes.
func (s *Session) GenerateKey(spec hsmcore.KeySpec) (hsmcore.KeyInfo, error) {
	infos, err := s.GenerateKeys([]hsmcore.KeySpec{spec})
	if err != nil {
		return hsmcore.KeyInfo{}, err
	}
	return infos[0], nil
}

// GenerateKeys creates several keys in one commit: all of them or none.
func (s *Session) GenerateKeys(specs []hsmcore.KeySpec) ([]hsmcore.KeyInfo, error) {
	if len(specs) == 0 || len(specs) > maxImageKeys {
		return nil, fmt.Errorf("generate keys: batch of %d: %w", len(specs), hsmcore.ErrInvalid)
	}
	recs := make([]*keyRecord, len(specs))
	for i, spec := range specs {
		if err := checkSpec(spec); err != nil {
			return nil, fmt.Errorf("generate key %d: %w", i, err)
		}
		if spec.UnwrapTemplate != nil && !spec.Unwrap {
			return nil, fmt.Errorf("generate key %d: an unwrap template on a key without unwrap: %w", i, hsmcore.ErrInvalid)
		}
		m, err := generateMaterial(spec)
		if err != nil {
			return nil, fmt.Errorf("generate key %d: %w", i, err)
		}
		if recs[i], err = newKeyRecord(spec, m, s.user, true); err != nil {
			return nil, fmt.Errorf("generate key %d: %w", i, err)
		}
	}
	return s.addKeys("key.create", recs, "")
}

// addKeys gives recs handles and commits them; token keys are sealed to
// disk, session keys only kept in memory.
func (s *Session) addKeys(op string, recs []*keyRecord, detail string) ([]hsmcore.KeyInfo, error) {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check(op, hsmcore.CryptoUser); err != nil {
		return nil, err
	}
	if d.st.Keys.Len()+len(recs) > d.capacity {
		d.audit(s.user, op, "", "full")
		return nil, fmt.Errorf("%s: %d keys would exceed capacity %d: %w", op, d.st.Keys.Len()+len(recs), d.capacity, hsmcore.ErrFull)
	}
	next := d.st.clone()
	token := false
	for _, k := range recs {
		if k.Token {
			k.Handle = next.NextHandle
			next.NextHandle++
		} else {
			// Session keys take handles from their own range, so that they
			// never change what members of a cluster must agree on.
			d.sessionHandles++
			k.Handle = firstSessionHandle + d.sessionHandles
			k.session = s
		}
		token = token || k.Token
		if err := next.Keys.Set(k.Handle, k); err != nil {
			return nil, fmt.Errorf("%s: %w", op, err)
		}
		if k.Token {
			if err := d.record(next, s, op, keyObject(k.Handle)); err != nil {
				return nil, fmt.Errorf("%s: %w", op, err)
			}
		}
	}
	object := handleRange(recs)
	if detail != "" {
		object += " " + detail
	}
	if token {
		if err := d.commit(next); err != nil {
			d.audit(s.user, op, object, "error")
			return nil, fmt.Errorf("%s: %w", op, err)
		}
	} else {
		d.st = next
	}
	out := make([]hsmcore.KeyInfo, len(recs))
	for i, k := range recs {
		out[i] = k.info()
	}
	if err := d.audit(s.user, op, object, "ok"); err != nil {
		return nil, err
	}
	return out, nil
}

func handleRange(recs []*keyRecord) string {
	if len(recs) == 1 {
		return fmt.Sprint(recs[0].Handle)
	}
	return fmt.Sprintf("%d..%d", recs[0].Handle, recs[len(recs)-1].Handle)
}

// usableKey returns key h if the session's crypto user owns it or it is
// shared with them. The caller holds d.mu and has checked the session.
func (s *Session) usableKey(op string, h uint64) (*keyRecord, error) {
	k := s.d.st.Keys.Get(h)
	if k == nil || (k.Owner != s.user && !slices.Contains(k.SharedWith, s.user)) {
		s.d.audit(s.user, op, fmt.Sprint(h), "denied")
		return nil, fmt.Errorf("%s: key %d: %w", op, h, hsmcore.ErrNotFound)
	}
	if !k.Token && k.session != s {
		return nil, fmt.Errorf("%s: key %d: %w", op, h, hsmcore.ErrNotFound)
	}
	return k, nil
}

// ownKey is usableKey for owner-only operations.
func (s *Session) ownKey(op string, h uint64) (*keyRecord, error) {
	k, err := s.usableKey(op, h)
	if err != nil {
		return nil, err
	}
	if k.Owner != s.user {
		s.d.audit(s.user, op, fmt.Sprint(h), "denied")
		return nil, fmt.Errorf("%s: key %d: only its owner may do this: %w", op, h, hsmcore.ErrPermission)
	}
	return k, nil
}

// Key returns the attributes of one key. A crypto user sees keys it owns
// or that are shared with it; a crypto officer sees every token key.
func (s *Session) Key(h uint64) (hsmcore.KeyInfo, error) {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check("key.get"); err != nil {
		return hsmcore.KeyInfo{}, err
	}
	if s.role == hsmcore.CryptoOfficer {
		if k := d.st.Keys.Get(h); k != nil && k.Token {
			return k.info(), nil
		}
		return hsmcore.KeyInfo{}, fmt.Errorf("key %d: %w", h, hsmcore.ErrNotFound)
	}
	k, err := s.usableKey("key.get", h)
	if err != nil {
		return hsmcore.KeyInfo{}, err
	}
	return k.info(), nil
}

// Keys lists the keys the session may see (see Key), by handle.
func (s *Session) Keys() ([]hsmcore.KeyInfo, error) {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check("key.list"); err != nil {
		return nil, err
	}
	var out []hsmcore.KeyInfo
	for _, k := range d.st.Keys.All() {
		visible := k.Token && s.role == hsmcore.CryptoOfficer ||
			s.role == hsmcore.CryptoUser && (k.Owner == s.user || slices.Contains(k.SharedWith, s.user)) && (k.Token || k.session == s)
		if visible {
			out = append(out, k.info())
		}
	}
	slices.SortFunc(out, func(a, b hsmcore.KeyInfo) int { return cmp.Compare(a.Handle, b.Handle) })
	return out, nil
}

// DeleteKey destroys a key. Its owner only.
func (s *Session) DeleteKey(h uint64) error {
	return s.changeKey("key.delete", h, func(k *keyRecord) (*keyRecord, error) { return nil, nil })
}

// changeKey applies change to a copy of key h under the owner's rules and
// commits the result; change returns nil to delete the key.
func (s *Session) changeKey(op string, h uint64, change func(k *keyRecord) (*keyRecord, error)) error {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check(op, hsmcore.CryptoUser); err != nil {
		return err
	}
	k, err := s.ownKey(op, h)
	if err != nil {
		return err
	}
	return s.commitKey(op, k, change)
}

// commitKey commits change(copy of k). The caller holds d.mu.
func (s *Session) commitKey(op string, k *keyRecord, change func(k *keyRecord) (*keyRecord, error)) error {
	d := s.d
	nk, err := change(k.clone())
	if err != nil {
		d.audit(s.user, op, fmt.Sprint(k.Handle), "denied")
		return fmt.Errorf("%s: key %d: %w", op, k.Handle, err)
	}
	next := d.st.clone()
	if nk == nil {
		next.Keys.Delete(k.Handle)
	} else {
		nk.session = k.session
		if err := next.Keys.Set(k.Handle, nk); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
	}
	if k.Token {
		if err := d.commitChange(next, s, op, keyObject(k.Handle)); err != nil {
			d.audit(s.user, op, fmt.Sprint(k.Handle), "error")
			return fmt.Errorf("%s: key %d: %w", op, k.Handle, err)
		}
	} else {
		d.st = next
	}
	return d.audit(s.user, op, fmt.Sprint(k.Handle), "ok")
}

// SetAttributes changes attributes of a key its crypto user owns.
func (s *Session) SetAttributes(h uint64, c hsmcore.AttributeChange) error {
	return s.changeKey("key.attr", h, func(k *keyRecord) (*keyRecord, error) {
		if c.Extractable != nil && *c.Extractable != k.Extractable {
			return nil, fmt.Errorf("extractable is fixed at creation: %w", hsmcore.ErrInvalid)
		}
		if c.WrapWithTrusted != nil && k.WrapWithTrusted && !*c.WrapWithTrusted {
			return nil, fmt.Errorf("wrap-with-trusted cannot be cleared once set: %w", hsmcore.ErrInvalid)
		}
		set := func(dst *bool, v *bool) {
			if v != nil {
				*dst = *v
			}
		}
		if c.Label != nil {
			k.Label = *c.Label
		}
		if c.ID != nil {
			k.ID = slices.Clone(c.ID)
		}
		set(&k.Encrypt, c.Encrypt)
		set(&k.Decrypt, c.Decrypt)
		set(&k.Sign, c.Sign)
		set(&k.Verify, c.Verify)
		set(&k.Wrap, c.Wrap)
		set(&k.Unwrap, c.Unwrap)
		set(&k.WrapWithTrusted, c.WrapWithTrusted)
		spec := hsmcore.KeySpec{Type: k.Type, Bits: k.Bits, Curve: k.Curve, Label: k.Label, ID: k.ID,
			Encrypt: k.Encrypt, Decrypt: k.Decrypt, Sign: k.Sign, Verify: k.Verify, Wrap: k.Wrap, Unwrap: k.Unwrap}
		if err := checkSpec(spec); err != nil {
			return nil, err
		}
		if what := k.withinBound(); what != "" {
			return nil, fmt.Errorf("%s: beyond the unwrap template the key was unwrapped under: %w", what, hsmcore.ErrPermission)
		}
		return k, nil
	})
}

// ShareKey shares a key its crypto user owns with another crypto user, or
// stops sharing it.
func (s *Session) ShareKey(h uint64, user string, share bool) error {
	return s.changeKey("key.share", h, func(k *keyRecord) (*keyRecord, error) {
		if u := s.d.st.Users[user]; u == nil || u.Role != hsmcore.CryptoUser || user == k.Owner {
			return nil, fmt.Errorf("%s is not another crypto user: %w", auditName(user), hsmcore.ErrInvalid)
		}
		k.SharedWith = slices.DeleteFunc(k.SharedWith, func(u string) bool { return u == user })
		if share {
			k.SharedWith = append(k.SharedWith, user)
			slices.Sort(k.SharedWith)
		}
		return k, nil
	})
}

// SetTrusted marks a token key trusted or not. Crypto officers only.
func (s *Session) SetTrusted(h uint64, trusted bool) error {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check("key.trust", hsmcore.CryptoOfficer); err != nil {
		return err
	}
	k := d.st.Keys.Get(h)
	if k == nil || !k.Token {
		return fmt.Errorf("key.trust: key %d: %w", h, hsmcore.ErrNotFound)
	}
	if err := s.requireQuorum("key.trust", hsmcore.KeyTrustObject(h, trusted)); err != nil {
		return err
	}
	return s.commitKey("key.trust", k, func(k *keyRecord) (*keyRecord, error) {
		k.Trusted = trusted
		return k, nil
	})
}
