package server_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strconv"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/hsmtest"
	"github.com/hsmbackup/hsmbackup/hsmcore/quorum"
)

// quorumHSM is a served cluster member with three crypto officers
// (admin, co2, co3) holding signing keys, and a crypto user alice.
type quorumHSM struct {
	e     *env
	h     *hsmtest.Daemon
	cfg   client.Config
	co    *client.Client // admin, logged in
	privs map[string]ed25519.PrivateKey
}

func newQuorumHSM(t *testing.T) *quorumHSM {
	t.Helper()
	ctx := context.Background()
	e := newEnv(t)
	h := e.Serve(t, nil)
	cfg := e.InitCluster(t, h, "cluster-1", "admin", password)
	q := &quorumHSM{e: e, h: h, cfg: cfg, privs: map[string]ed25519.PrivateKey{}}
	q.co = q.login(t, "admin")
	if err := q.co.CreateUser(ctx, "alice", hsmcore.CryptoUser, password); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"admin", "co2", "co3"} {
		c := q.co
		if name != "admin" {
			if err := q.co.CreateUser(ctx, name, hsmcore.CryptoOfficer, password); err != nil {
				t.Fatal(err)
			}
			c = q.login(t, name)
		}
		pub, priv, _ := ed25519.GenerateKey(nil)
		if err := c.RegisterSigningKey(ctx, pub); err != nil {
			t.Fatal(err)
		}
		q.privs[name] = priv
	}
	return q
}

// login opens a new member connection, with the cluster's client
// certificate, and logs name in.
func (q *quorumHSM) login(t *testing.T, name string) *client.Client {
	t.Helper()
	c := q.e.memberClient(t, q.h.Addr, q.cfg.Certificate)
	if _, err := c.Login(context.Background(), name, password); err != nil {
		t.Fatal(err)
	}
	return c
}

// policy makes each op need m approvals; ops are set in order, so put
// quorum.set last.
func (q *quorumHSM) policy(t *testing.T, m int, ops ...string) {
	t.Helper()
	for _, op := range ops {
		if err := q.co.SetQuorum(context.Background(), op, m); err != nil {
			t.Fatal(err)
		}
	}
}

// approved asks the HSM for a token for op on object, has officers sign
// it (co2 and co3 unless named) and attaches the approvals to q.co.
func (q *quorumHSM) approved(t *testing.T, op, object string, officers ...string) (quorum.Token, []byte) {
	t.Helper()
	tok, sealed, err := q.co.QuorumToken(context.Background(), op, object)
	if err != nil {
		t.Fatal(err)
	}
	q.attach(t, tok, officers...)
	return tok, sealed
}

// attach has officers (co2 and co3 unless named) approve tok and attaches
// the approvals to q.co.
func (q *quorumHSM) attach(t *testing.T, tok quorum.Token, officers ...string) {
	t.Helper()
	if len(officers) == 0 {
		officers = []string{"co2", "co3"}
	}
	var ap []quorum.Approval
	for _, o := range officers {
		ap = append(ap, quorum.Sign(q.privs[o], o, tok))
	}
	if err := q.co.Approve(tok.ID, ap); err != nil {
		t.Fatal(err)
	}
}

// refused checks that err is ErrQuorum, that the HSM's state digest is
// still before, and that its audit log verifies.
func (q *quorumHSM) refused(t *testing.T, what string, err error, before string) {
	t.Helper()
	if !errors.Is(err, hsmcore.ErrQuorum) {
		t.Fatalf("%s: got %v, want ErrQuorum", what, err)
	}
	if got := q.h.Dev.StateDigest(); got != before {
		t.Fatalf("%s: refused, but the state digest changed", what)
	}
	q.auditVerifies(t)
}

// auditVerifies checks the HSM's audit log against its signed head.
func (q *quorumHSM) auditVerifies(t *testing.T) {
	t.Helper()
	entries, head, err := q.h.Dev.AuditLog()
	if err != nil {
		t.Fatal(err)
	}
	mfr, _ := q.h.Dev.Certificates()
	if err := hsmcore.VerifyAuditLog(entries, head, mfr); err != nil {
		t.Fatalf("audit log: %v", err)
	}
}

// export reads a whole image from c.
func export(t *testing.T, c *client.Client) ([]byte, error) {
	t.Helper()
	img, err := c.ExportImage(context.Background())
	if err != nil {
		return nil, err
	}
	defer img.Close()
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), nil
}

