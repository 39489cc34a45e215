package device

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/audit"
)

// populated is a device in use: a cluster member with a crypto officer
// and a crypto user who holds a token key and a session key.
func populated(t *testing.T) (d *Device, co, cu *Session) {
	t.Helper()
	d = newDevice(t, stdHW)
	co, cu = initDevice(t, d)
	initCluster(t, d, "cluster-z")
	if _, err := cu.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Label: "payroll", Encrypt: true, Decrypt: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := cu.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128, Session: true, Encrypt: true, Decrypt: true}); err != nil {
		t.Fatal(err)
	}
	return d, co, cu
}

// wantFactoryState fails t unless d holds what a new device holds, with
// the hardware identity it had.
func wantFactoryState(t *testing.T, d *Device, id hsmcore.Identity, fp [32]byte) {
	t.Helper()
	fresh := newDevice(t, stdHW)
	if d.Initialized() || d.ClusterInitialized() || d.ClusterID() != "" || d.CustomerCA() != nil {
		t.Fatalf("not factory state: initialized %t, cluster %q initialized %t", d.Initialized(), d.ClusterID(), d.ClusterInitialized())
	}
	if keys, users := d.Counts(); keys != 0 || users != 0 {
		t.Fatalf("holds %d keys and %d users", keys, users)
	}
	if len(d.Quorum().Ops) != 0 {
		t.Fatalf("quorum policy left: %v", d.Quorum().Ops)
	}
	if !bytes.Equal(contentsBytes(t, d), contentsBytes(t, fresh)) || d.StateDigest() != fresh.StateDigest() {
		t.Fatalf("contents differ from a new device's:\n%s\nwant\n%s", contentsBytes(t, d), contentsBytes(t, fresh))
	}
	if d.Identity() != id || d.PBKFingerprint() != fp {
		t.Fatalf("hardware identity changed: %+v, want %+v", d.Identity(), id)
	}
	tlsID, err := d.TLSIdentity()
	if err != nil {
		t.Fatal(err)
	}
	mfr, _ := d.Certificates()
	if tlsID.ClientCAs != nil || !bytes.Equal(tlsID.Certificate.Certificate[0], mfr.Raw) {
		t.Fatal("TLS identity is not the device certificate of a new HSM")
	}
}

func TestZeroize(t *testing.T) {
	d, co, cu := populated(t)
	id, fp := d.Identity(), d.PBKFingerprint()
	mfr, op := d.Certificates()
	if err := co.SetQuorum("device.zeroize", 0); err != nil { // an operation quorum may protect
		t.Fatal(err)
	}
	if err := co.Zeroize(); err != nil {
		t.Fatal(err)
	}
	wantFactoryState(t, d, id, fp)
	if m2, o2 := d.Certificates(); !m2.Equal(mfr) || !o2.Equal(op) {
		t.Fatal("device certificates changed")
	}
	// Every session ended, the zeroizing one too.
	if _, err := co.Users(); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("officer session after zeroize: %v", err)
	}
	if _, err := cu.Keys(); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("crypto user session after zeroize: %v", err)
	}
	if _, err := d.Login("admin", testPassword); !errors.Is(err, hsmcore.ErrAuth) {
		t.Fatalf("login of an erased user: %v", err)
	}

	// The audit log names who zeroized, before and after the erasure.
	entries, head, err := d.AuditLog()
	if err != nil {
		t.Fatal(err)
	}
	if err := audit.Verify(entries, &head.Head); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		if e.Op == "device.zeroize" {
			got = append(got, e.Actor+" "+e.Object+" "+e.Result)
		}
	}
	want := []string{"admin " + id.Serial + " started", "admin " + id.Serial + " ok"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("audit records of the zeroization: %q, want %q", got, want)
	}

	// Persisted: the device opened again is zeroized, its log intact.
	dir := d.dir
	d.Close()
	d2, err := Open(dir, TestOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	wantFactoryState(t, d2, id, fp)
	if keys, users := d2.Counts(); keys != 0 || users != 0 {
		t.Fatalf("reopened: %d keys, %d users", keys, users)
	}
}

