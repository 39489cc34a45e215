package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/restore"
)

func drillCommand() *cli.Command {
	return &cli.Command{
		Name:  "drill",
		Usage: "prove a cluster's newest backup restorable: restore it into the cluster's scratch HSM, check it, zeroize it",
		Description: "Takes the cluster's newest READY backup and restores it, as 'restore'\n" +
			"does, into the scratch HSM of the cluster's drill: section in --config\n" +
			"(drill: {hsm: HOST:PORT}), which must be a new, uninitialized HSM of the\n" +
			"cluster's hardware: an initialized one is refused and left as it is.\n" +
			"Then it logs in to the restored HSM as the cluster's crypto officer\n" +
			"(its user, password_file, client certificate) and checks that it holds\n" +
			"exactly the users and keys (handles, check values) the backup's\n" +
			"manifest records, and always zeroizes it after, whatever the outcome.\n" +
			"It reports the backup, the restore time (from the start of the restore\n" +
			"to the image committed: a measured RTO) and the result; a failed check\n" +
			"exits 4, a refused scratch HSM 5.",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "cluster", Usage: "`ID` of the cluster in --config to drill (required)"},
			manufacturerRootFlag(),
			operatorRootFlag(),
		}, serviceFlags()...),
		OnUsageError: usageError,
		Action:       envAction("scheduler drill", drill),
	}
}

func drill(c *cli.Context, e *env) error {
	id := c.String("cluster")
	if id == "" {
		return usagef("--cluster is required (run '%s --help')", c.Command.HelpName)
	}
	if err := e.openStore(); err != nil {
		return err
	}
	rep, err := runDrill(c.Context, e, id)
	if perr := rep.print(e); err == nil {
		err = perr
	}
	return err
}

// What a drill left on its scratch HSM (drillReport.Scratch).
const (
	scratchUnchanged = "unchanged"        // nothing was restored into it: as it was
	scratchZeroized  = "zeroized"         // restored into, then zeroized: uninitialized again
	scratchLeft      = "left initialized" // restored into, not zeroized: an operator must
	scratchUnknown   = "unknown"          // it did not answer after the restore
)

// drillCleanupTimeout bounds the drill's zeroization of its scratch HSM
// when the drill itself was cancelled: within main's cleanupBound.
const drillCleanupTimeout = 8 * time.Second

// drillReport is the outcome of a restore drill (runDrill), for the
// command to print and the scheduler to record.
type drillReport struct {
	Cluster  string    // the cluster drilled
	BackupID string    // the backup restored: the cluster's newest READY one ("" if none was found)
	HSM      string    // the scratch HSM's address
	Serial   string    // its serial ("" if it was not reached)
	Started  time.Time // when the drill started (UTC)
	// Restore is the measured RTO: the time from the start of the
	// restore (verification included) to the image committed in the
	// scratch HSM; 0 if no restore was started.
	Restore time.Duration
	// Users and Keys are how many users and token keys the restored HSM
	// held.
	Users, Keys int
	OK          bool
	Reason      string // why the drill failed, if it did: its error
	Scratch     string // what the drill left on the scratch HSM (scratch…)
}

// MarshalJSON writes the report with the CLI's field names.
func (r *drillReport) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Cluster        string    `json:"cluster_id"`
		BackupID       string    `json:"backup_id"`
		Addr           string    `json:"addr"`
		Serial         string    `json:"serial"`
		Started        time.Time `json:"started"`
		RestoreSeconds float64   `json:"restore_seconds"`
		Users          int       `json:"users"`
		Keys           int       `json:"keys"`
		OK             bool      `json:"ok"`
		Reason         string    `json:"reason,omitempty"`
		Scratch        string    `json:"scratch"`
	}{r.Cluster, r.BackupID, r.HSM, r.Serial, r.Started, r.Restore.Seconds(), r.Users, r.Keys, r.OK, r.Reason, r.Scratch})
}

