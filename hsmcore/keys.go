package hsmcore

import (
	"cmp"
	"crypto/aes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"fmt"
	"slices"
	"strconv"
)

// KeyType is a key's algorithm family (PKCS#11 CKA_KEY_TYPE).
type KeyType string

const (
	AES           KeyType = "aes"
	EC            KeyType = "ec"
	RSA           KeyType = "rsa"
	GenericSecret KeyType = "generic-secret"
)

// KeyClass is PKCS#11 CKA_CLASS. An EC or RSA key is one private-key
// object whose public half is readable (KeyInfo.PublicKey).
type KeyClass string

const (
	SecretKey  KeyClass = "secret-key"
	PrivateKey KeyClass = "private-key"
)

// KeyInfo is a key's attributes: everything about it but its material.
type KeyInfo struct {
	Handle uint64   `json:"handle"`
	Label  string   `json:"label"`
	ID     []byte   `json:"id,omitempty"`
	Class  KeyClass `json:"class"`
	Type   KeyType  `json:"type"`
	Bits   int      `json:"bits"`            // key size: AES, RSA modulus, generic secret; curve size for EC
	Curve  string   `json:"curve,omitempty"` // "P-256" or "P-384" for EC

	Token            bool `json:"token"`             // persistent; false: a session key, never stored nor imaged
	Extractable      bool `json:"extractable"`       // may leave the HSM wrapped; fixed at creation
	Sensitive        bool `json:"sensitive"`         // never revealed in plaintext; always true here
	NeverExtractable bool `json:"never_extractable"` // has never been extractable
	Local            bool `json:"local"`             // generated on an HSM rather than unwrapped

	Encrypt bool `json:"encrypt"`
	Decrypt bool `json:"decrypt"`
	Sign    bool `json:"sign"`
	Verify  bool `json:"verify"`
	Wrap    bool `json:"wrap"`
	Unwrap  bool `json:"unwrap"`

	Trusted         bool `json:"trusted"`           // set by a crypto officer only
	WrapWithTrusted bool `json:"wrap_with_trusted"` // may be wrapped only by a trusted key; once true, read-only

	KCV        string   `json:"kcv"` // key check value, 3 bytes in hex
	Owner      string   `json:"owner"`
	SharedWith []string `json:"shared_with,omitempty"`
	PublicKey  []byte   `json:"public_key,omitempty"` // PKIX DER, for EC and RSA
}

// keyRecord is a key as stored and imaged.
type keyRecord struct {
	KeyInfo
	Material []byte `json:"material"` // raw for secret keys, PKCS#8 DER for private keys

	session *Session // owner of a session key; nil for token keys
}

func (k *keyRecord) clone() *keyRecord {
	c := *k
	c.ID = slices.Clone(k.ID)
	c.SharedWith = slices.Clone(k.SharedWith)
	c.PublicKey = slices.Clone(k.PublicKey)
	return &c
}

func (k *keyRecord) info() KeyInfo { return k.clone().KeyInfo }

// KeySpec asks for a key. Its zero value is not valid: Type is required.
type KeySpec struct {
	Type  KeyType `json:"type"`
	Bits  int     `json:"bits,omitempty"`  // AES 128/192/256, RSA 2048/3072/4096, generic secret 8..4096 (multiple of 8)
	Curve string  `json:"curve,omitempty"` // EC: "P-256" or "P-384"

	Label string `json:"label,omitempty"`
	ID    []byte `json:"id,omitempty"`

	Session     bool `json:"session,omitempty"` // a session key: gone at logout, never stored nor imaged
	Extractable bool `json:"extractable,omitempty"`

	Encrypt         bool `json:"encrypt,omitempty"`
	Decrypt         bool `json:"decrypt,omitempty"`
	Sign            bool `json:"sign,omitempty"`
	Verify          bool `json:"verify,omitempty"`
	Wrap            bool `json:"wrap,omitempty"`
	Unwrap          bool `json:"unwrap,omitempty"`
	WrapWithTrusted bool `json:"wrap_with_trusted,omitempty"`
}

