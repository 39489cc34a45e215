package integration

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/hsmbackup/hsmbackup/internal/testenv"
)

// The section of README.md that TestReadmeClusterByHand follows.
const readmeClusterSection = "An HSM cluster by hand"

// TestReadmeClusterByHand follows README.md's "An HSM cluster by hand" as
// a new operator would who makes the customer CA with OpenSSL: the
// commands are read from README.md at test time, so the test fails when
// the README drifts from the binary. The section's first block is run in
// order in a temporary directory, each `hsmbackup cluster ca`,
// `client-cert` and `sign-csr` replaced by the OpenSSL lines of its second
// block that do the same; `hsm serve ... &` is started with the harness on
// a free loopback port (the README's fixed ports are replaced by the ones
// the daemons got), and cluster.yaml is written as the README's comment
// describes before `cluster add-member`. Then, with a config as docs/CLI.md
// describes and the keys made by the README's "Backups" lines, both members
// show the same state digest and the hand-built cluster is backed up and
// the backup verified. Last, an operator's plausible OpenSSL mistake: a
// client certificate from a second CA made with the same README lines
// (same name, other key) is refused with a message saying so.
func TestReadmeClusterByHand(t *testing.T) {
	t.Parallel()
	testenv.LookPath(t, "openssl")
	op := &operator{dir: t.TempDir(), bash: testenv.LookPath(t, "bash"),
		addrs: map[string]string{}, serials: map[string]string{}, devices: map[string]string{}}
	defer op.checkNoPassword(t)

	blocks := readmeBlocks(t, readmeClusterSection)
	if len(blocks) != 2 {
		t.Fatalf("README section %q: %d sh blocks, want 2 (the cluster, then the OpenSSL customer CA)", readmeClusterSection, len(blocks))
	}
	steps, opensslLines := blocks[0], blocks[1]

	// The OpenSSL lines, by the hsmbackup command each group replaces.
	replaces := map[string][]string{}
	for _, line := range opensslLines {
		switch {
		case strings.Contains(line, "cluster.csr"):
			replaces["cluster sign-csr"] = append(replaces["cluster sign-csr"], line)
		case strings.Contains(line, "client."):
			replaces["cluster client-cert"] = append(replaces["cluster client-cert"], line)
		default:
			replaces["cluster ca"] = append(replaces["cluster ca"], line)
		}
	}
	for _, cmd := range []string{"cluster ca", "cluster client-cert", "cluster sign-csr"} {
		if len(replaces[cmd]) == 0 {
			t.Fatalf("README section %q: no OpenSSL line does what `hsmbackup %s` does", readmeClusterSection, cmd)
		}
	}

	var activate, initCSR []string // the README's flags of these steps
	replaced := map[string]bool{}
	for _, line := range steps {
		words := shellWords(t, line)
		if words[0] != "hsmbackup" {
			op.shell(t, line)
			continue
		}
		if len(words) < 3 {
			t.Fatalf("README line %q: want hsmbackup GROUP COMMAND ...", line)
		}
		cmd := words[1] + " " + words[2]
		if lines, ok := replaces[cmd]; ok {
			for _, l := range lines {
				op.shell(t, l)
			}
			replaced[cmd] = true
			continue
		}
		args := words[1:]
		switch cmd {
		case "hsm serve":
			op.serve(t, line, args)
			continue
		case "cluster add-member":
			op.writeClusterYAML(t, flag(t, args, "--config"), activate, initCSR)
		}
		args = op.realAddrs(args)
		out := op.ok(t, args...)
		serial := op.serialAt(flagOr(args, "--addr"))
		switch {
		case cmd == "hsm manufacture":
			op.serials[flag(t, args, "--out")] = field(t, out, "serial")
		case cmd == "cluster init" && flagOr(args, "--csr-out") != "":
			initCSR = words[1:]
			wantLines(t, out, "attestation verified: serial "+serial+", ",
				"cluster CSR for "+testCluster+" from HSM "+serial+" written to "+flag(t, args, "--csr-out"))
		case cmd == "cluster init":
			wantLines(t, out, "cluster "+testCluster+" initialized on HSM "+serial)
		case cmd == "cluster activate":
			activate = words[1:]
			wantLines(t, out, "cluster "+testCluster+" activated on HSM "+serial+": crypto officer "+flag(t, args, "--user")+" can log in")
		case cmd == "hsm audit verify":
			if !regexp.MustCompile(`(?m)^audit log of ` + serial + `: \d+ entries, chain intact, head signed: entry \d+, hash [0-9a-f]{64}$`).MatchString(out) {
				t.Fatalf("hsm audit verify:\n%s", out)
			}
		case cmd == "cluster add-member":
			wantLines(t, out, "HSM "+serial+" at "+flag(t, args, "--addr")+" added to cluster "+testCluster+": attested, cloned by image")
		}
	}
	for cmd := range replaces {
		if !replaced[cmd] {
			t.Fatalf("README section %q: the OpenSSL lines replace `hsmbackup %s`, which its steps never run", readmeClusterSection, cmd)
		}
	}
	if len(op.members) != 2 || activate == nil || initCSR == nil {
		t.Fatalf("README section %q: want two HSMs served, cluster init and cluster activate; got members %v", readmeClusterSection, op.members)
	}

	// Both members, read with the officer's client certificate, are the
	// same cluster in the same state.
	member := func(addr string) []string {
		return []string{"--addr", addr, "--customer-ca", flag(t, activate, "--customer-ca"), "--cert", flag(t, activate, "--cert"),
			"--key", flag(t, activate, "--key"), "--cluster-id", flag(t, activate, "--cluster-id")}
	}
	var sts []status
	for _, addr := range op.members {
		out := op.ok(t, append([]string{"--json", "hsm", "status"}, member(addr)...)...)
		var st status
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("hsm status --json: %v\n%s", err, out)
		}
		if st.Serial != op.serialAt(addr) || st.ClusterID != testCluster || !st.ClusterInitialized || !st.Initialized || st.StateDigest == "" {
			t.Fatalf("hsm status of %s (HSM %s): %+v", addr, op.serialAt(addr), st)
		}
		sts = append(sts, st)
	}
	if sts[0].StateDigest != sts[1].StateDigest {
		t.Fatalf("members differ after add-member: %s has state digest %s, %s has %s",
			sts[0].Serial, sts[0].StateDigest, sts[1].Serial, sts[1].StateDigest)
	}

	// The hand-built cluster is usable: the README's backup lines, with a
	// config as docs/CLI.md describes.
	var created string
	for _, line := range readmeBlocks(t, "Backups")[0] {
		words := shellWords(t, line)
		args := words[1:]
		switch {
		case len(args) > 1 && (args[0] == "masterkey" || args[0] == "signing-key"):
			op.ok(t, args...)
		case slices.Contains(args, "create"):
			op.writeConfig(t, flag(t, args, "--config"), activate, initCSR, args)
			m := createdLine.FindStringSubmatch(op.ok(t, args...))
			if m == nil || m[2] != testCluster {
				t.Fatalf("backup create printed no line \"created ID: cluster %s, ...\"", testCluster)
			}
			created = m[1]
		case slices.Contains(args, "verify"):
			if created == "" {
				t.Fatal("README's Backups: backup verify before backup create")
			}
			args[len(args)-1] = created // the README's example id
			out := op.ok(t, args...)
			t.Logf("the hand-built cluster's backup: %s", strings.TrimSpace(out))
			if !strings.Contains(out, created) || !strings.Contains(out, "OK") ||
				(slices.Contains(args, "--deep") && !strings.Contains(out, "inner header")) {
				t.Fatalf("backup verify --deep %s:\n%s", created, out)
			}
		}
	}
	if created == "" {
		t.Fatal("README's Backups: no backup create line")
	}

	// A mistake an operator could make with OpenSSL: running the CA lines
	// again (here in another directory) makes another CA of the same name,
	// and a client certificate from it is refused, before any connection,
	// by a message that says which CA it is not usable with.
	other := filepath.Join(op.dir, "again")
	if err := os.Mkdir(other, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"cluster ca", "cluster client-cert"} {
		for _, l := range replaces[cmd] {
			op.shellIn(t, other, l)
		}
	}
	args := append([]string{"hsm", "audit", "verify"}, member(op.members[0])...)
	args = append(args, "--user", flag(t, activate, "--user"), "--password-file", flag(t, activate, "--password-file"),
		"--manufacturer-root", flag(t, initCSR, "--manufacturer-root"), "--operator-root", flag(t, initCSR, "--operator-root"))
	setFlag(args, "--cert", filepath.Join(other, flag(t, activate, "--cert")))
	setFlag(args, "--key", filepath.Join(other, flag(t, activate, "--key")))
	res := op.run(t, args...)
	caName := regexp.MustCompile(`/CN=([^']+)'`).FindStringSubmatch(strings.Join(replaces["cluster ca"], "\n"))
	if caName == nil {
		t.Fatal("README's OpenSSL CA lines name no /CN=")
	}
	t.Logf("a client certificate from another CA of the same name: %s", strings.TrimSpace(res.Stderr))
	wantRefusal(t, res, "client certificate", fmt.Sprintf("not usable with customer CA %q", caName[1]), "unknown authority")
	if st := op.ok(t, append([]string{"--json", "hsm", "status"}, member(op.members[0])...)...); !strings.Contains(st, sts[0].StateDigest) {
		t.Fatalf("the refused audit verify changed the HSM:\n%s", st)
	}
}

