package cluster_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"slices"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/audit"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/hsmbackup/hsmbackup/hsmcore/hsmtest"
	"github.com/hsmbackup/hsmbackup/hsmcore/quorum"
)

// The attacks of the cluster-integrity review, each made over the wire
// against real TLS daemons, as a crypto officer or crypto user would.
// Each asserts the attack is refused and that every member's state and
// audit chain are as before.

// member logs in to one daemon as user.
func (e *env) member(t *testing.T, cfg cluster.Config, addr, user string) *client.Client {
	t.Helper()
	cc := cfg.Client
	cc.Addr = addr
	cl, err := client.New(cc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	if _, err := cl.Login(context.Background(), user, password); err != nil {
		t.Fatalf("login %s on %s: %v", user, addr, err)
	}
	return cl
}

// snapshot is what an attack must leave as it was: every member's state
// digest. Its audit chain grows by the refusals, and must still verify.
type snapshot map[string]string

func snap(hsms ...*hsmtest.Daemon) snapshot {
	s := snapshot{}
	for _, h := range hsms {
		s[h.Addr] = h.Dev.StateDigest()
	}
	return s
}

func (s snapshot) assertSame(t *testing.T, hsms ...*hsmtest.Daemon) {
	t.Helper()
	for _, h := range hsms {
		if got := h.Dev.StateDigest(); got != s[h.Addr] {
			t.Fatalf("member %s changed", h.Addr)
		}
		entries, _, err := h.Dev.AuditLog()
		if err == nil {
			err = audit.Verify(entries, nil)
		}
		if err != nil {
			t.Fatalf("member %s: audit chain: %v", h.Addr, err)
		}
	}
}

func serial(h *hsmtest.Daemon) string { return h.Dev.Identity().Serial }

// spare is a new HSM into which an officer restored an image of the
// cluster: it holds the cluster key and the officer's account.
func (e *env) spare(t *testing.T, co *client.Client) (*hsmtest.Daemon, *client.Client) {
	t.Helper()
	ctx := context.Background()
	img, err := co.ExportImage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(img)
	img.Close()
	if err != nil {
		t.Fatal(err)
	}
	s := e.Serve(t, nil)
	roots := x509.NewCertPool()
	roots.AddCert(e.Mfr.Certificate())
	pre, err := client.New(client.Config{Addr: s.Addr, ManufacturerRoots: roots, Claims: e.Claims})
	if err != nil {
		t.Fatal(err)
	}
	defer pre.Close()
	op := x509.NewCertPool()
	op.AddCert(e.Op.Certificate())
	st, err := hsmcore.Challenge(ctx, pre, hsmcore.ChallengeOptions{ManufacturerRoots: roots, OperatorRoots: op, Certified: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := pre.Bind(st); err != nil {
		t.Fatal(err)
	}
	if _, err := pre.ImportImage(ctx, bytes.NewReader(raw)); err != nil {
		t.Fatal(err)
	}
	return s, e.member(t, cluster.Config{Client: e.clientConfig(t)}, s.Addr, "admin")
}

// exportAll returns the changes the HSM behind cl made (all of them) for
// the member with serial to.
func exportAll(t *testing.T, cl *client.Client, to string) [][]byte {
	t.Helper()
	recs, _, err := cl.ExportChanges(context.Background(), 0, to)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// officers adds officers co2 and co3 through the cluster.
func officers(t *testing.T, co *cluster.Cluster) {
	t.Helper()
	for _, name := range []string{"co2", "co3"} {
		if err := co.CreateUser(context.Background(), name, hsmcore.CryptoOfficer, password); err != nil {
			t.Fatal(err)
		}
	}
}

// register gives each named officer a quorum signing key, through the
// cluster, and returns the private halves.
func register(t *testing.T, cfg cluster.Config, names ...string) map[string]ed25519.PrivateKey {
	t.Helper()
	ctx := context.Background()
	keys := map[string]ed25519.PrivateKey{}
	for _, name := range names {
		c, err := cluster.Open(ctx, cfg, name, password)
		if err != nil {
			t.Fatal(err)
		}
		pub, priv, _ := ed25519.GenerateKey(nil)
		if err := c.RegisterSigningKey(ctx, pub); err != nil {
			t.Fatal(err)
		}
		c.Close()
		keys[name] = priv
	}
	return keys
}

func approve(keys map[string]ed25519.PrivateKey, tok quorum.Token, names ...string) []quorum.Approval {
	var out []quorum.Approval
	for _, n := range names {
		out = append(out, quorum.Sign(keys[n], n, tok))
	}
	return out
}

// prepared is a three-member cluster with three officers who have
// signing keys, a crypto user alice who owns key handle, and bob.
func (e *env) prepared(t *testing.T) (hsms []*hsmtest.Daemon, cfg cluster.Config, co *cluster.Cluster, keys map[string]ed25519.PrivateKey, handle uint64) {
	t.Helper()
	ctx := context.Background()
	hsms, cfg = e.threeMembers(t)
	co, err := cluster.Open(ctx, cfg, "admin", password)
	if err != nil {
		t.Fatal(err)
	}
	officers(t, co)
	if err := co.CreateUser(ctx, "bob", hsmcore.CryptoUser, password); err != nil {
		t.Fatal(err)
	}
	co.Close()
	// A new signing key ends the officer's other sessions: open again after.
	keys = register(t, cfg, "admin", "co2", "co3")
	if co, err = cluster.Open(ctx, cfg, "admin", password); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(co.Close)
	cu, err := cluster.Open(ctx, cfg, "alice", password)
	if err != nil {
		t.Fatal(err)
	}
	defer cu.Close()
	ks, err := cu.GenerateKeys(ctx, []hsmcore.KeySpec{{Type: hsmcore.AES, Bits: 256, Encrypt: true, Decrypt: true, Extractable: true}})
	if err != nil {
		t.Fatal(err)
	}
	assertInSync(t, hsms)
	return hsms, cfg, co, keys, ks[0].Handle
}

// guard makes creating and deleting users, trusting keys and adding
// members need two approvals.
func guard(t *testing.T, co *cluster.Cluster) {
	t.Helper()
	for _, op := range []string{"user.create", "user.delete", "key.trust", "member.add"} {
		if err := co.SetQuorum(context.Background(), op, 2); err != nil {
			t.Fatal(err)
		}
	}
}

// Finding 1: an officer restores an image of the cluster, taken before
// the quorum policy, into a spare HSM, makes there the changes production
// would refuse without approvals, and carries the change records into
// production: first as they are, then after listing the spare among
// production's members (with approvals, for the next check to be
// reached): production still asks the approvals of its own policy.
func TestAttackSpareChangesIntoProduction(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		do   func(*client.Client, uint64) error
	}{
		{"create an officer", func(c *client.Client, _ uint64) error {
			return c.CreateUser(ctx, "mallory", hsmcore.CryptoOfficer, password)
		}},
		// The first step of replacing bob's account by one whose password
		// the officer chose.
		{"delete another user", func(c *client.Client, _ uint64) error {
			return c.DeleteUser(ctx, "bob")
		}},
		{"mark a key trusted", func(c *client.Client, h uint64) error {
			return c.SetTrusted(ctx, h, true)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			hsms, cfg, co, keys, handle := e.prepared(t)
			prod := e.member(t, cfg, hsms[0].Addr, "admin")
			sp, spc := e.spare(t, prod)
			guard(t, co)
			if err := tc.do(spc, handle); err != nil {
				t.Fatalf("on the spare: %v", err)
			}
			recs := exportAll(t, spc, serial(hsms[0]))
			if len(recs) != 1 {
				t.Fatalf("the spare exported %d changes", len(recs))
			}
			before := snap(hsms...)
			if err := prod.ImportChange(ctx, recs[0]); !errors.Is(err, hsmcore.ErrPermission) {
				t.Fatalf("a change made on a spare: got %v, want ErrPermission", err)
			}
			before.assertSame(t, hsms...)

			mfr, _ := sp.Dev.Certificates()
			if err := prod.AddMember(ctx, mfr.Raw); !errors.Is(err, hsmcore.ErrQuorum) {
				t.Fatalf("listing the spare without approvals: got %v, want ErrQuorum", err)
			}
			tok, _, err := prod.QuorumToken(ctx, "member.add", serial(sp))
			if err != nil {
				t.Fatal(err)
			}
			prod.Approve(tok.ID, approve(keys, tok, "co2", "co3"))
			if err := prod.AddMember(ctx, mfr.Raw); err != nil {
				t.Fatal(err)
			}
			prod.ClearApproval()
			listed := snap(hsms...)
			if err := prod.ImportChange(ctx, recs[0]); !errors.Is(err, hsmcore.ErrQuorum) {
				t.Fatalf("a listed spare's unapproved change: got %v, want ErrQuorum", err)
			}
			listed.assertSame(t, hsms...)
		})
	}
}

// Finding 1, from genuine members: a member that missed the policy change
// cannot carry an unapproved change into one that holds it; the members
// are then found on two sides of a split, reported, nothing dropped.
func TestAttackMemberWithoutPolicyCarriesNoUnapprovedChange(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	hsms, cfg, co, _, handle := e.prepared(t)
	hsms[1].Stop()
	hsms[2].Stop()
	guard(t, co)
	hsms[1].Start()
	hsms[2].Start()
	for i, tc := range []struct {
		name string
		do   func(*client.Client) error
	}{
		{"create an officer", func(c *client.Client) error {
			return c.CreateUser(ctx, "mallory", hsmcore.CryptoOfficer, password)
		}},
		{"mark a key trusted", func(c *client.Client) error { return c.SetTrusted(ctx, handle, true) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stale := e.member(t, cfg, hsms[1+i].Addr, "admin")
			if err := tc.do(stale); err != nil {
				t.Fatal(err)
			}
			rec := capture(t, stale, serial(hsms[0]))
			before := snap(hsms[0])
			if err := e.member(t, cfg, hsms[0].Addr, "admin").ImportChange(ctx, rec); !errors.Is(err, hsmcore.ErrQuorum) {
				t.Fatalf("got %v, want ErrQuorum", err)
			}
			before.assertSame(t, hsms[0])
		})
	}
	before := snap(hsms...)
	if _, err := cluster.Open(ctx, cfg, "admin", password); !errors.Is(err, cluster.ErrDiverged) {
		t.Fatalf("open after a split: got %v, want ErrDiverged", err)
	}
	before.assertSame(t, hsms...)
}

// capture returns the last change the member behind cl made, as a record
// for the member with serial to.
func capture(t *testing.T, cl *client.Client, to string) []byte {
	t.Helper()
	h, err := cl.Health(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	recs, _, err := cl.ExportChanges(context.Background(), h.StateVersion[h.Serial]-1, to)
	if err != nil || len(recs) != 1 {
		t.Fatalf("capture: %d records, %v", len(recs), err)
	}
	return recs[0]
}

// Finding 2: a crypto user overwrites another user's key by importing a
// record for a handle that is free where it was made, or by replaying a
// record for a handle that exists.
func TestAttackOverwriteAnotherUsersKey(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	hsms, cfg := e.threeMembers(t)
	co, err := cluster.Open(ctx, cfg, "admin", password)
	if err != nil {
		t.Fatal(err)
	}
	defer co.Close()
	if err := co.CreateUser(ctx, "mallory", hsmcore.CryptoUser, password); err != nil {
		t.Fatal(err)
	}
	m0 := e.member(t, cfg, hsms[0].Addr, "mallory")
	m1 := e.member(t, cfg, hsms[1].Addr, "mallory")

	t.Run("a handle free on one member", func(t *testing.T) {
		// Alice's key is made while member 2 is down: its handle is free
		// there.
		hsms[2].Stop()
		cu, err := cluster.Open(ctx, cfg, "alice", password)
		if err != nil {
			t.Fatal(err)
		}
		defer cu.Close()
		ks, err := cu.GenerateKeys(ctx, []hsmcore.KeySpec{{Type: hsmcore.AES, Bits: 256, Encrypt: true, Decrypt: true}})
		if err != nil {
			t.Fatal(err)
		}
		hsms[2].Start()
		m2 := e.member(t, cfg, hsms[2].Addr, "mallory")
		mk, err := m2.GenerateKeys(ctx, []hsmcore.KeySpec{{Type: hsmcore.AES, Bits: 256, Encrypt: true, Decrypt: true}})
		if err != nil {
			t.Fatal(err)
		}
		if mk[0].Handle != ks[0].Handle {
			t.Fatalf("mallory's key has handle %d, alice's %d", mk[0].Handle, ks[0].Handle)
		}
		rec := capture(t, m2, serial(hsms[0]))
		before := snap(hsms[0], hsms[1])
		if err := m0.ImportChange(ctx, rec); !errors.Is(err, hsmcore.ErrConflict) {
			t.Fatalf("a key at a handle alice owns: got %v, want ErrConflict", err)
		}
		before.assertSame(t, hsms[0], hsms[1])
		ct, err := cu.Encrypt(ctx, ks[0].Handle, []byte("still alice's"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if pt, err := cu.Decrypt(ctx, ks[0].Handle, ct, nil); err != nil || string(pt) != "still alice's" {
			t.Fatalf("alice's key: %v", err)
		}
	})

	t.Run("a replayed record", func(t *testing.T) {
		if _, err := m0.GenerateKeys(ctx, []hsmcore.KeySpec{{Type: hsmcore.AES, Bits: 128}}); err != nil {
			t.Fatal(err)
		}
		rec := capture(t, m0, serial(hsms[1]))
		if err := m1.ImportChange(ctx, rec); err != nil {
			t.Fatal(err)
		}
		before := snap(hsms[0], hsms[1])
		if err := m1.ImportChange(ctx, rec); !errors.Is(err, hsmcore.ErrConflict) {
			t.Fatalf("replayed key record: got %v, want ErrConflict", err)
		}
		before.assertSame(t, hsms[0], hsms[1])
	})
}

// Finding 3: an old record imported again undoes a later change.
func TestAttackReplayOldRecords(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	hsms, cfg, co, keys, handle := e.prepared(t)
	guard(t, co)
	pair := hsms[:2] // changes made on member 0 and imported into member 1 by hand
	to := serial(hsms[1])
	on := func(i int, user string) *client.Client { return e.member(t, cfg, hsms[i].Addr, user) }

	t.Run("clear wrap-with-trusted", func(t *testing.T) {
		cu0, cu1 := on(0, "alice"), on(1, "alice")
		label := "before"
		if err := cu0.SetAttributes(ctx, handle, hsmcore.AttributeChange{Label: &label}); err != nil {
			t.Fatal(err)
		}
		old := capture(t, cu0, to)
		if err := cu1.ImportChange(ctx, old); err != nil {
			t.Fatal(err)
		}
		yes := true
		if err := cu0.SetAttributes(ctx, handle, hsmcore.AttributeChange{WrapWithTrusted: &yes}); err != nil {
			t.Fatal(err)
		}
		if err := cu1.ImportChange(ctx, capture(t, cu0, to)); err != nil {
			t.Fatal(err)
		}
		assertInSync(t, pair)
		before := snap(pair...)
		if err := cu1.ImportChange(ctx, old); !errors.Is(err, hsmcore.ErrConflict) {
			t.Fatalf("replay: got %v, want ErrConflict", err)
		}
		before.assertSame(t, pair...)
		if k, err := cu1.Key(ctx, handle); err != nil || !k.WrapWithTrusted {
			t.Fatalf("key after the replay: %+v, %v", k, err)
		}
	})

	// approved runs do on member 0 with two officers' approvals of op on
	// object, and imports its change into member 1.
	approved := func(t *testing.T, op, object string, do func(*client.Client) error) []byte {
		t.Helper()
		o0, o1 := on(0, "admin"), on(1, "admin")
		tok, sealed, err := o0.QuorumToken(ctx, op, object)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := o1.AdoptQuorumToken(ctx, sealed); err != nil {
			t.Fatal(err)
		}
		o0.Approve(tok.ID, approve(keys, tok, "co2", "co3"))
		if err := do(o0); err != nil {
			t.Fatal(err)
		}
		o0.ClearApproval()
		rec := capture(t, o0, to)
		if err := o1.ImportChange(ctx, rec); err != nil {
			t.Fatal(err)
		}
		return rec
	}

	t.Run("restore a revoked trust", func(t *testing.T) {
		trusted := approved(t, "key.trust", hsmcore.KeyTrustObject(handle, true), func(c *client.Client) error { return c.SetTrusted(ctx, handle, true) })
		approved(t, "key.trust", hsmcore.KeyTrustObject(handle, false), func(c *client.Client) error { return c.SetTrusted(ctx, handle, false) })
		assertInSync(t, pair)
		before := snap(pair...)
		o1 := on(1, "admin")
		if err := o1.ImportChange(ctx, trusted); !errors.Is(err, hsmcore.ErrConflict) {
			t.Fatalf("replay: got %v, want ErrConflict", err)
		}
		before.assertSame(t, pair...)
		if k, err := o1.Key(ctx, handle); err != nil || k.Trusted {
			t.Fatalf("key after the replay: %+v, %v", k, err)
		}
	})

	t.Run("bring back a user a quorum deleted", func(t *testing.T) {
		created := approved(t, "user.create", hsmcore.UserCreateObject("carol", hsmcore.CryptoUser), func(c *client.Client) error { return c.CreateUser(ctx, "carol", hsmcore.CryptoUser, password) })
		approved(t, "user.delete", hsmcore.UserDeleteObject("carol", hsmcore.CryptoUser), func(c *client.Client) error { return c.DeleteUser(ctx, "carol") })
		assertInSync(t, pair)
		before := snap(pair...)
		o1 := on(1, "admin")
		if err := o1.ImportChange(ctx, created); !errors.Is(err, hsmcore.ErrConflict) {
			t.Fatalf("replay: got %v, want ErrConflict", err)
		}
		before.assertSame(t, pair...)
		users, _ := o1.Users(ctx)
		if slices.ContainsFunc(users, func(u hsmcore.UserInfo) bool { return u.Name == "carol" }) {
			t.Fatal("the deleted user is back")
		}
	})
}

// Finding 4: keys created and acknowledged while members were down
// survive their return, however many they are and whatever the listing
// order; a backup reads them.
func TestAcknowledgedKeysSurviveStaleMembers(t *testing.T) {
	ctx := context.Background()
	for _, down := range [][]int{{1}, {1, 2}, {0, 2}} {
		t.Run(fmt.Sprintf("down %v", down), func(t *testing.T) {
			e := newEnv(t)
			hsms, cfg := e.threeMembers(t)
			for _, i := range down {
				hsms[i].Stop()
			}
			cu, err := cluster.Open(ctx, cfg, "alice", password)
			if err != nil {
				t.Fatal(err)
			}
			ks, err := cu.GenerateKeys(ctx, []hsmcore.KeySpec{{Type: hsmcore.AES, Bits: 256, Encrypt: true, Decrypt: true}, {Type: hsmcore.EC, Curve: "P-256", Sign: true}})
			cu.Close()
			if err != nil {
				t.Fatal(err)
			}
			for _, i := range down {
				hsms[i].Start()
			}
			for _, o := range [][]int{{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}} {
				c := cfg
				c.Members = []string{hsms[o[0]].Addr, hsms[o[1]].Addr, hsms[o[2]].Addr}
				p, err := cluster.PickMember(ctx, c, cluster.PickOptions{})
				if err != nil {
					t.Fatal(err)
				}
				p.Client.Close()
				if p.Health.KeyCount != len(ks) {
					t.Fatalf("order %v: a backup would read %d keys, want %d", o, p.Health.KeyCount, len(ks))
				}
				co, err := cluster.Open(ctx, c, "admin", password)
				if err != nil {
					t.Fatalf("order %v: %v", o, err)
				}
				co.Close()
				assertInSync(t, hsms)
				for _, h := range hsms {
					got, err := e.member(t, cfg, h.Addr, "alice").Keys(ctx)
					if err != nil || len(got) != len(ks) {
						t.Fatalf("order %v: member %s holds %d keys (%v), want %d", o, h.Addr, len(got), err, len(ks))
					}
				}
			}
		})
	}
}

// Finding 9: an officer carries a crypto user's key record to a clone of
// the cluster, to use the key off production.
func TestAttackKeyToAClone(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	hsms, cfg := e.threeMembers(t)
	prod := e.member(t, cfg, hsms[0].Addr, "admin")
	clone, cloneCo := e.spare(t, prod)
	cu := e.member(t, cfg, hsms[0].Addr, "alice")
	ks, err := cu.GenerateKeys(ctx, []hsmcore.KeySpec{{Type: hsmcore.AES, Bits: 256, Encrypt: true, Decrypt: true, Extractable: true}})
	if err != nil {
		t.Fatal(err)
	}
	before := snap(hsms...)
	cloneBefore := clone.Dev.StateDigest()
	// For the clone: refused, it is no member.
	if _, _, err := prod.ExportChanges(ctx, 0, serial(clone)); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("export for a clone: got %v, want ErrPermission", err)
	}
	// For a member, carried to the clone: the clone cannot open it, as
	// the officer or as the key's owner.
	rec := capture(t, prod, serial(hsms[1]))
	for _, c := range []*client.Client{cloneCo, e.member(t, cluster.Config{Client: cfg.Client}, clone.Addr, "alice")} {
		if err := c.ImportChange(ctx, rec); !errors.Is(err, hsmcore.ErrPermission) {
			t.Fatalf("a member's record on the clone: got %v, want ErrPermission", err)
		}
	}
	if clone.Dev.StateDigest() != cloneBefore {
		t.Fatal("the clone changed")
	}
	if _, err := e.member(t, cluster.Config{Client: cfg.Client}, clone.Addr, "alice").Key(ctx, ks[0].Handle); !errors.Is(err, hsmcore.ErrNotFound) {
		t.Fatalf("the key on the clone: got %v, want ErrNotFound", err)
	}
	before.assertSame(t, hsms...)
}