// print writes the report: one line, or a JSON result line with --json.
func (r *drillReport) print(e *env) error {
	if e.g.json {
		return writeJSON(e.stdout, r)
	}
	var err error
	if r.OK {
		_, err = fmt.Fprintf(e.stdout, "drill of %s passed: backup %s restored into scratch HSM %s at %s in %s; it held %s and %s, as the manifest records; scratch HSM %s\n",
			r.Cluster, r.BackupID, r.Serial, r.HSM, r.Restore.Round(time.Millisecond), plural(r.Users, "user"), plural(r.Keys, "key"), r.Scratch)
	} else {
		_, err = fmt.Fprintf(e.stdout, "drill of %s FAILED: %s; scratch HSM %s\n", r.Cluster, r.Reason, orNone(r.Scratch))
	}
	return err
}

// runDrill proves that the newest READY backup of cluster clusterID is
// restorable: it restores it into the cluster's scratch HSM (its drill:
// section) through the restore command's own path, timing it, checks
// that the restored HSM holds exactly the users and keys the manifest's
// inventory records, and then zeroizes the scratch HSM, whatever
// happened, under a deadline of its own if ctx is done.
//
// The scratch HSM must be new: one that is initialized (into any cluster:
// it may be in production elsewhere) is refused (restore.ErrNotNew) and
// left as it is; the restore sends it no password, so it could only ever
// import into an HSM without users. The zeroization is made only on the
// HSM of the serial found new before the restore, initialized in the
// drilled cluster.
//
// The report is never nil; it says whether the drill passed (OK) and, if
// not, why (Reason, the error's text). The error wraps the sentinel of
// the failure: the backup's verification (backup.ErrObjectHash…), the
// inventory (restore.ErrInventoryMismatch), a refused scratch HSM
// (restore.ErrNotNew).
func runDrill(ctx context.Context, e *env, clusterID string) (rep *drillReport, err error) {
	rep = &drillReport{Cluster: clusterID, Started: time.Now().UTC(), Scratch: scratchUnchanged}
	defer func() {
		rep.OK = err == nil
		if err != nil {
			rep.Reason = err.Error()
		}
	}()
	scratch, err := e.drillHSM(clusterID)
	if err != nil {
		return rep, err
	}
	rep.HSM = scratch

	// The backup: the newest READY one, signed, with an inventory to
	// check the restored HSM against.
	_, id, err := backup.Resolve(ctx, e.repo, clusterID, backup.Latest)
	if err != nil {
		return rep, err
	}
	rep.BackupID = id
	pub, err := e.publicKey()
	if err != nil {
		return rep, err
	}
	m, err := backup.Describe(ctx, e.repo, clusterID, id)
	if err == nil {
		err = m.Verify(pub)
	}
	if err != nil {
		return rep, err
	}
	if err := restore.Checkable(m.Inventory); err != nil {
		return rep, fmt.Errorf("backup %s: %w: a drill cannot prove it restorable", id, err)
	}

	// What reaches the scratch HSM once restored, read before anything is
	// sent: the cluster's customer CA (the backup's), client certificate
	// and crypto officer.
	member, err := e.clusterTarget(clusterID, true)
	if err != nil {
		return rep, err
	}
	if len(m.CustomerCA) > 0 && !bytes.Equal(m.CustomerCA, member.tls.CustomerCA.Raw) {
		return rep, fmt.Errorf("backup %s: its customer CA is not the customer_ca of cluster %s in the config: the restored HSM could not be reached to check and zeroize it", id, clusterID)
	}
	password, err := member.password()
	if err != nil {
		return rep, fmt.Errorf("cluster %s: %w", clusterID, err)
	}
	member = member.withPassword(password)
	member.members = []string{scratch}
	mfr, _, err := e.roots()
	if err != nil {
		return rep, err
	}

	// The scratch HSM must be new.
	serial, err := scratchIsNew(ctx, member, mfr)
	if err != nil {
		return rep, err
	}
	rep.Serial = serial

	// From here it may hold a copy of the cluster: zeroized, whatever
	// happens.
	defer func() {
		left, cerr := drillCleanup(ctx, e, member, mfr, serial)
		rep.Scratch = left
		switch {
		case cerr == nil:
		case err == nil:
			err = cerr
		default:
			err = fmt.Errorf("%w; then %w", err, cerr)
		}
	}()

	// The restore, as the restore command makes it, into a target with no
	// login: it imports only into an HSM without users.
	t := &target{members: []string{scratch}}
	t.tls.Timeout = e.g.timeout
	if t.tls.Claims, err = loadClaims(e.cfg.Clusters[clusterID].Drill.Claim); err != nil {
		return rep, fmt.Errorf("cluster %s: drill: %w", clusterID, err)
	}
	start := time.Now()
	results, err := restoreBackup(ctx, e, restoreOptions{backupID: id}, clusterID, t)
	rep.Restore = time.Since(start)
	if err != nil {
		return rep, err
	}
	if got := results[0].Serial; got != serial {
		return rep, fmt.Errorf("scratch HSM %s attested as HSM %s, not HSM %s found new before the restore", scratch, got, serial)
	}
	e.log.Info("drill restored", "cluster", clusterID, "backup", id, "addr", scratch, "serial", serial, "restore", rep.Restore.Round(time.Millisecond).String())

	// What it holds, as the cluster's crypto officer sees it.
	held, err := drillHoldings(ctx, member)
	if err != nil {
		return rep, err
	}
	for _, k := range held.Keys {
		if k.Token {
			rep.Keys++
		}
	}
	rep.Users = len(held.Users)
	if err := restore.CheckInventory(m.Inventory, held); err != nil {
		return rep, fmt.Errorf("scratch HSM %s: backup %s: %w", scratch, id, err)
	}
	return rep, nil
}

