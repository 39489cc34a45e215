package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/hsmbackup/hsmbackup/hsmcore/hsmtest"
)

// keys migrate as an operator runs it, between two clusters of two
// daemons each: a dry run, the move, a run again that skips, the report
// file, and the wrong inputs.
func TestKeysMigrate(t *testing.T) {
	const password = "correct horse battery staple"
	env := hsmtest.NewEnv(t)
	_, srcCfg := env.NewCluster(t, "prod", 2, password)
	_, dstCfg := env.NewCluster(t, "dr", 2, password)
	src, err := cluster.Open(context.Background(), srcCfg, "alice", password)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if _, err := src.GenerateKeys(context.Background(), []hsmcore.KeySpec{
		{Type: hsmcore.AES, Bits: 256, Label: "payments", Encrypt: true, Decrypt: true, Extractable: true},
		{Type: hsmcore.EC, Curve: "P-256", Label: "signer", Sign: true, Verify: true, Extractable: true},
		{Type: hsmcore.AES, Bits: 256, Label: "fixed", Encrypt: true},
	}); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	cert := env.CA.Client(t, "officer")
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, p("mfr.pem"), "CERTIFICATE", env.Mfr.Certificate().Raw, 0o644)
	writePEM(t, p("op.pem"), "CERTIFICATE", env.Op.Certificate().Raw, 0o644)
	writePEM(t, p("ca.pem"), "CERTIFICATE", env.CA.Cert.Raw, 0o644)
	writePEM(t, p("officer.crt"), "CERTIFICATE", cert.Certificate[0], 0o644)
	writePEM(t, p("officer.key"), "PRIVATE KEY", keyDER, 0o600)
	if err := os.WriteFile(p("alice.pw"), []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	entry := func(id string, members []string) string {
		return fmt.Sprintf("  %s:\n    members: [\"%s\"]\n    customer_ca: ca.pem\n    cert: officer.crt\n    key: officer.key\n    user: admin\n", id, strings.Join(members, `", "`))
	}
	cfg := "manufacturer_root: mfr.pem\noperator_root: op.pem\nclusters:\n" + entry("prod", srcCfg.Members) + entry("dr", dstCfg.Members)
	if err := os.WriteFile(p("config.yaml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	migrateArgs := func(extra ...string) []string {
		return append([]string{"--config", p("config.yaml"), "keys", "migrate", "--from", "prod", "--to", "dr", "--user", "alice", "--password-file", p("alice.pw")}, extra...)
	}

	out, _, err := run(context.Background(), migrateArgs("--dry-run")...)
	if err == nil || !strings.Contains(err.Error(), "1 of 3 keys refused") {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	if !strings.Contains(out, "prod to dr: 2 would move (dry run: nothing moved), 0 skipped (present), 1 refused\n") ||
		!regexp.MustCompile(`(?m)^\d+ +fixed +[0-9a-f]{6} +refused +- +not extractable$`).MatchString(out) {
		t.Fatalf("dry run output:\n%s", out)
	}
	out, _, _ = run(context.Background(), migrateArgs("--report", p("report.json"))...)
	if !strings.Contains(out, "prod to dr: 2 moved, 0 skipped (present), 1 refused\n") {
		t.Fatalf("migrate:\n%s", out)
	}
	var rep struct {
		From, To string
		Moved    int
		Keys     []hsmcore.Migrated
	}
	b, err := os.ReadFile(p("report.json"))
	if err != nil || json.Unmarshal(b, &rep) != nil || rep.From != "prod" || rep.To != "dr" || rep.Moved != 2 || len(rep.Keys) != 3 {
		t.Fatalf("report file: %v %+v\n%s", err, rep, b)
	}
	out, _, _ = run(context.Background(), migrateArgs("--label", "payments", "--json")...)
	var again struct {
		Moved, Skipped int
	}
	if err := json.Unmarshal([]byte(out), &again); err != nil || again.Moved != 0 || again.Skipped != 1 {
		t.Fatalf("again, --label payments --json: %v %+v\n%s", err, again, out)
	}
	// Under an rsa-aes transport key (RSA-3072), for destinations without
	// ML-KEM.
	if _, err := src.GenerateKeys(context.Background(), []hsmcore.KeySpec{{Type: hsmcore.AES, Bits: 128, Label: "legacy", Encrypt: true, Extractable: true}}); err != nil {
		t.Fatal(err)
	}
	out, _, _ = run(context.Background(), migrateArgs("--label", "legacy", "--mechanism", "rsa-aes")...)
	if !strings.Contains(out, "prod to dr: 1 moved, 0 skipped (present), 0 refused\n") {
		t.Fatalf("--mechanism rsa-aes:\n%s", out)
	}
	dst, err := cluster.Open(context.Background(), dstCfg, "alice", password)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	keys, err := dst.Keys(context.Background())
	if err != nil || len(keys) != 3 {
		t.Fatalf("the destination holds %d keys (%v), want 3", len(keys), err)
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--config", p("config.yaml"), "keys", "migrate", "--from", "prod", "--user", "alice"}, "--to is required"},
		{[]string{"--config", p("config.yaml"), "keys", "migrate", "--from", "prod", "--to", "prod", "--user", "alice"}, "--from and --to name the same cluster prod"},
		{[]string{"--config", p("config.yaml"), "keys", "migrate", "--from", "prod", "--to", "nope", "--user", "alice", "--password-file", p("alice.pw")}, `cluster "nope" is not configured`},
		{migrateArgs("--report", p("report.json")), "report.json already exists: not overwritten"},
		{migrateArgs("--mechanism", "aes-kwp"), "--mechanism aes-kwp: a transport key is hpke or rsa-aes"},
	} {
		if _, _, err := run(context.Background(), c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.args[3:], err, c.want)
		}
	}
}

// An offline migration as two operators run it, each with a config of
// their own cluster only: an offer prepared at the destination, a package
// written for it at the source, imported at the destination; a package
// imports once; and the wrong inputs.
func TestKeysOfflineMigration(t *testing.T) {
	const password = "correct horse battery staple"
	env := hsmtest.NewEnv(t)
	_, srcCfg := env.NewCluster(t, "prod", 2, password)
	_, dstCfg := env.NewCluster(t, "vault", 2, password)
	src, err := cluster.Open(context.Background(), srcCfg, "alice", password)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if _, err := src.GenerateKeys(context.Background(), []hsmcore.KeySpec{
		{Type: hsmcore.AES, Bits: 256, Label: "payments", Encrypt: true, Decrypt: true, Extractable: true},
		{Type: hsmcore.RSA, Bits: 2048, Label: "signer", Sign: true, Verify: true, Extractable: true},
		{Type: hsmcore.AES, Bits: 256, Label: "fixed", Encrypt: true},
	}); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	cert := env.CA.Client(t, "officer")
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, p("mfr.pem"), "CERTIFICATE", env.Mfr.Certificate().Raw, 0o644)
	writePEM(t, p("op.pem"), "CERTIFICATE", env.Op.Certificate().Raw, 0o644)
	writePEM(t, p("ca.pem"), "CERTIFICATE", env.CA.Cert.Raw, 0o644)
	writePEM(t, p("officer.crt"), "CERTIFICATE", cert.Certificate[0], 0o644)
	writePEM(t, p("officer.key"), "PRIVATE KEY", keyDER, 0o600)
	if err := os.WriteFile(p("alice.pw"), []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	config := func(name, id string, members []string) string {
		cfg := fmt.Sprintf("manufacturer_root: mfr.pem\noperator_root: op.pem\nclusters:\n  %s:\n    members: [\"%s\"]\n    customer_ca: ca.pem\n    cert: officer.crt\n    key: officer.key\n    user: alice\n",
			id, strings.Join(members, `", "`))
		if err := os.WriteFile(p(name), []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		return p(name)
	}
	at := func(cfg, id string, args ...string) []string {
		return append([]string{"--config", cfg, "keys"}, append(args, "--cluster", id, "--password-file", p("alice.pw"))...)
	}
	vault := func(args ...string) []string {
		return at(config("vault.yaml", "vault", dstCfg.Members), "vault", args...)
	}
	prod := func(args ...string) []string { return at(config("prod.yaml", "prod", srcCfg.Members), "prod", args...) }

	out, _, err := run(context.Background(), vault("import", "--prepare", "--out", p("offer.json"))...)
	if err != nil || !strings.Contains(out, "offer "+p("offer.json")+": a hpke transport key of HSM") || !strings.Contains(out, "next: carry it, with this cluster's customer CA, to the source") {
		t.Fatalf("prepare: %v\n%s", err, out)
	}
	export := func(extra ...string) []string {
		return prod(append([]string{"export", "--to", "hsmbackup", "--wrapping-key", p("offer.json"), "--destination-ca", p("ca.pem")}, extra...)...)
	}
	out, _, err = run(context.Background(), export("--out", p("dry"), "--dry-run")...)
	if err == nil || !strings.Contains(out, "prod for vault: 2 would be packed (dry run: nothing written), 1 refused\n") {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	if _, err := os.Stat(p("dry")); !os.IsNotExist(err) {
		t.Fatalf("a dry run wrote %s: %v", p("dry"), err)
	}
	out, _, err = run(context.Background(), export("--out", p("pkg"))...)
	if err == nil || !strings.Contains(err.Error(), "1 of 3 keys refused") || !strings.Contains(out, "prod for vault: 2 packed into "+p("pkg/package.json")+", 1 refused\n") {
		t.Fatalf("export: %v\n%s", err, out)
	}
	if fi, err := os.Stat(p("pkg/package.json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("package: %v %v", fi, err)
	}
	out, _, err = run(context.Background(), vault("import", "--in", p("pkg"), "--report", p("report.json"))...)
	if err == nil || !strings.Contains(out, "prod to vault: 2 moved, 0 skipped (present), 1 refused\n") ||
		!regexp.MustCompile(`(?m)^\d+ +fixed +[0-9a-f]{6} +refused +- +not extractable$`).MatchString(out) {
		t.Fatalf("import: %v\n%s", err, out)
	}
	dst, err := cluster.Open(context.Background(), dstCfg, "alice", password)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if keys, err := dst.Keys(context.Background()); err != nil || len(keys) != 2 {
		t.Fatalf("the destination holds %d keys (%v), want 2", len(keys), err)
	}

	other := hsmtest.NewEnv(t) // another customer CA
	writePEM(t, p("other-ca.pem"), "CERTIFICATE", other.CA.Cert.Raw, 0o644)
	for _, c := range []struct {
		args []string
		want string
	}{
		{vault("import", "--in", p("pkg")), "used already"},
		{prod("import", "--in", p("pkg")), "the package is for cluster vault, not prod"},
		{vault("import"), "give --prepare --out FILE (step 1) or --in DIR (step 2)"},
		{vault("import", "--prepare", "--in", p("pkg")), "not both"},
		{vault("import", "--prepare"), "--prepare needs --out FILE"},
		{vault("import", "--prepare", "--out", p("offer.json")), "already exists: not overwritten"},
		{vault("import", "--prepare", "--out", p("o2.json"), "--mechanism", "aes-kw"), "a transport key is hpke or rsa-aes"},
		{vault("import", "--in", p("nope")), "no such file"},
		{vault("import", "--in", p("alice.pw")), "package: invalid character"},
		{prod("export", "--to", "hsmbackup", "--wrapping-key", p("offer.json"), "--out", p("x")), "give its customer CA (--destination-ca FILE)"},
		{prod("export", "--to", "hsmbackup", "--wrapping-key", p("offer.json"), "--out", p("x"), "--destination-ca", p("other-ca.pem")), "offer of cluster vault: cluster certificate"},
		{prod("export", "--to", "hsmbackup", "--wrapping-key", p("report.json"), "--out", p("x")), "offer: json: unknown field"},
		{export("--out", p("x"), "--kid", "https://k"), "--kid is for a cloud"},
		{prod("export", "--to", "aws-kms", "--handle", "1", "--label", "payments", "--wrapping-key", p("offer.json"), "--out", p("x")), "--label is for --to hsmbackup"},
		{vault("export", "--to", "hsmbackup", "--wrapping-key", p("offer.json"), "--out", p("x"), "--destination-ca", p("ca.pem")), "the offer is this cluster's own (vault)"},
	} {
		if _, _, err := run(context.Background(), c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.args[3:], err, c.want)
		}
	}
	if keys, err := dst.Keys(context.Background()); err != nil || len(keys) != 2 {
		t.Fatalf("after the wrong inputs the destination holds %d keys (%v), want 2", len(keys), err)
	}
}
