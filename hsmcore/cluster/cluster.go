// Package cluster is the client for a cluster of 1 to 28 HSM daemons, as
// CloudHSM's client SDK sees a cluster: reads are spread across healthy
// members; every write reaches every member; a member that fails is
// skipped, not fatal; a member that missed writes is detected by its state
// digest and re-synced from a healthy member by image export and import;
// a new member is cloned from an existing one by image. It also runs
// CloudHSM's initialization of a new cluster, step by step or in one go
// (RequestCSR, Install, Activate, Bootstrap), and picks the member a backup
// reads from (PickMember).
//
// Keys made on one member reach the others as sync records sealed under
// the cluster key (hsmcore/sync.go), so every member holds the same key
// material, handles and attributes, and members in sync have equal state
// digests.
package cluster

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/quorum"
)

// MaxMembers is CloudHSM's limit of HSMs per cluster.
const MaxMembers = 28

// Config describes a cluster and how to reach and trust its members.
type Config struct {
	// Members are the daemons' host:port addresses.
	Members []string
	// Client holds the TLS settings shared by every member: the client
	// certificate, the customer CA and the cluster id. Its Addr is ignored.
	// ManufacturerRoots and OperatorRoots are needed only to add members
	// (the new HSM is attested before it is cloned).
	Client        client.Config
	OperatorRoots *x509.CertPool
	// Logger receives member state changes; nil discards.
	Logger *slog.Logger
}

// Cluster is a logged-in connection to every member. It is safe for
// concurrent use; writes are serialized so that every member applies them
// in the same order.
type Cluster struct {
	cfg            Config
	log            *slog.Logger
	user, password string // to log in again on members that come back
	role           hsmcore.Role

	writeMu sync.Mutex // serializes writes and resyncs

	mu      sync.Mutex
	members []*member
	next    int // round robin for reads
}

// member is one HSM of the cluster.
type member struct {
	addr   string
	c      *client.Client
	up     bool // reachable and logged in
	inSync bool // holds every write this client made
}

// MemberStatus reports one member.
type MemberStatus struct {
	Addr    string `json:"addr"`
	Healthy bool   `json:"healthy"`
	InSync  bool   `json:"in_sync"`
	Digest  string `json:"state_digest,omitempty"`
}

// ErrNoMember is returned when no member is healthy and in sync.
var ErrNoMember = errors.New("cluster: no healthy member in sync")

// Open connects to every member, logs in as user on each, and brings
// members that differ from the majority back in sync (a crypto officer's
// session can; a crypto user's leaves them out of use and reports them).
// It fails only if no member can be used.
func Open(ctx context.Context, cfg Config, user, password string) (*Cluster, error) {
	if len(cfg.Members) == 0 || len(cfg.Members) > MaxMembers {
		return nil, fmt.Errorf("cluster: %d members; want 1 to %d", len(cfg.Members), MaxMembers)
	}
	c := &Cluster{cfg: cfg, log: cfg.Logger, user: user, password: password}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	for _, addr := range cfg.Members {
		m, err := c.newMember(addr)
		if err != nil {
			return nil, err
		}
		c.members = append(c.members, m)
	}
	if err := c.Refresh(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Cluster) newMember(addr string) (*member, error) {
	cc := c.cfg.Client
	cc.Addr = addr
	cl, err := client.New(cc)
	if err != nil {
		return nil, fmt.Errorf("cluster: member %s: %w", addr, err)
	}
	return &member{addr: addr, c: cl}, nil
}

// Close logs out of every member.
func (c *Cluster) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range c.members {
		if m.up {
			m.c.Logout(context.Background())
		}
		m.c.Close()
	}
}

// Role returns the logged-in user's role.
func (c *Cluster) Role() hsmcore.Role {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.role
}

// isTransport reports whether err is a failure to reach a member rather
// than an answer from it.
func isTransport(err error) bool {
	var re *client.RemoteError
	return err != nil && !errors.As(err, &re) && !errors.Is(err, context.Canceled)
}