// A sealed token, adopted and used, cannot be adopted and used again after
// the daemon restarts: the HSM remembers the tokens it spent on disk.
func TestSpentTokenSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	q := newQuorumHSM(t)
	q.policy(t, 2, "image.export")
	tok, sealed, err := q.co.QuorumToken(ctx, "image.export", "cluster=cluster-1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.co.AdoptQuorumToken(ctx, sealed); err != nil {
		t.Fatalf("adopt a token this HSM issued: %v", err)
	}
	q.attach(t, tok)
	if _, err := export(t, q.co); err != nil {
		t.Fatalf("approved export: %v", err)
	}

	q.h.Stop()
	q.h.Start()
	q.co = q.login(t, "admin")
	before := q.h.Dev.StateDigest()
	_, err = q.co.AdoptQuorumToken(ctx, sealed)
	q.refused(t, "adopting a spent token after a restart", err, before)
	q.attach(t, tok)
	_, err = export(t, q.co)
	q.refused(t, "export with a spent token after a restart", err, before)
}

// Approvals that zeroized an HSM do not zeroize it again once it is
// restored from a backup into the same cluster: a zeroization keeps the
// memory of spent tokens.
func TestZeroizeApprovalsNotReplayedAfterRestore(t *testing.T) {
	ctx := context.Background()
	q := newQuorumHSM(t)
	q.policy(t, 2, "user.delete")
	backup, err := export(t, q.co)
	if err != nil {
		t.Fatal(err)
	}
	digest := q.h.Dev.StateDigest()
	serial := q.h.Dev.Identity().Serial
	tok, sealed := q.approved(t, "device.zeroize", serial)
	if err := q.co.Zeroize(ctx); err != nil {
		t.Fatalf("approved zeroize: %v", err)
	}
	if _, err := q.e.boundClient(t, q.h.Addr).ImportImage(ctx, bytes.NewReader(backup)); err != nil {
		t.Fatalf("restore: %v", err)
	}
	if q.h.Dev.StateDigest() != digest {
		t.Fatal("the restored HSM differs from its backup")
	}
	q.co = q.login(t, "admin")
	_, err = q.co.AdoptQuorumToken(ctx, sealed)
	q.refused(t, "adopting the spent zeroize token", err, digest)
	q.attach(t, tok)
	err = q.co.Zeroize(ctx)
	q.refused(t, "zeroize with replayed approvals", err, digest)
	if !q.h.Dev.Initialized() {
		t.Fatal("zeroized again")
	}
}

// Approvals gathered to raise a quorum do not remove it: a quorum.set
// approval names the new M.
func TestQuorumSetApprovalBindsM(t *testing.T) {
	ctx := context.Background()
	q := newQuorumHSM(t)
	q.policy(t, 2, "user.create", "quorum.set")
	before := q.h.Dev.StateDigest()
	// An approval that names only the operation, as before approvals
	// bound M, removes nothing.
	q.approved(t, "quorum.set", "user.create")
	q.refused(t, "approval naming only the operation", q.co.SetQuorum(ctx, "user.create", 0), before)
	// Approvals to raise user.create to 3 neither remove its quorum nor
	// set it to 2.
	q.approved(t, "quorum.set", "user.create=3")
	q.refused(t, "approvals for 3 used for 0", q.co.SetQuorum(ctx, "user.create", 0), before)
	q.refused(t, "approvals for 3 used for 2", q.co.SetQuorum(ctx, "user.create", 2), before)
	if err := q.co.SetQuorum(ctx, "user.create", 3); err != nil {
		t.Fatalf("the approved change: %v", err)
	}
	if m := q.h.Dev.Quorum().Ops["user.create"]; m != 3 {
		t.Fatalf("user.create needs %d approvals, want 3", m)
	}
}

// Approvals to create a crypto user do not create a crypto officer: a
// user.create approval names the role.
func TestUserCreateApprovalBindsRole(t *testing.T) {
	ctx := context.Background()
	q := newQuorumHSM(t)
	q.policy(t, 2, "user.create")
	before := q.h.Dev.StateDigest()
	q.approved(t, "user.create", "bob")
	q.refused(t, "approval naming only the user", q.co.CreateUser(ctx, "bob", hsmcore.CryptoOfficer, password), before)
	q.approved(t, "user.create", "bob role=CU")
	q.refused(t, "crypto-user approvals creating an officer", q.co.CreateUser(ctx, "bob", hsmcore.CryptoOfficer, password), before)
	if err := q.co.CreateUser(ctx, "bob", hsmcore.CryptoUser, password); err != nil {
		t.Fatalf("the approved creation: %v", err)
	}
}

