package restore

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/backup/backuptest"
	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/wrap"
)

const testPrefix = "tenant-a/"

// fixture is a source HSM with one backup of it in a file store.
type fixture struct {
	a    *authorities
	src  *source
	st   store.Store
	m    *backup.Manifest
	opts Options
	priv ed25519.PrivateKey
}

func newFixture(t *testing.T, fips bool) *fixture {
	t.Helper()
	a := newAuthorities(t)
	src := newSource(t, a, fips)
	kr, pub, priv := backuptest.Keys(t)
	st := backuptest.FileStore(t)
	m, err := backup.Create(context.Background(), src.officer, backup.Repo{Store: st, Prefix: testPrefix}, backup.CreateOptions{
		Recipients: []wrap.Recipient{kr}, SigningKey: priv,
	})
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{PublicKey: pub, Identities: []wrap.Identity{kr}, ManufacturerRoots: a.mfrRoots, OperatorRoots: a.opRoots}
	return &fixture{a: a, src: src, st: st, m: m, opts: opts, priv: priv}
}

func (f *fixture) restore(target Target, opts Options) (*Result, error) {
	return Restore(context.Background(), f.repo(), testCluster, f.m.ID, target, opts)
}

func (f *fixture) repo() backup.Repo { return backup.Repo{Store: f.st, Prefix: testPrefix} }

