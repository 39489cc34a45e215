package integration

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/audit"
	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/store/storeurl"
)

// drillReport is the result line of `scheduler drill --json`.
type drillReport struct {
	MessageType    string  `json:"message_type"`
	Cluster        string  `json:"cluster_id"`
	BackupID       string  `json:"backup_id"`
	Addr           string  `json:"addr"`
	Serial         string  `json:"serial"`
	RestoreSeconds float64 `json:"restore_seconds"`
	Users          int     `json:"users"`
	Keys           int     `json:"keys"`
	OK             bool    `json:"ok"`
	Reason         string  `json:"reason"`
	Scratch        string  `json:"scratch"`
}

// drillConfig writes the service's config with a drill: section for the
// cluster, whose scratch HSM is hsm, as name, and returns its path. If
// newHSM made hsm, the section names its claim file, relative to the
// config's directory, as an operator would write it.
func (s *service) drillConfig(t *testing.T, name, hsm string) string {
	t.Helper()
	data, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	drill := map[string]string{"schedule": "0 3 * * 0", "hsm": hsm}
	if claim, ok := s.c.claims[hsm]; ok {
		rel, err := filepath.Rel(s.dir, claim)
		if err != nil {
			t.Fatal(err)
		}
		drill["claim"] = rel
	}
	cfg["clusters"].(map[string]any)[testCluster].(map[string]any)["drill"] = drill
	if data, err = yaml.Marshal(cfg); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(s.dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// drill runs `scheduler drill --json` with config and returns its exit
// code, its report and its stderr.
func (s *service) drill(t *testing.T, config string) (int, drillReport, string) {
	t.Helper()
	res := s.run(t, "--config", config, "--json", "scheduler", "drill", "--cluster", testCluster)
	lines := strings.Split(strings.TrimSpace(res.Stdout), "\n")
	var rep drillReport
	if err := json.Unmarshal([]byte(lines[0]), &rep); err != nil || rep.MessageType != "result" || rep.Cluster != testCluster {
		t.Fatalf("scheduler drill --json: no report first (%v): %s", err, res)
	}
	if want := 1 + min(res.Code, 1); len(lines) != want { // a failure adds its error line
		t.Fatalf("scheduler drill --json: %d lines, want %d: %s", len(lines), want, res)
	}
	return res.Code, rep, res.Stderr
}

// wantNew fails t unless the HSM on addr is uninitialized, as from the
// factory: no users, no keys, no cluster.
func (c *cluster) wantNew(t *testing.T, addr string) {
	t.Helper()
	h := c.health(t, addr)
	if h.Initialized || h.ClusterInitialized || h.ClusterID != "" || h.UserCount != 0 || h.KeyCount != 0 {
		t.Fatalf("HSM %s is not new: %+v", addr, h)
	}
}

// sealed returns the sealed state file of the device in dir: if it did
// not change, the HSM did not.
func sealed(t *testing.T, dir string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "device.sealed"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// resign changes backup id's manifest in the service's file store and
// signs it again with its signing key, as only the backup service could.
func (s *service) resign(t *testing.T, id string, change func(*backup.Manifest)) {
	t.Helper()
	key, err := backup.LoadSigningKey(s.signingKey)
	if err != nil {
		t.Fatal(err)
	}
	st, err := storeurl.Open(s.store, storeurl.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	repo := backup.Repo{Store: st}
	m, err := backup.Describe(ctx, repo, testCluster, id)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Verify(key.Public().(ed25519.PublicKey)); err != nil {
		t.Fatal(err)
	}
	change(m)
	if err := m.Sign(key); err != nil {
		t.Fatal(err)
	}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, repo.ObjectKey(testCluster, id, backup.ManifestObject), bytes.NewReader(b), store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestDrill: a drill restores the newest backup into the scratch HSM,
// finds the users and keys its manifest records, zeroizes the scratch HSM
// (for good: a restart finds it new, and its audit log names the officer
// who zeroized it) and reports the restore time; the production member is
// not touched, and the scratch HSM serves the next drill.
func TestDrill(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.addAppKeys(t)
	s := newService(t, c, "file://"+filepath.Join(c.dir, "store"))
	s.create(t)
	id := s.create(t) // the newest
	prod := c.health(t, c.addr)
	prodSealed := sealed(t, c.device)
	scratchDir := filepath.Join(c.dir, "scratch")
	scratch := c.newHSM(t, "scratch", filepath.Join(c.dir, "op"), testFirmware)
	serial := c.health(t, scratch).Serial
	cfg := s.drillConfig(t, "drill.yaml", scratch)

	code, rep, stderr := s.drill(t, cfg)
	if code != 0 || !rep.OK || rep.Reason != "" {
		t.Fatalf("drill: exit %d, %+v\n%s", code, rep, stderr)
	}
	if rep.BackupID != id || rep.Addr != scratch || rep.Serial != serial || rep.Users != 2 || rep.Keys != 2 || rep.Scratch != "zeroized" {
		t.Fatalf("report %+v, want backup %s restored into %s (HSM %s), 2 users, 2 keys, zeroized", rep, id, scratch, serial)
	}
	if rep.RestoreSeconds <= 0 || rep.RestoreSeconds > RunTimeout.Seconds() {
		t.Fatalf("restore time %gs", rep.RestoreSeconds)
	}
	c.wantNew(t, scratch)

	// The text report, by the next drill into the same scratch HSM.
	res := s.run(t, "--config", cfg, "scheduler", "drill", "--cluster", testCluster)
	line := regexp.MustCompile(`^drill of ` + testCluster + ` passed: backup ` + id + ` restored into scratch HSM ` + serial + ` at ` + regexp.QuoteMeta(scratch) +
		` in \d+(\.\d+)?m?s; it held 2 users and 2 keys, as the manifest records; scratch HSM zeroized\n$`)
	if res.Code != 0 || !line.MatchString(res.Stdout) {
		t.Fatalf("drill (text): %s", res)
	}
	c.wantNew(t, scratch)

	// Persisted: the scratch daemon restarted finds its HSM zeroized.
	if code := Stop(t, scratch); code != 0 {
		t.Fatalf("scratch daemon exited %d", code)
	}
	RestartDaemon(t, scratch)
	c.wantNew(t, scratch)
	// Its audit log records each zeroization, by the cluster's officer.
	f, err := os.Open(filepath.Join(scratchDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	entries, err := audit.Decode(f)
	f.Close()
	if err == nil {
		err = audit.Verify(entries, nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	var zeroized []string
	for _, e := range entries {
		if e.Op == "device.zeroize" {
			zeroized = append(zeroized, e.Actor+" "+e.Result)
		}
	}
	if want := []string{"admin started", "admin ok", "admin started", "admin ok"}; !slices.Equal(zeroized, want) {
		t.Fatalf("scratch audit log: zeroizations %q, want %q", zeroized, want)
	}

	// The production member was never touched.
	c.wantUnchanged(t, c.addr, prod)
	if !bytes.Equal(sealed(t, c.device), prodSealed) {
		t.Fatal("the production member's sealed state changed")
	}
}

// TestDrillFailures: every way a drill fails says why, exits with the
// status of the failure, and leaves the scratch HSM uninitialized, or, if
// it was not a new HSM, exactly as it was.
func TestDrillFailures(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.addAppKeys(t)
	s := newService(t, c, "file://"+filepath.Join(c.dir, "store"))
	op := filepath.Join(c.dir, "op")
	scratchDir := filepath.Join(c.dir, "scratch")
	scratch := c.newHSM(t, "scratch", op, testFirmware)
	cfg := s.drillConfig(t, "drill.yaml", scratch)
	prod := c.health(t, c.addr)
	prodSealed := sealed(t, c.device)

	// An attacker (or a slip) names a production member as the scratch
	// HSM: the config is refused, by the drill as by every command.
	t.Run("production member as scratch HSM", func(t *testing.T) {
		host, port, _ := strings.Cut(c.addr, ":")
		for _, addr := range []string{c.addr, host + ":0" + port} {
			bad := s.drillConfig(t, "bad.yaml", addr)
			for _, args := range [][]string{{"scheduler", "drill", "--cluster", testCluster}, {"backup", "list"}} {
				res := s.run(t, append([]string{"--config", bad}, args...)...)
				want := fmt.Sprintf("clusters.%s.drill.hsm: %q is a member of cluster %s: a drill restores into its scratch HSM and zeroizes it, so it must never be a production HSM", testCluster, addr, testCluster)
				if res.Code != 2 || !strings.Contains(res.Stderr, want) || res.Stdout != "" {
					t.Fatalf("%s with drill hsm %s: %s\nwant exit 2 and %q", args[0], addr, res, want)
				}
			}
		}
		c.wantUnchanged(t, c.addr, prod)
	})

	// The manifest records users and keys the image does not hold: the
	// drill restores, finds the difference, exits 4, and zeroizes the
	// scratch HSM all the same.
	t.Run("inventory mismatch", func(t *testing.T) {
		id := s.create(t)
		s.resign(t, id, func(m *backup.Manifest) {
			m.Inventory.Users = append(m.Inventory.Users, hsmcore.UserInfo{Name: "ghost", Role: hsmcore.CryptoUser})
			slices.SortFunc(m.Inventory.Users, func(a, b hsmcore.UserInfo) int { return strings.Compare(a.Name, b.Name) })
		})
		code, rep, stderr := s.drill(t, cfg)
		if code != 4 || rep.OK || rep.BackupID != id || rep.Scratch != "zeroized" || rep.Users != 2 || rep.Keys != 2 ||
			!strings.Contains(rep.Reason, "the restored HSM does not hold what the backup's inventory records: 1 user missing: ghost (CU)") {
			t.Fatalf("exit %d, %+v\n%s", code, rep, stderr)
		}
		if want := "hsmbackup: scheduler drill: scratch HSM " + scratch + ": backup " + id + ": the restored HSM does not hold what the backup's inventory records: 1 user missing: ghost (CU)"; lastLine(stderr) != want {
			t.Fatalf("error %q, want %q", lastLine(stderr), want)
		}
		c.wantNew(t, scratch)
	})

	t.Run("no inventory", func(t *testing.T) {
		id := s.create(t)
		s.resign(t, id, func(m *backup.Manifest) { m.Inventory = nil })
		before := sealed(t, scratchDir)
		code, rep, stderr := s.drill(t, cfg)
		if code != 1 || rep.OK || rep.BackupID != id || rep.Scratch != "unchanged" || rep.Serial != "" ||
			!strings.Contains(rep.Reason, "records no inventory of its content") {
			t.Fatalf("exit %d, %+v\n%s", code, rep, stderr)
		}
		if !bytes.Equal(sealed(t, scratchDir), before) {
			t.Fatal("the scratch HSM changed")
		}
	})

	// A byte flipped in the newest backup's image: the drill takes it
	// (not an older, good one), fails its verification as it streams,
	// exits 4, and leaves the scratch HSM's sealed state as it was.
	t.Run("corrupted newest backup", func(t *testing.T) {
		s.create(t)
		id := s.create(t)
		path := s.object(id, backup.ImageObject)
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		bad := bytes.Clone(data)
		bad[len(bad)/2] ^= 0x10
		if err := os.WriteFile(path, bad, 0o600); err != nil {
			t.Fatal(err)
		}
		defer os.WriteFile(path, data, 0o600)
		before := sealed(t, scratchDir)
		code, rep, stderr := s.drill(t, cfg)
		if code != 4 || rep.OK || rep.BackupID != id || rep.Scratch != "unchanged" || !strings.Contains(rep.Reason, "image object does not match its manifest") {
			t.Fatalf("exit %d, %+v\n%s", code, rep, stderr)
		}
		// The object is checked as it streams into the scratch HSM, which
		// the error names; the scratch HSM changed nothing.
		if want := "hsmbackup: scheduler drill: target " + scratch + ": backup " + id + ": image object does not match its manifest"; lastLine(stderr) != want {
			t.Fatalf("error %q, want %q", lastLine(stderr), want)
		}
		c.wantNew(t, scratch)
		if !bytes.Equal(sealed(t, scratchDir), before) {
			t.Fatal("the scratch HSM changed")
		}
	})

	// The scratch HSM holds a restored copy of the cluster (a failed
	// drill, or a restore by hand): refused and left as it is, exit 5;
	// the zeroization by hand the error suggests clears it.
	t.Run("initialized scratch HSM", func(t *testing.T) {
		id := s.create(t)
		s.cli(t, c.restoreArgs(id, scratch)...)
		before := sealed(t, scratchDir)
		code, rep, stderr := s.drill(t, cfg)
		if code != 5 || rep.OK || rep.Scratch != "unchanged" ||
			!strings.Contains(rep.Reason, "target is not a new HSM: HSM "+c.health(t, scratch).Serial+" is initialized (cluster "+testCluster+", 2 users, 2 keys)") ||
			!strings.Contains(rep.Reason, "zeroize it by hand") {
			t.Fatalf("exit %d, %+v\n%s", code, rep, stderr)
		}
		if !bytes.Equal(sealed(t, scratchDir), before) {
			t.Fatal("the initialized scratch HSM changed")
		}
		out := s.cli(t, "hsm", "zeroize", "--cluster", testCluster, "--addr", scratch, "--yes")
		wantLines(t, out, "zeroized HSM ")
		c.wantNew(t, scratch)
	})

	// An HSM of another cluster (another customer CA) as scratch HSM: it
	// presents a certificate the drill does not trust; refused, untouched.
	t.Run("scratch HSM of another cluster", func(t *testing.T) {
		other := c.newHSM(t, "other", op, testFirmware)
		c.initOther(t, other, "cluster-other")
		before := sealed(t, filepath.Join(c.dir, "other"))
		code, rep, stderr := s.drill(t, s.drillConfig(t, "other.yaml", other))
		if code != 5 || rep.OK || rep.Scratch != "unchanged" || !strings.Contains(rep.Reason, "presents neither a device certificate of the manufacturer root nor the certificate of cluster "+testCluster) {
			t.Fatalf("exit %d, %+v\n%s", code, rep, stderr)
		}
		if !bytes.Equal(sealed(t, filepath.Join(c.dir, "other")), before) {
			t.Fatal("the other cluster's HSM changed")
		}
	})

	c.wantUnchanged(t, c.addr, prod)
	if !bytes.Equal(sealed(t, c.device), prodSealed) {
		t.Fatal("the production member's sealed state changed")
	}
}

// initOther initializes the new HSM on addr (newHSM made it) as the one
// member of cluster id, with a customer CA of its own and its claim file,
// as its owner would.
func (c *cluster) initOther(t *testing.T, addr, id string) {
	t.Helper()
	csr, crt := filepath.Join(c.dir, id+".csr"), filepath.Join(c.dir, id+".crt")
	claim := c.claims[addr] // newHSM made it
	c.run(t, "cluster", "init", "--addr", addr, "--claim", claim, "--manufacturer-root", c.mfrRoot, "--operator-root", c.opRoot, "--cluster-id", id, "--csr-out", csr)
	ca := newOpenSSLCA(t, c.dir, id+" CA")
	ca.Sign(t, csr, crt)
	c.run(t, "cluster", "init", "--addr", addr, "--claim", claim, "--manufacturer-root", c.mfrRoot, "--cert", crt, "--customer-ca", ca.Cert)
	cert, key := ca.Client(t, id+"-officer")
	c.run(t, "cluster", "activate", "--addr", addr, "--customer-ca", ca.Cert, "--cert", cert, "--key", key, "--cluster-id", id,
		"--user", "owner", "--password-file", c.passwordFile)
}