// Refresh checks every member: members that are down are marked so; members
// that came back are logged in again; the digest held by most healthy
// members (ties: the earliest in the configuration) is the reference, and
// members that differ are re-synced from a member that holds it, or left
// out of use if the session cannot re-sync.
func (c *Cluster) Refresh(ctx context.Context) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	return c.refresh(ctx)
}

func (c *Cluster) refresh(ctx context.Context) error {
	c.mu.Lock()
	members := append([]*member(nil), c.members...)
	c.mu.Unlock()

	digests := make([]string, len(members))
	var errs []error
	for i, m := range members {
		d, err := c.check(ctx, m)
		if err != nil {
			c.log.Warn("member unavailable", "addr", m.addr, "err", err)
			errs = append(errs, err)
			continue
		}
		digests[i] = d
	}
	si := mostHeld(digests)
	if si < 0 {
		return fmt.Errorf("%w: %w", ErrNoMember, errors.Join(errs...))
	}
	source, ref := members[si], digests[si]
	for i, m := range members {
		c.setSync(m, digests[i] == ref)
		if digests[i] == "" || digests[i] == ref {
			continue
		}
		if err := c.resync(ctx, source, m); err != nil {
			c.log.Warn("member out of sync, left out of use", "addr", m.addr, "err", err)
			continue
		}
		c.setSync(m, true)
	}
	return nil
}

// check makes sure m is reachable and logged in, and returns its digest.
func (c *Cluster) check(ctx context.Context, m *member) (string, error) {
	h, err := m.c.Health(ctx)
	if err != nil {
		c.setUp(m, false)
		return "", err
	}
	if cid := c.cfg.Client.ClusterID; cid != "" && h.ClusterID != cid {
		c.setUp(m, false)
		return "", fmt.Errorf("member %s is in cluster %q, not %q", m.addr, h.ClusterID, cid)
	}
	if !c.isUp(m) {
		role, err := m.c.Login(ctx, c.user, c.password)
		if err != nil {
			return "", fmt.Errorf("log in on %s: %w", m.addr, err)
		}
		c.mu.Lock()
		c.role = role
		c.mu.Unlock()
		c.setUp(m, true)
	}
	return h.StateDigest, nil
}

func (c *Cluster) isUp(m *member) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return m.up
}

func (c *Cluster) setUp(m *member, up bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if m.up && !up {
		m.inSync = false
	}
	m.up = up
}

func (c *Cluster) setSync(m *member, inSync bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m.inSync = inSync && m.up
}

// resync replaces dst's contents with src's image. It needs a crypto
// officer's session; the import ends dst's sessions, so it logs in again.
func (c *Cluster) resync(ctx context.Context, src, dst *member) error {
	if c.Role() != hsmcore.CryptoOfficer {
		return fmt.Errorf("re-sync of %s needs a crypto officer's session", dst.addr)
	}
	img, err := src.c.ExportImage(ctx)
	if err != nil {
		return fmt.Errorf("export image from %s: %w", src.addr, err)
	}
	defer img.Close()
	if _, err := dst.c.ImportImage(ctx, img); err != nil {
		return fmt.Errorf("import image into %s: %w", dst.addr, err)
	}
	c.setUp(dst, false)
	if _, err := c.check(ctx, dst); err != nil {
		return err
	}
	c.log.Info("member re-synced", "addr", dst.addr, "from", src.addr)
	return nil
}

// Members reports every member's state.
func (c *Cluster) Members(ctx context.Context) []MemberStatus {
	c.mu.Lock()
	members := append([]*member(nil), c.members...)
	c.mu.Unlock()
	out := make([]MemberStatus, len(members))
	for i, m := range members {
		c.mu.Lock()
		out[i] = MemberStatus{Addr: m.addr, Healthy: m.up, InSync: m.inSync}
		c.mu.Unlock()
		if h, err := m.c.Health(ctx); err == nil {
			out[i].Digest = h.StateDigest
		} else {
			out[i].Healthy = false
		}
	}
	return out
}

// usable returns the members that are up and in sync, the next reader
// first.
func (c *Cluster) usable() []*member {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*member
	n := len(c.members)
	for i := range n {
		m := c.members[(c.next+i)%n]
		if m.up && m.inSync {
			out = append(out, m)
		}
	}
	c.next = (c.next + 1) % max(n, 1)
	return out
}