// operator runs the README's commands in its directory.
type operator struct {
	dir, bash string
	addrs     map[string]string // the README's listen address → the daemon's
	serials   map[string]string // device directory → serial
	devices   map[string]string // the daemon's address → device directory
	members   []string          // the daemons' addresses, in the order started
	outputs   []string
}

func (op *operator) run(t testing.TB, args ...string) Result {
	t.Helper()
	res := RunWith(t, RunOptions{Dir: op.dir}, args...)
	op.outputs = append(op.outputs, res.Stdout, res.Stderr)
	return res
}

// ok runs hsmbackup, which must succeed with no warning or error on
// stderr (informational log lines are fine), and returns its stdout.
func (op *operator) ok(t testing.TB, args ...string) string {
	t.Helper()
	res := op.run(t, args...)
	if res.Code != 0 || strings.Contains(res.Stderr, "level=WARN") || strings.Contains(res.Stderr, "level=ERROR") {
		t.Fatalf("hsmbackup %s: %s", strings.Join(args, " "), res)
	}
	return res.Stdout
}

// shell runs a line of the README that is not hsmbackup's with bash, as an
// operator pasting it would.
func (op *operator) shell(t *testing.T, line string) {
	t.Helper()
	op.shellIn(t, op.dir, line)
}

func (op *operator) shellIn(t *testing.T, dir, line string) {
	t.Helper()
	cmd := exec.Command(op.bash, "-euo", "pipefail", "-c", line)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("README line %q: %v\n%s", line, err, out)
	}
}

