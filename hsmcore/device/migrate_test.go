package device

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

// migration is a source and a destination HSM, each the first member of a
// cluster of its own, each with crypto user alice.
type migration struct {
	src, dst     *Device
	srcCU, dstCU *Session
	opRoots      *x509.CertPool
}

func newMigration(t testing.TB) *migration {
	t.Helper()
	m := &migration{src: newDevice(t, stdHW), dst: newDevice(t, stdHW), opRoots: x509.NewCertPool()}
	_, m.srcCU = initDevice(t, m.src)
	initCluster(t, m.src, "source")
	_, m.dstCU = initDevice(t, m.dst)
	initCluster(t, m.dst, "destination")
	m.opRoots.AddCert(authority(t, stdHW.op).Certificate())
	return m
}

func (m *migration) offer(t testing.TB) hsmcore.TransportOffer {
	t.Helper()
	o, err := m.dstCU.NewTransportKey(hsmcore.NewNonce(), hsmcore.HPKEWrap)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func (m *migration) bundle(t *testing.T, handles ...uint64) (*hsmcore.Bundle, []hsmcore.Migrated) {
	t.Helper()
	b, res, err := m.srcCU.ExportBundle(m.offer(t), m.opRoots, handles, false)
	if err != nil {
		t.Fatal(err)
	}
	return b, res
}

// Keys of every type move with their attributes and check values, are
// not local at the destination, and work there: a ciphertext made at the
// source decrypts, a signature made at the destination verifies under
// the source's public key. Trust does not travel.
func TestMigrateMovesKeysWithAttributes(t *testing.T) {
	m := newMigration(t)
	specs := []hsmcore.KeySpec{
		{Type: hsmcore.AES, Bits: 256, Label: "aes", Encrypt: true, Decrypt: true, Extractable: true, ID: []byte{1, 2}},
		{Type: hsmcore.RSA, Bits: 2048, Label: "rsa", Sign: true, Verify: true, Extractable: true},
		{Type: hsmcore.EC, Curve: "P-384", Label: "ec", Sign: true, Verify: true, Extractable: true},
		{Type: hsmcore.GenericSecret, Bits: 256, Label: "secret", Extractable: true},
		{Type: hsmcore.HPKE, Bits: 768, Label: "pq", Wrap: true, Unwrap: true, Extractable: true},
	}
	var src []hsmcore.KeyInfo
	var handles []uint64
	for _, s := range specs {
		k := mustGenerateKey(t, m.srcCU, s)
		src, handles = append(src, k), append(handles, k.Handle)
	}
	ct, err := m.srcCU.Encrypt(src[0].Handle, []byte("secret message"), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, res := m.bundle(t, handles...)
	for _, r := range res {
		if r.Result != hsmcore.Moved {
			t.Fatalf("export: %+v", r)
		}
	}
	got, err := m.dstCU.ImportBundle(b)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range got {
		if r.Result != hsmcore.Moved || r.KCV != src[i].KCV {
			t.Fatalf("import %d: %+v", i, r)
		}
		k, err := m.dstCU.Key(r.Handle)
		if err != nil {
			t.Fatal(err)
		}
		s := src[i]
		if k.KCV != s.KCV || k.Label != s.Label || !bytes.Equal(k.ID, s.ID) || k.Type != s.Type || k.Bits != s.Bits || k.Curve != s.Curve ||
			k.Encrypt != s.Encrypt || k.Sign != s.Sign || k.Wrap != s.Wrap || !k.Extractable || k.Local || k.NeverExtractable || k.Owner != "alice" ||
			!bytes.Equal(k.PublicKey, s.PublicKey) {
			t.Fatalf("moved key %+v, source %+v", k, s)
		}
	}
	entries, _, _ := m.dst.AuditLog()
	audited := map[string]bool{}
	for _, e := range entries {
		if e.Op == "key.unwrap" && strings.HasPrefix(e.Object, "hpke bundle ") {
			audited[e.Object[strings.LastIndex(e.Object, "kcv=")+4:]] = true
		}
	}
	for _, k := range src {
		if !audited[k.KCV] {
			t.Fatalf("the unwrap of %s (kcv %s) is not audited with its check value", k.Label, k.KCV)
		}
	}
	pt, err := m.dstCU.Decrypt(got[0].Handle, ct, nil)
	if err != nil || string(pt) != "secret message" {
		t.Fatalf("the moved AES key decrypts the source's ciphertext: %q, %v", pt, err)
	}
	sig, err := m.dstCU.Sign(got[2].Handle, []byte("msg"))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.srcCU.Verify(src[2].Handle, []byte("msg"), sig); err != nil {
		t.Fatalf("a signature by the moved EC key under the source's: %v", err)
	}
}

// What may not leave does not: a key that is not extractable, one with
// wrap-with-trusted, another user's (even shared). Refused with a reason,
// audited, and left out of the bundle.
func TestMigrateRefusesWhatMayNotLeave(t *testing.T) {
	m := newMigration(t)
	co := login(t, m.src, "admin")
	if err := co.CreateUser("bob", hsmcore.CryptoUser, testPassword); err != nil {
		t.Fatal(err)
	}
	bob := login(t, m.src, "bob")
	fixed := mustGenerateKey(t, m.srcCU, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true})
	wwt := mustGenerateKey(t, m.srcCU, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Extractable: true, WrapWithTrusted: true})
	bobs := mustGenerateKey(t, bob, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Extractable: true})
	if err := bob.ShareKey(bobs.Handle, "alice", true); err != nil {
		t.Fatal(err)
	}
	ok := mustGenerateKey(t, m.srcCU, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Extractable: true})
	b, res := m.bundle(t, fixed.Handle, wwt.Handle, bobs.Handle, 999, ok.Handle)
	want := []string{"not extractable", "wrap-with-trusted", "only its owner, bob, moves it", "no such key", ""}
	for i, r := range res {
		if want[i] == "" {
			if r.Result != hsmcore.Moved {
				t.Fatalf("key %d: %+v", i, r)
			}
			continue
		}
		if r.Result != hsmcore.Refused || !strings.Contains(r.Reason, want[i]) {
			t.Fatalf("key %d: %+v, want refused: %s", i, r, want[i])
		}
	}
	var body hsmcore.BundleBody
	json.Unmarshal(b.Body, &body)
	if len(body.Keys) != 1 || body.Keys[0].Info.KCV != ok.KCV {
		t.Fatalf("the bundle holds %d keys, want the one allowed", len(body.Keys))
	}
	entries, _, _ := m.src.AuditLog()
	denied := 0
	for _, e := range entries {
		if e.Op == "key.wrap" && e.Result == "denied" && strings.HasPrefix(e.Object, "hpke transport ") {
			denied++
		}
	}
	if denied != 4 {
		t.Fatalf("%d refusals audited, want 4", denied)
	}
}

