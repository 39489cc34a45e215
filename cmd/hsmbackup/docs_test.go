package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/urfave/cli/v2"
)

// runDocs runs the app in-process with args, with the completion and man
// commands registered whether or not newApp registers them yet.
func runDocs(t testing.TB, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	app := newApp(&out, &errOut)
	for _, cmd := range []*cli.Command{completionCommand(), manCommand()} {
		if !slices.ContainsFunc(app.Commands, func(c *cli.Command) bool { return c.Name == cmd.Name }) {
			app.Commands = append(app.Commands, cmd)
		}
	}
	err = app.RunContext(context.Background(), append([]string{"hsmbackup"}, args...))
	return out.String(), errOut.String(), err
}

func mustRunDocs(t testing.TB, args ...string) string {
	t.Helper()
	out, errOut, err := runDocs(t, args...)
	if err != nil {
		t.Fatalf("hsmbackup %s: %v", strings.Join(args, " "), err)
	}
	if errOut != "" {
		t.Errorf("hsmbackup %s: stderr %q", strings.Join(args, " "), errOut)
	}
	return out
}

// completeWords runs the app as a completion script does: with the words typed
// so far and --generate-bash-completion. urfave/cli's default completer
// reads os.Args instead of the arguments given to Run (a TODO of its own),
// so os.Args is set to what the shell would pass for the duration; tests
// that call it must not run in parallel.
func completeWords(t *testing.T, words ...string) []string {
	t.Helper()
	args := append(append([]string{"hsmbackup"}, words...), "--generate-bash-completion")
	saved := os.Args
	os.Args = args
	defer func() { os.Args = saved }()
	return strings.Fields(mustRunDocs(t, args[1:]...))
}

func TestCompletionScripts(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish"} {
		t.Run(shell, func(t *testing.T) {
			out := mustRunDocs(t, "completion", shell)
			if !strings.Contains(out, "hsmbackup") {
				t.Errorf("script does not name hsmbackup:\n%s", out)
			}
			if strings.Contains(out, "$PROG") {
				t.Errorf("script still has $PROG:\n%s", out)
			}
			if shell == "fish" {
				// Every top-level command and a subcommand are listed.
				for _, want := range []string{"-a 'demo'", "-a 'masterkey'", "-a 'generate'", "-a 'completion'", "-l json"} {
					if !strings.Contains(out, want) {
						t.Errorf("fish script lacks %q", want)
					}
				}
			} else if !strings.Contains(out, "--generate-bash-completion") {
				t.Errorf("script does not ask hsmbackup for candidates:\n%s", out)
			}
		})
	}
}

func TestCompletionErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"completion", "powershell"}, []string{`completion: unknown shell "powershell"`, "bash, zsh, fish"}},
		{[]string{"completion"}, []string{"completion: name a shell", "bash, zsh, fish"}},
		{[]string{"completion", "bash", "zsh"}, []string{`completion: unexpected argument "zsh"`}},
		{[]string{"man", "extra"}, []string{`man: unexpected argument "extra"`}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			out, errOut, err := runDocs(t, tc.args...)
			if err == nil {
				t.Fatalf("succeeded; printed %q", out)
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
			if out != "" || errOut != "" {
				t.Errorf("printed stdout %q, stderr %q; want nothing", out, errOut)
			}
		})
	}
}

// TestCompletionProtocol checks what the bash and zsh scripts get when
// they run hsmbackup with --generate-bash-completion.
func TestCompletionProtocol(t *testing.T) {
	top := completeWords(t)
	for _, want := range []string{"demo", "hsm", "cluster", "masterkey", "completion", "man"} {
		if !slices.Contains(top, want) {
			t.Errorf("top level: %q lacks %q", top, want)
		}
	}
	if sub := completeWords(t, "masterkey"); !slices.Contains(sub, "generate") || !slices.Contains(sub, "rotate") || !slices.Contains(sub, "list") || slices.Contains(sub, "demo") {
		t.Errorf("masterkey: %q, want its subcommands", sub)
	}
	if sub := completeWords(t, "hsm", "authority"); !slices.Contains(sub, "create") {
		t.Errorf("hsm authority: %q, want create", sub)
	}
	if got := completeWords(t, "completion"); !slices.Equal(got, []string{"bash", "zsh", "fish"}) {
		t.Errorf("completion: %q, want the shells", got)
	}
	if flags := completeWords(t, "masterkey", "generate", "-"); !slices.Contains(flags, "--keyring") || !slices.Contains(flags, "--id") {
		t.Errorf("masterkey generate -: %q, want its flags", flags)
	}
}

