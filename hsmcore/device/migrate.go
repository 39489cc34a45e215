package device

import (
	"crypto/ecdsa"
	"crypto/hpke"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/internal/strictjson"
)

// Key migration (hsmcore.TransportKey, hsmcore.Bundle): the destination
// makes a transport key (NewTransportKey), the source writes a bundle
// under it (ExportBundle), the destination imports it (ImportBundle).

// transportKey is an outstanding transport key. It lives in memory only:
// a restart forgets it, and the migration asks for a new one.
type transportKey struct {
	hsmcore.TransportKey
	hpkeKey hpke.PrivateKey // for hpke
	rsaKey  *rsa.PrivateKey // for rsa-aes
	owner   string          // the user it was made for
	used    bool
}

// transportBits is the modulus size of an rsa-aes transport key.
const transportBits = 3072

// newTransportPair makes the key pair of a transport key of mech.
func newTransportPair(mech hsmcore.Mechanism) (*transportKey, error) {
	switch mech {
	case hsmcore.HPKEWrap:
		k, err := hpke.MLKEM768X25519().GenerateKey()
		if err != nil {
			return nil, err
		}
		return &transportKey{TransportKey: hsmcore.TransportKey{PublicKey: k.PublicKey().Bytes()}, hpkeKey: k}, nil
	case hsmcore.RSAAES:
		k, err := rsa.GenerateKey(rand.Reader, transportBits)
		if err != nil {
			return nil, err
		}
		der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
		if err != nil {
			return nil, err
		}
		return &transportKey{TransportKey: hsmcore.TransportKey{PublicKey: der}, rsaKey: k}, nil
	}
	return nil, fmt.Errorf("transport key of mechanism %q: hpke or rsa-aes: %w", mech, hsmcore.ErrInvalid)
}

// sealBundleKey seals a bundle key to the transport key k: HPKE (info
// bundleInfo) for hpke; RSA-OAEP with SHA-256 and MGF1-SHA-256 (label
// bundleInfo) for rsa-aes, for destinations without ML-KEM.
func sealBundleKey(k hsmcore.TransportKey, bundleKey []byte) ([]byte, error) {
	switch k.Mechanism {
	case hsmcore.HPKEWrap:
		pub, err := hpke.MLKEM768X25519().NewPublicKey(k.PublicKey)
		if err != nil {
			return nil, err
		}
		return hpke.Seal(pub, hpke.HKDFSHA256(), hpke.AES256GCM(), bundleInfo(k.ID), bundleKey)
	case hsmcore.RSAAES:
		pub, err := transportRSA(k.PublicKey)
		if err != nil {
			return nil, err
		}
		return rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, bundleKey, bundleInfo(k.ID))
	}
	return nil, fmt.Errorf("transport key of mechanism %q, want hpke or rsa-aes", k.Mechanism)
}

// openBundleKey opens what sealBundleKey sealed to k.
func (k *transportKey) openBundleKey(enc []byte) ([]byte, error) {
	if k.rsaKey != nil {
		return rsa.DecryptOAEP(sha256.New(), nil, k.rsaKey, enc, bundleInfo(k.ID))
	}
	return hpke.Open(k.hpkeKey, hpke.HKDFSHA256(), hpke.AES256GCM(), bundleInfo(k.ID), enc)
}

// transportRSA parses an rsa-aes transport public key: RSA 3072 or 4096.
func transportRSA(der []byte) (*rsa.PublicKey, error) {
	k, err := x509.ParsePKIXPublicKey(der)
	pub, ok := k.(*rsa.PublicKey)
	if err != nil || !ok || (pub.N.BitLen() != 3072 && pub.N.BitLen() != 4096) {
		return nil, errors.New("not an RSA-3072 or RSA-4096 public key")
	}
	return pub, nil
}

// maxTransportKeys bounds the outstanding transport keys (the oldest goes
// first); maxBundle bounds a bundle's body.
const (
	maxTransportKeys = 16
	maxBundle        = hsmcore.MaxBundleKeys * (maxWrapped + 2048)
)

