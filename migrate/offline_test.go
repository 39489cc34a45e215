package migrate_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/hsmtest"
	"github.com/hsmbackup/hsmbackup/migrate"
)

// offer prepares an offer at the destination and carries it as a file
// does: encoded, and parsed again.
func (f *fixture) offer(t *testing.T) *migrate.Offer {
	t.Helper()
	id, err := f.dstHSMs[0].Dev.TLSIdentity()
	if err != nil {
		t.Fatal(err)
	}
	o, err := migrate.Prepare(context.Background(), f.dst, id.Certificate.Certificate[0], f.opts)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	if o, err = migrate.ParseOffer(b); err != nil {
		t.Fatal(err)
	}
	return o
}

// carry encodes p and parses it again, as the package file does.
func carry(t *testing.T, p *migrate.Package) *migrate.Package {
	t.Helper()
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if p, err = migrate.ParsePackage(b); err != nil {
		t.Fatal(err)
	}
	return p
}

func states(t *testing.T, hsms []*hsmtest.Daemon) []hsmtest.State {
	var s []hsmtest.State
	for _, h := range hsms {
		s = append(s, h.State(t))
	}
	return s
}

func assertUnchanged(t *testing.T, hsms []*hsmtest.Daemon, before []hsmtest.State) {
	t.Helper()
	for i, h := range hsms {
		h.AssertUnchanged(t, before[i])
	}
}