// A zeroized device takes an image without a session, as a new one does,
// and can be initialized again the CloudHSM way.
func TestZeroizeThenRestoreOrInitialize(t *testing.T) {
	d, co, cu := populated(t)
	img := exportImage(t, co)
	before := d.StateDigest()
	users, err := co.Users()
	if err != nil {
		t.Fatal(err)
	}
	keys, err := cu.Keys()
	if err != nil {
		t.Fatal(err)
	}
	if err := co.Zeroize(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.claimImport(context.Background(), bytes.NewReader(img)); err != nil {
		t.Fatalf("restore into the zeroized device: %v", err)
	}
	if d.StateDigest() != before || d.ClusterID() != "cluster-z" || !d.ClusterInitialized() {
		t.Fatalf("restored state differs: digest %s, want %s; cluster %q", d.StateDigest(), before, d.ClusterID())
	}
	co2 := login(t, d, "admin")
	if got, _ := co2.Users(); len(got) != len(users) {
		t.Fatalf("restored users %v, want %v", got, users)
	}
	cu2 := login(t, d, "alice")
	got, err := cu2.Keys()
	if err != nil || len(got) != 1 || got[0].KCV != keys[0].KCV { // the session key is gone for good
		t.Fatalf("restored keys %v (%v), want the token key of %v", got, err, keys)
	}

	// Zeroized again, it is initialized as a new HSM is: a new cluster.
	if err := co2.Zeroize(); err != nil {
		t.Fatal(err)
	}
	ca := initCluster(t, d, "cluster-new")
	if err := d.Initialize("officer2", testPassword); err != nil {
		t.Fatalf("initialize after zeroize: %v", err)
	}
	if d.ClusterID() != "cluster-new" || !d.CustomerCA().Equal(ca.Cert) {
		t.Fatalf("cluster %q after initialization", d.ClusterID())
	}
	if _, err := d.Login("officer2", testPassword); err != nil {
		t.Fatal(err)
	}
}

// Who may not zeroize, and what a refusal leaves: nothing changed.
func TestZeroizeRefused(t *testing.T) {
	d, co, cu := populated(t)
	refuse := func(name string, s *Session, want error) {
		t.Helper()
		sealed, content := stateBytes(t, d), contentsBytes(t, d)
		if err := s.Zeroize(); !errors.Is(err, want) {
			t.Fatalf("%s: got %v, want %v", name, err, want)
		}
		assertUnchanged(t, d, sealed, content)
		if !d.Initialized() || d.ClusterID() != "cluster-z" {
			t.Fatalf("%s: device changed", name)
		}
	}
	refuse("a crypto user", cu, hsmcore.ErrPermission)
	ended := login(t, d, "admin")
	ended.Logout()
	refuse("a logged-out officer", ended, hsmcore.ErrPermission)
	if err := co.CreateUser("temp", hsmcore.CryptoOfficer, testPassword); err != nil {
		t.Fatal(err)
	}
	gone := login(t, d, "temp")
	if err := co.DeleteUser("temp"); err != nil {
		t.Fatal(err)
	}
	refuse("the session of a deleted officer", gone, hsmcore.ErrPermission)
	if err := co.CreateUser("temp", hsmcore.CryptoOfficer, testPassword); err != nil {
		t.Fatal(err)
	}
	refuse("the session of a deleted officer, re-created since", gone, hsmcore.ErrPermission)

	// The refusals are audited.
	entries, _, err := d.AuditLog()
	if err != nil {
		t.Fatal(err)
	}
	denied := 0
	for _, e := range entries {
		if e.Op == "device.zeroize" {
			if e.Result != "denied" {
				t.Fatalf("audit entry %+v of a refused zeroization", e)
			}
			denied++
		}
	}
	if denied != 4 {
		t.Fatalf("%d refusals audited, want 4", denied)
	}
}

// With a quorum policy, a zeroization needs as many approvals as its most
// demanding protected operation, on a token for this device's serial.
func TestZeroizeQuorum(t *testing.T) {
	a, b, coA, _, coB, _ := twoMembers(t)
	keys := officers(t, a, coA)
	refuse := func(name string, d *Device, s *Session, setup func()) {
		t.Helper()
		sealed, content := stateBytes(t, d), contentsBytes(t, d)
		setup()
		if err := s.Zeroize(); !errors.Is(err, hsmcore.ErrQuorum) {
			t.Fatalf("%s: got %v, want ErrQuorum", name, err)
		}
		assertUnchanged(t, d, sealed, content)
	}
	// Only user.delete is protected, not device.zeroize: a zeroization,
	// which deletes every user, needs its approvals all the same.
	if err := coA.SetQuorum("user.delete", 2); err != nil {
		t.Fatal(err)
	}
	refuse("no approvals", a, coA, func() {})
	del, _, err := coA.QuorumToken("user.delete", "alice")
	if err != nil {
		t.Fatal(err)
	}
	refuse("approvals of another operation", a, coA, func() { coA.Approve(del.ID, approvals(keys, del, "co2", "co3")) })
	tok, sealedTok, err := coA.QuorumToken("device.zeroize", a.Identity().Serial)
	if err != nil {
		t.Fatal(err)
	}
	refuse("one approval of two", a, coA, func() { coA.Approve(tok.ID, approvals(keys, tok, "co2")) })

	// Approvals to zeroize member a do not zeroize member b, although b
	// adopts the cluster's tokens.
	reclone(t, coA, b, coB)
	coB = login(t, b, "admin")
	if err := coB.SetQuorum("user.delete", 2); err != nil {
		t.Fatal(err)
	}
	if _, err := coB.AdoptQuorumToken(sealedTok); err != nil {
		t.Fatal(err)
	}
	refuse("approvals for another member's serial", b, coB, func() { coB.Approve(tok.ID, approvals(keys, tok, "co2", "co3")) })

	// Its own entry counts when it is the highest.
	if err := coA.SetQuorum("device.zeroize", 3); err != nil {
		t.Fatal(err)
	}
	tok3, _, err := coA.QuorumToken("device.zeroize", a.Identity().Serial)
	if err != nil {
		t.Fatal(err)
	}
	refuse("two approvals of three", a, coA, func() { coA.Approve(tok3.ID, approvals(keys, tok3, "co2", "co3")) })

	coA.Approve(tok3.ID, approvals(keys, tok3, "admin", "co2", "co3"))
	if err := coA.Zeroize(); err != nil {
		t.Fatalf("with three approvals: %v", err)
	}
	if a.Initialized() || a.ClusterID() != "" {
		t.Fatal("not zeroized")
	}
	if !b.Initialized() {
		t.Fatal("the other member changed")
	}
}

// blockingReader passes r through until it has given n bytes, then waits
// for release before giving the rest.
type blockingReader struct {
	r        io.Reader
	n        int
	reached  chan struct{}
	release  chan struct{}
	released bool
}

func (b *blockingReader) Read(p []byte) (int, error) {
	if b.n == 0 {
		if !b.released {
			b.released = true
			close(b.reached)
			<-b.release
		}
		return b.r.Read(p)
	}
	n, err := b.r.Read(p[:min(len(p), b.n)])
	b.n -= n
	return n, err
}

// An image staged across a zeroization is not committed after it, and
// an export in flight is cut.
func TestZeroizeCutsTransfers(t *testing.T) {
	_, srcCO, _ := populated(t)
	img := exportImage(t, srcCO)

	// d is new; an import (no session, as into any new HSM) starts, and
	// stalls half-way. Meanwhile d is restored from the image by another
	// import, and its officer zeroizes it. The stalled import then ends: it
	// must not land in the zeroized device.
	d := newDevice(t, stdHW)
	reached, release := make(chan struct{}), make(chan struct{})
	br := &blockingReader{r: bytes.NewReader(img), n: len(img) / 2, reached: reached, release: release}
	done := make(chan error, 1)
	go func() {
		_, err := d.claimImport(context.Background(), br)
		done <- err
	}()
	<-reached
	if _, err := d.claimImport(context.Background(), bytes.NewReader(img)); err != nil {
		t.Fatal(err)
	}
	co := login(t, d, "admin")
	if err := co.Zeroize(); err != nil {
		t.Fatal(err)
	}
	zeroized := stateBytes(t, d)
	close(release)
	if err := <-done; !errors.Is(err, hsmcore.ErrPermission) || !strings.Contains(err.Error(), "zeroized") {
		t.Fatalf("import staged across the zeroization: %v", err)
	}
	if d.Initialized() || d.ClusterID() != "" || !bytes.Equal(stateBytes(t, d), zeroized) {
		t.Fatal("the staged image landed in the zeroized device")
	}

	// An export begun before a zeroization fails after it.
	if _, err := d.claimImport(context.Background(), bytes.NewReader(img)); err != nil {
		t.Fatal(err)
	}
	co = login(t, d, "admin")
	_, r, err := co.ExportImage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := io.ReadFull(r, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if err := co.Zeroize(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(r); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("export read after the zeroization: %v", err)
	}
	if _, err := r.ImageStatement(); err == nil {
		t.Fatal("a cut export has an image statement")
	}
}