// bundleInfo is the HPKE info (hpke) or the OAEP label (rsa-aes) of a
// bundle's key K.
func bundleInfo(tkID string) []byte { return []byte("hsmbackup bundle v1 " + tkID) }

// NewTransportKey makes a transport key for the session's crypto user:
// a key pair of this HSM of mech (hpke: ML-KEM-768 + X25519; rsa-aes:
// RSA-3072), for one bundle to it within hsmcore.TransportKeyTTL, and
// attests to it (over hsmcore.TransportNonce(nonce, key)). The cluster
// must be initialized.
func (s *Session) NewTransportKey(nonce []byte, mech hsmcore.Mechanism) (hsmcore.TransportOffer, error) {
	d := s.d
	if len(nonce) != hsmcore.NonceSize {
		return hsmcore.TransportOffer{}, fmt.Errorf("transport key: nonce must be %d bytes: %w", hsmcore.NonceSize, hsmcore.ErrInvalid)
	}
	tk, err := newTransportPair(mech)
	if err != nil {
		return hsmcore.TransportOffer{}, fmt.Errorf("transport key: %w", err)
	}
	var id [16]byte
	rand.Read(id[:])
	d.mu.Lock()
	if err := s.check("key.migrate", hsmcore.CryptoUser); err != nil {
		d.mu.Unlock()
		return hsmcore.TransportOffer{}, err
	}
	if !d.st.clusterInitialized() {
		d.mu.Unlock()
		return hsmcore.TransportOffer{}, fmt.Errorf("transport key: the cluster is not initialized: %w", hsmcore.ErrPermission)
	}
	now := d.opts.now()
	tk.ID, tk.Mechanism, tk.Serial, tk.Cluster = hex.EncodeToString(id[:]), mech, d.id.Serial, d.st.clusterID()
	tk.Expires, tk.owner = now.Add(hsmcore.TransportKeyTTL).Truncate(time.Second), s.user
	d.transports = slices.DeleteFunc(d.transports, func(k *transportKey) bool { return k.used || !now.Before(k.Expires) })
	if len(d.transports) >= maxTransportKeys {
		d.transports = d.transports[1:]
	}
	d.transports = append(d.transports, tk)
	err = d.audit(s.user, "transport.create", tk.ID, "ok")
	d.mu.Unlock()
	if err != nil {
		return hsmcore.TransportOffer{}, err
	}
	att, err := d.Attest(hsmcore.TransportNonce(nonce, tk.TransportKey))
	if err != nil {
		return hsmcore.TransportOffer{}, fmt.Errorf("transport key: %w", err)
	}
	return hsmcore.TransportOffer{Key: tk.TransportKey, Nonce: nonce, Attestation: att}, nil
}