// read runs fn on one usable member, moving on to the next when a member
// cannot be reached.
func read[T any](ctx context.Context, c *Cluster, fn func(*client.Client) (T, error)) (T, error) {
	var zero T
	var lastErr error = ErrNoMember
	for _, m := range c.usable() {
		v, err := fn(m.c)
		if !isTransport(err) {
			return v, err
		}
		c.log.Warn("member failed a read; skipped", "addr", m.addr, "err", err)
		c.setUp(m, false)
		lastErr = err
	}
	return zero, lastErr
}

// write runs first on one usable member (the primary); if that succeeds,
// rest runs on every other usable member. A member that fails rest is
// marked out of sync and skipped. It returns first's result.
func write[T any](ctx context.Context, c *Cluster, first func(*client.Client) (T, error), rest func(*client.Client, T) error) (T, error) {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	var zero T
	members := c.usable()
	var primary *member
	var v T
	var err error = ErrNoMember
	for i, m := range members {
		v, err = first(m.c)
		if isTransport(err) {
			c.log.Warn("member failed a write; skipped", "addr", m.addr, "err", err)
			c.setUp(m, false)
			continue
		}
		primary, members = m, append(members[:i:i], members[i+1:]...)
		break
	}
	if primary == nil || err != nil {
		return zero, err
	}
	for _, m := range members {
		if err := rest(m.c, v); err != nil {
			c.log.Warn("member missed a write; out of sync", "addr", m.addr, "err", err)
			if isTransport(err) {
				c.setUp(m, false)
			}
			c.setSync(m, false)
		}
	}
	return v, nil
}

// each is a write whose every member runs the same call.
func (c *Cluster) each(ctx context.Context, fn func(*client.Client) error) error {
	_, err := write(ctx, c,
		func(cl *client.Client) (struct{}, error) { return struct{}{}, fn(cl) },
		func(cl *client.Client, _ struct{}) error { return fn(cl) })
	return err
}

// Keys lists the keys the session may see.
func (c *Cluster) Keys(ctx context.Context) ([]hsmcore.KeyInfo, error) {
	return read(ctx, c, func(cl *client.Client) ([]hsmcore.KeyInfo, error) { return cl.Keys(ctx) })
}

// Users lists the users.
func (c *Cluster) Users(ctx context.Context) ([]hsmcore.UserInfo, error) {
	return read(ctx, c, func(cl *client.Client) ([]hsmcore.UserInfo, error) { return cl.Users(ctx) })
}

// Encrypt seals data with key h on one member.
func (c *Cluster) Encrypt(ctx context.Context, h uint64, data, aad []byte) ([]byte, error) {
	return read(ctx, c, func(cl *client.Client) ([]byte, error) { return cl.Encrypt(ctx, h, data, aad) })
}

// Decrypt opens data with key h on one member.
func (c *Cluster) Decrypt(ctx context.Context, h uint64, data, aad []byte) ([]byte, error) {
	return read(ctx, c, func(cl *client.Client) ([]byte, error) { return cl.Decrypt(ctx, h, data, aad) })
}

// Sign signs data with key h on one member.
func (c *Cluster) Sign(ctx context.Context, h uint64, data []byte) ([]byte, error) {
	return read(ctx, c, func(cl *client.Client) ([]byte, error) { return cl.Sign(ctx, h, data) })
}

// GenerateKeys makes keys on one member and replicates them, material
// included, to every other member as sealed sync records. Session keys
// belong to one HSM and are refused here.
func (c *Cluster) GenerateKeys(ctx context.Context, specs []hsmcore.KeySpec) ([]hsmcore.KeyInfo, error) {
	for _, s := range specs {
		if s.Session {
			return nil, fmt.Errorf("cluster: session keys belong to one HSM: %w", hsmcore.ErrInvalid)
		}
	}
	var records [][]byte
	return write(ctx, c,
		func(cl *client.Client) ([]hsmcore.KeyInfo, error) {
			records = records[:0]
			keys, err := cl.GenerateKeys(ctx, specs)
			if err != nil {
				return nil, err
			}
			for _, k := range keys {
				rec, err := cl.ExportKeyRecord(ctx, k.Handle)
				if err != nil {
					return nil, fmt.Errorf("replicate key %d: %w", k.Handle, err)
				}
				records = append(records, rec)
			}
			return keys, nil
		},
		func(cl *client.Client, _ []hsmcore.KeyInfo) error {
			for _, rec := range records {
				if err := cl.ImportRecord(ctx, rec); err != nil {
					return err
				}
			}
			return nil
		})
}