// firstSessionHandle starts the handle range of session keys.
const firstSessionHandle = 1 << 62

const (
	maxLabel = 128
	maxID    = 64
)

// checkSpec validates the parts of a key spec shared by generation and
// unwrap.
func checkSpec(s KeySpec) error {
	if len(s.Label) > maxLabel || len(s.ID) > maxID {
		return fmt.Errorf("label over %d bytes or id over %d bytes: %w", maxLabel, maxID, ErrInvalid)
	}
	switch s.Type {
	case AES:
		if s.Bits != 128 && s.Bits != 192 && s.Bits != 256 {
			return fmt.Errorf("aes key of %d bits: %w", s.Bits, ErrInvalid)
		}
		if s.Sign || s.Verify {
			return fmt.Errorf("aes key cannot sign or verify: %w", ErrInvalid)
		}
	case GenericSecret:
		if s.Bits < 8 || s.Bits > 4096 || s.Bits%8 != 0 {
			return fmt.Errorf("generic secret of %d bits: %w", s.Bits, ErrInvalid)
		}
		if s.Encrypt || s.Decrypt || s.Wrap || s.Unwrap || s.Sign || s.Verify {
			return fmt.Errorf("generic secret supports no operation here: %w", ErrInvalid)
		}
	case EC:
		if s.Curve != "P-256" && s.Curve != "P-384" {
			return fmt.Errorf("ec curve %q: %w", s.Curve, ErrInvalid)
		}
		if s.Encrypt || s.Decrypt || s.Wrap || s.Unwrap {
			return fmt.Errorf("ec key can only sign and verify: %w", ErrInvalid)
		}
	case RSA:
		if s.Bits != 2048 && s.Bits != 3072 && s.Bits != 4096 {
			return fmt.Errorf("rsa key of %d bits: %w", s.Bits, ErrInvalid)
		}
		if s.Encrypt || s.Decrypt || s.Wrap || s.Unwrap {
			return fmt.Errorf("rsa key can only sign and verify here: %w", ErrInvalid)
		}
	default:
		return fmt.Errorf("key type %q: %w", s.Type, ErrInvalid)
	}
	return nil
}

// generateMaterial makes new key material for a checked spec.
func generateMaterial(s KeySpec) ([]byte, error) {
	switch s.Type {
	case AES, GenericSecret:
		b := make([]byte, s.Bits/8)
		rand.Read(b)
		return b, nil
	case EC:
		curve := elliptic.P256()
		if s.Curve == "P-384" {
			curve = elliptic.P384()
		}
		k, err := ecdsa.GenerateKey(curve, rand.Reader)
		if err != nil {
			return nil, err
		}
		return x509.MarshalPKCS8PrivateKey(k)
	case RSA:
		k, err := rsa.GenerateKey(rand.Reader, s.Bits)
		if err != nil {
			return nil, err
		}
		return x509.MarshalPKCS8PrivateKey(k)
	}
	panic("hsmcore: unchecked key spec")
}

// newKeyRecord builds a key from a checked spec and its material, deriving
// class, public key and KCV from the material.
func newKeyRecord(s KeySpec, material []byte, owner string, local bool) (*keyRecord, error) {
	k := &keyRecord{
		KeyInfo: KeyInfo{
			Label: s.Label, ID: slices.Clone(s.ID), Type: s.Type, Bits: s.Bits, Curve: s.Curve,
			Token: !s.Session, Extractable: s.Extractable, Sensitive: true,
			NeverExtractable: !s.Extractable, Local: local,
			Encrypt: s.Encrypt, Decrypt: s.Decrypt, Sign: s.Sign, Verify: s.Verify, Wrap: s.Wrap, Unwrap: s.Unwrap,
			WrapWithTrusted: s.WrapWithTrusted, Owner: owner,
		},
		Material: material,
	}
	if err := k.derive(); err != nil {
		return nil, err
	}
	return k, nil
}