// checkOffer verifies a transport offer: the attestation chains to this
// HSM's manufacturer root (and to opRoots for the operator),
// covers the key (so it is as fresh as the key: made at most
// hsmcore.TransportKeyTTL ago), and comes from an HSM of an initialized cluster, the
// one the key names; the key is hpke, for another HSM, unexpired and
// issued for at most hsmcore.TransportKeyTTL.
func (d *Device) checkOffer(o hsmcore.TransportOffer, opRoots *x509.CertPool) error {
	if d.mfrRoot == nil {
		return errors.New("this HSM does not hold its manufacturer's root (made before it was kept): it cannot check a transport key")
	}
	root, err := x509.ParseCertificate(d.mfrRoot)
	if err != nil {
		return err
	}
	mfr := x509.NewCertPool()
	mfr.AddCert(root)
	k := o.Key
	now := d.opts.now()
	switch {
	case opRoots == nil:
		return errors.New("no operator roots to check the destination's attestation")
	case k.Mechanism != hsmcore.HPKEWrap && k.Mechanism != hsmcore.RSAAES:
		return fmt.Errorf("transport key of mechanism %q, want hpke or rsa-aes", k.Mechanism)
	case k.Serial == d.id.Serial:
		return errors.New("the transport key is this HSM's own")
	case !now.Before(k.Expires):
		return fmt.Errorf("the transport key expired at %s", k.Expires.Format(time.RFC3339))
	case k.Expires.After(now.Add(hsmcore.TransportKeyTTL + time.Minute)):
		return fmt.Errorf("the transport key claims to last until %s, beyond %s", k.Expires.Format(time.RFC3339), hsmcore.TransportKeyTTL)
	case len(o.Nonce) != hsmcore.NonceSize:
		return errors.New("no verifier nonce")
	}
	if _, err := sealBundleKey(k, make([]byte, 32)); err != nil { // its public key parses
		return fmt.Errorf("transport key: %w", err)
	}
	// Any class and operator the roots certify: keys move between
	// clusters of any hardware; the manufacturer is this HSM's.
	want := hsmcore.Expectation{Serial: k.Serial, Manufacturer: d.id.Manufacturer}.Certified(o.Attestation)
	st, err := hsmcore.VerifyAttestation(o.Attestation, hsmcore.VerifyOptions{ManufacturerRoots: mfr, OperatorRoots: opRoots,
		Nonce: hsmcore.TransportNonce(o.Nonce, k), Expect: want, Now: now,
		// An offer may be carried by hand to a source no client reaches
		// with the destination (keys export --to hsmbackup): it is good
		// while its key is, and the key is single use.
		MaxAge: hsmcore.TransportKeyTTL + time.Minute})
	if err != nil {
		return err
	}
	if st.ClusterID == "" || st.ClusterID != k.Cluster || len(st.ClusterKeyHash) == 0 {
		return fmt.Errorf("the destination attests to cluster %q, the transport key names %q", st.ClusterID, k.Cluster)
	}
	return nil
}

// ExportBundle writes the session's crypto user's keys handles into a
// bundle under the transport key of offer, once the offer checks out
// (checkOffer, against opRoots for the destination's operator). Only a
// key's owner moves it, and only an extractable token key without
// wrap-with-trusted (such a key leaves only under a trusted key of this
// HSM, and a transport key is not one): the others are returned refused,
// with the reason, and left out. With dryRun it makes every check and
// writes nothing (the bundle is nil). Every key wrapped, or refused, is
// audited with its check value.
func (s *Session) ExportBundle(offer hsmcore.TransportOffer, opRoots *x509.CertPool, handles []uint64, dryRun bool) (*hsmcore.Bundle, []hsmcore.Migrated, error) {
	d := s.d
	if len(handles) == 0 || len(handles) > hsmcore.MaxBundleKeys {
		return nil, nil, fmt.Errorf("export bundle: %d keys, want 1 to %d: %w", len(handles), hsmcore.MaxBundleKeys, hsmcore.ErrInvalid)
	}
	if err := d.checkOffer(offer, opRoots); err != nil {
		d.mu.Lock()
		d.audit(s.user, "key.migrate", "to "+offer.Key.Serial, "refused")
		d.mu.Unlock()
		if !errors.Is(err, hsmcore.ErrAttestation) {
			err = fmt.Errorf("%v: %w", err, hsmcore.ErrAttestation)
		}
		return nil, nil, fmt.Errorf("export bundle: transport key: %w", err)
	}
	tk := offer.Key
	bundleKey := make([]byte, 32)
	defer clear(bundleKey)
	rand.Read(bundleKey)
	aead, err := gcm(bundleKey)
	if err != nil {
		return nil, nil, err
	}
	body := hsmcore.BundleBody{Format: hsmcore.BundleFormat, Serial: tk.Serial, Cluster: tk.Cluster, TransportKey: tk.ID}

	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check("key.migrate", hsmcore.CryptoUser); err != nil {
		return nil, nil, err
	}
	body.SourceSerial, body.SourceCluster, body.Created = d.id.Serial, d.st.clusterID(), d.opts.now()
	results := make([]hsmcore.Migrated, 0, len(handles))
	seen := map[uint64]bool{}
	for _, h := range handles {
		r := hsmcore.Migrated{Source: h, Result: hsmcore.Moved}
		k := d.st.Keys.Get(h)
		switch {
		case seen[h]:
			return nil, nil, fmt.Errorf("export bundle: key %d listed twice: %w", h, hsmcore.ErrInvalid)
		case k == nil || !k.Token || (k.Owner != s.user && !slices.Contains(k.SharedWith, s.user)):
			r.Result, r.Reason = hsmcore.Refused, "no such key of this user"
		case k.Owner != s.user:
			r.Result, r.Reason = hsmcore.Refused, "only its owner, "+k.Owner+", moves it"
		case !k.Extractable:
			r.Result, r.Reason = hsmcore.Refused, "not extractable"
		case k.WrapWithTrusted:
			r.Result, r.Reason = hsmcore.Refused, "wrap-with-trusted: it leaves only under a trusted key of this HSM"
		}
		seen[h] = true
		if k != nil {
			r.Label, r.KCV = k.Label, k.KCV
		}
		results = append(results, r)
		object := fmt.Sprintf("hpke transport %s@%s/%d kcv=%s", tk.ID[:8], tk.Serial, h, r.KCV)
		if r.Result == hsmcore.Refused {
			d.audit(s.user, "key.wrap", object, "denied")
			continue
		}
		if dryRun {
			continue
		}
		info := k.info()
		aad, err := json.Marshal(info)
		if err != nil {
			return nil, nil, err
		}
		nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(k.Material)+aead.Overhead())
		rand.Read(nonce)
		body.Keys = append(body.Keys, hsmcore.BundleKey{Info: info, Wrapped: aead.Seal(nonce, nonce, k.Material, aad)})
		if err := d.audit(s.user, "key.wrap", object, "ok"); err != nil {
			return nil, nil, err
		}
	}
	if dryRun || len(body.Keys) == 0 {
		return nil, results, nil
	}
	if body.Enc, err = sealBundleKey(tk, bundleKey); err != nil {
		return nil, nil, fmt.Errorf("export bundle: %w", err)
	}
	raw, err := json.Marshal(body)
	if err != nil {
		return nil, nil, err
	}
	sig, err := d.sign(hsmcore.BundleFormat, raw)
	if err != nil {
		return nil, nil, fmt.Errorf("export bundle: %w", err)
	}
	return &hsmcore.Bundle{Body: raw, Signature: sig, Certificate: d.mfrCert}, results, nil
}