// drillHSM returns the scratch HSM of cluster id's drill: section. It is
// never a member of a configured cluster (the config check refuses that;
// checked again here, as the drill zeroizes it).
func (e *env) drillHSM(id string) (string, error) {
	cc, err := e.cluster(id)
	if err != nil {
		return "", err
	}
	if cc.Drill == nil || cc.Drill.HSM == "" {
		return "", usagef("cluster %s has no drill: give it a scratch HSM in the config (drill: {hsm: HOST:PORT, claim: FILE})", id)
	}
	scratch := cc.Drill.HSM
	a, ok := canonicalHostPort(scratch)
	if !ok {
		return "", usagef("cluster %s: drill hsm %q: want HOST:PORT", id, scratch)
	}
	for _, other := range e.cfg.clusterIDs() {
		for _, m := range e.cfg.Clusters[other].Members {
			if b, _ := canonicalHostPort(m); b == a {
				return "", usagef("cluster %s: drill hsm %s is a member of cluster %s: a drill never restores into a production HSM", id, scratch, other)
			}
		}
	}
	return scratch, nil
}

// isNew reports whether an HSM's health is a new HSM's: no users, no
// keys, no cluster (not even a CSR made).
func isNew(h api.Health) bool {
	return !h.Initialized && !h.ClusterInitialized && h.ClusterID == "" && h.UserCount == 0 && h.KeyCount == 0
}

// scratchIsNew checks that the scratch HSM member names is new, trusting
// it as a device of the manufacturer roots or as a member of the drilled
// cluster (which a failed drill may have left), and returns its serial.
func scratchIsNew(ctx context.Context, member *target, mfr *x509.CertPool) (string, error) {
	t := *member
	t.tls.ManufacturerRoots = mfr
	cl, err := t.dialOne()
	if err != nil {
		return "", err
	}
	defer cl.Close()
	addr := cl.addr
	h, err := cl.Health(ctx)
	if errors.Is(err, client.ErrUntrusted) {
		return "", fmt.Errorf("scratch HSM %s: %w: it presents neither a device certificate of the manufacturer root nor the certificate of cluster %s, as an HSM initialized into another cluster does, which may be in production: check it, and zeroize it by hand if it is the scratch HSM; it was not changed (%w)",
			addr, restore.ErrNotNew, t.clusterID, err)
	}
	if err != nil {
		return "", fmt.Errorf("scratch HSM %s: health: %w", addr, cl.explain(err))
	}
	if !isNew(h) {
		how := fmt.Sprintf("'hsmbackup hsm zeroize --addr %s --yes' with its cluster's credentials", addr)
		if h.ClusterID == t.clusterID {
			how = fmt.Sprintf("'hsmbackup hsm zeroize --config CONFIG --cluster %s --addr %s --yes'", t.clusterID, addr)
		}
		return "", fmt.Errorf("scratch HSM %s: %w: HSM %s is initialized (cluster %s, %s, %s): a drill restores only into an uninitialized HSM, and this one may be in production elsewhere: check it, and zeroize it by hand if it is the scratch HSM (%s); it was not changed",
			addr, restore.ErrNotNew, h.Serial, orNone(h.ClusterID), plural(h.UserCount, "user"), plural(h.KeyCount, "key"), how)
	}
	return h.Serial, nil
}