// serve starts the README's `hsm serve --device DIR --listen ADDR &` with
// the harness, on a free port in place of ADDR.
func (op *operator) serve(t *testing.T, line string, args []string) {
	t.Helper()
	if args[len(args)-1] != "&" || len(args) != 7 {
		t.Fatalf("README line %q: want hsmbackup hsm serve --device DIR --listen ADDR &", line)
	}
	device, listen := flag(t, args, "--device"), flag(t, args, "--listen")
	if _, ok := op.addrs[listen]; ok {
		t.Fatalf("README line %q: a second daemon on %s", line, listen)
	}
	addr := StartDaemon(t, filepath.Join(op.dir, device))
	op.addrs[listen], op.devices[addr] = addr, device
	op.members = append(op.members, addr)
}

// realAddrs replaces the README's listen addresses in args by the
// daemons'.
func (op *operator) realAddrs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if real, ok := op.addrs[a]; ok {
			a = real
		}
		out[i] = a
	}
	return out
}

// serialAt is the serial of the HSM served on addr, "" if none.
func (op *operator) serialAt(addr string) string {
	return op.serials[op.devices[addr]]
}

// clusterEntry is the YAML of cluster-1 as activate's flags name its
// files: what the README's comment before add-member lists.
func (op *operator) clusterEntry(t testing.TB, activate []string, members ...string) string {
	t.Helper()
	return fmt.Sprintf(`clusters:
  %s:
    members: [%s]
    customer_ca: %s
    cert: %s
    key: %s
    user: %s
    password_file: %s
`, flag(t, activate, "--cluster-id"), strings.Join(members, ", "), flag(t, activate, "--customer-ca"),
		flag(t, activate, "--cert"), flag(t, activate, "--key"), flag(t, activate, "--user"), flag(t, activate, "--password-file"))
}

