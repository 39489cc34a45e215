package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
)

// The manual page and the fish completion script are generated from the
// command tree here rather than by urfave/cli, whose generators name a
// subcommand by its last word only: "backup create" and "hsm authority
// create" were both ".SS create", and fish offered the flags of one for
// the other.

// example is one example of a command line, shown in its help and the
// man page's EXAMPLES.
type example struct {
	what, line string
}

// examples are the examples of each command path.
var examples = map[string][]example{
	"demo": {
		{"the narrated tour on throw-away HSMs and a file store", "hsmbackup demo"},
		{"the same against S3, keeping what it made", "hsmbackup demo --keep --store 's3://backups/demo?endpoint=http://127.0.0.1:9000'"},
	},
	"hsm authority create": {
		{"a manufacturer's root", "hsmbackup hsm authority create --kind manufacturer --name acme --out roots/mfr"},
	},
	"hsm manufacture": {
		{"a new HSM certified by both roots", "hsmbackup hsm manufacture --class hsm2m.medium --firmware 2.1.0 --manufacturer roots/mfr --operator roots/op --out hsm-a"},
	},
	"hsm serve": {
		{"serve it on a port of this host", "hsmbackup hsm serve --device hsm-a --listen 127.0.0.1:2225"},
	},
	"hsm status": {
		{"a new HSM, trusted through the manufacturer's root", "hsmbackup hsm status --addr 127.0.0.1:2225 --manufacturer-root roots/mfr/root.crt"},
		{"a member of a configured cluster", "hsmbackup --config config.yaml hsm status --addr 10.0.1.10:2225"},
	},
	"hsm zeroize": {
		{"return a member of a configured cluster to its factory state", "hsmbackup --config config.yaml hsm zeroize --addr 10.0.3.10:2225 --yes"},
	},
	"hsm audit verify": {
		{"check the audit log of a member", "hsmbackup --config config.yaml hsm audit verify --addr 10.0.1.10:2225"},
	},
	"cluster ca": {
		{"a customer CA in customerCA/", "hsmbackup cluster ca --out customerCA"},
	},
	"cluster client-cert": {
		{"a client certificate for the backup service", "hsmbackup cluster client-cert --ca customerCA --name backup-officer --out officer"},
	},
	"cluster sign-csr": {
		{"sign the CSR of 'cluster init' step 1", "hsmbackup cluster sign-csr --ca customerCA --csr cluster.csr --cluster-id cluster-1 --out cluster.crt"},
	},
	"cluster init": {
		{"step 1: attest the HSM, write its cluster CSR", "hsmbackup cluster init --addr 127.0.0.1:2225 --manufacturer-root mfr.crt --operator-root op.crt --cluster-id cluster-1 --csr-out cluster.csr"},
		{"step 2: install the signed certificate", "hsmbackup cluster init --addr 127.0.0.1:2225 --manufacturer-root mfr.crt --cert cluster.crt --customer-ca customerCA/ca.crt"},
	},
	"cluster activate": {
		{"set the first crypto officer (password from a 0600 file)", "hsmbackup cluster activate --addr 127.0.0.1:2225 --customer-ca customerCA/ca.crt --cert officer.crt --key officer.key --cluster-id cluster-1 --user admin --password-file admin.pw"},
	},
	"cluster add-member": {
		{"attest a new HSM and clone the cluster into it", "hsmbackup --config config.yaml cluster add-member --cluster cluster-1 --addr 127.0.0.1:2226"},
	},
	"masterkey generate": {
		{"a new keyring with its first key", "hsmbackup masterkey generate --keyring keyring --id backup-master"},
	},
	"masterkey rotate": {
		{"a new version of the current key", "hsmbackup masterkey rotate --keyring keyring"},
	},
	"masterkey list": {
		{"the keyring's keys, as JSON", "hsmbackup masterkey list --keyring keyring --json"},
	},
	"masterkey generate-hpke": {
		{"a key pair for a disaster-recovery site", "hsmbackup masterkey generate-hpke --key dr.key --pub dr.pub"},
	},
	"masterkey generate-hsm": {
		{"an AES key in a cluster, owned by crypto user keys", "hsmbackup masterkey generate-hsm --config config.yaml --cluster keys-1 --user keys --password-file keys.pw"},
	},
	"signing-key generate": {
		{"the manifest signing key and its public key", "hsmbackup signing-key generate --key manifest.key --pub manifest.pub"},
	},
	"backup create": {
		{"back up a configured cluster, tagged", "hsmbackup --config config.yaml backup create --cluster cluster-1 --tag env=prod"},
	},
	"backup list": {
		{"the READY backups of one cluster", "hsmbackup --config config.yaml backup list --cluster cluster-1 --state READY"},
	},
	"backup describe": {
		{"a backup's manifest, as stored", "hsmbackup --config config.yaml backup describe --json backup-20261124T101500Z-abcdefghij"},
	},
	"backup verify": {
		{"every layer, the inner header too", "hsmbackup --config config.yaml backup verify --deep backup-20261124T101500Z-abcdefghij"},
		{"with the public key only", "hsmbackup backup verify --offline --store file:///srv/backups --public-key manifest.pub backup-20261124T101500Z-abcdefghij"},
	},
	"backup delete": {
		{"delete (restorable for 7 days)", "hsmbackup --config config.yaml backup delete backup-20261124T101500Z-abcdefghij"},
	},
	"backup restore-deleted": {
		{"bring it back", "hsmbackup --config config.yaml backup restore-deleted backup-20261124T101500Z-abcdefghij"},
	},
	"backup tag": {
		{"set one tag, remove another", "hsmbackup --config config.yaml backup tag backup-20261124T101500Z-abcdefghij --set env=prod --remove temp"},
	},
	"backup set-never-expires": {
		{"pin a backup", "hsmbackup --config config.yaml backup set-never-expires backup-20261124T101500Z-abcdefghij"},
	},
	"backup copy": {
		{"copy to a second region, for its own HPKE key", "hsmbackup --config config.yaml backup copy backup-20261124T101500Z-abcdefghij --to s3://dr-backups/prod --to-hpke dr.pub"},
	},
	"backup prune": {
		{"what retention would change", "hsmbackup --config config.yaml backup prune --dry-run"},
	},
	"scheduler check": {
		{"each cluster's next runs, from a time before a DST change", "hsmbackup scheduler check --config config.yaml --now 2026-10-31T12:00:00Z"},
	},
	"restore": {
		{"check a restore into a new HSM without changing it", "hsmbackup --config config.yaml restore --backup backup-20261124T101500Z-abcdefghij --to 10.0.3.10:2225 --dry-run"},
		{"restore a cluster of two new HSMs", "hsmbackup --config config.yaml restore --backup backup-20261124T101500Z-abcdefghij --to 10.0.3.10:2225 --to 10.0.3.11:2225"},
	},
	"scheduler drill": {
		{"prove the newest backup of a cluster restorable, in its scratch HSM", "hsmbackup --config config.yaml scheduler drill --cluster cluster-1"},
	},
	"completion": {
		{"complete in the running bash", "source <(hsmbackup completion bash)"},
	},
	"man": {
		{"read this page", "hsmbackup man | man -l -"},
	},
}

