package main

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/urfave/cli/v2"
)

// The completion scripts follow the ones urfave/cli v2.27.7 ships in its
// repository, autocomplete/bash_autocomplete and autocomplete/zsh_autocomplete
// (https://github.com/urfave/cli/tree/v2.27.7/autocomplete), with the
// program name written in for $PROG and their functions named after it, so
// that they do not replace those of another program's script. Both run the
// command line typed so far with --generate-bash-completion appended, and
// the app (EnableBashCompletion) answers with one candidate a line.
//
// The bash script adds one thing: where the bash-completion package is not
// installed, it falls back to the words as bash split them instead of
// failing, so that completion works on a bare bash too.

// bashCompletion is the script 'hsmbackup completion bash' prints.
const bashCompletion = `# bash completion for hsmbackup; load it with
#   source <(hsmbackup completion bash)

# Macs have bash3 for which the bash-completion package doesn't include
# _init_completion. This is a minimal version of that function; without
# bash-completion at all, it takes the words as bash split them.
_hsmbackup_init_completion() {
  COMPREPLY=()
  if declare -F _get_comp_words_by_ref >/dev/null 2>&1; then
    _get_comp_words_by_ref "$@" cur prev words cword
  else
    words=("${COMP_WORDS[@]}")
    cword=$COMP_CWORD
    cur="${COMP_WORDS[COMP_CWORD]}"
  fi
}

_hsmbackup_bash_autocomplete() {
  if [[ "${COMP_WORDS[0]}" != "source" ]]; then
    local cur opts base words cword
    COMPREPLY=()
    cur="${COMP_WORDS[COMP_CWORD]}"
    if declare -F _init_completion >/dev/null 2>&1; then
      _init_completion -n "=:" || return
    else
      _hsmbackup_init_completion -n "=:" || return
    fi
    words=("${words[@]:0:$cword}")
    if [[ "$cur" == "-"* ]]; then
      requestComp="${words[*]} ${cur} --generate-bash-completion"
    else
      requestComp="${words[*]} --generate-bash-completion"
    fi
    opts=$(eval "${requestComp}" 2>/dev/null)
    COMPREPLY=($(compgen -W "${opts}" -- ${cur}))
    return 0
  fi
}

complete -o bashdefault -o default -o nospace -F _hsmbackup_bash_autocomplete hsmbackup
`

// zshCompletion is the script 'hsmbackup completion zsh' prints.
const zshCompletion = `#compdef hsmbackup
# zsh completion for hsmbackup; load it, after compinit, with
#   source <(hsmbackup completion zsh)

_hsmbackup_zsh_autocomplete() {
  local -a opts
  local cur
  cur=${words[-1]}
  if [[ "$cur" == "-"* ]]; then
    opts=("${(@f)$(${words[@]:0:#words[@]-1} ${cur} --generate-bash-completion)}")
  else
    opts=("${(@f)$(${words[@]:0:#words[@]-1} --generate-bash-completion)}")
  fi

  if [[ "${opts[1]}" != "" ]]; then
    _describe 'values' opts
  else
    _files
  fi
}

compdef _hsmbackup_zsh_autocomplete hsmbackup
`

// completionShells are the shells 'hsmbackup completion' has a script
// for, in the order help and errors name them.
var completionShells = []string{"bash", "zsh", "fish"}

// completionCommand prints a shell completion script.
func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script (bash, zsh or fish)",
		UsageText: "hsmbackup completion bash|zsh|fish",
		Description: "Prints to stdout a script that completes hsmbackup's commands and flags\n" +
			"as you type. Load it in the running shell, or install it\n" +
			"where the shell looks for completions:\n\n" +
			"   bash: source <(hsmbackup completion bash)\n" +
			"         (or save it as /etc/bash_completion.d/hsmbackup)\n" +
			"   zsh:  source <(hsmbackup completion zsh)   (after compinit)\n" +
			"   fish: hsmbackup completion fish > ~/.config/fish/completions/hsmbackup.fish\n\n" +
			"The bash and zsh scripts ask hsmbackup itself for the candidates, so they\n" +
			"follow the installed version; the fish script lists them, so regenerate\n" +
			"it after an upgrade.",
		// Running a command adds a help subcommand to it, which the fish
		// script would offer; this one has no subcommands to explain.
		HideHelpCommand: true,
		BashComplete: func(c *cli.Context) {
			if c.NArg() == 0 {
				for _, s := range completionShells {
					fmt.Fprintln(c.App.Writer, s)
				}
			}
		},
		Action: action("completion", runCompletion),
	}
}