func (op *operator) roots(t testing.TB, initCSR []string) string {
	t.Helper()
	return fmt.Sprintf("manufacturer_root: %s\noperator_root: %s\n",
		flag(t, initCSR, "--manufacturer-root"), flag(t, initCSR, "--operator-root"))
}

// writeClusterYAML writes the config add-member reads, with what the
// README says it names (the members so far, the files of activate and the
// roots of init) and nothing else.
func (op *operator) writeClusterYAML(t *testing.T, name string, activate, initCSR []string) {
	t.Helper()
	if activate == nil || initCSR == nil {
		t.Fatalf("README: cluster add-member before cluster init and activate")
	}
	section := readmeSection(t, readmeClusterSection)
	for _, key := range []string{name, "members", "customer_ca", "cert", "key", "user", "password_file", "roots"} {
		if !strings.Contains(section, key) {
			t.Fatalf("README section %q no longer says %s names %q", readmeClusterSection, name, key)
		}
	}
	op.writeFile(t, name, op.roots(t, initCSR)+op.clusterEntry(t, activate, op.members[0]))
}

// writeConfig writes the config of the README's backup lines as
// docs/CLI.md describes it: a file store, the keyring and signing key the
// lines before made, the roots and the cluster with both members.
func (op *operator) writeConfig(t testing.TB, name string, activate, initCSR, create []string) {
	t.Helper()
	if flag(t, create, "--cluster") != flag(t, activate, "--cluster-id") {
		t.Fatalf("README: backup create of cluster %s, but the cluster made by hand is %s", flag(t, create, "--cluster"), flag(t, activate, "--cluster-id"))
	}
	var keyring, signingKey, publicKey string
	for _, line := range readmeBlocks(t, "Backups")[0] {
		words := shellWords(t, line)
		switch {
		case slices.Contains(words, "masterkey"):
			keyring = flag(t, words, "--keyring")
		case slices.Contains(words, "signing-key"):
			signingKey, publicKey = flag(t, words, "--key"), flag(t, words, "--pub")
		}
	}
	if keyring == "" || signingKey == "" {
		t.Fatal("README's Backups: no masterkey generate or signing-key generate line")
	}
	op.writeFile(t, name, fmt.Sprintf("store: file://%s\nkeyring: %s\nsigning_key: %s\npublic_key: %s\n",
		filepath.Join(op.dir, "store"), keyring, signingKey, publicKey)+op.roots(t, initCSR)+op.clusterEntry(t, activate, op.members...))
}