// environment documents the environment variables hsmbackup reads.
var environment = []struct{ name, what string }{
	{"HSMBACKUP_CONFIG", "the config file, when --config is not given"},
	{"HSMBACKUP_STORE", "the store URL, when --store is not given; it wins over the config file's store"},
	{"HSMBACKUP_PASSWORD_FILE", "the password file, when --password-file is not given; it wins over the config file's password_file"},
	{passwordEnv, "the password itself, when no password file is given (passwords are never taken as arguments)"},
	{"AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN", "S3 credentials"},
	{"AWS_PROFILE, AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE", "the AWS profile and its files"},
	{"AWS_REGION, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL", "the S3 region and endpoint, unless the store URL names them"},
}

// files documents the files hsmbackup reads and writes.
var files = []struct{ name, what string }{
	{"config.yaml", "the config file (--config): store, master keys, signing key, roots, clusters; relative paths in it are relative to it (docs/CLI.md)"},
	{"keyring", "the master keyring, mode 0600 (masterkey generate)"},
	{"*.key", "private keys (manifest signing key, client certificate keys, HPKE keys, CA keys): mode 0600, refused otherwise"},
	{"password files", "the first line is the password; mode 0600"},
	{"DIR of file://DIR", "the file store: clusters/ID/backups/BACKUP/{image,manifest.json}"},
	{"the device directory", "a software HSM's sealed state, device key and audit log (hsm manufacture, hsm serve)"},
	{"~/.aws/credentials, ~/.aws/config", "S3 credentials and settings of AWS profiles"},
}

// node is a command at its path in the tree.
type node struct {
	path string // "backup create"
	cmd  *cli.Command
}

// commandTree returns app's commands, depth first, each with its path;
// hidden commands and help commands are left out.
func commandTree(app *cli.App) []node {
	var out []node
	var walk func(prefix string, cmds []*cli.Command)
	walk = func(prefix string, cmds []*cli.Command) {
		for _, c := range cmds {
			if c.Hidden || c.Name == "help" {
				continue
			}
			p := strings.TrimSpace(prefix + " " + c.Name)
			out = append(out, node{p, c})
			walk(p, c.Subcommands)
		}
	}
	walk("", app.Commands)
	return out
}