func health(t *testing.T, c *client.Client) api.Health {
	t.Helper()
	h, err := c.Health(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// unchanged fails t if target's state differs from before.
func unchanged(t *testing.T, target *client.Client, before api.Health) {
	t.Helper()
	after := health(t, target)
	if after.StateDigest != before.StateDigest || after.Initialized != before.Initialized ||
		after.ClusterInitialized != before.ClusterInitialized || after.ClusterID != before.ClusterID {
		t.Fatalf("target changed: %+v, was %+v", after, before)
	}
}

func flip(t *testing.T, st store.Store, key string, at int) {
	t.Helper()
	ctx := context.Background()
	rc, err := st.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	if at < 0 {
		at += len(b)
	}
	b[at] ^= 0x01
	if err := st.Put(ctx, key, bytes.NewReader(b), store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestRestore(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, false)
	target, addr := newTarget(t, f.a, device.ManufactureConfig{})
	before := health(t, target)
	if before.Initialized || before.ClusterInitialized {
		t.Fatalf("target not fresh: %+v", before)
	}

	res, err := f.restore(target, f.opts)
	if err != nil {
		t.Fatal(err)
	}
	if *res != (Result{BackupID: f.m.ID, TargetSerial: before.Serial, ImageID: f.m.ImageID}) {
		t.Fatalf("result %+v", res)
	}

	// The target now serves the cluster: the crypto user logs in and
	// decrypts what the source encrypted.
	cfg := f.src.cfg
	cfg.Addr = addr
	cu := newClient(t, cfg)
	if _, err := cu.Login(ctx, "crypto-user", testPassword); err != nil {
		t.Fatal(err)
	}
	pt, err := cu.Decrypt(ctx, f.src.key, f.src.ciphertext, nil)
	if err != nil {
		t.Fatal(err)
	}
	if string(pt) != plaintext {
		t.Fatalf("decrypted %q", pt)
	}
}

func TestDryRun(t *testing.T) {
	f := newFixture(t, false)
	target, _ := newTarget(t, f.a, device.ManufactureConfig{})
	before := health(t, target)
	opts := f.opts
	opts.DryRun = true
	res, err := f.restore(target, opts)
	if err != nil {
		t.Fatal(err)
	}
	if *res != (Result{BackupID: f.m.ID, TargetSerial: before.Serial, ImageID: f.m.ImageID, DryRun: true}) {
		t.Fatalf("result %+v", res)
	}
	unchanged(t, target, before)

	// A dry run still makes every check.
	opts.ManufacturerRoots = newAuthorities(t).mfrRoots
	if _, err := f.restore(target, opts); !errors.Is(err, hsmcore.ErrAttestation) {
		t.Fatalf("dry run with other roots: %v", err)
	}
	flip(t, f.st, backup.Repo{Prefix: testPrefix}.ObjectKey(testCluster, f.m.ID, backup.ImageObject), 200)
	opts = f.opts
	opts.DryRun = true
	if _, err := f.restore(target, opts); !errors.Is(err, backup.ErrObjectHash) {
		t.Fatalf("dry run of a changed image: %v", err)
	}
}

// TestPendingDeletionRefused: a deleted backup is not restored, dry run
// or not, until it is restored to READY.
func TestPendingDeletionRefused(t *testing.T) {
	f := newFixture(t, false)
	target, _ := newTarget(t, f.a, device.ManufactureConfig{})
	before := health(t, target)
	ctx := context.Background()
	lo := backup.LifecycleOptions{SigningKey: f.priv}
	if _, err := backup.Delete(ctx, f.repo(), testCluster, f.m.ID, lo); err != nil {
		t.Fatal(err)
	}
	for _, dry := range []bool{true, false} {
		opts := f.opts
		opts.DryRun = dry
		if _, err := f.restore(target, opts); !errors.Is(err, backup.ErrState) {
			t.Fatalf("restore (dry run %t) of a PENDING_DELETION backup: %v", dry, err)
		}
	}
	unchanged(t, target, before)
	if _, err := backup.RestoreDeleted(ctx, f.repo(), testCluster, f.m.ID, lo); err != nil {
		t.Fatal(err)
	}
	if _, err := f.restore(target, f.opts); err != nil {
		t.Fatalf("restore after restore-deleted: %v", err)
	}
}

func TestRefused(t *testing.T) {
	other := newAuthorities(t)
	globex := newNamedAuthorities(t, "globex", "initech")
	imageKey := func(f *fixture) string {
		return backup.Repo{Prefix: testPrefix}.ObjectKey(testCluster, f.m.ID, backup.ImageObject)
	}
	manifestKey := func(f *fixture) string {
		return backup.Repo{Prefix: testPrefix}.ObjectKey(testCluster, f.m.ID, backup.ManifestObject)
	}
	tests := []struct {
		name   string
		fips   bool
		target device.ManufactureConfig
		trust  bool                           // trust the target's authorities
		setup  func(t *testing.T, f *fixture) // breaks the backup or the options
		want   []error
		msg    string
	}{
		{name: "other class", target: device.ManufactureConfig{Class: "hsm2m.large"},
			want: []error{hsmcore.ErrAttestation}, msg: `class "hsm2m.large", want "hsm2m.medium"`},
		// Trusted authorities of other names: the expectation fails.
		{name: "other manufacturer", target: device.ManufactureConfig{Manufacturer: globex.mfr}, trust: true,
			want: []error{hsmcore.ErrAttestation}, msg: `manufacturer "globex", want "acme"`},
		{name: "other operator", target: device.ManufactureConfig{Operator: globex.op}, trust: true,
			want: []error{hsmcore.ErrAttestation}, msg: `operator "initech", want "cloud"`},
		// Authorities of the same names, not trusted: the chain fails.
		{name: "untrusted chain", target: device.ManufactureConfig{Manufacturer: other.mfr, Operator: other.op},
			want: []error{hsmcore.ErrAttestation}, msg: "manufacturer chain"},
		{name: "older firmware", target: device.ManufactureConfig{Firmware: "2.0.9"},
			want: []error{hsmcore.ErrAttestation}, msg: `firmware "2.0.9" older than "2.1.0"`},
		{name: "FIPS into non-FIPS", fips: true,
			want: []error{hsmcore.ErrAttestation}, msg: "not in FIPS mode"},
		{name: "flipped image byte", setup: func(t *testing.T, f *fixture) { flip(t, f.st, imageKey(f), 300) },
			want: []error{backup.ErrObjectHash}, msg: "backup "},
		{name: "flipped last image byte", setup: func(t *testing.T, f *fixture) { flip(t, f.st, imageKey(f), -1) },
			want: []error{backup.ErrObjectHash}, msg: "backup "},
		{name: "flipped manifest byte", setup: func(t *testing.T, f *fixture) { flip(t, f.st, manifestKey(f), 40) },
			want: []error{backup.ErrManifest}, msg: "backup "},
		{name: "other signing key", setup: func(t *testing.T, f *fixture) { _, f.opts.PublicKey, _ = backuptest.Keys(t) },
			want: []error{backup.ErrManifest}, msg: "backup "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, tt.fips)
			if tt.target.Manufacturer != nil && tt.target.Operator == nil {
				tt.target.Operator = f.a.op
			}
			if tt.target.Operator != nil && tt.target.Manufacturer == nil {
				tt.target.Manufacturer = f.a.mfr
			}
			target, addr := newTarget(t, f.a, tt.target)
			if tt.target.Manufacturer != nil {
				// Reach the target whoever made it; trust is the
				// attestation's business.
				pool := f.a.mfrRoots.Clone()
				pool.AddCert(tt.target.Manufacturer.Certificate())
				target = newClient(t, client.Config{Addr: addr, ManufacturerRoots: pool, Claims: f.a.claims})
			}
			if tt.trust {
				f.opts.ManufacturerRoots = f.a.mfrRoots.Clone()
				f.opts.ManufacturerRoots.AddCert(tt.target.Manufacturer.Certificate())
				f.opts.OperatorRoots = f.a.opRoots.Clone()
				f.opts.OperatorRoots.AddCert(tt.target.Operator.Certificate())
			}
			if tt.setup != nil {
				tt.setup(t, f)
			}
			before := health(t, target)
			res, err := f.restore(target, f.opts)
			if err == nil {
				t.Fatalf("restored: %+v", res)
			}
			for _, w := range tt.want {
				if !errors.Is(err, w) {
					t.Errorf("error %q is not %q", err, w)
				}
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q does not name %q", err, tt.msg)
			}
			unchanged(t, target, before)
		})
	}
}

// TestObjectChanged replaces the image object after its manifest was
// written: with another genuine image of the same source, encrypted to the
// same recipients (both layers authenticate, only the hash differs), and
// with a copy with a byte flipped half-way, which reaches the target
// before the flip does. The target must commit nothing.
func TestObjectChanged(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, false)
	kr := f.opts.Identities[0].(*wrap.Keyring)
	_, _, priv := backuptest.Keys(t)
	m2, err := backup.Create(ctx, f.src.officer, f.repo(), backup.CreateOptions{Recipients: []wrap.Recipient{kr}, SigningKey: priv})
	if err != nil {
		t.Fatal(err)
	}
	imageKey := backup.Repo{Prefix: testPrefix}.ObjectKey(testCluster, f.m.ID, backup.ImageObject)
	flipped := "tenant-a/flipped"
	rc, err := f.st.Get(ctx, imageKey)
	if err != nil {
		t.Fatal(err)
	}
	err = f.st.Put(ctx, flipped, rc, store.PutOptions{})
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	flip(t, f.st, flipped, int(f.m.ObjectSize/2))

	for name, other := range map[string]string{
		"genuine": backup.Repo{Prefix: testPrefix}.ObjectKey(testCluster, m2.ID, backup.ImageObject),
		"flipped": flipped,
	} {
		t.Run(name, func(t *testing.T) {
			sw := &swapStore{Store: f.st, key: imageKey, other: other}
			target, _ := newTarget(t, f.a, device.ManufactureConfig{})
			before := health(t, target)
			_, err := Restore(ctx, backup.Repo{Store: sw, Prefix: testPrefix}, testCluster, f.m.ID, target, f.opts)
			if !errors.Is(err, backup.ErrObjectHash) || !strings.Contains(err.Error(), "backup "+f.m.ID+": image object does not match its manifest") {
				t.Fatalf("restore of a changed object: %v", err)
			}
			unchanged(t, target, before)
		})
	}
}