// Approvals to delete a crypto user do not delete an officer of the same
// name created since: a user.delete approval names the role.
func TestUserDeleteApprovalBindsRole(t *testing.T) {
	ctx := context.Background()
	q := newQuorumHSM(t)
	if err := q.co.CreateUser(ctx, "bob", hsmcore.CryptoUser, password); err != nil {
		t.Fatal(err)
	}
	// Approvals to delete bob, given while bob is a crypto user.
	old, _ := q.approved(t, "user.delete", "bob")
	oldRole, _ := q.approved(t, "user.delete", "bob role=CU")
	q.co.ClearApproval()
	// bob is deleted (no quorum yet) and comes back as a crypto officer.
	if err := q.co.DeleteUser(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	if err := q.co.CreateUser(ctx, "bob", hsmcore.CryptoOfficer, password); err != nil {
		t.Fatal(err)
	}
	q.policy(t, 2, "user.delete")
	before := q.h.Dev.StateDigest()
	q.attach(t, old)
	q.refused(t, "approval naming only the user", q.co.DeleteUser(ctx, "bob"), before)
	q.attach(t, oldRole)
	q.refused(t, "crypto-user approvals deleting an officer", q.co.DeleteUser(ctx, "bob"), before)
	q.approved(t, "user.delete", "bob role=CO")
	if err := q.co.DeleteUser(ctx, "bob"); err != nil {
		t.Fatalf("the approved deletion: %v", err)
	}
}

// Approvals to revoke a key's trust do not mark it trusted: a key.trust
// approval names the value.
func TestKeyTrustApprovalBindsValue(t *testing.T) {
	ctx := context.Background()
	q := newQuorumHSM(t)
	cu := q.login(t, "alice")
	keys, err := cu.GenerateKeys(ctx, []hsmcore.KeySpec{{Type: hsmcore.AES, Bits: 256, Wrap: true, Unwrap: true}})
	if err != nil {
		t.Fatal(err)
	}
	h := keys[0].Handle
	hs := strconv.FormatUint(h, 10)
	q.policy(t, 2, "key.trust")
	before := q.h.Dev.StateDigest()
	q.approved(t, "key.trust", hs)
	q.refused(t, "approval naming only the key", q.co.SetTrusted(ctx, h, true), before)
	q.approved(t, "key.trust", hs+" trusted=false")
	q.refused(t, "revocation approvals marking trusted", q.co.SetTrusted(ctx, h, true), before)
	if err := q.co.SetTrusted(ctx, h, false); err != nil {
		t.Fatalf("the approved revocation: %v", err)
	}
	q.approved(t, "key.trust", hs+" trusted=true")
	if err := q.co.SetTrusted(ctx, h, true); err != nil {
		t.Fatalf("the approved trust: %v", err)
	}
	if k, err := q.co.Key(ctx, h); err != nil || !k.Trusted {
		t.Fatalf("key after approved trust: %+v, %v", k, err)
	}
}

// Approvals to import one image do not import another, such as an old
// image from before the quorum policy (a rollback): an image.import
// approval names the SHA-256 of the image's bytes.
func TestImageImportApprovalBindsDigest(t *testing.T) {
	ctx := context.Background()
	q := newQuorumHSM(t)
	old, err := export(t, q.co) // no quorum policy in it
	if err != nil {
		t.Fatal(err)
	}
	q.policy(t, 2, "image.import")
	current, err := export(t, q.co)
	if err != nil {
		t.Fatal(err)
	}
	before := q.h.Dev.StateDigest()
	q.approved(t, "image.import", "")
	_, err = q.co.ImportImage(ctx, bytes.NewReader(old))
	q.refused(t, "approval naming no image", err, before)
	sum := sha256.Sum256(current)
	q.approved(t, "image.import", "sha256:"+hex.EncodeToString(sum[:]))
	_, err = q.co.ImportImage(ctx, bytes.NewReader(old))
	q.refused(t, "approvals for one image importing another", err, before)
	if _, err := q.co.ImportImage(ctx, bytes.NewReader(current)); err != nil {
		t.Fatalf("the approved import: %v", err)
	}
	if q.h.Dev.Quorum().Ops["image.import"] != 2 {
		t.Fatal("the import rolled the quorum policy back")
	}
}

// An image.export approval names the cluster whose image it lets out.
func TestImageExportApprovalNamesCluster(t *testing.T) {
	q := newQuorumHSM(t)
	q.policy(t, 2, "image.export")
	before := q.h.Dev.StateDigest()
	q.approved(t, "image.export", "")
	_, err := export(t, q.co)
	q.refused(t, "approval naming no cluster", err, before)
	q.approved(t, "image.export", "cluster=cluster-2")
	_, err = export(t, q.co)
	q.refused(t, "approval for another cluster", err, before)
	q.approved(t, "image.export", "cluster=cluster-1")
	if _, err := export(t, q.co); err != nil {
		t.Fatalf("the approved export: %v", err)
	}
}