// addExamples appends each command's examples to its help description.
func addExamples(app *cli.App) {
	for _, n := range commandTree(app) {
		ex := examples[n.path]
		if len(ex) == 0 {
			continue
		}
		var b strings.Builder
		if n.cmd.Description != "" {
			b.WriteString(n.cmd.Description + "\n\n")
		}
		b.WriteString("Examples:\n")
		for _, e := range ex {
			fmt.Fprintf(&b, "   # %s\n   %s\n", e.what, e.line)
		}
		n.cmd.Description = strings.TrimSuffix(b.String(), "\n")
	}
}

// manPage renders app's manual page, section manSection.
func manPage(app *cli.App) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w(".TH %s %d \"\" \"%s %s\" \"User Commands\"\n", app.Name, manSection, app.Name, app.Version)
	w(".SH NAME\n%s \\- %s\n", app.Name, roffText(app.Usage))
	w(".SH SYNOPSIS\n.B %s\n[\\fIglobal options\\fR] \\fIcommand\\fR [\\fIcommand options\\fR] [\\fIarguments\\fR ...]\n", app.Name)
	w(".SH DESCRIPTION\n%s\n", roffParagraphs(stripExamples(app.Description)))
	w(".SH GLOBAL OPTIONS\n")
	manFlags(&b, app.Flags)
	w(".SH COMMANDS\n")
	for _, n := range commandTree(app) {
		if !strings.Contains(n.path, " ") {
			w(".SH %s\n", strings.ToUpper(n.path))
		}
		w(".SS \"%s %s\"\n", app.Name, n.path)
		w("%s\n", roffText(n.cmd.Usage))
		if n.cmd.ArgsUsage != "" {
			w(".PP\nArguments: \\fI%s\\fR\n", roffText(n.cmd.ArgsUsage))
		}
		if d := stripExamples(n.cmd.Description); d != "" {
			w(".PP\n%s\n", roffParagraphs(d))
		}
		if len(n.cmd.Flags) > 0 {
			manFlags(&b, n.cmd.Flags)
		}
	}
	w(".SH EXAMPLES\n")
	for _, n := range commandTree(app) {
		for _, e := range examples[n.path] {
			w(".PP\n%s:\n.RS\n.nf\n%s\n.fi\n.RE\n", roffText(upperFirst(e.what)), roffText(e.line))
		}
	}
	w(".SH EXIT STATUS\n")
	for _, s := range exitCodesByCode() {
		w(".TP\n.B %d\n%s (JSON code \\fI%s\\fR)\n", s.code, roffText(s.meaning), roffText(s.name))
	}
	w(".SH ENVIRONMENT\n")
	for _, v := range environment {
		w(".TP\n.B %s\n%s\n", roffText(v.name), roffText(v.what))
	}
	w(".SH FILES\n")
	for _, f := range files {
		w(".TP\n.I %s\n%s\n", roffText(f.name), roffText(f.what))
	}
	w(".SH SEE ALSO\nThe project's docs: CLI.md (config file, commands, decisions), CLUSTER.md, STORAGE.md, FORMATS.md, ERRORS.md.\n")
	return roffASCII(b.String())
}

// manFlags writes flags as a tagged list, in the order defined.
func manFlags(b *strings.Builder, flags []cli.Flag) {
	for _, f := range flags {
		df, ok := f.(cli.DocGenerationFlag)
		if !ok || f.Names()[0] == "help" {
			continue
		}
		placeholder, usage := unquoteUsage(df.GetUsage())
		var names []string
		for _, n := range f.Names() {
			dash := "--"
			if len(n) == 1 {
				dash = "-"
			}
			names = append(names, "\\fB"+roffText(dash+n)+"\\fR")
		}
		head := strings.Join(names, ", ")
		if df.TakesValue() {
			if placeholder == "" {
				placeholder = "value"
			}
			head += " \\fI" + roffText(placeholder) + "\\fR"
		}
		def := df.GetDefaultText()
		if def == "" {
			def = df.GetValue()
		}
		if df.TakesValue() && def != "" && def != "0" && def != "[]" && def != `""` {
			usage += " (default: " + def + ")"
		}
		if env := df.GetEnvVars(); len(env) > 0 {
			usage += " [$" + strings.Join(env, ", $") + "]"
		}
		fmt.Fprintf(b, ".TP\n%s\n%s\n", head, roffText(usage))
	}
}

