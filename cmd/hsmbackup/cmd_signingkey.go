package main

import (
	"crypto/sha256"
	"fmt"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/urfave/cli/v2"
)

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
