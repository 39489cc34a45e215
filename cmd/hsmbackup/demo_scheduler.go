package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/hsmbackup/hsmbackup/internal/pki"
)

// The scheduler step's second cluster, its schedule and how long it runs.
const (
	demoCluster2      = "cluster-demo-2"
	demoFleetSchedule = "*/2 * * * * *"
	demoFleetRun      = 7 * time.Second
)

// runFleet runs the scheduler as an operator would, `hsmbackup scheduler
// run` on a config file, in this process for a few seconds: the demo's
// cluster and a second one (HSM F) backed up every two seconds, and one
// restore drill of the demo's cluster into a scratch HSM (S). Then it
// prints `hsmbackup scheduler status`. It has a file store of its own in
// the workspace.
func (d *demo) runFleet(ctx context.Context) error {
	e, err := d.serveHSM("F", d.op)
	if err != nil {
		return err
	}
	scratch, err := d.serveHSM("S", d.op)
	if err != nil {
		return err
	}
	cfg := d.memberTarget("", "").tls
	cfg.Addr, cfg.ClusterID = e.addr, demoCluster2
	officer2 := newPassword()
	if _, _, err := cluster.Bootstrap(ctx, cluster.BootstrapConfig{
		Client: cfg,
		Challenge: hsmcore.ChallengeOptions{ManufacturerRoots: d.mfrRoots, OperatorRoots: d.opRoots,
			Expect: hsmcore.Expectation{Class: demoClass, Manufacturer: demoManufacturer, Operator: demoOperator, MinFirmware: demoFirmware}},
		Sign: d.ca.SignCSR, Officer: demoOfficer, Password: officer2,
	}); err != nil {
		return fmt.Errorf("cluster %s on HSM F: %w", demoCluster2, err)
	}
	d.out.printf("  HSM F          cluster %s initialized on it (attested, certificate from the customer CA)\n", demoCluster2)
	d.out.printf("  HSM S          scratch HSM for the drill: same class, manufacturer, operator; uninitialized\n")

	path, err := d.writeFleetConfig(e, scratch, officer2)
	if err != nil {
		return err
	}
	d.out.printf("  config         %s: clusters %s (A, B) and %s (F), schedule %q,\n", filepath.Join(filepath.Base(filepath.Dir(path)), filepath.Base(path)), demoClusterID, demoCluster2, demoFleetSchedule)
	d.out.printf("                 a daily drill of %s into S; `hsmbackup scheduler run` for %s\n", demoClusterID, demoFleetRun)

	runCtx, cancel := context.WithTimeout(ctx, demoFleetRun)
	defer cancel()
	var logs bytes.Buffer
	err = newApp(io.Discard, &logs).RunContext(runCtx, []string{"hsmbackup", "--config", path,
		"scheduler", "run", "--listen", "", "--replica", "demo"})
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("scheduler run: %w\n%s", err, logs.String())
	}
	backups, slots, drill := fleetLog(logs.Bytes())
	for _, id := range []string{demoClusterID, demoCluster2} {
		if backups[id] < 2 || slots[id] != backups[id] {
			return fmt.Errorf("cluster %s: %d backups for %d slots in %s:\n%s", id, backups[id], slots[id], demoFleetRun, logs.String())
		}
	}
	d.out.printf("  ran            %d backups of %s, %d of %s, one a slot\n",
		backups[demoClusterID], demoClusterID, backups[demoCluster2], demoCluster2)
	if drill == "" {
		return fmt.Errorf("no drill ran:\n%s", logs.String())
	}
	d.out.printf("  drill          %s\n", drill)

	var status, errOut bytes.Buffer
	if err := newApp(&status, &errOut).RunContext(ctx, []string{"hsmbackup", "--config", path, "scheduler", "status"}); err != nil {
		return fmt.Errorf("scheduler status: %w: %s", err, errOut.String())
	}
	d.out.printf("  status         hsmbackup scheduler status (any machine with the config can ask):\n")
	for _, line := range strings.Split(strings.TrimRight(status.String(), "\n"), "\n") {
		d.out.printf("    %s\n", line)
	}
	return nil
}