// stripExamples drops the "Examples:" block addExamples added to a help
// description: the man page has a section of its own for them.
func stripExamples(d string) string {
	if i := strings.Index(d, "Examples:\n"); i >= 0 {
		return strings.TrimSpace(d[:i])
	}
	return d
}

// roffText escapes text for a roff line: backslashes, and a leading '.' or
// '\” that would be read as a request.
func roffText(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

// roffParagraphs writes text whose paragraphs are separated by blank lines
// as roff paragraphs; lines indented in the text stay as they are.
func roffParagraphs(text string) string {
	var out []string
	for i, para := range strings.Split(strings.TrimSpace(text), "\n\n") {
		if i > 0 {
			out = append(out, ".PP")
		}
		lines := strings.Split(para, "\n")
		indented := slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, "   ") })
		if indented {
			out = append(out, ".nf")
		}
		for _, l := range lines {
			out = append(out, roffText(l))
		}
		if indented {
			out = append(out, ".fi")
		}
	}
	return strings.Join(out, "\n")
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// fishCompletion returns the fish script: each command's subcommands and
// flags are offered only once the whole path to it has been typed.
func fishCompletion(app *cli.App) string {
	var b strings.Builder
	name := app.Name
	fmt.Fprintf(&b, "# fish completion for %s; install it with\n#   %s completion fish > ~/.config/fish/completions/%s.fish\n\n", name, name, name)
	// __NAME_at tells whether the command path typed so far (the words
	// that name commands, in order) is its argument.
	fmt.Fprintf(&b, "function __%s_at\n    set -l tree", name)
	for _, p := range fishTree(app) {
		b.WriteString(" " + fishQuote(p))
	}
	b.WriteString("\n    set -l path\n" +
		"    for w in (commandline -opc)[2..-1]\n" +
		"        string match -q -- '-*' $w; and continue\n" +
		"        if contains -- (string join ' ' $path $w) $tree\n" +
		"            set path $path $w\n" +
		"        end\n" +
		"    end\n" +
		"    set -l got (string join ' ' $path)\n" +
		"    test \"$got\" = \"$argv[1]\"\n" +
		"end\n\n")
	cond := func(path string) string {
		return fmt.Sprintf("__%s_at %s", name, fishQuote(path))
	}
	// The top level: global flags and commands.
	fishFlags(&b, name, cond(""), app.Flags)
	for _, c := range app.Commands {
		if !c.Hidden && c.Name != "help" {
			fmt.Fprintf(&b, "complete -c %s -f -n %s -a %s -d %s\n", name, fishQuote(cond("")), fishQuote(c.Name), fishQuote(c.Usage))
		}
	}
	for _, n := range commandTree(app) {
		for _, s := range n.cmd.Subcommands {
			if !s.Hidden && s.Name != "help" {
				fmt.Fprintf(&b, "complete -c %s -f -n %s -a %s -d %s\n", name, fishQuote(cond(n.path)), fishQuote(s.Name), fishQuote(s.Usage))
			}
		}
		fishFlags(&b, name, cond(n.path), n.cmd.Flags)
	}
	return b.String()
}

// fishTree returns every command path, each with its words joined by a
// space, for __NAME_path.
func fishTree(app *cli.App) []string {
	var out []string
	for _, n := range commandTree(app) {
		out = append(out, n.path)
	}
	return out
}

func fishFlags(b *strings.Builder, name, cond string, flags []cli.Flag) {
	for _, f := range flags {
		df, ok := f.(cli.DocGenerationFlag)
		if !ok {
			continue
		}
		_, usage := unquoteUsage(df.GetUsage())
		fmt.Fprintf(b, "complete -c %s -n %s", name, fishQuote(cond))
		for _, n := range f.Names() {
			if len(n) == 1 {
				fmt.Fprintf(b, " -s %s", n)
			} else {
				fmt.Fprintf(b, " -l %s", n)
			}
		}
		if df.TakesValue() {
			b.WriteString(" -r")
		} else {
			b.WriteString(" -f")
		}
		fmt.Fprintf(b, " -d %s\n", fishQuote(usage))
	}
}

// fishQuote quotes s for fish: single quotes, with \ and ' escaped.
func fishQuote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// unquoteUsage returns a flag usage's placeholder (the first `quoted`
// word) and the usage without the quotes, as urfave/cli's help reads it.
func unquoteUsage(usage string) (placeholder, text string) {
	i := strings.IndexByte(usage, '`')
	if i < 0 {
		return "", usage
	}
	j := strings.IndexByte(usage[i+1:], '`')
	if j < 0 {
		return "", usage
	}
	name := usage[i+1 : i+1+j]
	return name, usage[:i] + name + usage[i+2+j:]
}