func runCompletion(c *cli.Context) error {
	accepted := strings.Join(completionShells, ", ")
	switch {
	case c.NArg() == 0:
		return fmt.Errorf("name a shell: %s (run '%s --help')", accepted, c.Command.HelpName)
	case c.NArg() > 1:
		return fmt.Errorf("unexpected argument %q (run '%s --help')", c.Args().Get(1), c.Command.HelpName)
	}
	var script string
	switch shell := c.Args().First(); shell {
	case "bash":
		script = bashCompletion
	case "zsh":
		script = zshCompletion
	case "fish":
		s, err := c.App.ToFishCompletion()
		if err != nil {
			return err
		}
		script = s
	default:
		return fmt.Errorf("unknown shell %q: want one of %s", shell, accepted)
	}
	_, err := fmt.Fprint(c.App.Writer, script)
	return err
}

// appDescription is the app's Description: the DESCRIPTION of its help
// and man page.
const appDescription = "hsmbackup backs up, verifies and restores the contents of HSM clusters.\n" +
	"The HSM encrypts its own image under a hardware-bound key, and the image\n" +
	"restores only into an HSM that proves the same hardware identity.\n\n" +
	"Run 'hsmbackup demo' for a narrated tour that needs no set-up, and\n" +
	"'hsmbackup COMMAND --help' for the details of a command. Passwords are\n" +
	"read from a file given with --password-file or from $" + passwordEnv + ",\n" +
	"never from the command line."

// manSection is the man page section of a user command.
const manSection = 1

// manCommand prints the man page generated from the app's definition.
func manCommand() *cli.Command {
	return &cli.Command{
		Name:  "man",
		Usage: "print the manual page (roff, section 1)",
		Description: "Prints to stdout the manual page generated from the commands and flags\n" +
			"of this hsmbackup. Read it with 'hsmbackup man | man -l -', or install\n" +
			"it with 'hsmbackup man > /usr/local/share/man/man1/hsmbackup.1'.",
		Action: action("man", runMan),
	}
}

func runMan(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	page, err := manPage(c.App, c.Command)
	if err != nil {
		return err
	}
	_, err = fmt.Fprint(c.App.Writer, page)
	return err
}

// manPage renders app's man page from a copy of it; the running app is
// not changed. Running a command adds a help subcommand and a --help flag
// to it, so running, the command being run, is documented as it is
// defined, by a fresh manCommand. Commands hidden from help are left out,
// as urfave/cli leaves them out of help.
func manPage(app *cli.App, running *cli.Command) (string, error) {
	doc := *app
	doc.Commands = make([]*cli.Command, len(app.Commands))
	for i, cmd := range app.Commands {
		if cmd == running {
			cmd = manCommand()
		}
		doc.Commands[i] = cmd
	}
	page, err := doc.ToManWithSection(manSection)
	if err != nil {
		return "", err
	}
	return roffASCII(page + manExitStatus()), nil
}

// roffASCII writes each non-ASCII character of a roff page (a '…' in a
// flag's usage) as a \[uXXXX] escape, which groff and mandoc read whatever
// the locale; plain groff takes UTF-8 input for Latin-1 otherwise.
func roffASCII(page string) string {
	var b strings.Builder
	for _, r := range page {
		if r < utf8.RuneSelf {
			b.WriteRune(r)
		} else {
			fmt.Fprintf(&b, `\[u%04X]`, r)
		}
	}
	return b.String()
}

// manExitStatus is the man page's EXIT STATUS section, from main's table.
func manExitStatus() string {
	var b strings.Builder
	b.WriteString("\n.SH EXIT STATUS\n")
	for _, s := range exitCodesByCode() {
		fmt.Fprintf(&b, ".TP\n.B %d\n%s (JSON code \\fI%s\\fP)\n", s.code, s.meaning, s.name)
	}
	return b.String()
}