// A bundle imports once: replayed, or another bundle under the same
// transport key, it is refused and nothing changes. A transport key that
// expired, is another user's, or another HSM's is refused too.
func TestMigrateReplayAndTransportKeyReuseRefused(t *testing.T) {
	m := newMigration(t)
	k := mustGenerateKey(t, m.srcCU, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Extractable: true})
	o := m.offer(t)
	b, _, err := m.srcCU.ExportBundle(o, m.opRoots, []uint64{k.Handle}, false)
	if err != nil {
		t.Fatal(err)
	}
	again, _, err := m.srcCU.ExportBundle(o, m.opRoots, []uint64{k.Handle}, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.dstCU.ImportBundle(b); err != nil {
		t.Fatal(err)
	}
	before := m.dst.StateDigest()
	for name, bb := range map[string]*hsmcore.Bundle{"replay": b, "second bundle under the key": again} {
		if _, err := m.dstCU.ImportBundle(bb); !errors.Is(err, hsmcore.ErrPermission) || !strings.Contains(err.Error(), "used already") {
			t.Fatalf("%s: %v", name, err)
		}
	}
	if m.dst.StateDigest() != before {
		t.Fatal("a refused bundle changed the destination")
	}
	// Another HSM of the same cluster hardware cannot use it: the key is
	// unknown there.
	other := newDevice(t, stdHW)
	_, ocu := initDevice(t, other)
	initCluster(t, other, "destination")
	if _, err := ocu.ImportBundle(b); err == nil {
		t.Fatal("a bundle for another HSM imported")
	}
	// Another user of the destination.
	dco := login(t, m.dst, "admin")
	if err := dco.CreateUser("carol", hsmcore.CryptoUser, testPassword); err != nil {
		t.Fatal(err)
	}
	b2, _ := m.bundle(t, k.Handle)
	if _, err := login(t, m.dst, "carol").ImportBundle(b2); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("another user's transport key: %v", err)
	}
}

