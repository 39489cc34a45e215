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
// Every change is made on one member and reaches the others as change
// records signed by that member and sealed to each receiving member
// (hsmcore/device/change.go), so every member holds the same key
// material, handles and attributes, and members in sync have equal state
// digests; members that disagree are compared by state version, and the
// newest wins, never the majority.
package cluster

import (
	"context"
	"slices"

	"crypto/ed25519"
	"crypto/x509"
	"errors"
	"fmt"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
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
	// (the new HSM is attested before it is cloned): member clients never
	// trust a device certificate, so a genuine HSM that is not a member
	// gets no password, session token or image.
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
	serial string // from its health answer
	up     bool   // reachable and logged in
	inSync bool   // holds every write this client made
}

// MemberStatus reports one member.
type MemberStatus struct {
	Addr    string  `json:"addr"`
	Healthy bool    `json:"healthy"`
	InSync  bool    `json:"in_sync"`
	Digest  string  `json:"state_digest,omitempty"`
	Version Version `json:"state_version,omitempty"`
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
	cl, err := client.New(memberConfig(c.cfg.Client, addr))
	if err != nil {
		return nil, fmt.Errorf("cluster: member %s: %w", addr, err)
	}
	return &member{addr: addr, c: cl}, nil
}

// memberConfig is cfg for the member at addr: it trusts the cluster's
// certificate only (customer CA, cluster id), never a device certificate,
// as the member receives passwords, session tokens and images.
func memberConfig(cfg client.Config, addr string) client.Config {
	cfg.Addr = addr
	cfg.ManufacturerRoots, cfg.DeviceKey = nil, nil
	return cfg
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

// Refresh checks every member: members that are down are marked so;
// members that came back are logged in again. The reference is the state
// whose version covers every other's (the newest, never the most held or
// the first listed); members whose state it covers are re-synced from a
// member that holds it (a crypto officer's session can; a crypto user's
// leaves them out of use). If no state covers the others, changes were
// made on both sides of a split: Refresh changes nothing and returns a
// *DivergedError naming each member's version, and so does it when two
// members hold different states of the same version.
func (c *Cluster) Refresh(ctx context.Context) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	return c.refresh(ctx)
}

func (c *Cluster) refresh(ctx context.Context) error {
	c.mu.Lock()
	members := append([]*member(nil), c.members...)
	c.mu.Unlock()

	states := make([]MemberState, len(members))
	versions := make([]Version, len(members))
	ok := make([]bool, len(members))
	var errs []error
	for i, m := range members {
		h, err := c.check(ctx, m)
		if err != nil {
			c.log.Warn("member unavailable", "addr", m.addr, "err", err)
			errs = append(errs, err)
			continue
		}
		states[i], versions[i], ok[i] = stateOf(m.addr, h), h.StateVersion, true
	}
	if !slices.Contains(ok, true) {
		return fmt.Errorf("%w: %w", ErrNoMember, errors.Join(errs...))
	}
	ri := newest(versions, ok)
	if ri >= 0 {
		for i := range members {
			if ok[i] && states[i].StateDigest != states[ri].StateDigest && versions[i].Covers(versions[ri]) {
				ri = -1 // the same version, another state
				break
			}
		}
	}
	if ri < 0 {
		div := &DivergedError{ClusterID: c.cfg.Client.ClusterID}
		for i, m := range members {
			c.setSync(m, false)
			if ok[i] {
				div.Members = append(div.Members, states[i])
			}
		}
		c.log.Error("members hold states that no one member's covers: changes were made on both sides of a split", "members", div.Members)
		return div
	}
	source, ref := members[ri], states[ri].StateDigest
	for i, m := range members {
		c.setSync(m, ok[i] && states[i].StateDigest == ref)
		if !ok[i] || states[i].StateDigest == ref {
			continue
		}
		if err := c.resync(ctx, source, m); err != nil {
			c.log.Warn("member out of sync, left out of use", "addr", m.addr, "version", versions[i].String(), "newest", versions[ri].String(), "err", err)
			continue
		}
		c.setSync(m, true)
	}
	return nil
}

func stateOf(addr string, h api.Health) MemberState {
	return MemberState{Addr: addr, Serial: h.Serial, StateDigest: h.StateDigest, Version: h.StateVersion, Keys: h.KeyCount, Users: h.UserCount}
}