// TestCompletionBashScript runs the bash script's completion function with
// hsmbackup replaced by a shell function that records how it was called.
func TestCompletionBashScript(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	dir := t.TempDir()
	script, calls := filepath.Join(dir, "hsmbackup.bash"), filepath.Join(dir, "calls")
	if err := os.WriteFile(script, []byte(mustRunDocs(t, "completion", "bash")), 0o644); err != nil {
		t.Fatal(err)
	}
	// The stub answers what hsmbackup would at the top level; the words
	// typed are "hsmbackup ma", so only "man" and "masterkey" remain. The
	// script runs it in a subshell with stderr discarded, so it records
	// its arguments in a file. No bash-completion package is loaded: the
	// script's fallback splits the words.
	prog := `
calls="$2"
source "$1"
complete -p hsmbackup
hsmbackup() { echo "$*" >>"$calls"; printf '%s\n' demo hsm cluster masterkey man; }
COMP_WORDS=(hsmbackup ma)
COMP_CWORD=1
COMP_LINE="hsmbackup ma"
COMP_POINT=${#COMP_LINE}
_hsmbackup_bash_autocomplete
printf 'reply: %s\n' "${COMPREPLY[@]}"
`
	cmd := exec.Command(bash, "--norc", "--noprofile", "-c", prog, "bash", script, calls)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || stderr.Len() > 0 {
		t.Fatalf("bash: %v\nstderr:\n%s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) == 0 || !strings.HasSuffix(lines[0], "-F _hsmbackup_bash_autocomplete hsmbackup") {
		t.Errorf("script does not register itself for hsmbackup:\n%s", out)
	}
	replies := lines[1:]
	slices.Sort(replies)
	if !slices.Equal(replies, []string{"reply: man", "reply: masterkey"}) {
		t.Errorf("completions of 'hsmbackup ma': %q, want man and masterkey", replies)
	}
	if got, err := os.ReadFile(calls); err != nil || string(got) != "--generate-bash-completion\n" {
		t.Errorf("hsmbackup called with %q (%v), want --generate-bash-completion once", got, err)
	}
}

func TestManPage(t *testing.T) {
	page := mustRunDocs(t, "man")
	if !strings.HasPrefix(page, ".TH hsmbackup 1") {
		t.Errorf("page does not start with a section 1 title line:\n%.200s", page)
	}
	if !strings.Contains(page, "back up, verify and restore HSM clusters") || !strings.Contains(page, "hardware\\-bound key") {
		t.Errorf("page lacks the app's usage or description")
	}
	var sections, subsections []string
	for _, line := range strings.Split(page, "\n") {
		if name, ok := strings.CutPrefix(line, ".SH "); ok {
			sections = append(sections, name)
		}
		if name, ok := strings.CutPrefix(line, ".SS "); ok {
			subsections = append(subsections, strings.Trim(name, `"`))
		}
	}
	for _, want := range []string{"NAME", "SYNOPSIS", "DESCRIPTION", "GLOBAL OPTIONS", "COMMANDS", "EXAMPLES", "EXIT STATUS", "ENVIRONMENT", "FILES"} {
		if !slices.Contains(sections, want) {
			t.Errorf("no section %s; sections %q", want, sections)
		}
	}
	app := newApp(nil, nil)
	app.Commands = append(app.Commands, completionCommand(), manCommand())
	for _, cmd := range app.Commands {
		if !slices.Contains(sections, strings.ToUpper(cmd.Name)) {
			t.Errorf("no section for command %s; sections %q", cmd.Name, sections)
		}
	}
	// One subsection per command path, named by the whole path: not two
	// ".SS create" for "backup create" and "hsm authority create".
	for _, n := range commandTree(app) {
		if got := slices.Index(subsections, "hsmbackup "+n.path); got < 0 {
			t.Errorf("no subsection for %q", n.path)
		}
	}
	seen := map[string]bool{}
	for _, s := range subsections {
		if seen[s] {
			t.Errorf("subsection %q twice", s)
		}
		seen[s] = true
	}
	for _, want := range []string{`.SS "hsmbackup masterkey generate"`, `.SS "hsmbackup hsm authority create"`, `.SS "hsmbackup backup create"`, `\fB\-\-json\fR`} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	// The man command is documented as defined, not as running it
	// changes it (with a help subcommand and flag of its own).
	if strings.Contains(page, `"hsmbackup man help"`) || strings.Contains(page, "show help") {
		t.Errorf("page documents help commands or flags")
	}

	for i, r := range page {
		if r >= utf8.RuneSelf {
			t.Errorf("non-ASCII %q at byte %d: roff readers may take it for Latin-1", r, i)
			break
		}
	}
	if got, want := roffASCII("a\u2026b\u00e9 \\fB\n"), "a\\[u2026]b\\[u00E9] \\fB\n"; got != want {
		t.Errorf("roffASCII = %q, want %q", got, want)
	}

	// Render it, where a formatter is installed.
	var render *exec.Cmd
	if groff, err := exec.LookPath("groff"); err == nil {
		render = exec.Command(groff, "-man", "-Tutf8", "-ww", "-z")
	} else if man, err := exec.LookPath("man"); err == nil {
		render = exec.Command(man, "-l", "-")
	}
	if render == nil {
		t.Log("neither groff nor man is installed: the page is not rendered")
		return
	}
	render.Stdin = strings.NewReader(page)
	render.Env = append(os.Environ(), "MANPAGER=cat", "PAGER=cat")
	if out, err := render.CombinedOutput(); err != nil || (strings.HasSuffix(render.Path, "groff") && len(out) > 0) {
		t.Errorf("%s: %v\n%s", strings.Join(render.Args, " "), err, out)
	}
}

func TestHelpExamples(t *testing.T) {
	app := newApp(nil, nil)
	for _, n := range commandTree(app) {
		if len(examples[n.path]) == 0 {
			continue
		}
		out := mustRunDocs(t, append(strings.Fields(n.path), "--help")...)
		if !strings.Contains(out, "Examples:") || !strings.Contains(out, examples[n.path][0].line) {
			t.Errorf("%s --help lacks its examples:\n%s", n.path, out)
		}
	}
	for path := range examples {
		if !slices.ContainsFunc(commandTree(app), func(n node) bool { return n.path == path }) {
			t.Errorf("examples for %q, which is no command", path)
		}
	}
}

// TestFishCompletionPaths: a command's flags are offered only under its
// whole path, so same-named subcommands keep their own.
func TestFishCompletionPaths(t *testing.T) {
	script := mustRunDocs(t, "completion", "fish")
	for _, want := range []string{
		`complete -c hsmbackup -n '__hsmbackup_at \'backup create\'' -l cluster -r`,
		`complete -c hsmbackup -n '__hsmbackup_at \'hsm authority create\'' -l kind -r`,
		`complete -c hsmbackup -f -n '__hsmbackup_at \'hsm authority\'' -a 'create'`,
	} {
		if !strings.Contains(script, want) {
			t.Errorf("fish script lacks %q", want)
		}
	}
	if strings.Contains(script, `'__hsmbackup_at \'hsm authority create\'' -l cluster`) {
		t.Error("hsm authority create is offered backup create's --cluster")
	}
	fish, err := exec.LookPath("fish")
	if err != nil {
		t.Log("fish is not installed: the script is not run")
		return
	}
	path := filepath.Join(t.TempDir(), "hsmbackup.fish")
	if err := os.WriteFile(path, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	complete := func(line string) string {
		out, err := exec.Command(fish, "--no-config", "-c", "source "+path+"; complete -C "+fishQuote(line)).CombinedOutput()
		if err != nil {
			t.Fatalf("fish: %v\n%s", err, out)
		}
		return string(out)
	}
	if got := complete("hsmbackup hsm authority create --"); !strings.Contains(got, "--kind") || strings.Contains(got, "--cluster") {
		t.Errorf("hsm authority create --: %q", got)
	}
	if got := complete("hsmbackup backup create --"); !strings.Contains(got, "--cluster") || strings.Contains(got, "--kind") {
		t.Errorf("backup create --: %q", got)
	}
	if got := complete("hsmbackup backup "); !strings.Contains(got, "prune") || strings.Contains(got, "authority") {
		t.Errorf("backup: %q", got)
	}
}