// TestImportErrorPassesThrough checks that the target's sentinel errors
// reach the caller.
func TestImportErrorPassesThrough(t *testing.T) {
	f := newFixture(t, false)
	target, _ := newTarget(t, f.a, device.ManufactureConfig{})
	_, err := f.restore(&refusingTarget{Target: target}, f.opts)
	if !errors.Is(err, hsmcore.ErrTampered) {
		t.Fatalf("error %v is not ErrTampered", err)
	}
}

type refusingTarget struct{ Target }

func (r *refusingTarget) ImportImage(ctx context.Context, img io.Reader) (api.ImportResponse, error) {
	return api.ImportResponse{}, &client.RemoteError{Status: 422, Code: "tampered", Message: "import image: chunk 3: authentication failed"}
}

// replayTarget answers every Attest with an attestation the target made
// earlier, for another nonce, and records whether an import was tried.
type replayTarget struct {
	*client.Client
	att      *hsmcore.Attestation
	imported bool
}

func (r *replayTarget) Attest(context.Context, []byte) (*hsmcore.Attestation, error) {
	return r.att, nil
}

func (r *replayTarget) ImportImage(ctx context.Context, img io.Reader) (api.ImportResponse, error) {
	r.imported = true
	return r.Client.ImportImage(ctx, img)
}

// TestReplayedAttestationRefused: a genuine target's attestation replayed
// for another nonce, or one older than the freshness window, is refused,
// and nothing is sent to the target.
func TestReplayedAttestationRefused(t *testing.T) {
	f := newFixture(t, false)
	target, _ := newTarget(t, f.a, device.ManufactureConfig{})
	before := health(t, target)
	old, err := target.Attest(context.Background(), hsmcore.NewNonce())
	if err != nil {
		t.Fatal(err)
	}
	replay := &replayTarget{Client: target, att: old}
	if _, err := f.restore(replay, f.opts); !errors.Is(err, hsmcore.ErrAttestation) {
		t.Fatalf("replayed attestation: %v", err)
	}
	if replay.imported {
		t.Fatal("the image was sent to a target whose attestation was replayed")
	}
	unchanged(t, target, before)

	// A fresh nonce but a clock past the window: the statement is stale.
	opts := f.opts
	opts.Now = func() time.Time { return time.Now().Add(time.Hour) }
	if _, err := f.restore(target, opts); !errors.Is(err, hsmcore.ErrAttestation) {
		t.Fatalf("attestation an hour old: %v", err)
	}
	unchanged(t, target, before)
}
