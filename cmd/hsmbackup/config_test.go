package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const exampleConfig = `store: file://backups
keyring: keys/keyring
signing_key: /etc/hsmbackup/manifest.key
retention: {days: 90, keep_last: 3}
clusters:
  prod-1:
    members: ["10.0.0.1:2225", "10.0.0.2:2225"]
    customer_ca: prod-1/ca.pem
    cert: prod-1/client.pem
    key: prod-1/client.key
    user: backup-officer
    password_file: prod-1/password
    tags: {env: prod}
    retention: {days: 30, keep_last: 7}
`

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(exampleConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	// Relative paths are relative to the file; absolute ones stay.
	if want := "file://" + filepath.Join(dir, "backups"); cfg.Store != want {
		t.Errorf("store %q, want %q", cfg.Store, want)
	}
	if want := filepath.Join(dir, "keys/keyring"); cfg.Keyring != want {
		t.Errorf("keyring %q, want %q", cfg.Keyring, want)
	}
	if cfg.SigningKey != "/etc/hsmbackup/manifest.key" {
		t.Errorf("signing key %q", cfg.SigningKey)
	}
	cl := cfg.Clusters["prod-1"]
	if cl == nil || len(cl.Members) != 2 || cl.Key != filepath.Join(dir, "prod-1/client.key") ||
		cl.Tags["env"] != "prod" || cl.Retention == nil || *cl.Retention != (retentionConfig{30, 7}) {
		t.Fatalf("cluster prod-1: %+v", cl)
	}
	if cfg.Retention != (retentionConfig{90, 3}) {
		t.Errorf("retention %+v", cfg.Retention)
	}
}