// drillHoldings lists the users and keys of the restored scratch HSM as
// the cluster's crypto officer.
func drillHoldings(ctx context.Context, member *target) (*restore.Holdings, error) {
	cl, err := member.dialOne()
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	role, err := member.login(ctx, cl)
	if err == nil && role != hsmcore.CryptoOfficer {
		err = fmt.Errorf("%s is a %s; a drill needs a crypto officer", member.user, role)
	}
	if err != nil {
		return nil, fmt.Errorf("scratch HSM %s: %w", cl.addr, err)
	}
	defer cl.Logout(context.WithoutCancel(ctx)) //nolint:errcheck // the session also ends with the zeroization
	users, err := cl.Users(ctx)
	if err != nil {
		return nil, fmt.Errorf("scratch HSM %s: list users: %w", cl.addr, cl.explain(err))
	}
	keys, err := cl.Keys(ctx)
	if err != nil {
		return nil, fmt.Errorf("scratch HSM %s: list keys: %w", cl.addr, cl.explain(err))
	}
	return &restore.Holdings{Users: users, Keys: keys}, nil
}

// drillCleanup zeroizes the scratch HSM after a drill, if the restore
// left anything on it, under a deadline of its own that ctx's end does
// not cut short: it must be HSM serial, new (nothing to do) or initialized
// in the drilled cluster. It returns what it left (scratch…) and, if the
// HSM may still hold a copy of the cluster, an error that says so.
func drillCleanup(ctx context.Context, e *env, member *target, mfr *x509.CertPool, serial string) (string, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), drillCleanupTimeout)
	defer cancel()
	t := *member
	t.tls.ManufacturerRoots = mfr // new, or a member of the cluster
	cl, err := t.dialOne()
	if err != nil {
		return scratchUnknown, err
	}
	defer cl.Close()
	addr := cl.addr
	byHand := fmt.Sprintf("it may hold a restored copy of cluster %s: check it, and zeroize it by hand ('hsmbackup hsm zeroize --config CONFIG --cluster %s --addr %s --yes')", t.clusterID, t.clusterID, addr)
	h, err := cl.Health(ctx)
	if err != nil {
		return scratchUnknown, fmt.Errorf("scratch HSM %s: health: %w: %s", addr, cl.explain(err), byHand)
	}
	if h.Serial != serial {
		return scratchUnknown, fmt.Errorf("scratch HSM %s: it is HSM %s now, not HSM %s restored into: not zeroized: %s", addr, h.Serial, serial, byHand)
	}
	if isNew(h) {
		return scratchUnchanged, nil // the restore committed nothing
	}
	check := func(h api.Health) error {
		if h.Serial != serial || h.ClusterID != t.clusterID || !h.ClusterInitialized {
			return fmt.Errorf("it is HSM %s of cluster %q now, not HSM %s restored into", h.Serial, h.ClusterID, serial)
		}
		return nil
	}
	res, err := zeroizeHSM(ctx, &t, cl, check)
	if err != nil {
		return scratchLeft, fmt.Errorf("scratch HSM %w: %s", err, byHand) // err names the HSM
	}
	// The HSM now presents its device certificate: a new connection.
	if h, err = cl.Health(ctx); err != nil || !isNew(h) {
		if err == nil {
			err = errors.New("it is not new after the zeroization")
		}
		return scratchUnknown, fmt.Errorf("scratch HSM %s: health: %w: %s", addr, cl.explain(err), byHand)
	}
	e.log.Info("drill scratch HSM zeroized", "addr", addr, "serial", res.Serial, "cluster", res.ClusterID, "users", res.ErasedUsers, "keys", res.ErasedKeys)
	return scratchZeroized, nil
}
