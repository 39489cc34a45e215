package main

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/wrap"
)

func masterkeyCommand() *cli.Command {
	// Not urfave/cli's Required, which prints the whole help: requireFlags.
	keyring := func() cli.Flag {
		return &cli.StringFlag{Name: "keyring", Usage: "keyring `FILE` (mode 0600; required)"}
	}
	return &cli.Command{
		Name:  "masterkey",
		Usage: "manage the backup service's master keyring",
		Description: "Backups are wrapped a second time under the backup service's master keys,\n" +
			"of three kinds, any of which may be combined: a keyring of versioned AES-256\n" +
			"keys (generate, rotate, list: rotation adds a new version and makes it\n" +
			"current; older versions stay so that older backups still open); an HPKE key\n" +
			"pair, ML-KEM-768 + X25519 (generate-hpke: the writer needs only the public\n" +
			"key); and an AES key held inside an HSM cluster, which never leaves it\n" +
			"(generate-hsm). Key bytes are never printed.",
		Action:       groupAction,
		OnUsageError: usageError,
		Subcommands: []*cli.Command{
			{
				Name:         "generate",
				Usage:        "add a new master key id and make it current (creates the keyring file, 0600, if needed)",
				Flags:        []cli.Flag{keyring(), &cli.StringFlag{Name: "id", Usage: "key `ID` (letters, digits, '.', '_', '-'; required)"}},
				OnUsageError: usageError,
				Action: action("masterkey generate", func(c *cli.Context) error {
					if err := noArgs(c); err != nil {
						return err
					}
					if err := requireFlags(c, "keyring", "id"); err != nil {
						return err
					}
					k, err := wrap.GenerateMasterKey(c.String("keyring"), c.String("id"))
					if err != nil {
						return err
					}
					return printKeys(c, "generated", []wrap.KeyInfo{k})
				}),
			},
			{
				Name:         "rotate",
				Usage:        "add the next version of the current master key and make it current",
				Flags:        []cli.Flag{keyring()},
				OnUsageError: usageError,
				Action: action("masterkey rotate", func(c *cli.Context) error {
					if err := noArgs(c); err != nil {
						return err
					}
					if err := requireFlags(c, "keyring"); err != nil {
						return err
					}
					k, err := wrap.RotateMasterKey(c.String("keyring"))
					if err != nil {
						return err
					}
					return printKeys(c, "rotated to", []wrap.KeyInfo{k})
				}),
			},
			{
				Name:  "generate-hpke",
				Usage: "make an HPKE key pair (ML-KEM-768 + X25519): backups wrapped to the public key open only with the private key",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "key", Usage: "private key `FILE` to create (mode 0600; required)"},
					&cli.StringFlag{Name: "pub", Usage: "public key `FILE` to create (required)"},
				},
				OnUsageError: usageError,
				Action: action("masterkey generate-hpke", func(c *cli.Context) error {
					if err := noArgs(c); err != nil {
						return err
					}
					if err := requireFlags(c, "key", "pub"); err != nil {
						return err
					}
					r, err := wrap.GenerateHPKEKey(c.String("key"), c.String("pub"))
					if err != nil {
						return err
					}
					_, err = fmt.Fprintf(c.App.Writer, "generated HPKE master key %s (private key %s, public key %s)\n", r, c.String("key"), c.String("pub"))
					return err
				}),
			},
			{
				Name:  "generate-hsm",
				Usage: "make an AES-256 master key inside a configured HSM cluster, owned by a crypto user",
				Flags: []cli.Flag{
					configFlag(),
					&cli.StringFlag{Name: "cluster", Usage: "`ID` of the cluster in --config that holds the key (required)"},
					&cli.StringFlag{Name: "user", Usage: "`NAME` of the crypto user that will own and use the key (required)"},
					passwordFileFlag(),
					&cli.StringFlag{Name: "label", Value: "hsmbackup-master-key", Usage: "the key's `LABEL`"},
				},
				OnUsageError: usageError,
				Action:       envAction("masterkey generate-hsm", generateHSMKey),
			},
			{
				Name:         "list",
				Usage:        "list the master keys: id, version, creation time, which is current",
				Flags:        []cli.Flag{keyring(), jsonFlag()},
				OnUsageError: usageError,
				Action: action("masterkey list", func(c *cli.Context) error {
					if err := noArgs(c); err != nil {
						return err
					}
					if err := requireFlags(c, "keyring"); err != nil {
						return err
					}
					keys, err := wrap.ListMasterKeys(c.String("keyring"))
					if err != nil {
						return err
					}
					return printKeys(c, "", keys)
				}),
			},
		},
	}
}