func TestMigrateOfferChecked(t *testing.T) {
	m := newMigration(t)
	k := mustGenerateKey(t, m.srcCU, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Extractable: true})
	good := m.offer(t)
	cases := map[string]func(o *hsmcore.TransportOffer){
		"another public key": func(o *hsmcore.TransportOffer) { o.Key.PublicKey = m.offer(t).Key.PublicKey },
		"expiry extended":    func(o *hsmcore.TransportOffer) { o.Key.Expires = o.Key.Expires.Add(time.Hour) },
		"expired":            func(o *hsmcore.TransportOffer) { o.Key.Expires = time.Now().Add(-time.Minute) },
		"another cluster":    func(o *hsmcore.TransportOffer) { o.Key.Cluster = "elsewhere" },
		"another nonce":      func(o *hsmcore.TransportOffer) { o.Nonce = hsmcore.NewNonce() },
		"no attestation":     func(o *hsmcore.TransportOffer) { o.Attestation = nil },
		"signature flipped": func(o *hsmcore.TransportOffer) {
			a := *o.Attestation
			a.Signature = bytes.Clone(a.Signature)
			a.Signature[10] ^= 1
			o.Attestation = &a
		},
		"rsa-aes, not hpke":    func(o *hsmcore.TransportOffer) { o.Key.Mechanism = hsmcore.RSAAES },
		"aes-kwp":              func(o *hsmcore.TransportOffer) { o.Key.Mechanism = hsmcore.AESKWP },
		"the source's own key": func(o *hsmcore.TransportOffer) { o.Key.Serial = m.src.Identity().Serial },
	}
	for name, mutate := range cases {
		o := good
		o.Key.PublicKey = bytes.Clone(good.Key.PublicKey)
		mutate(&o)
		if _, _, err := m.srcCU.ExportBundle(o, m.opRoots, []uint64{k.Handle}, false); !errors.Is(err, hsmcore.ErrAttestation) {
			t.Errorf("%s: %v, want ErrAttestation", name, err)
		}
	}
	// An HSM of another manufacturer (not certified by the source's
	// root) holds the transport key: refused.
	zeta := newDevice(t, hw{"hsm2m.medium", "zeta", "cloud", "2.1.0", false})
	_, zcu := initDevice(t, zeta)
	initCluster(t, zeta, "destination")
	zo, err := zcu.NewTransportKey(hsmcore.NewNonce(), hsmcore.HPKEWrap)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.srcCU.ExportBundle(zo, m.opRoots, []uint64{k.Handle}, false); !errors.Is(err, hsmcore.ErrAttestation) {
		t.Errorf("another manufacturer's HSM: %v", err)
	}
}

// Everything in a bundle is checked at the destination: the signature,
// the source's certificate, each key's sealed material and check value.
func TestMigrateBundleTamperingRefused(t *testing.T) {
	m := newMigration(t)
	k := mustGenerateKey(t, m.srcCU, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Extractable: true})
	before := m.dst.StateDigest()
	b, _ := m.bundle(t, k.Handle)
	flipped := *b
	flipped.Body = bytes.Replace(b.Body, []byte(`"encrypt":true`), []byte(`"encrypt":false`), 1)
	if _, err := m.dstCU.ImportBundle(&flipped); !errors.Is(err, hsmcore.ErrTampered) {
		t.Fatalf("an attribute changed: %v", err)
	}
	selfSigned := *b
	selfSigned.Certificate = m.dst.mfrCert // a genuine certificate, not the signer's
	if _, err := m.dstCU.ImportBundle(&selfSigned); err == nil {
		t.Fatal("a bundle under another device's certificate imported")
	}
	// A source that signs what it likes (here: the test, with the source's
	// key) still cannot change a key's attributes: they are the
	// material's additional data.
	var body hsmcore.BundleBody
	if err := json.Unmarshal(b.Body, &body); err != nil {
		t.Fatal(err)
	}
	body.Keys[0].Info.Decrypt = true
	raw, _ := json.Marshal(body)
	sig, _ := m.src.sign(hsmcore.BundleFormat, raw)
	resigned := &hsmcore.Bundle{Body: raw, Signature: sig, Certificate: b.Certificate}
	res, err := m.dstCU.ImportBundle(resigned)
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Result != hsmcore.Refused || !strings.Contains(res[0].Reason, "tampered") {
		t.Fatalf("re-signed with an attribute changed: %+v", res[0])
	}
	if m.dst.StateDigest() != before {
		t.Fatal("refused bundles changed the destination")
	}
}