// derive computes class, public key and KCV from the material, checking
// that the material matches type and size.
func (k *keyRecord) derive() error {
	switch k.Type {
	case AES, GenericSecret:
		if len(k.Material)*8 != k.Bits {
			return fmt.Errorf("key material of %d bytes for a %d-bit key", len(k.Material), k.Bits)
		}
		k.Class = SecretKey
		k.PublicKey = nil
		k.KCV = kcv(k.Type, k.Material, nil)
		return nil
	case EC, RSA:
		priv, err := x509.ParsePKCS8PrivateKey(k.Material)
		if err != nil {
			return fmt.Errorf("private key: %w", err)
		}
		var pub any
		switch p := priv.(type) {
		case *ecdsa.PrivateKey:
			if k.Type != EC || p.Curve.Params().Name != k.Curve {
				return fmt.Errorf("private key is not %s %s", k.Type, k.Curve)
			}
			k.Bits = p.Curve.Params().BitSize
			pub = &p.PublicKey
		case *rsa.PrivateKey:
			if k.Type != RSA || p.N.BitLen() != k.Bits {
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
		k.Class = PrivateKey
		k.PublicKey = der
		k.KCV = kcv(k.Type, nil, der)
		return nil
	}
	return fmt.Errorf("key type %q", k.Type)
}

// kcv is the key check value: for AES the first 3 bytes of the encryption
// of a zero block (the classic KCV); otherwise the first 3 bytes of SHA-1
// of the secret value or public key, as PKCS#11 3.0 CKA_CHECK_VALUE.
func kcv(t KeyType, secret, public []byte) string {
	var sum []byte
	switch {
	case t == AES:
		b, err := aes.NewCipher(secret)
		if err != nil {
			panic("hsmcore: " + err.Error())
		}
		sum = make([]byte, aes.BlockSize)
		b.Encrypt(sum, sum)
	case public != nil:
		h := sha1.Sum(public)
		sum = h[:]
	default:
		h := sha1.Sum(secret)
		sum = h[:]
	}
	return fmt.Sprintf("%x", sum[:3])
}

// check validates an imported or unsealed key record against the users of
// c and recomputes what is derived from the material.
func (k *keyRecord) check(c *contents) error {
	if k.Handle == 0 || k.Handle >= c.NextHandle {
		return fmt.Errorf("key handle %d outside 1..%d", k.Handle, c.NextHandle-1)
	}
	if c.Keys[k.Handle] != nil {
		return fmt.Errorf("duplicate key handle %d", k.Handle)
	}
	if !k.Token {
		return fmt.Errorf("key %d: session key in stored state", k.Handle)
	}
	spec := KeySpec{Type: k.Type, Bits: k.Bits, Curve: k.Curve, Label: k.Label, ID: k.ID,
		Encrypt: k.Encrypt, Decrypt: k.Decrypt, Sign: k.Sign, Verify: k.Verify, Wrap: k.Wrap, Unwrap: k.Unwrap}
	if err := checkSpec(spec); err != nil {
		return fmt.Errorf("key %d: %w", k.Handle, err)
	}
	owner := c.Users[k.Owner]
	if owner == nil || owner.Role != CryptoUser {
		return fmt.Errorf("key %d: owner is not a crypto user", k.Handle)
	}
	for _, u := range k.SharedWith {
		if cu := c.Users[u]; cu == nil || cu.Role != CryptoUser || u == k.Owner {
			return fmt.Errorf("key %d: shared with %q, not another crypto user", k.Handle, u)
		}
	}
	if !k.Sensitive || (k.NeverExtractable && k.Extractable) {
		return fmt.Errorf("key %d: inconsistent attributes", k.Handle)
	}
	want := k.KCV
	if err := k.derive(); err != nil {
		return fmt.Errorf("key %d: %w", k.Handle, err)
	}
	if k.KCV != want {
		return fmt.Errorf("key %d: check value mismatch", k.Handle)
	}
	return nil
}

// GenerateKey creates a key owned by the session's crypto user and returns
// its attributes.
func (s *Session) GenerateKey(spec KeySpec) (KeyInfo, error) {
	infos, err := s.GenerateKeys([]KeySpec{spec})
	if err != nil {
		return KeyInfo{}, err
	}
	return infos[0], nil
}

// GenerateKeys creates several keys in one commit: all of them or none.
func (s *Session) GenerateKeys(specs []KeySpec) ([]KeyInfo, error) {
	if len(specs) == 0 || len(specs) > maxImageKeys {
		return nil, fmt.Errorf("generate keys: batch of %d: %w", len(specs), ErrInvalid)
	}
	recs := make([]*keyRecord, len(specs))
	for i, spec := range specs {
		if err := checkSpec(spec); err != nil {
			return nil, fmt.Errorf("generate key %d: %w", i, err)
		}
		m, err := generateMaterial(spec)
		if err != nil {
			return nil, fmt.Errorf("generate key %d: %w", i, err)
		}
		if recs[i], err = newKeyRecord(spec, m, s.user, true); err != nil {
			return nil, fmt.Errorf("generate key %d: %w", i, err)
		}
	}
	return s.addKeys("key.create", recs)
}

// addKeys gives recs handles and commits them; token keys are sealed to
// disk, session keys only kept in memory.
func (s *Session) addKeys(op string, recs []*keyRecord) ([]KeyInfo, error) {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check(op, CryptoUser); err != nil {
		return nil, err
	}
	if len(d.st.Keys)+len(recs) > d.capacity {
		d.audit(s.user, op, "", "full")
		return nil, fmt.Errorf("%s: %d keys would exceed capacity %d: %w", op, len(d.st.Keys)+len(recs), d.capacity, ErrFull)
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
		next.Keys[k.Handle] = k
	}
	if token {
		if err := d.commit(next); err != nil {
			return nil, fmt.Errorf("%s: %w", op, err)
		}
	} else {
		d.st = next
	}
	out := make([]KeyInfo, len(recs))
	for i, k := range recs {
		out[i] = k.info()
	}
	if err := d.audit(s.user, op, handleRange(recs), "ok"); err != nil {
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
	k := s.d.st.Keys[h]
	if k == nil || (k.Owner != s.user && !slices.Contains(k.SharedWith, s.user)) {
		s.d.audit(s.user, op, fmt.Sprint(h), "denied")
		return nil, fmt.Errorf("%s: key %d: %w", op, h, ErrNotFound)
	}
	if !k.Token && k.session != s {
		return nil, fmt.Errorf("%s: key %d: %w", op, h, ErrNotFound)
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
		return nil, fmt.Errorf("%s: key %d: only its owner may do this: %w", op, h, ErrPermission)
	}
	return k, nil
}

// Key returns the attributes of one key. A crypto user sees keys it owns
// or that are shared with it; a crypto officer sees every token key.
func (s *Session) Key(h uint64) (KeyInfo, error) {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check("key.get"); err != nil {
		return KeyInfo{}, err
	}
	if s.role == CryptoOfficer {
		if k := d.st.Keys[h]; k != nil && k.Token {
			return k.info(), nil
		}
		return KeyInfo{}, fmt.Errorf("key %d: %w", h, ErrNotFound)
	}
	k, err := s.usableKey("key.get", h)
	if err != nil {
		return KeyInfo{}, err
	}
	return k.info(), nil
}

// Keys lists the keys the session may see (see Key), by handle.
func (s *Session) Keys() ([]KeyInfo, error) {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check("key.list"); err != nil {
		return nil, err
	}
	var out []KeyInfo
	for _, k := range d.st.Keys {
		visible := k.Token && s.role == CryptoOfficer ||
			s.role == CryptoUser && (k.Owner == s.user || slices.Contains(k.SharedWith, s.user)) && (k.Token || k.session == s)
		if visible {
			out = append(out, k.info())
		}
	}
	slices.SortFunc(out, func(a, b KeyInfo) int { return cmp.Compare(a.Handle, b.Handle) })
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
	if err := s.check(op, CryptoUser); err != nil {
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
		delete(next.Keys, k.Handle)
	} else {
		nk.session = k.session
		next.Keys[k.Handle] = nk
	}
	if k.Token {
		if err := d.commit(next); err != nil {
			return fmt.Errorf("%s: key %d: %w", op, k.Handle, err)
		}
	} else {
		d.st = next
	}
	return d.audit(s.user, op, fmt.Sprint(k.Handle), "ok")
}

// AttributeChange lists attributes to change; nil fields stay as they
// are. Extractable, class, type, size, KCV, local, sensitive and
// never-extractable are read-only; WrapWithTrusted may only go from false
// to true; Trusted is set by a crypto officer with SetTrusted.
type AttributeChange struct {
	Label           *string `json:"label,omitempty"`
	ID              []byte  `json:"id,omitempty"`
	Encrypt         *bool   `json:"encrypt,omitempty"`
	Decrypt         *bool   `json:"decrypt,omitempty"`
	Sign            *bool   `json:"sign,omitempty"`
	Verify          *bool   `json:"verify,omitempty"`
	Wrap            *bool   `json:"wrap,omitempty"`
	Unwrap          *bool   `json:"unwrap,omitempty"`
	WrapWithTrusted *bool   `json:"wrap_with_trusted,omitempty"`
	Extractable     *bool   `json:"extractable,omitempty"` // always refused: fixed at creation
}

// SetAttributes changes attributes of a key its crypto user owns.
func (s *Session) SetAttributes(h uint64, c AttributeChange) error {
	return s.changeKey("key.attr", h, func(k *keyRecord) (*keyRecord, error) {
		if c.Extractable != nil && *c.Extractable != k.Extractable {
			return nil, fmt.Errorf("extractable is fixed at creation: %w", ErrInvalid)
		}
		if c.WrapWithTrusted != nil && k.WrapWithTrusted && !*c.WrapWithTrusted {
			return nil, fmt.Errorf("wrap-with-trusted cannot be cleared once set: %w", ErrInvalid)
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
		spec := KeySpec{Type: k.Type, Bits: k.Bits, Curve: k.Curve, Label: k.Label, ID: k.ID,
			Encrypt: k.Encrypt, Decrypt: k.Decrypt, Sign: k.Sign, Verify: k.Verify, Wrap: k.Wrap, Unwrap: k.Unwrap}
		if err := checkSpec(spec); err != nil {
			return nil, err
		}
		return k, nil
	})
}

// ShareKey shares a key its crypto user owns with another crypto user, or
// stops sharing it.
func (s *Session) ShareKey(h uint64, user string, share bool) error {
	return s.changeKey("key.share", h, func(k *keyRecord) (*keyRecord, error) {
		if u := s.d.st.Users[user]; u == nil || u.Role != CryptoUser || user == k.Owner {
			return nil, fmt.Errorf("%s is not another crypto user: %w", auditName(user), ErrInvalid)
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
	if err := s.check("key.trust", CryptoOfficer); err != nil {
		return err
	}
	k := d.st.Keys[h]
	if k == nil || !k.Token {
		return fmt.Errorf("key.trust: key %d: %w", h, ErrNotFound)
	}
	if err := s.requireQuorum("key.trust", strconv.FormatUint(h, 10)); err != nil {
		return err
	}
	return s.commitKey("key.trust", k, func(k *keyRecord) (*keyRecord, error) {
		k.Trusted = trusted
		return k, nil
	})
}