type keyJSON struct {
	ID      string `json:"key_id"`
	Version int    `json:"version"`
	Created string `json:"created"`
	Current bool   `json:"current"`
}

// printKeys prints key infos as a table (after a verb, for one key) or as
// JSON.
func printKeys(c *cli.Context, verb string, keys []wrap.KeyInfo) error {
	if wantJSON(c) {
		out := make([]keyJSON, len(keys))
		for i, k := range keys {
			out[i] = keyJSON{k.ID, k.Version, k.Created.Format("2006-01-02T15:04:05Z"), k.Current}
		}
		if verb != "" {
			return writeJSON(c.App.Writer, out[0])
		}
		return writeJSONList(c.App.Writer, out, countSummary{len(out)})
	}
	if verb != "" {
		_, err := fmt.Fprintf(c.App.Writer, "%s master key %s (created %s)\n", verb, keys[0], keys[0].Created.Format("2006-01-02 15:04:05Z"))
		return err
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tVERSION\tCREATED\tCURRENT")
	for _, k := range keys {
		cur := ""
		if k.Current {
			cur = "yes"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", k.ID, k.Version, k.Created.Format("2006-01-02 15:04:05Z"), cur)
	}
	return tw.Flush()
}

// hsmKeyOptions are the flags of masterkey generate-hsm.
type hsmKeyOptions struct {
	cluster, user, passwordFile, passwordHow, label string
}

// generateHSMKey makes a non-extractable AES-256 key in a configured
// cluster, logged in as the crypto user that will own it, and prints the
// config entry that uses it.
func generateHSMKey(c *cli.Context, e *env) error {
	if e.g.config == "" {
		return usagef("--config is required (run '%s --help')", c.Command.HelpName)
	}
	if err := requireFlags(c, "cluster", "user"); err != nil {
		return err
	}
	pf, how := passwordFileOf(c)
	return runGenerateHSMKey(c.Context, e, hsmKeyOptions{cluster: c.String("cluster"), user: c.String("user"),
		passwordFile: pf, passwordHow: how, label: c.String("label")})
}

func runGenerateHSMKey(ctx context.Context, e *env, opts hsmKeyOptions) error {
	t, err := e.clusterTarget(opts.cluster, false)
	if err != nil {
		return err
	}
	kc, err := t.as(opts.user, opts.passwordFile, opts.passwordHow).open(ctx, e.log, nil, nil)
	if err != nil {
		return err
	}
	defer kc.Close()
	if kc.Role() != hsmcore.CryptoUser {
		return fmt.Errorf("%s is a %s: a master key is owned and used by a crypto user", opts.user, kc.Role())
	}
	keys, err := kc.GenerateKeys(ctx, []hsmcore.KeySpec{{Type: hsmcore.AES, Bits: 256, Label: opts.label, Encrypt: true, Decrypt: true}})
	if err != nil {
		return fmt.Errorf("cluster %s: generate key: %w", opts.cluster, err)
	}
	k := keys[0]
	_, err = fmt.Fprintf(e.stdout, "generated HSM-held master key %s/%d (AES-256, label %q, check value %s)\n"+
		"use it with this entry in the config file:\nhsm_key:\n  cluster: %s\n  handle: %d\n  user: %s\n  password_file: FILE\n",
		opts.cluster, k.Handle, k.Label, k.KCV, opts.cluster, k.Handle, opts.user)
	return err
}
