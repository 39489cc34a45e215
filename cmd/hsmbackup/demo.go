package main

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "narrate a backup, a restore and two refused restores on throw-away HSMs",
		Description: "Creates a manufacturer and two operators, manufactures software HSMs in a\n" +
			"temporary workspace, exports an image from one and restores it into an\n" +
			"attested HSM of the same class and operator, then shows an HSM of another\n" +
			"operator and a tampered image being refused. Needs no set-up.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "keep", Usage: "keep the workspace (authorities, HSMs, images) and print its path"},
		},
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return fmt.Errorf("demo: unexpected argument %q", c.Args().First())
			}
			if err := runDemo(c.Context, c.App.Writer, demoOptions{Keep: c.Bool("keep")}); err != nil {
				return fmt.Errorf("demo: %w", err)
			}
			return nil
		},
	}
}

// demoOptions configure runDemo. The zero value is valid.
type demoOptions struct {
	// Keep leaves the workspace in place and prints its path.
	Keep bool
	// Dir is where the workspace is created; "" means the system's
	// temporary directory.
	Dir string
	// PasswordIterations is the HSMs' PBKDF2 cost for passwords; 0 means
	// hsmcore's default. Tests lower it.
	PasswordIterations int
}

// The demo's cast.
const (
	demoClass         = "hsm2m.medium"
	demoFirmware      = "2.1.0"
	demoManufacturer  = "acme-hsm"
	demoOperator      = "example-cloud"
	demoOtherOperator = "other-cloud"
	demoOfficer       = "admin"    // crypto officer
	demoUser          = "app-user" // crypto user who owns the keys
	demoImage         = "hsm-a.img"
	demoTampered      = "hsm-a-tampered.img"
)

var demoMessage = []byte("payroll batch 2024-06 approved by treasury")

// demo is the state the steps hand on to each other.
type demo struct {
	opts demoOptions
	out  *printer
	ws   string // workspace directory

	mfr, op, otherOp  *hsmcore.Authority
	mfrRoots, opRoots *x509.CertPool
	devices           []*hsmcore.Device // closed at the end

	a            *hsmcore.Device
	aOfficer     *hsmcore.Session
	aUser        *hsmcore.Session
	userPassword string // never printed
	aesKey       hsmcore.KeyInfo
	signers      []hsmcore.KeyInfo // EC and RSA
	ciphertext   []byte
	signatures   [][]byte // one per signer
	imagePath    string
	header       *hsmcore.ImageHeader
}

// demoStep is one narrated step; name also prefixes its errors.
type demoStep struct {
	name, title string
	run         func(*demo, context.Context) error
}

var demoSteps = []demoStep{
	{"set up workspace", "workspace, manufacturer and operators", (*demo).setUp},
	{"prepare HSM A", "HSM A: manufacture, initialize, generate keys", (*demo).prepareA},
	{"use keys on HSM A", "HSM A: encrypt and sign", (*demo).useKeysOnA},
	{"export image", "HSM A: export its image", (*demo).exportImage},
	{"restore into HSM B", "HSM B (same class, manufacturer, operator): attest, restore, use", (*demo).restoreIntoB},
	{"refuse mismatched HSM C", "HSM C (operator other-cloud): restore refused", (*demo).refuseMismatch},
	{"refuse tampered image", "tampered image: restore refused", (*demo).refuseTampered},
	{"verify audit log", "HSM A: verify the audit log", (*demo).verifyAudit},
}

// runDemo runs the demo, narrating to out. It returns the first step's
// error, wrapped with the step's name; the workspace is removed either way
// unless opts.Keep is set. Cancelling ctx stops it before the next step.
func runDemo(ctx context.Context, out io.Writer, opts demoOptions) (err error) {
	d := &demo{opts: opts, out: &printer{w: out}}
	defer func() {
		if cerr := d.cleanUp(); err == nil {
			err = cerr
		}
	}()
	d.out.printf("hsmbackup demo: back up an HSM, restore it into matching hardware, refuse the rest\n")
	for i, s := range demoSteps {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		d.out.printf("\n[%d/%d] %s\n", i+1, len(demoSteps), s.title)
		if err := s.run(d, ctx); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		if d.out.err != nil {
			return fmt.Errorf("write output: %w", d.out.err)
		}
	}
	d.out.printf("\ndemo complete: the image restored only into attested hardware of the same class\n" +
		"and operator; the mismatched HSM and the tampered image were refused, unchanged.\n")
	return d.out.err
}

// cleanUp closes the HSMs and removes the workspace unless it is kept.
func (d *demo) cleanUp() error {
	var errs []error
	for _, dev := range d.devices {
		errs = append(errs, dev.Close())
	}
	if d.ws != "" {
		if d.opts.Keep {
			d.out.printf("\nworkspace kept: %s\n", d.ws)
		} else if err := os.RemoveAll(d.ws); err != nil {
			errs = append(errs, fmt.Errorf("remove workspace: %w", err))
		}
	}
	return errors.Join(errs...)
}

// manufacture makes a new HSM of the demo's class and manufacturer for
// operator op, in the workspace directory name.
func (d *demo) manufacture(name string, op *hsmcore.Authority) (*hsmcore.Device, error) {
	dev, err := hsmcore.Manufacture(filepath.Join(d.ws, name), hsmcore.ManufactureConfig{
		Class:        demoClass,
		Firmware:     demoFirmware,
		Manufacturer: d.mfr,
		Operator:     op,
	}, hsmcore.Options{PasswordIterations: d.opts.PasswordIterations})
	if err != nil {
		return nil, err
	}
	d.devices = append(d.devices, dev)
	return dev, nil
}

// attest asks dev to attest to a fresh nonce and verifies the answer
// against the manufacturer and operator roots and what the image header
// requires of a restore target.
func (d *demo) attest(dev *hsmcore.Device, h *hsmcore.ImageHeader) (*hsmcore.Statement, error) {
	nonce := hsmcore.NewNonce()
	att, err := dev.Attest(nonce)
	if err != nil {
		return nil, err
	}
	return hsmcore.VerifyAttestation(att, hsmcore.VerifyOptions{
		ManufacturerRoots: d.mfrRoots,
		OperatorRoots:     d.opRoots,
		Nonce:             nonce,
		Expect: hsmcore.Expectation{
			Class:          h.Source.Class,
			Manufacturer:   h.Source.Manufacturer,
			Operator:       h.Source.Operator,
			MinFirmware:    h.Source.Firmware,
			PBKFingerprint: h.PBKFingerprint[:],
		},
	})
}

// newPassword returns a random password. Passwords are never printed.
func newPassword() string { return rand.Text() }

// printer writes the narration and keeps the first write error, so that
// steps need not check every line.
type printer struct {
	w   io.Writer
	err error
}

func (p *printer) printf(format string, args ...any) {
	if p.err == nil {
		_, p.err = fmt.Fprintf(p.w, format, args...)
	}
}