// ImportBundle imports a bundle written for one of this HSM's transport
// keys by a genuine HSM (its device certificate from this HSM's
// manufacturer, its signature), as the crypto user the transport key was
// made for; the transport key is spent at once, so a bundle imports once.
// Inside the HSM each key is unwrapped, given the attributes it had at the
// source (not local; trust, which an officer grants per HSM, does not
// travel), and must have the check value the bundle records; it records
// where it came from (Origin: the source cluster and handle). A key whose
// origin and check value the user holds already is skipped, so a
// migration run again creates no duplicate; a key another user owned at
// the source, or whose check does not hold, is refused. The keys are added
// in one change, which the cluster replicates as any other.
func (s *Session) ImportBundle(b *hsmcore.Bundle) ([]hsmcore.Migrated, error) {
	d := s.d
	body, err := d.checkBundle(b)
	if err != nil {
		d.mu.Lock()
		d.audit(s.user, "key.migrate", "", "refused")
		d.mu.Unlock()
		return nil, fmt.Errorf("import bundle: %w", err)
	}
	tk, err := s.spendTransportKey(body.TransportKey)
	if err != nil {
		return nil, fmt.Errorf("import bundle: %w", err)
	}
	bundleKey, err := tk.openBundleKey(body.Enc)
	if err != nil {
		return nil, fmt.Errorf("import bundle: its bundle key does not open under the transport key: %w", hsmcore.ErrTampered)
	}
	defer clear(bundleKey)
	aead, err := gcm(bundleKey)
	if err != nil {
		return nil, fmt.Errorf("import bundle: %w", hsmcore.ErrTampered)
	}

	// One import at a time, from the check of what the user holds to the
	// commit: two bundles carrying the same key (two runs at once) would
	// otherwise both find it absent and both add it.
	d.importMu.Lock()
	defer d.importMu.Unlock()
	d.mu.Lock()
	held := map[[2]string]uint64{} // by origin and check value
	for h, k := range d.st.Keys.All() {
		if k.Token && k.Owner == s.user && k.Origin != "" {
			held[[2]string{k.Origin, k.KCV}] = h
		}
	}
	users := d.st.Users
	d.mu.Unlock()

	results := make([]hsmcore.Migrated, len(body.Keys))
	var recs []*keyRecord
	var at []int
	inBundle := map[string]bool{}
	for i, bk := range body.Keys {
		in := bk.Info
		r := hsmcore.Migrated{Source: in.Handle, Label: in.Label, KCV: in.KCV, Result: hsmcore.Moved}
		origin := hsmcore.KeyOrigin(body.SourceCluster, in.Handle)
		if h, ok := held[[2]string{origin, in.KCV}]; ok {
			r.Result, r.Handle, r.Reason = hsmcore.Skipped, h, "present: moved before (same origin and check value)"
			results[i] = r
			continue
		}
		rec, why := s.bundledKey(aead, bk, users)
		if inBundle[origin] {
			rec, why = nil, "listed twice in the bundle"
		}
		inBundle[origin] = true
		if why != "" {
			r.Result, r.Reason = hsmcore.Refused, why
		} else {
			rec.Origin = origin
			recs, at = append(recs, rec), append(at, i)
		}
		results[i] = r
	}
	if len(recs) > 0 {
		infos, err := s.addKeys("key.unwrap", recs, fmt.Sprintf("hpke bundle %s from %s", tk.ID[:8], body.SourceSerial))
		if err != nil {
			return nil, fmt.Errorf("import bundle: %w", err)
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		for j, i := range at {
			results[i].Handle = infos[j].Handle
			// As every unwrap: the mechanism and the key's check value.
			if err := d.audit(s.user, "key.unwrap", fmt.Sprintf("hpke bundle %s/%d kcv=%s", tk.ID[:8], infos[j].Handle, infos[j].KCV), "ok"); err != nil {
				return nil, err
			}
		}
	}
	return results, nil
}

// checkBundle checks a bundle's signature and certificate, parses its
// body, and checks that it is for this HSM.
func (d *Device) checkBundle(b *hsmcore.Bundle) (*hsmcore.BundleBody, error) {
	if b == nil || len(b.Body) > maxBundle {
		return nil, fmt.Errorf("bundle over %d bytes: %w", maxBundle, hsmcore.ErrInvalid)
	}
	if d.mfrRoot == nil {
		return nil, errors.New("this HSM does not hold its manufacturer's root: it cannot check a bundle")
	}
	root, err := x509.ParseCertificate(d.mfrRoot)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(b.Certificate)
	if err != nil {
		return nil, fmt.Errorf("bundle certificate: %v: %w", err, hsmcore.ErrAttestation)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}, CurrentTime: d.opts.now()}); err != nil {
		return nil, fmt.Errorf("bundle certificate: %v: %w", err, hsmcore.ErrAttestation)
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || !ecdsa.VerifyASN1(pub, hsmcore.DomainDigest(hsmcore.BundleFormat, b.Body), b.Signature) {
		return nil, fmt.Errorf("bundle signature: %w", hsmcore.ErrTampered)
	}
	var body hsmcore.BundleBody
	if err := strictjson.Unmarshal(b.Body, &body); err != nil {
		return nil, fmt.Errorf("bundle: %v: %w", err, hsmcore.ErrMalformed)
	}
	d.mu.Lock()
	cluster := d.st.clusterID()
	d.mu.Unlock()
	switch {
	case body.Format != hsmcore.BundleFormat:
		return nil, fmt.Errorf("bundle format %q: %w", body.Format, hsmcore.ErrMalformed)
	case body.SourceSerial != cert.Subject.SerialNumber:
		return nil, fmt.Errorf("bundle names source %s, its certificate %s: %w", body.SourceSerial, cert.Subject.SerialNumber, hsmcore.ErrTampered)
	case body.Serial != d.id.Serial || body.Cluster != cluster:
		return nil, fmt.Errorf("bundle for HSM %s of cluster %s, not this one: %w", body.Serial, body.Cluster, hsmcore.ErrPermission)
	case len(body.Keys) == 0 || len(body.Keys) > hsmcore.MaxBundleKeys:
		return nil, fmt.Errorf("bundle of %d keys, want 1 to %d: %w", len(body.Keys), hsmcore.MaxBundleKeys, hsmcore.ErrMalformed)
	}
	return &body, nil
}