// Running a migration again moves nothing twice: a key of the same label
// and check value is skipped.
func TestMigrateIdempotent(t *testing.T) {
	m := newMigration(t)
	k := mustGenerateKey(t, m.srcCU, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Label: "k", Encrypt: true, Extractable: true})
	b, _ := m.bundle(t, k.Handle)
	first, err := m.dstCU.ImportBundle(b)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = m.bundle(t, k.Handle)
	second, err := m.dstCU.ImportBundle(b)
	if err != nil {
		t.Fatal(err)
	}
	if second[0].Result != hsmcore.Skipped || second[0].Handle != first[0].Handle {
		t.Fatalf("again: %+v, want skipped as %d", second[0], first[0].Handle)
	}
	keys, _ := m.dstCU.Keys()
	if len(keys) != 1 {
		t.Fatalf("%d keys at the destination, want 1", len(keys))
	}
}

// The bundle parser takes any body a genuine source signs (here, the
// test signs it with the source's key): never a panic, and a refused
// bundle changes nothing (the seed, a genuine bundle, imports once).
func FuzzImportBundle(f *testing.F) {
	m := newMigration(f)
	k := mustGenerateKey(f, m.srcCU, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Extractable: true})
	b, _, err := m.srcCU.ExportBundle(m.offer(f), m.opRoots, []uint64{k.Handle}, false)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b.Body)
	f.Add([]byte(`{"format":"hsmbackup-bundle/1"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		before := m.dst.StateDigest()
		sig, err := m.src.sign(hsmcore.BundleFormat, body)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.dstCU.ImportBundle(&hsmcore.Bundle{Body: body, Signature: sig, Certificate: m.src.mfrCert}); err != nil && m.dst.StateDigest() != before {
			t.Fatalf("a refused bundle (%v) changed the HSM", err)
		}
	})
}

// An rsa-aes transport key (RSA-3072, for destinations without ML-KEM)
// moves keys the same way: the bundle key under RSA-OAEP-SHA256.
func TestMigrateRSAAESTransportKey(t *testing.T) {
	m := newMigration(t)
	k := mustGenerateKey(t, m.srcCU, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Extractable: true})
	o, err := m.dstCU.NewTransportKey(hsmcore.NewNonce(), hsmcore.RSAAES)
	if err != nil {
		t.Fatal(err)
	}
	if o.Key.Mechanism != hsmcore.RSAAES {
		t.Fatalf("mechanism %s", o.Key.Mechanism)
	}
	b, _, err := m.srcCU.ExportBundle(o, m.opRoots, []uint64{k.Handle}, false)
	if err != nil {
		t.Fatal(err)
	}
	res, err := m.dstCU.ImportBundle(b)
	if err != nil || res[0].Result != hsmcore.Moved || res[0].KCV != k.KCV {
		t.Fatalf("%+v, %v", res, err)
	}
	if _, err := m.dstCU.NewTransportKey(hsmcore.NewNonce(), hsmcore.AESKWP); !errors.Is(err, hsmcore.ErrInvalid) {
		t.Fatalf("an aes-kwp transport key: %v", err)
	}
}

// Two keys of the same label and check value (here the same key unwrapped
// twice; with 3-byte check values, also two different keys one time in
// 2^24) are two keys: both move, and a second run skips both, by their
// origin (source cluster and handle), not by label and check value.
func TestMigrateSameLabelAndCheckValue(t *testing.T) {
	m := newMigration(t)
	kek := mustGenerateKey(t, m.srcCU, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Wrap: true, Unwrap: true})
	k := mustGenerateKey(t, m.srcCU, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Extractable: true})
	w, err := m.srcCU.WrapKey(kek.Handle, k.Handle, hsmcore.AESKWP)
	if err != nil {
		t.Fatal(err)
	}
	var twins []uint64
	for range 2 {
		u, err := m.srcCU.UnwrapKey(kek.Handle, hsmcore.AESKWP, w, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Label: "twin", Encrypt: true, Extractable: true})
		if err != nil {
			t.Fatal(err)
		}
		twins = append(twins, u.Handle)
	}
	b, _ := m.bundle(t, twins...)
	res, err := m.dstCU.ImportBundle(b)
	if err != nil || res[0].Result != hsmcore.Moved || res[1].Result != hsmcore.Moved || res[0].Handle == res[1].Handle {
		t.Fatalf("twins: %+v, %v", res, err)
	}
	b, _ = m.bundle(t, twins...)
	again, err := m.dstCU.ImportBundle(b)
	if err != nil || again[0].Result != hsmcore.Skipped || again[1].Result != hsmcore.Skipped || again[0].Handle != res[0].Handle || again[1].Handle != res[1].Handle {
		t.Fatalf("twins again: %+v, %v", again, err)
	}
	got, _ := m.dstCU.Key(res[1].Handle)
	if got.Origin != hsmcore.KeyOrigin("source", twins[1]) {
		t.Fatalf("origin %q", got.Origin)
	}
}

// An offer carried by hand to a source out of the destination's reach
// (keys export --to hsmbackup) is good while its transport key is: hours
// after it was made, not after the key's 24 hours.
func TestMigrateOfferCarriedForHours(t *testing.T) {
	m := newMigration(t)
	k := mustGenerateKey(t, m.srcCU, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Extractable: true})
	o := m.offer(t)
	made := time.Now()
	m.src.opts.Now = func() time.Time { return made.Add(hsmcore.TransportKeyTTL + time.Minute) }
	if _, _, err := m.srcCU.ExportBundle(o, m.opRoots, []uint64{k.Handle}, false); !errors.Is(err, hsmcore.ErrAttestation) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("an offer past its key's expiry: %v", err)
	}
	m.src.opts.Now = func() time.Time { return made.Add(6 * time.Hour) }
	b, _, err := m.srcCU.ExportBundle(o, m.opRoots, []uint64{k.Handle}, false)
	if err != nil {
		t.Fatalf("an offer six hours old: %v", err)
	}
	if res, err := m.dstCU.ImportBundle(b); err != nil || res[0].Result != hsmcore.Moved {
		t.Fatalf("import: %+v, %v", res, err)
	}
}

// Two bundles of the same keys imported at once (two runs of a migration
// at the same time) add each key once: the second finds what the first
// added. EC keys, whose records take long enough to make that the two
// imports overlap (without the lock around each import, every round adds
// every key twice).
func TestMigrateConcurrentImportsAddOnce(t *testing.T) {
	m := newMigration(t)
	const rounds, perBundle = 2, hsmcore.MaxBundleKeys
	for round := range rounds {
		var handles []uint64
		for range perBundle {
			handles = append(handles, mustGenerateKey(t, m.srcCU, hsmcore.KeySpec{Type: hsmcore.EC, Curve: "P-384", Sign: true, Extractable: true}).Handle)
		}
		b1, _ := m.bundle(t, handles...)
		b2, _ := m.bundle(t, handles...)
		results := make([][]hsmcore.Migrated, 2)
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for i, b := range []*hsmcore.Bundle{b1, b2} {
			wg.Add(1)
			go func() { defer wg.Done(); results[i], errs[i] = m.dstCU.ImportBundle(b) }()
		}
		wg.Wait()
		for i := range 2 {
			if errs[i] != nil {
				t.Fatalf("round %d, import %d: %v", round, i+1, errs[i])
			}
		}
		for j := range handles {
			a, b := results[0][j], results[1][j]
			if a.Handle != b.Handle || (a.Result == hsmcore.Moved) == (b.Result == hsmcore.Moved) {
				t.Fatalf("round %d, key %d imported by two bundles at once: %+v and %+v, want one moved, one skipped, one handle", round, handles[j], a, b)
			}
		}
	}
	keys, err := m.dstCU.Keys()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != rounds*perBundle {
		t.Fatalf("the destination holds %d keys of %d moved twice at once", len(keys), rounds*perBundle)
	}
}
