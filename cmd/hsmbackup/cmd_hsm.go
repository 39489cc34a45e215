package main

import (
	"encoding/hex"
	"fmt"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
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
			"fingerprint; HSMs with equal fingerprints accept each other's images.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "class", Usage: "hardware `CLASS`, e.g. hsm2m.medium"},
			&cli.StringFlag{Name: "manufacturer", Usage: "`DIR` of the manufacturer authority"},
			&cli.StringFlag{Name: "operator", Usage: "`DIR` of the operator authority"},
			&cli.StringFlag{Name: "firmware", Usage: "firmware version `X.Y.Z`"},
			&cli.BoolFlag{Name: "fips", Usage: "manufacture in FIPS mode"},
			&cli.StringFlag{Name: "serial", Usage: "`SERIAL` number (default: random)"},
			&cli.IntFlag{Name: "capacity", Usage: "maximum number of keys `N`", DefaultText: fmt.Sprint(device.DefaultCapacity)},
			&cli.StringFlag{Name: "out", Usage: "empty or missing `DIR` to hold the HSM"},
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
	dev, err := device.Manufacture(c.String("out"), device.ManufactureConfig{
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
	if wantJSON(c) {
		return writeJSON(c.App.Writer, struct {
			hsmcore.Identity
			Capacity       int    `json:"capacity"`
			PBKFingerprint string `json:"pbk_fingerprint"`
			Dir            string `json:"dir"`
		}{id, capacity, hex.EncodeToString(fp[:8]), c.String("out")})
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
	return p.err
}
