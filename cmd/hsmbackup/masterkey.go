package main

import (
	"crypto/sha256"
	"fmt"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/backup"
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
		Description: "The keyring holds versioned AES-256 master keys under which backups are\n" +
			"wrapped a second time. Rotation adds a new version and makes it current;\n" +
			"older versions stay so that older backups still open. Key bytes are\n" +
			"never printed.",
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

func signingKeyCommand() *cli.Command {
	return &cli.Command{
		Name:  "signing-key",
		Usage: "manage the key that signs backup manifests",
		Description: "Every manifest is signed with the backup service's Ed25519 key. Anyone with\n" +
			"the public key can check a backup offline ('backup verify --offline'),\n" +
			"without any secret. The files are PEM, as OpenSSL writes them.",
		Action:       groupAction,
		OnUsageError: usageError,
		Subcommands: []*cli.Command{{
			Name:  "generate",
			Usage: "make a new signing key (mode 0600) and its public key",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "key", Usage: "private key `FILE` to create (mode 0600; required)"},
				&cli.StringFlag{Name: "pub", Usage: "public key `FILE` to create (required)"},
			},
			OnUsageError: usageError,
			Action: action("signing-key generate", func(c *cli.Context) error {
				if err := noArgs(c); err != nil {
					return err
				}
				if err := requireFlags(c, "key", "pub"); err != nil {
					return err
				}
				pub, err := backup.GenerateSigningKey(c.String("key"), c.String("pub"))
				if err != nil {
					return err
				}
				sum := sha256.Sum256(pub)
				_, err = fmt.Fprintf(c.App.Writer, "generated manifest signing key %s (public key %s, SHA-256 %x)\n", c.String("key"), c.String("pub"), sum[:8])
				return err
			}),
		}},
	}
}

type keyJSON struct {
	ID      string `json:"id"`
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
		return writeJSON(c.App.Writer, out)
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