func (op *operator) writeFile(t testing.TB, name, data string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(op.dir, name), []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// checkNoPassword fails t if a password file's first line appears in any
// output or daemon log.
func (op *operator) checkNoPassword(t *testing.T) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(op.dir, "*.pw"))
	logs := append([]string(nil), op.outputs...)
	for _, addr := range op.members {
		logs = append(logs, DaemonLogIfRunning(addr))
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Error(err)
			continue
		}
		pw, _, _ := strings.Cut(string(data), "\n")
		if pw == "" {
			continue
		}
		for _, s := range logs {
			if strings.Contains(s, pw) {
				t.Errorf("the password in %s appears in output or logs:\n%s", f, s)
			}
		}
	}
}

// readmeSection returns the text of README.md's "## title" section.
func readmeSection(t testing.TB, title string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(data), "\n## "+title+"\n")
	if !ok {
		t.Fatalf("README.md has no section %q", title)
	}
	if i := strings.Index(rest, "\n## "); i >= 0 {
		rest = rest[:i]
	}
	return rest
}

// readmeBlocks returns the commands of each ```sh block of README.md's
// section title: continuation lines joined, comments and blank lines
// dropped.
func readmeBlocks(t testing.TB, title string) [][]string {
	t.Helper()
	var blocks [][]string
	var cur []string
	in, pending := false, ""
	for line := range strings.SplitSeq(readmeSection(t, title), "\n") {
		switch {
		case !in && line == "```sh":
			in, cur = true, nil
		case in && line == "```":
			if pending != "" {
				t.Fatalf("README section %q: a block ends in a continuation line", title)
			}
			in, blocks = false, append(blocks, cur)
		case in:
			l := strings.TrimSpace(line)
			if pending == "" && (l == "" || strings.HasPrefix(l, "#")) {
				continue
			}
			if s, ok := strings.CutSuffix(l, "\\"); ok {
				pending += s
				continue
			}
			cur, pending = append(cur, pending+l), ""
		}
	}
	if in {
		t.Fatalf("README section %q: an unterminated block", title)
	}
	return blocks
}

// shellWords splits a README line into words as sh would, for the lines
// that are one simple command: single and double quotes and backslashes;
// a trailing & is a word of its own. Any other shell syntax fails t, as
// the harness runs these commands itself.
func shellWords(t testing.TB, line string) []string {
	t.Helper()
	var words []string
	var w strings.Builder
	inWord := false
	var quote rune
	for i, r := range line {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				w.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				words, inWord = append(words, w.String()), false
				w.Reset()
			}
		case r == '&' && strings.TrimSpace(line[i+1:]) == "":
			if inWord {
				words, inWord = append(words, w.String()), false
				w.Reset()
			}
			words = append(words, "&")
		case strings.ContainsRune("|;<>()$`\\&*?", r):
			if strings.HasPrefix(line, "hsmbackup ") {
				t.Fatalf("README line %q: shell syntax %q the test does not run", line, r)
			}
			return []string{line} // not hsmbackup: bash runs it
		default:
			w.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		t.Fatalf("README line %q: unterminated quote", line)
	}
	if inWord {
		words = append(words, w.String())
	}
	if len(words) == 0 {
		t.Fatalf("README: an empty line")
	}
	return words
}

// flag returns the value of the flag name in args, failing t if absent.
func flag(t testing.TB, args []string, name string) string {
	t.Helper()
	v := flagOr(args, name)
	if v == "" {
		t.Fatalf("%s: no %s", strings.Join(args, " "), name)
	}
	return v
}

// flagOr returns the value of the flag name in args, "" if absent.
func flagOr(args []string, name string) string {
	for i, a := range args {
		if a == name && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
	}
	return ""
}

// setFlag sets the value of the flag name in args, which must be there.
func setFlag(args []string, name, value string) {
	for i, a := range args {
		if a == name && i+1 < len(args) {
			args[i+1] = value
			return
		}
	}
	panic(errors.New("integration: setFlag: no " + name))
}
