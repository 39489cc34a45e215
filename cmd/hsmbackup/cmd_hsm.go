package main

import (
	"cmp"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
	"github.com/hsmbackup/hsmbackup/internal/atomicfile"
)

func hsmCommand() *cli.Command {
	return &cli.Command{
		Name:  "hsm",
		Usage: "make, serve and inspect HSMs",
		Subcommands: []*cli.Command{
			{
				Name:         "authority",
				Usage:        "manage manufacturer and operator roots",
				OnUsageError: usageError,
				Action:       groupAction,
				Subcommands:  []*cli.Command{authorityCreateCommand()},
			},
			manufactureCommand(),
			serveCommand(),
			statusCommand(),
			zeroizeCommand(),
			{
				Name:         "audit",
				Usage:        "check an HSM's audit log",
				OnUsageError: usageError,
				Action:       groupAction,
				Subcommands:  []*cli.Command{auditVerifyCommand()},
			},
		},
		OnUsageError: usageError,
		Action:       groupAction,
	}
}

func authorityCreateCommand() *cli.Command {
	return &cli.Command{
		Name:  "create",
		Usage: "create a manufacturer's or an operator's root CA and backup-key secret",
		Description: "Writes root.crt (the trust anchor verifiers use), root.key and\n" +
			"backup-key.secret (both 0600) into a directory of their own. A root is\n" +
			"made once: existing files are never overwritten.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "kind", Usage: "`KIND` of authority: manufacturer or operator"},
			&cli.StringFlag{Name: "name", Usage: "`NAME` of the manufacturer or operator (letters, digits, '.', '_', '-')"},
			&cli.StringFlag{Name: "out", Usage: "`DIR` to create the authority in"},
		},
		OnUsageError: usageError,
		Action:       action("hsm authority create", authorityCreate),
	}
}

func authorityCreate(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	if err := requireFlags(c, "kind", "name", "out"); err != nil {
		return err
	}
	kind := device.AuthorityKind(c.String("kind"))
	if kind != device.Manufacturer && kind != device.Operator {
		return fmt.Errorf("--kind %q: want manufacturer or operator", kind)
	}
	a, err := device.NewAuthority(kind, c.String("name"))
	if err != nil {
		return err
	}
	dir := c.String("out")
	if err := a.Save(dir); err != nil {
		return err
	}
	p := &printer{w: c.App.Writer}
	p.printf("created %s authority %s in %s\n", kind, a.Name(), dir)
	p.printf("%-17s %s (the trust anchor to give verifiers)\n", "root certificate", filepath.Join(dir, "root.crt"))
	return p.err
}

func manufactureCommand() *cli.Command {
	return &cli.Command{
		Name:  "manufacture",
		Usage: "make a new HSM, certified by a manufacturer and an operator",
		Description: "Creates a software HSM in an empty directory: a device key certified by\n" +
			"both authorities, and the hardware-bound backup keys of its class (from\n" +
			"the manufacturer) and operator. Prints its serial, class and PBK\n" +
			"fingerprint; HSMs with equal fingerprints accept each other's images.\n" +
			"Issues the HSM's claim secret, once: it is printed and written to\n" +
			"--claim-out (mode 0600, never over a file), and only its holder can set\n" +
			"the new HSM up (cluster init, cluster add-member, restore into it: give\n" +
			"the file with --claim). Keep it: a zeroized HSM is claimed with it again.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "class", Usage: "hardware `CLASS`, e.g. hsm2m.medium"},
			&cli.StringFlag{Name: "manufacturer", Usage: "`DIR` of the manufacturer authority"},
			&cli.StringFlag{Name: "operator", Usage: "`DIR` of the operator authority"},
			&cli.StringFlag{Name: "firmware", Usage: "firmware version `X.Y.Z`"},
			&cli.BoolFlag{Name: "fips", Usage: "manufacture in FIPS mode"},
			&cli.StringFlag{Name: "serial", Usage: "`SERIAL` number (default: random)"},
			&cli.IntFlag{Name: "capacity", Usage: "maximum number of keys `N`", DefaultText: fmt.Sprint(device.DefaultCapacity)},
			&cli.StringFlag{Name: "out", Usage: "empty or missing `DIR` to hold the HSM"},
			&cli.StringFlag{Name: "claim-out", Usage: "new `FILE` for the HSM's claim secret", DefaultText: "DIR.claim, beside --out"},
			jsonFlag(),
		},
		OnUsageError: usageError,
		Action:       action("hsm manufacture", manufacture),
	}
}

func manufacture(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	if err := requireFlags(c, "class", "manufacturer", "operator", "firmware", "out"); err != nil {
		return err
	}
	mfr, err := device.LoadAuthority(c.String("manufacturer"))
	if err != nil {
		return fmt.Errorf("manufacturer: %w", err)
	}
	op, err := device.LoadAuthority(c.String("operator"))
	if err != nil {
		return fmt.Errorf("operator: %w", err)
	}
	claimOut := cmp.Or(c.String("claim-out"), filepath.Clean(c.String("out"))+".claim")
	if _, err := os.Lstat(claimOut); err == nil {
		return fmt.Errorf("claim file %s already exists: not overwritten", claimOut)
	}
	dev, claim, err := device.Manufacture(c.String("out"), device.ManufactureConfig{
		Class:        c.String("class"),
		Firmware:     c.String("firmware"),
		FIPS:         c.Bool("fips"),
		Serial:       c.String("serial"),
		Capacity:     c.Int("capacity"),
		Manufacturer: mfr,
		Operator:     op,
	}, device.Options{})
	if err != nil {
		return err
	}
	id, fp, capacity := dev.Identity(), dev.PBKFingerprint(), dev.Capacity()
	if err := dev.Close(); err != nil {
		return err
	}
	if err := atomicfile.WriteNew(claimOut, claim.Marshal(), 0o600); err != nil {
		return fmt.Errorf("claim file: %w (nobody can claim the HSM in %s: remove it and manufacture again)", err, c.String("out"))
	}
	if wantJSON(c) {
		return writeJSON(c.App.Writer, struct {
			hsmcore.Identity
			Capacity       int    `json:"capacity"`
			PBKFingerprint string `json:"pbk_fingerprint"`
			Dir            string `json:"dir"`
			ClaimFile      string `json:"claim_file"`
		}{id, capacity, hex.EncodeToString(fp[:8]), c.String("out"), claimOut})
	}
	p := &printer{w: c.App.Writer}
	p.printf("manufactured HSM %s in %s\n", id.Serial, c.String("out"))
	p.printf("%-16s %s\n", "serial", id.Serial)
	p.printf("%-16s %s\n", "class", id.Class)
	p.printf("%-16s %s%s\n", "firmware", id.Firmware, fipsNote(id.FIPS))
	p.printf("%-16s %s\n", "manufacturer", id.Manufacturer)
	p.printf("%-16s %s\n", "operator", id.Operator)
	p.printf("%-16s %d keys\n", "capacity", capacity)
	p.printf("%-16s %s\n", "PBK fingerprint", hex.EncodeToString(fp[:8]))
	p.printf("%-16s %x\n", "claim secret", claim.Secret)
	p.printf("the claim secret is shown only now and written to %s (mode 0600): only its holder sets this HSM up (--claim %s)\n", claimOut, claimOut)
	return p.err
}