// DeleteKey destroys key h on every member.
func (c *Cluster) DeleteKey(ctx context.Context, h uint64) error {
	return c.each(ctx, func(cl *client.Client) error { return cl.DeleteKey(ctx, h) })
}

// SetAttributes changes key h's attributes on every member.
func (c *Cluster) SetAttributes(ctx context.Context, h uint64, change hsmcore.AttributeChange) error {
	return c.each(ctx, func(cl *client.Client) error { return cl.SetAttributes(ctx, h, change) })
}

// ShareKey shares key h on every member.
func (c *Cluster) ShareKey(ctx context.Context, h uint64, user string, share bool) error {
	return c.each(ctx, func(cl *client.Client) error { return cl.ShareKey(ctx, h, user, share) })
}

// SetTrusted marks key h trusted on every member.
func (c *Cluster) SetTrusted(ctx context.Context, h uint64, trusted bool) error {
	return c.each(ctx, func(cl *client.Client) error { return cl.SetTrusted(ctx, h, trusted) })
}

// DeleteUser removes a user on every member.
func (c *Cluster) DeleteUser(ctx context.Context, name string) error {
	return c.each(ctx, func(cl *client.Client) error { return cl.DeleteUser(ctx, name) })
}

// UnlockUser lifts a user's lockout after failed logins on every member
// (each counts its own failures).
func (c *Cluster) UnlockUser(ctx context.Context, name string) error {
	return c.each(ctx, func(cl *client.Client) error { return cl.UnlockUser(ctx, name) })
}

// CreateUser adds a user on one member and replicates its record, so that
// every member holds the same password hash.
func (c *Cluster) CreateUser(ctx context.Context, name string, role hsmcore.Role, password string) error {
	return c.replicateUser(ctx, name, func(cl *client.Client) error { return cl.CreateUser(ctx, name, role, password) })
}

// ChangePassword sets the session user's password on every member.
func (c *Cluster) ChangePassword(ctx context.Context, password string) error {
	err := c.replicateUser(ctx, c.user, func(cl *client.Client) error { return cl.ChangePassword(ctx, password) })
	if err == nil {
		c.password = password
	}
	return err
}

func (c *Cluster) replicateUser(ctx context.Context, name string, change func(*client.Client) error) error {
	_, err := write(ctx, c,
		func(cl *client.Client) ([]byte, error) {
			if err := change(cl); err != nil {
				return nil, err
			}
			return cl.ExportUserRecord(ctx, name)
		},
		func(cl *client.Client, rec []byte) error { return cl.ImportRecord(ctx, rec) })
	return err
}