func TestConfigRefused(t *testing.T) {
	for name, text := range map[string]string{
		"unknown key":        "stor: file:///x\n",
		"unknown nested key": "clusters:\n  a:\n    members: [x:1]\n    pasword_file: p\n",
		"no members":         "clusters:\n  a:\n    user: u\n",
		"empty cluster":      "clusters:\n  a:\n",
		"wrong type":         "retention: {days: many}\n",
		"two documents":      "store: a\n---\nstore: b\n",
	} {
		if _, err := parseConfig([]byte(text)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	path := filepath.Join(t.TempDir(), "big.yaml")
	if err := os.WriteFile(path, []byte("# "+strings.Repeat("x", maxConfigSize)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := loadConfig(path); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized config: %v", err)
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(exampleConfig))
	f.Add([]byte("clusters: {a: {members: [x]}}"))
	f.Add([]byte("&a [*a, *a]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := parseConfig(data)
		if err != nil {
			return
		}
		for id, cl := range cfg.Clusters {
			if cl == nil || len(cl.Members) == 0 {
				t.Fatalf("cluster %q accepted without members", id)
			}
		}
	})
}

func TestConfigUnknownSettingNamed(t *testing.T) {
	_, err := parseConfig([]byte("store: file:///x\nkeyrng: k\n"))
	if err == nil || !strings.Contains(err.Error(), `unknown setting "keyrng"`) || strings.Contains(err.Error(), "main.") {
		t.Fatalf("error %v", err)
	}
}

func TestNearestKey(t *testing.T) {
	known := []string{"store", "keyring", "signing_key", "password_file", "members", "user"}
	for _, tc := range []struct{ in, want string }{
		{"stor", "store"},
		{"keyrng", "keyring"},
		{"signing-key", "signing_key"},
		{"password", "password_file"},
		{"memebrs", "members"},
		{"usr", "user"},
		{"x", ""},
		{"frobnicate", ""},
	} {
		if got := nearest(tc.in, known); got != tc.want {
			t.Errorf("nearest(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestConfigProblemsAllReported(t *testing.T) {
	_, err := parseConfig([]byte("stor: x\nretention: {days: 5}\nclusters:\n  a:\n    members: [nohostport]\n"))
	ce, ok := err.(*configErrors)
	if !ok {
		t.Fatalf("error %v (%T), want *configErrors", err, err)
	}
	var got []string
	for _, p := range ce.problems {
		got = append(got, fmt.Sprintf("%d %s", p.line, p.path))
	}
	want := []string{"1 stor", "2 retention.days", "5 clusters.a.members[0]"}
	if !slices.Equal(got, want) {
		t.Fatalf("problems %q, want %q", got, want)
	}
}

func TestConfigScheduler(t *testing.T) {
	cfg, err := parseConfig([]byte("scheduler: {concurrency: 2, jitter: 10s}\nclusters:\n  c1: {members: [\"a:1\"], schedule: \"CRON_TZ=Europe/Paris @daily\"}\n"))
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.Scheduler.settings()
	if s.Concurrency != 2 || s.Jitter != 10*time.Second || s.LeaseDuration != 2*time.Minute || s.DrainTimeout != time.Minute {
		t.Errorf("settings %+v", s)
	}
	if cfg.Clusters["c1"].Schedule != "CRON_TZ=Europe/Paris @daily" {
		t.Errorf("schedule %q", cfg.Clusters["c1"].Schedule)
	}
	// 0 is a value of its own, not unset: no jitter, no waiting.
	cfg, err = parseConfig([]byte("scheduler: {jitter: 0s, drain_timeout: 0s}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s := cfg.Scheduler.settings(); s.Jitter != 0 || s.DrainTimeout != 0 || s.Concurrency != 4 || s.LeaseDuration != 2*time.Minute {
		t.Errorf("settings %+v, want jitter and drain timeout 0, the others their defaults", s)
	}
	_, err = parseConfig([]byte("scheduler:\n  concurrency: 0\n  jitter: 30\nclusters:\n  c1:\n    members: [\"a:1\"]\n    schedule: \"TZ=UTC 0 0 * * *\"\n  c2:\n    members: [\"a:1\"]\n    schedule: CRON_TZ=UTC\n  c3:\n    members: [\"a:1\"]\n    schedule: 0 0 31 2 *\n"))
	got := fmt.Sprint(err)
	for _, want := range []string{
		"config:2: scheduler.concurrency: 0: want 1 to 64",
		`config:3: scheduler.jitter: "30" is not a duration`,
		"config:7: clusters.c1.schedule: \"TZ=UTC 0 0 * * *\": the TZ= prefix is not supported: use CRON_TZ=",
		"config:10: clusters.c2.schedule: \"CRON_TZ=UTC\": CRON_TZ=ZONE must be followed by a space",
		"config:13: clusters.c3.schedule: \"0 0 31 2 *\": never fires",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in:\n%s", want, got)
		}
	}
}

func TestConfigDrill(t *testing.T) {
	cfg, err := parseConfig([]byte("clusters:\n  c1:\n    members: [\"10.0.0.1:2225\"]\n    drill: {schedule: \"CRON_TZ=Europe/Paris 0 3 * * 0\", hsm: \"10.0.9.1:2225\", claim: scratch.claim}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if d := cfg.Clusters["c1"].Drill; d == nil || d.Schedule != "CRON_TZ=Europe/Paris 0 3 * * 0" || d.HSM != "10.0.9.1:2225" {
		t.Fatalf("drill %+v", d)
	}
	_, err = parseConfig([]byte(`clusters:
  c1:
    members: ["10.0.0.1:2225"]
    drill:
      schedule: "0 0 31 2 *"
      hsm: 10.0.9.1
  c2:
    members: ["10.0.0.2:2225"]
    drill: {schedule: "@daily"}
  c3:
    members: ["10.0.0.3:2225"]
    drill: {hsm: "10.0.9.3:2225", adress: x}
`))
	got := fmt.Sprint(err)
	for _, want := range []string{
		`config:5: clusters.c1.drill.schedule: "0 0 31 2 *": never fires`,
		`config:6: clusters.c1.drill.hsm: "10.0.9.1": want HOST:PORT`,
		"config:9: clusters.c2.drill: no hsm (the scratch HSM's HOST:PORT the drill restores into)",
		"config:9: clusters.c2.drill: no claim (the scratch HSM's claim file, which hsm manufacture wrote: each drill claims the HSM anew)",
		`config:12: clusters.c3.drill.adress: unknown setting "adress"`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in:\n%s", want, got)
		}
	}
}

// An attacker, or a slip, names a production member as a cluster's
// scratch HSM, which the drill would restore into and zeroize: the
// config is refused, however the address is spelt, naming the member's
// cluster.
func TestConfigDrillNeverAProductionMember(t *testing.T) {
	for _, tc := range []struct{ name, member, hsm string }{
		{"the same address", "10.0.0.2:2225", "10.0.0.2:2225"},
		{"a port with a leading zero", "10.0.0.2:2225", "10.0.0.2:02225"},
		{"an IPv4-mapped IPv6 address", "10.0.0.2:2225", "[::ffff:10.0.0.2]:2225"},
		{"IPv6 spelt otherwise", "[2001:db8::1]:2225", "[2001:DB8:0:0::1]:2225"},
		{"a name in other case, with a final dot", "hsm-b.example.net:2225", "HSM-B.Example.Net.:2225"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			text := fmt.Sprintf("clusters:\n  prod:\n    members: [%q, %q]\n  staging:\n    members: [\"10.0.5.1:2225\"]\n    drill: {hsm: %q, claim: s.claim}\n", "10.0.0.1:2225", tc.member, tc.hsm)
			_, err := parseConfig([]byte(text))
			want := fmt.Sprintf("config:6: clusters.staging.drill.hsm: %q is a member of cluster prod: a drill restores into its scratch HSM and zeroizes it, so it must never be a production HSM", tc.hsm)
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("got %v, want %q", err, want)
			}
		})
	}
	// Its own cluster's member too.
	if _, err := parseConfig([]byte("clusters:\n  c1:\n    members: [\"10.0.0.1:2225\"]\n    drill: {hsm: \"10.0.0.1:2225\", claim: s.claim}\n")); err == nil || !strings.Contains(err.Error(), "is a member of cluster c1") {
		t.Fatalf("own member as scratch HSM: %v", err)
	}
	// Another port of the same host is another HSM.
	if _, err := parseConfig([]byte("clusters:\n  c1:\n    members: [\"10.0.0.1:2225\"]\n    drill: {hsm: \"10.0.0.1:2226\", claim: s.claim}\n")); err != nil {
		t.Fatalf("another port: %v", err)
	}
}