// check makes sure m is reachable and logged in, and returns its health.
func (c *Cluster) check(ctx context.Context, m *member) (api.Health, error) {
	h, err := m.c.Health(ctx)
	if err != nil {
		c.setUp(m, false)
		return api.Health{}, err
	}
	if cid := c.cfg.Client.ClusterID; cid != "" && h.ClusterID != cid {
		c.setUp(m, false)
		return api.Health{}, fmt.Errorf("member %s is in cluster %q, not %q", m.addr, h.ClusterID, cid)
	}
	c.mu.Lock()
	m.serial = h.Serial
	c.mu.Unlock()
	if !c.isUp(m) {
		role, err := m.c.Login(ctx, c.user, c.password)
		if err != nil {
			return api.Health{}, fmt.Errorf("log in on %s: %w", m.addr, err)
		}
		c.mu.Lock()
		c.role = role
		c.mu.Unlock()
		c.setUp(m, true)
	}
	return h, nil
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

// write runs op on one usable member (the primary) and, if it succeeds,
// brings every other usable member up to date with the changes it made:
// change records exported for each member and imported there in order,
// as the same user. A member that refuses or misses one is marked out of
// sync and skipped (Refresh re-syncs it). It returns op's result.
func write[T any](ctx context.Context, c *Cluster, op func(*client.Client) (T, error)) (T, error) {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	return writeLocked(ctx, c, op)
}

// writeLocked is write with c.writeMu held.
func writeLocked[T any](ctx context.Context, c *Cluster, op func(*client.Client) (T, error)) (T, error) {
	return writeAmong(ctx, c, c.usable(), op)
}

// writeAmong is writeLocked with the primary the first of members that
// answers; the other usable members are brought up to date.
func writeAmong[T any](ctx context.Context, c *Cluster, members []*member, op func(*client.Client) (T, error)) (T, error) {
	var zero T
	var primary *member
	var since uint64
	var v T
	var err error = ErrNoMember
	for i, m := range members {
		var h api.Health
		if h, err = m.c.Health(ctx); err == nil {
			since = h.StateVersion[h.Serial]
			v, err = op(m.c)
		}
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
	members = slices.DeleteFunc(c.usable(), func(m *member) bool { return m == primary })
	for _, m := range members {
		if err := c.replicate(ctx, primary, m, since); err != nil {
			c.log.Warn("member missed a write; out of sync", "addr", m.addr, "err", err)
			if isTransport(err) {
				c.setUp(m, false)
			}
			c.setSync(m, false)
		}
	}
	return v, nil
}

// replicate imports into dst the changes src made after its sequence
// number since.
func (c *Cluster) replicate(ctx context.Context, src, dst *member, since uint64) error {
	c.mu.Lock()
	to := dst.serial
	c.mu.Unlock()
	for {
		recs, upto, err := src.c.ExportChanges(ctx, since, to)
		if err != nil {
			return fmt.Errorf("export changes from %s: %w", src.addr, err)
		}
		if len(recs) > 0 {
			if err := dst.c.ImportChanges(ctx, recs); err != nil {
				return err
			}
		}
		if len(recs) == 0 || upto == since {
			return nil
		}
		since = upto
	}
}

// each is a write that returns nothing but op's error.
func (c *Cluster) each(ctx context.Context, op func(*client.Client) error) error {
	_, err := write(ctx, c, func(cl *client.Client) (struct{}, error) { return struct{}{}, op(cl) })
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

// WrapKey wraps key target under key wrapping with mech, on one member.
func (c *Cluster) WrapKey(ctx context.Context, wrapping, target uint64, mech hsmcore.Mechanism) ([]byte, error) {
	return read(ctx, c, func(cl *client.Client) ([]byte, error) { return cl.WrapKey(ctx, wrapping, target, mech) })
}

// WrapKeyToPublic wraps key target with mech under pub, an outside RSA
// public key (PKIX DER), on one member.
func (c *Cluster) WrapKeyToPublic(ctx context.Context, pub []byte, target uint64, mech hsmcore.Mechanism) ([]byte, error) {
	return read(ctx, c, func(cl *client.Client) ([]byte, error) { return cl.WrapKeyToPublic(ctx, pub, target, mech) })
}

// NewTransportKey has one member make a transport key of mech for the
// session's crypto user and attest to it over nonce. It returns the offer
// and the member's address, where ImportBundle must take the bundle.
func (c *Cluster) NewTransportKey(ctx context.Context, nonce []byte, mech hsmcore.Mechanism) (hsmcore.TransportOffer, string, error) {
	var addr string
	o, err := read(ctx, c, func(cl *client.Client) (hsmcore.TransportOffer, error) {
		o, err := cl.NewTransportKey(ctx, nonce, mech)
		if err == nil {
			addr = c.addrOf(cl)
		}
		return o, err
	})
	return o, addr, err
}

// ExportBundle writes keys handles into a bundle under offer's transport
// key on one member (the source's side of a migration).
func (c *Cluster) ExportBundle(ctx context.Context, offer hsmcore.TransportOffer, opRoots [][]byte, handles []uint64, dryRun bool) (api.ExportBundleResponse, error) {
	return read(ctx, c, func(cl *client.Client) (api.ExportBundleResponse, error) {
		return cl.ExportBundle(ctx, offer, opRoots, handles, dryRun)
	})
}

// ImportBundle imports a bundle on the member at addr, which made its
// transport key, and replicates the new keys to every other member as
// change records, as any write.
func (c *Cluster) ImportBundle(ctx context.Context, addr string, b *hsmcore.Bundle) ([]hsmcore.Migrated, error) {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	at := slices.DeleteFunc(c.usable(), func(m *member) bool { return m.addr != addr })
	if len(at) == 0 {
		return nil, fmt.Errorf("import bundle: member %s, which holds its transport key, is not usable: %w", addr, ErrNoMember)
	}
	return writeAmong(ctx, c, at, func(cl *client.Client) ([]hsmcore.Migrated, error) { return cl.ImportBundle(ctx, b) })
}

// addrOf is the address of the member whose client cl is.
func (c *Cluster) addrOf(cl *client.Client) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range c.members {
		if m.c == cl {
			return m.addr
		}
	}
	return ""
}

// UnwrapKey imports a key wrapped with mech under key unwrapping on one
// member and replicates it: its material travels only in change records
// sealed to each member.
func (c *Cluster) UnwrapKey(ctx context.Context, unwrapping uint64, mech hsmcore.Mechanism, wrapped []byte, spec hsmcore.KeySpec) (hsmcore.KeyInfo, error) {
	if spec.Session {
		return hsmcore.KeyInfo{}, fmt.Errorf("unwrap key: a session key belongs to one HSM, not the cluster: %w", hsmcore.ErrInvalid)
	}
	return write(ctx, c, func(cl *client.Client) (hsmcore.KeyInfo, error) {
		return cl.UnwrapKey(ctx, unwrapping, mech, wrapped, spec)
	})
}

// GenerateKeys makes keys on one member and replicates them, material
// included, to every other member as change records only that member can
// open. Session keys belong to one HSM and are refused here.
func (c *Cluster) GenerateKeys(ctx context.Context, specs []hsmcore.KeySpec) ([]hsmcore.KeyInfo, error) {
	for _, s := range specs {
		if s.Session {
			return nil, fmt.Errorf("cluster: session keys belong to one HSM: %w", hsmcore.ErrInvalid)
		}
	}
	return write(ctx, c, func(cl *client.Client) ([]hsmcore.KeyInfo, error) { return cl.GenerateKeys(ctx, specs) })
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
	// Failed-login counts are each member's own, not replicated state:
	// the unlock runs on every member that is up.
	ms := c.usable()
	if len(ms) == 0 {
		return ErrNoMember
	}
	for _, m := range ms {
		if err := m.c.UnlockUser(ctx, name); err != nil {
			return fmt.Errorf("unlock user %s on %s: %w", name, m.addr, err)
		}
	}
	return nil
}

// CreateUser adds a user on one member and replicates its record, so that
// every member holds the same password hash.
func (c *Cluster) CreateUser(ctx context.Context, name string, role hsmcore.Role, password string) error {
	return c.each(ctx, func(cl *client.Client) error { return cl.CreateUser(ctx, name, role, password) })
}

// ChangePassword sets the session user's password on every member.
func (c *Cluster) ChangePassword(ctx context.Context, password string) error {
	err := c.each(ctx, func(cl *client.Client) error { return cl.ChangePassword(ctx, password) })
	if err == nil {
		c.password = password
	}
	return err
}

// AddOptions are what AddMember requires of the new HSM beyond what the
// cluster's members are.
type AddOptions struct {
	// Serial, if set, is the serial the new HSM must attest to: another
	// genuine HSM at addr is refused (hsmcore.ErrAttestation).
	Serial string
}

// AddMember clones a new, uninitialized HSM at addr from a member of the
// cluster and adds it. An HSM whose cluster is initialized is refused and
// left unchanged. The new HSM is attested first (fresh nonce, both
// chains, same class, manufacturer and operator as the cluster, the
// serial opts name); the image goes only to the attested device: the
// attestation must come over a connection to it, and every connection
// that carries the image must present its device key (client.Bind), so a
// relay that forwards the attestation to a genuine HSM gets nothing. Its
// own import checks the hardware again. Crypto officers only.
func (c *Cluster) AddMember(ctx context.Context, addr string, opts AddOptions) error {
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
	// The new HSM is trusted as a device, for what carries no secret; as
	// a member of the cluster too, so that one initialized already is
	// refused by name. The image goes to it once bound to the attested
	// device.
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
	st, err := hsmcore.Challenge(ctx, pre, hsmcore.ChallengeOptions{
		ManufacturerRoots: c.cfg.Client.ManufacturerRoots, OperatorRoots: c.cfg.OperatorRoots,
		Expect: hsmcore.Expectation{Serial: opts.Serial, Class: srcHealth.Class, Manufacturer: srcHealth.Manufacturer, Operator: srcHealth.Operator,
			MinFirmware: srcHealth.Firmware, FIPS: srcHealth.FIPS, PBKFingerprint: srcHealth.PBKFingerprint},
	})
	if errors.Is(err, hsmcore.ErrAttestation) {
		return fmt.Errorf("%s: %w", addr, err)
	}
	if err != nil {
		return fmt.Errorf("%s: attest: %w", addr, err)
	}
	if err := pre.Bind(st); err != nil {
		return fmt.Errorf("%s: %w", addr, err)
	}
	// Every member lists the new HSM's device key before it gets the
	// image, so that the image it receives names it a member.
	certs, err := pre.Certificates(ctx)
	if err != nil {
		return fmt.Errorf("%s: certificates: %w", addr, err)
	}
	if cert, err := x509.ParseCertificate(certs.Manufacturer); err != nil || cert.Subject.SerialNumber != st.Serial {
		return fmt.Errorf("%s: device certificate does not name the attested HSM %s: %w", addr, st.Serial, hsmcore.ErrAttestation)
	}
	if _, err := writeLocked(ctx, c, func(cl *client.Client) (struct{}, error) { return struct{}{}, cl.AddMember(ctx, certs.Manufacturer) }); err != nil {
		return fmt.Errorf("%s: add to the member list: %w", addr, err)
	}
	members = c.usable() // the source must hold the new member list
	if len(members) == 0 {
		return ErrNoMember
	}
	src = members[0]
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
	return c.each(ctx, func(cl *client.Client) error { return cl.RegisterSigningKey(ctx, pub) })
}

// SetQuorum makes op need m approvals on every member.
func (c *Cluster) SetQuorum(ctx context.Context, op string, m int) error {
	return c.each(ctx, func(cl *client.Client) error { return cl.SetQuorum(ctx, op, m) })
}

// QuorumToken gets a token for op on object from one member and has every
// other member adopt it, so one set of approvals serves the cluster.
func (c *Cluster) QuorumToken(ctx context.Context, op, object string) (quorum.Token, error) {
	var sealed []byte
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	members := c.usable()
	var tok quorum.Token
	var err error = ErrNoMember
	for i, m := range members {
		tok, sealed, err = m.c.QuorumToken(ctx, op, object)
		if isTransport(err) {
			c.setUp(m, false)
			continue
		}
		if err != nil {
			return quorum.Token{}, err
		}
		for _, o := range append(members[:i:i], members[i+1:]...) {
			if _, err := o.c.AdoptQuorumToken(ctx, sealed); err != nil {
				c.log.Warn("member did not adopt a quorum token", "addr", o.addr, "err", err)
			}
		}
		return tok, nil
	}
	return quorum.Token{}, err
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