// AddMember clones a new, uninitialized HSM at addr from a member of the
// cluster and adds it. An HSM whose cluster is initialized is refused and
// left unchanged. The new HSM is attested first (fresh nonce, both
// chains, same class, manufacturer and operator as the cluster); its own
// import checks the hardware again. Crypto officers only.
func (c *Cluster) AddMember(ctx context.Context, addr string) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if c.Role() != hsmcore.CryptoOfficer {
		return fmt.Errorf("adding members is for crypto officers only: %w", hsmcore.ErrPermission)
	}
	c.mu.Lock()
	n := len(c.members)
	c.mu.Unlock()
	if n >= MaxMembers {
		return fmt.Errorf("cluster has %d members already: %w", n, hsmcore.ErrFull)
	}
	if c.cfg.Client.ManufacturerRoots == nil || c.cfg.OperatorRoots == nil {
		return errors.New("manufacturer and operator roots are needed to attest a new member")
	}
	members := c.usable()
	if len(members) == 0 {
		return ErrNoMember
	}
	src := members[0]
	srcHealth, err := src.c.Health(ctx)
	if err != nil {
		return fmt.Errorf("%s: health: %w", src.addr, err)
	}
	// The new HSM is trusted as a device; as a member of the cluster too,
	// so that one initialized already is refused by name.
	pcfg := c.cfg.Client
	pcfg.Addr = addr
	pre, err := client.New(pcfg)
	if err != nil {
		return fmt.Errorf("%s: %w", addr, err)
	}
	defer pre.Close()
	h, err := pre.Health(ctx)
	if err != nil {
		return fmt.Errorf("%s: %w", addr, err)
	}
	if h.Initialized || h.ClusterInitialized {
		return fmt.Errorf("%s: HSM %s is not a new HSM: cluster %s is initialized on it: %w", addr, h.Serial, h.ClusterID, hsmcore.ErrPermission)
	}
	_, err = hsmcore.Challenge(ctx, pre, hsmcore.ChallengeOptions{
		ManufacturerRoots: c.cfg.Client.ManufacturerRoots, OperatorRoots: c.cfg.OperatorRoots,
		Expect: hsmcore.Expectation{Class: srcHealth.Class, Manufacturer: srcHealth.Manufacturer, Operator: srcHealth.Operator,
			MinFirmware: srcHealth.Firmware, FIPS: srcHealth.FIPS, PBKFingerprint: srcHealth.PBKFingerprint},
	})
	if errors.Is(err, hsmcore.ErrAttestation) {
		return fmt.Errorf("%s: %w", addr, err)
	}
	if err != nil {
		return fmt.Errorf("%s: attest: %w", addr, err)
	}
	img, err := src.c.ExportImage(ctx)
	if err != nil {
		return fmt.Errorf("%s: export image from %s: %w", addr, src.addr, err)
	}
	defer img.Close()
	if _, err := pre.ImportImage(ctx, img); err != nil {
		return fmt.Errorf("%s: import image: %w", addr, err)
	}
	m, err := c.newMember(addr)
	if err != nil {
		return err
	}
	if _, err := c.check(ctx, m); err != nil {
		return fmt.Errorf("%s: %w", addr, err)
	}
	m.inSync = true
	c.mu.Lock()
	c.members = append(c.members, m)
	c.mu.Unlock()
	c.log.Info("member added", "addr", addr, "from", src.addr)
	return nil
}

// RegisterSigningKey sets the officer's quorum signing key on every
// member (as a replicated user record).
func (c *Cluster) RegisterSigningKey(ctx context.Context, pub ed25519.PublicKey) error {
	return c.replicateUser(ctx, c.user, func(cl *client.Client) error { return cl.RegisterSigningKey(ctx, pub) })
}

// SetQuorum makes op need m approvals on every member.
func (c *Cluster) SetQuorum(ctx context.Context, op string, m int) error {
	return c.each(ctx, func(cl *client.Client) error { return cl.SetQuorum(ctx, op, m) })
}

// QuorumToken gets a token for op on object from one member and has every
// other member adopt it, so one set of approvals serves the cluster.
func (c *Cluster) QuorumToken(ctx context.Context, op, object string) (quorum.Token, error) {
	var sealed []byte
	return write(ctx, c,
		func(cl *client.Client) (quorum.Token, error) {
			tok, s, err := cl.QuorumToken(ctx, op, object)
			sealed = s
			return tok, err
		},
		func(cl *client.Client, _ quorum.Token) error {
			_, err := cl.AdoptQuorumToken(ctx, sealed)
			return err
		})
}

// Approve sends approvals of token id to every member with the following
// calls, until ClearApproval.
func (c *Cluster) Approve(id [16]byte, approvals []quorum.Approval) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range c.members {
		if err := m.c.Approve(id, approvals); err != nil {
			return err
		}
	}
	return nil
}

// ClearApproval stops sending approvals.
func (c *Cluster) ClearApproval() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range c.members {
		m.c.ClearApproval()
	}
}