// writeFleetConfig writes the scheduler step's files into the workspace:
// the certificates and keys the config names (keys and passwords 0600),
// a signing key of its own, and the config. It returns the config's path.
func (d *demo) writeFleetConfig(e, scratch *demoHSM, officer2 string) (string, error) {
	dir := filepath.Join(d.ws, "fleet")
	if err := os.MkdirAll(filepath.Join(dir, "store"), 0o700); err != nil {
		return "", err
	}
	for _, f := range []struct {
		name string
		der  []byte
	}{
		{"customer-ca.crt", d.ca.Cert.Raw},
		{"manufacturer-root.crt", d.mfr.Certificate().Raw},
		{"operator-root.crt", d.op.Certificate().Raw},
	} {
		if err := pki.WriteCertificate(filepath.Join(dir, f.name), f.der); err != nil {
			return "", err
		}
	}
	if err := pki.SaveClient(filepath.Join(dir, "client"), d.clientCert); err != nil {
		return "", err
	}
	for name, pw := range map[string]string{"officer.pw": d.officerPassword, "officer2.pw": officer2} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(pw+"\n"), 0o600); err != nil {
			return "", err
		}
	}
	claim, err := d.claims.For(scratch.id.Serial)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "scratch.claim"), claim.Marshal(), 0o600); err != nil {
		return "", err
	}
	if _, err := backup.GenerateSigningKey(filepath.Join(dir, "signing.key"), filepath.Join(dir, "signing.pub")); err != nil {
		return "", err
	}
	entry := func(members []string, password string) map[string]any {
		return map[string]any{"members": members, "customer_ca": "customer-ca.crt", "cert": "client.crt", "key": "client.key",
			"user": demoOfficer, "password_file": password, "schedule": demoFleetSchedule}
	}
	c1 := entry([]string{d.a.addr, d.b.addr}, "officer.pw")
	c1["drill"] = map[string]any{"schedule": "@daily", "hsm": scratch.addr, "claim": "scratch.claim"}
	cfg := map[string]any{
		"store": "file://store", "keyring": filepath.Join(d.ws, "master.keyring"),
		"signing_key": "signing.key", "public_key": "signing.pub",
		"manufacturer_root": "manufacturer-root.crt", "operator_root": "operator-root.crt",
		"scheduler": map[string]any{"concurrency": 2, "jitter": "0s", "lease_duration": "3s", "drain_timeout": "10s"},
		"clusters":  map[string]any{demoClusterID: c1, demoCluster2: entry([]string{e.addr}, "officer2.pw")},
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "config.yaml")
	return path, os.WriteFile(path, b, 0o600)
}

// fleetLog reads the daemon's JSON log lines: the backups per cluster,
// the distinct slots they were for, and a line about the drill ("" if
// none ran).
func fleetLog(logs []byte) (backups, slots map[string]int, drill string) {
	backups, slots = map[string]int{}, map[string]int{}
	seen := map[[2]string]bool{}
	for _, line := range bytes.Split(logs, []byte("\n")) {
		var l struct {
			Msg     string  `json:"msg"`
			Cluster string  `json:"cluster"`
			Slot    string  `json:"slot"`
			Backup  string  `json:"backup"`
			Restore float64 `json:"restore_seconds"`
			Users   int     `json:"users"`
			Keys    int     `json:"keys"`
			Err     string  `json:"err"`
		}
		if json.Unmarshal(line, &l) != nil {
			continue
		}
		switch l.Msg {
		case "backup done":
			backups[l.Cluster]++
			if k := [2]string{l.Cluster, l.Slot}; !seen[k] {
				seen[k] = true
				slots[l.Cluster]++
			}
		case "drill passed":
			drill = fmt.Sprintf("passed: %s restored into S in %.2f s (a measured RTO), %d users and %d keys as recorded, S zeroized",
				l.Backup, l.Restore, l.Users, l.Keys)
		case "drill failed":
			drill = "FAILED: " + l.Err
		}
	}
	return backups, slots, drill
}
