package main

import (
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"
)

// TestPrecedence checks the one rule of docs/CLI.md, "Precedence", for
// every setting that has an environment variable or a global flag: a flag
// given anywhere on the command line beats the environment, which beats
// the config file, which beats the default; a flag given twice with
// different values is a usage error. The commands run are the real ones,
// their actions replaced by one that reports what the env resolved.
func TestPrecedence(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	for name, data := range map[string]string{
		"a.yaml": "store: file://from-a\nclusters:\n  c1:\n    members: [\"127.0.0.1:1\"]\n    password_file: a.pw\n",
		"b.yaml": "store: file://from-b\n",
		"n.yaml": "keyring: k\n", // no store
	} {
		if err := os.WriteFile(name, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	type got struct {
		config, store, password string
		timeout                 time.Duration
	}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want got
		err  string // a usage error containing this
	}{
		// --config: flag (global or the command's) > $HSMBACKUP_CONFIG > none.
		{name: "config none", args: []string{"backup", "list", "--store", "file://s"}, want: got{store: "file://s"}},
		{name: "config env", args: []string{"backup", "list"}, env: map[string]string{configEnv: "a.yaml"},
			want: got{config: "a.yaml", store: "file://from-a"}},
		{name: "config global flag", args: []string{"--config", "b.yaml", "backup", "list"},
			want: got{config: "b.yaml", store: "file://from-b"}},
		{name: "config command flag", args: []string{"backup", "list", "--config", "b.yaml"},
			want: got{config: "b.yaml", store: "file://from-b"}},
		{name: "config global flag beats env", args: []string{"--config", "b.yaml", "backup", "list"}, env: map[string]string{configEnv: "a.yaml"},
			want: got{config: "b.yaml", store: "file://from-b"}},
		{name: "config command flag beats env", args: []string{"backup", "list", "--config", "b.yaml"}, env: map[string]string{configEnv: "a.yaml"},
			want: got{config: "b.yaml", store: "file://from-b"}},
		{name: "config global flag beats env for prune", args: []string{"--config", "b.yaml", "backup", "prune", "--dry-run"}, env: map[string]string{configEnv: "a.yaml"},
			want: got{config: "b.yaml", store: "file://from-b"}},
		{name: "config flag after an argument", args: []string{"backup", "describe", "ID", "--config", "b.yaml"}, env: map[string]string{configEnv: "a.yaml"},
			want: got{config: "b.yaml", store: "file://from-b"}},
		{name: "config both flags, same", args: []string{"--config", "b.yaml", "backup", "list", "--config", "b.yaml"},
			want: got{config: "b.yaml", store: "file://from-b"}},
		{name: "config both flags differ", args: []string{"--config", "a.yaml", "backup", "list", "--config", "b.yaml"},
			err: `--config given twice, as "b.yaml" and "a.yaml"`},
		{name: "config of an HSM command", args: []string{"--config", "b.yaml", "hsm", "status"}, env: map[string]string{configEnv: "a.yaml"},
			want: got{config: "b.yaml", store: "file://from-b"}},

		// --store: flag > $HSMBACKUP_STORE > the config's store.
		{name: "store config", args: []string{"--config", "a.yaml", "backup", "list"}, want: got{config: "a.yaml", store: "file://from-a"}},
		{name: "store env beats config", args: []string{"--config", "a.yaml", "backup", "list"}, env: map[string]string{storeEnv: "file://env"},
			want: got{config: "a.yaml", store: "file://env"}},
		{name: "store env, no config", args: []string{"backup", "list"}, env: map[string]string{storeEnv: "file://env"},
			want: got{store: "file://env"}},
		{name: "store global flag beats env and config", args: []string{"--store", "file://flag", "backup", "list", "--config", "a.yaml"},
			env: map[string]string{storeEnv: "file://env"}, want: got{config: "a.yaml", store: "file://flag"}},
		{name: "store command flag beats env and config", args: []string{"backup", "list", "--config", "a.yaml", "--store", "file://flag"},
			env: map[string]string{storeEnv: "file://env"}, want: got{config: "a.yaml", store: "file://flag"}},
		{name: "store env with config from env", args: []string{"backup", "list"},
			env: map[string]string{storeEnv: "file://env", configEnv: "a.yaml"}, want: got{config: "a.yaml", store: "file://env"}},
		{name: "store both flags differ", args: []string{"--store", "file://x", "backup", "list", "--store", "file://y"},
			err: `--store given twice`},
		{name: "store nowhere", args: []string{"backup", "list", "--config", "n.yaml"}, err: "no store: give --store URL, set $HSMBACKUP_STORE or 'store:' in --config"},

		// --password-file: flag > $HSMBACKUP_PASSWORD_FILE > the cluster
		// entry's password_file > $HSMBACKUP_PASSWORD ("").
		{name: "password none", args: []string{"hsm", "audit", "verify", "--addr", "127.0.0.1:9"}, want: got{store: "-"}},
		{name: "password config", args: []string{"--config", "a.yaml", "hsm", "audit", "verify", "--cluster", "c1"},
			want: got{config: "a.yaml", store: "file://from-a", password: "a.pw"}},
		{name: "password env beats config", args: []string{"--config", "a.yaml", "hsm", "audit", "verify", "--cluster", "c1"},
			env: map[string]string{passwordFileEnv: "env.pw"}, want: got{config: "a.yaml", store: "file://from-a", password: "env.pw"}},
		{name: "password flag beats env and config", args: []string{"--config", "a.yaml", "hsm", "audit", "verify", "--cluster", "c1", "--password-file", "flag.pw"},
			env: map[string]string{passwordFileEnv: "env.pw"}, want: got{config: "a.yaml", store: "file://from-a", password: "flag.pw"}},

		// --timeout: global or the command's; default 0 (the client's 30 s).
		{name: "timeout global", args: []string{"--timeout", "2s", "hsm", "status"}, want: got{store: "-", timeout: 2 * time.Second}},
		{name: "timeout command", args: []string{"backup", "create", "--store", "file://s", "--timeout", "3s"}, want: got{store: "file://s", timeout: 3 * time.Second}},
		{name: "timeout both differ", args: []string{"--timeout", "2s", "hsm", "status", "--timeout", "3s"}, err: "--timeout given twice"},
		{name: "timeout negative", args: []string{"--timeout", "-2s", "hsm", "status"}, err: "--timeout -2s: want a positive duration"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, v := range []string{configEnv, storeEnv, passwordFileEnv} {
				t.Setenv(v, tc.env[v])
			}
			var g got
			app := newApp(io.Discard, io.Discard)
			capture := func(c *cli.Context) error {
				if c.Command.Name == "describe" {
					if _, _, err := flagsAfterArgs(c); err != nil {
						return err
					}
				}
				e, err := newEnv(c)
				if err != nil {
					return err
				}
				defer e.close()
				g.config, g.timeout = e.g.config, e.g.timeout
				if g.store, err = e.storeURL(); err != nil && e.c.Command.Name != "status" && e.c.Command.Name != "verify" {
					return err
				} else if err != nil {
					g.store = "-"
				}
				if c.Command.Name == "verify" {
					_, cc, err := e.entry(c)
					if err != nil {
						return err
					}
					if cc == nil {
						cc = &clusterConfig{}
					}
					g.password, _ = passwordSource(c, cc)
				}
				return nil
			}
			replaceActions(app.Commands, capture)
			err := app.Run(append([]string{"hsmbackup"}, tc.args...))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, errUsage) {
					t.Fatalf("error %v, want a usage error containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if g != tc.want {
				t.Errorf("got %+v, want %+v", g, tc.want)
			}
		})
	}
}

// replaceActions sets the action of every command under cmds to fn.
func replaceActions(cmds []*cli.Command, fn cli.ActionFunc) {
	for _, c := range cmds {
		if len(c.Subcommands) > 0 {
			replaceActions(c.Subcommands, fn)
			continue
		}
		c.Action = fn
	}
}