// spendTransportKey marks the session's transport key id used and
// returns it: unknown (made on another HSM, or before a restart), used,
// expired, or another user's is refused.
func (s *Session) spendTransportKey(id string) (*transportKey, error) {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check("key.migrate", hsmcore.CryptoUser); err != nil {
		return nil, err
	}
	i := slices.IndexFunc(d.transports, func(k *transportKey) bool { return k.ID == id })
	var why string
	switch {
	case i < 0:
		why = "unknown transport key (made on another HSM, or before this HSM restarted)"
	case d.transports[i].used:
		why = "transport key used already: a bundle imports once"
	case !d.opts.now().Before(d.transports[i].Expires):
		why = "transport key expired"
	case d.transports[i].owner != s.user:
		why = "transport key made for another user"
	}
	if why != "" {
		d.audit(s.user, "key.migrate", id, "refused")
		return nil, fmt.Errorf("%s: %w", why, hsmcore.ErrPermission)
	}
	tk := d.transports[i]
	tk.used = true
	if err := d.audit(s.user, "key.migrate", id, "ok"); err != nil {
		return nil, err
	}
	return tk, nil
}

// bundledKey opens one key of a bundle as a key record of the session's
// user, or says why not.
func (s *Session) bundledKey(aead interface {
	NonceSize() int
	Open(dst, nonce, ciphertext, additionalData []byte) ([]byte, error)
}, bk hsmcore.BundleKey, users map[string]*userRecord) (*keyRecord, string) {
	in := bk.Info
	if in.Owner != s.user {
		return nil, "owned by " + in.Owner + " at the source: only its owner imports it"
	}
	aad, err := json.Marshal(in)
	if err != nil || len(bk.Wrapped) < aead.NonceSize() || len(bk.Wrapped) > maxWrapped {
		return nil, "wrapped key malformed"
	}
	material, err := aead.Open(nil, bk.Wrapped[:aead.NonceSize()], bk.Wrapped[aead.NonceSize():], aad)
	if err != nil {
		return nil, "wrapped key does not open: tampered"
	}
	spec := hsmcore.KeySpec{Type: in.Type, Bits: in.Bits, Curve: in.Curve, Label: in.Label, ID: in.ID, Extractable: in.Extractable,
		Encrypt: in.Encrypt, Decrypt: in.Decrypt, Sign: in.Sign, Verify: in.Verify, Wrap: in.Wrap, Unwrap: in.Unwrap,
		WrapWithTrusted: in.WrapWithTrusted, UnwrapTemplate: in.UnwrapTemplate}
	if err := checkSpec(spec); err != nil {
		clear(material)
		return nil, err.Error()
	}
	rec, err := newKeyRecord(spec, material, s.user, false)
	if err != nil {
		clear(material)
		return nil, err.Error()
	}
	if rec.KCV != in.KCV {
		return nil, "check value " + rec.KCV + " is not the source's " + in.KCV
	}
	rec.NeverExtractable, rec.Bound = false, cloneTemplate(in.Bound)
	if what := rec.withinBound(); what != "" {
		return nil, "beyond the unwrap template it was bound by at the source: " + what
	}
	for _, u := range in.SharedWith {
		if ur := users[u]; ur != nil && ur.Role == hsmcore.CryptoUser && u != s.user {
			rec.SharedWith = append(rec.SharedWith, u)
		}
	}
	return rec, ""
}