// The three steps of an offline migration move the selected keys to
// every destination member, and report what the source refused; the
// package imports once; the same keys packed again for a new offer are
// skipped as present.
func TestOfflineMigration(t *testing.T) {
	f := newFixture(t)
	keys := f.generate(t, 7, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Label: "k", Encrypt: true, Decrypt: true, Extractable: true})
	f.generate(t, 1, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Label: "fixed", Encrypt: true})
	f.generate(t, 1, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Label: "other", Encrypt: true, Extractable: true})
	opts := f.opts
	opts.Select = func(k hsmcore.KeyInfo) bool { return k.Label != "other-0" }

	pkg, rep, err := migrate.Export(context.Background(), f.src, f.offer(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Moved != len(keys) || rep.Refused != 1 || len(pkg.Results) != len(keys)+1 || pkg.Bundle == nil {
		t.Fatalf("export: %+v", rep)
	}
	pkg = carry(t, pkg)
	rep, err = migrate.Import(context.Background(), f.dst, pkg)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Moved != len(keys) || rep.Refused != 1 || rep.Skipped != 0 {
		t.Fatalf("import: moved %d, refused %d, skipped %d", rep.Moved, rep.Refused, rep.Skipped)
	}
	for i, m := range held(t, f.dstHSMs) {
		if len(m) != len(keys) {
			t.Fatalf("member %d holds %d keys, want %d", i, len(m), len(keys))
		}
		for _, k := range keys {
			if m[k.Label+"/"+k.KCV] != 1 {
				t.Fatalf("member %d holds key %s %d times", i, k.Label, m[k.Label+"/"+k.KCV])
			}
		}
	}

	// Replayed: refused, nothing changes.
	before := states(t, f.dstHSMs)
	if _, err := migrate.Import(context.Background(), f.dst, pkg); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("a package imported twice: %v", err)
	}
	assertUnchanged(t, f.dstHSMs, before)

	// Packed again for a new offer: every key skipped, none twice.
	pkg, _, err = migrate.Export(context.Background(), f.src, f.offer(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	if rep, err = migrate.Import(context.Background(), f.dst, carry(t, pkg)); err != nil || rep.Skipped != len(keys) || rep.Moved != 0 {
		t.Fatalf("packed again: %+v, %v", rep, err)
	}
	for i, m := range held(t, f.dstHSMs) {
		if len(m) != len(keys) {
			t.Fatalf("member %d holds %d keys after a second package, want %d", i, len(m), len(keys))
		}
	}
}

// What the source refuses to pack leaves both clusters unchanged: an
// offer altered on its way, or of another cluster, or for another user;
// more keys than one bundle holds. A package altered on its way back is
// refused by the destination, which stays unchanged.
func TestOfflineRefusals(t *testing.T) {
	f := newFixture(t)
	f.generate(t, hsmcore.MaxBundleKeys+1, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128, Label: "k", Encrypt: true, Extractable: true})
	one := f.opts
	one.Select = func(k hsmcore.KeyInfo) bool { return k.Label == "k-0" }
	good := f.offer(t)
	src, dst := states(t, f.srcHSMs), states(t, f.dstHSMs)

	refuse := func(name string, o *migrate.Offer, opts migrate.Options, want error) {
		t.Helper()
		if _, _, err := migrate.Export(context.Background(), f.src, o, opts); !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", name, err, want)
		}
	}
	another := *good
	another.Offer.Key.PublicKey = f.offer(t).Offer.Key.PublicKey // an attested key, swapped in
	refuse("another public key", &another, one, hsmcore.ErrAttestation)
	nonce := *good
	nonce.Offer.Nonce = hsmcore.NewNonce()
	refuse("another nonce", &nonce, one, hsmcore.ErrAttestation)
	mech := *good
	mech.Mechanism, mech.Offer.Key.Mechanism = hsmcore.RSAAES, hsmcore.RSAAES
	refuse("another mechanism", &mech, one, hsmcore.ErrAttestation)
	wrongCluster := one
	wrongCluster.ClusterKeyHash = clusterKeyHash(t, f.srcHSMs[0])
	refuse("another cluster's key", good, wrongCluster, hsmcore.ErrAttestation)
	user := *good
	user.User = "mallory"
	refuse("another user", &user, one, hsmcore.ErrInvalid)
	refuse("over one bundle", good, f.opts, hsmcore.ErrInvalid)
	assertUnchanged(t, f.srcHSMs, src)

	pkg, _, err := migrate.Export(context.Background(), f.src, good, one)
	if err != nil {
		t.Fatal(err)
	}
	src = states(t, f.srcHSMs) // the wrap is audited
	tampered := carry(t, pkg)
	tampered.Bundle.Body = bytes.Replace(tampered.Bundle.Body, []byte(`"encrypt":true`), []byte(`"encrypt":false`), 1)
	if _, err := migrate.Import(context.Background(), f.dst, tampered); !errors.Is(err, hsmcore.ErrTampered) {
		t.Fatalf("a tampered package: %v", err)
	}
	elsewhere := carry(t, pkg)
	elsewhere.Member = f.dstHSMs[1].Addr // a member that did not make its transport key
	if _, err := migrate.Import(context.Background(), f.dst, elsewhere); err == nil {
		t.Fatal("a package imported on a member without its transport key")
	}
	for i, h := range f.dstHSMs {
		if got := h.State(t); got.Digest != dst[i].Digest {
			t.Fatalf("destination member %d changed", i)
		}
	}
	assertUnchanged(t, f.srcHSMs, src)
	// Refused, the package still imports as it came.
	if rep, err := migrate.Import(context.Background(), f.dst, carry(t, pkg)); err != nil || rep.Moved != 1 {
		t.Fatalf("the package as written: %+v, %v", rep, err)
	}
}

func FuzzParseOffer(f *testing.F) {
	f.Add([]byte(`{"format":"hsmbackup-offer/1","cluster":"c","cluster_certificate":"AA==","member":"m","user":"u","mechanism":"hpke","offer":{"key":{"mechanism":"hpke"},"attestation":{}}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := migrate.ParseOffer(b)
		if err == nil && (o.Format != migrate.OfferFormat || o.Offer.Attestation == nil || o.Mechanism != o.Offer.Key.Mechanism) {
			t.Fatalf("accepted %+v", o)
		}
	})
}

func FuzzParsePackage(f *testing.F) {
	f.Add([]byte(`{"format":"hsmbackup-package/1","source_cluster":"s","cluster":"c","member":"m","results":[{"source":1,"result":"moved"}],"bundle":{"body":"e30=","signature":"","certificate":""}}`))
	f.Add([]byte(`{"format":"hsmbackup-package/1"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := migrate.ParsePackage(b)
		if err == nil && (p.Format != migrate.PackageFormat || len(p.Results) > hsmcore.MaxBundleKeys || p.Member == "") {
			t.Fatalf("accepted %+v", p)
		}
	})
}
