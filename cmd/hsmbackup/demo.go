package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
	"github.com/hsmbackup/hsmbackup/internal/pki"
	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/wrap"
)

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "narrate a backup of an HSM cluster, a restore, and refused restores, on throw-away HSMs",
		Description: "Needs no set-up. In a temporary workspace it serves two software HSMs on\n" +
			"loopback mutual TLS and makes them a cluster the CloudHSM way (attestation,\n" +
			"cluster CSR signed by a customer CA of its own, first crypto officer, a\n" +
			"second member cloned by image), creates a crypto user and keys, and takes a\n" +
			"backup under a fresh master keyring into a file store. It lists and verifies\n" +
			"the backup, copies it to a disaster-recovery site (a second file store in\n" +
			"the workspace) re-wrapped to an HPKE key pair of its own, and verifies the\n" +
			"copy with the private key alone; an AES key held in an HSM cluster, the\n" +
			"third kind of master key, is made with 'masterkey generate-hsm'. It restores\n" +
			"the backup into a fresh HSM of the same class and operator and uses the keys\n" +
			"there, shows an HSM of another operator being refused, and flips a stored\n" +
			"byte to show verify and restore catching it. With --store\n" +
			"s3://BUCKET[/PREFIX][?endpoint=URL] the backup goes to S3 instead (an\n" +
			"existing bucket; credentials from the AWS environment: AWS_ACCESS_KEY_ID and\n" +
			"AWS_SECRET_ACCESS_KEY). The demo's objects go under a prefix of their own\n" +
			"and are deleted at the end unless --keep.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "keep", Usage: "keep the workspace (authorities, HSMs, keys, stores) and the stored objects, and print where they are"},
			&cli.StringFlag{Name: "store", Usage: "`URL` of the store to back up into (file://DIR or s3://BUCKET/PREFIX); default: a file store in the workspace"},
		},
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			stopsItself.Store(true) // it narrates its own interruption
			if c.Args().Present() {
				return usagef("demo: unexpected argument %q", c.Args().First())
			}
			opts := demoOptions{Keep: c.Bool("keep")}
			// --store after "demo" or, as the global flag, before it.
			for _, cc := range c.Lineage() {
				if opts.Store = cc.String("store"); opts.Store != "" {
					break
				}
			}
			if err := runDemo(c.Context, c.App.Writer, opts); err != nil {
				return fmt.Errorf("demo: %w", err)
			}
			return nil
		},
	}
}

// demoOptions configure runDemo. The zero value is valid.
type demoOptions struct {
	// Keep leaves the workspace and the stored objects in place and
	// prints where they are.
	Keep bool
	// Dir is where the workspace is created; "" means the system's
	// temporary directory.
	Dir string
	// PasswordIterations is the HSMs' PBKDF2 cost for passwords; 0 means
	// hsmcore's default. Tests lower it.
	PasswordIterations int
	// Store is the URL of the store to back up into (see storeurl.Open);
	// "" means a file store in the workspace. The demo writes under a
	// prefix of its own in it and deletes what it wrote unless Keep.
	Store string
}

// The demo's cast.
const (
	demoClass         = "hsm2m.medium"
	demoFirmware      = "2.1.0"
	demoManufacturer  = "acme-hsm"
	demoOperator      = "example-cloud"
	demoOtherOperator = "other-cloud"
	demoCustomerCA    = "example-corp customer root CA"
	demoClientName    = "hsmbackup-demo"
	demoClusterID     = "cluster-demo"
	demoMasterKeyID   = "demo-master"
	demoOfficer       = "admin"    // crypto officer
	demoUser          = "app-user" // crypto user who owns the keys
)

var demoMessage = []byte("payroll batch 2024-06 approved by treasury")

// demo is the state the steps hand on to each other.
type demo struct {
	opts demoOptions
	out  *printer
	ws   string // workspace directory

	mfr, op, otherOp *device.Authority
	mfrRoots         *x509.CertPool // the manufacturer's root
	opRoots          *x509.CertPool // both operators' roots
	ca               *pki.CA        // the customer's CA; its key only in memory
	clientCert       tls.Certificate
	clusterCert      []byte         // DER, signed by ca
	claims           hsmcore.Claims // the claim secrets of its HSMs

	keyring    *wrap.Keyring
	signingKey ed25519.PrivateKey
	verifyKey  ed25519.PublicKey
	st         store.Store
	prefix     string // this run's objects are under it

	hsms    []*demoHSM // stopped at the end
	closers []func()   // sessions to end before the HSMs stop
	a, b    *demoHSM   // the cluster's members

	officer         *cluster.Cluster // crypto officer's session on the cluster
	officerPassword string           // never printed
	userPassword    string           // never printed
	aesKey          hsmcore.KeyInfo
	signers         []hsmcore.KeyInfo // EC and RSA
	ciphertext      []byte
	signatures      [][]byte // one per signer
	manifest        *backup.Manifest
}

// demoStep is one narrated step; name also prefixes its errors.
type demoStep struct {
	name, title string
	run         func(*demo, context.Context) error
}

// demoSteps are the steps, set by init: the last runs the CLI's own
// commands (newApp), which lists the demo command, so a variable's
// initializer would make a cycle.
var demoSteps []demoStep

func init() {
	demoSteps = []demoStep{
		{"set up workspace", "workspace, authorities, customer CA, master keyring, store", (*demo).setUp},
		{"serve HSMs", "HSMs A and B: manufacture, serve on loopback TLS", (*demo).serveMembers},
		{"initialize cluster", "cluster: attest, CSR signed by the customer CA, first crypto officer, add B", (*demo).initCluster},
		{"create keys", "crypto user and keys: generate, encrypt, sign", (*demo).createKeys},
		{"back up", "backup: HSM image, wrapped again, stored with a signed manifest", (*demo).takeBackup},
		{"list and verify", "list and verify the backup", (*demo).listAndVerify},
		{"copy to DR site", "disaster-recovery copy: wrapped to an HPKE key pair, verified with its private key", (*demo).copyToDRSite},
		{"restore into HSM C", "HSM C (fresh, same class and operator): restore, use the keys", (*demo).restoreIntoC},
		{"refuse HSM D", "HSM D (operator other-cloud): restore refused", (*demo).refuseMismatch},
		{"refuse tampered backup", "tampered image: verify and restore refuse it", (*demo).refuseTampered},
		{"migrate keys", "keys migrate: extractable keys into another cluster, attested, wrapped HSM to HSM", (*demo).migrateKeys},
		{"run the scheduler", "scheduler: two clusters on a schedule, a restore drill, the fleet's status", (*demo).runFleet},
	}
}

// runDemo runs the demo, narrating to out. It returns the first step's
// error, wrapped with the step's name. Whatever happens, it ends the
// sessions, stops the HSMs, deletes the objects it stored and removes the
// workspace, the last two unless opts.Keep is set. Cancelling ctx stops it
// before the next step and fails the step under way.
func runDemo(ctx context.Context, out io.Writer, opts demoOptions) (err error) {
	d := &demo{opts: opts, out: &printer{w: out}, claims: hsmcore.Claims{}}
	defer func() {
		if cerr := d.cleanUp(); err == nil {
			err = cerr
		}
	}()
	d.out.printf("hsmbackup demo: back up an HSM cluster, restore it into matching hardware, refuse the rest\n")
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
	d.out.printf("\ndemo complete: the backup restored only into attested hardware of the same class\n" +
		"and operator; the mismatched HSM and the tampered image were refused, unchanged; keys\n" +
		"moved to another cluster only wrapped, the non-extractable one refused; the\n" +
		"scheduler backed two clusters up on their slots and proved the newest backup restorable.\n")
	return d.out.err
}

// cleanUp ends the sessions, deletes the run's objects from the store,
// stops the HSMs and removes the workspace; with Keep it leaves the
// objects and the workspace and says where they are. It runs on every
// path, so it does not use the demo's context: an interrupted demo cleans
// up too.
func (d *demo) cleanUp() error {
	var errs []error
	for i := len(d.closers) - 1; i >= 0; i-- {
		d.closers[i]()
	}
	if d.st != nil {
		if d.opts.Keep {
			if d.opts.Store != "" {
				d.out.printf("\nstored objects kept: %s, under %s\n", d.opts.Store, d.prefix)
			}
		} else if n, err := d.deleteObjects(); err != nil {
			errs = append(errs, fmt.Errorf("delete the demo's objects: %w", err))
		} else if d.opts.Store != "" && n > 0 {
			d.out.printf("\nstore: deleted the %d objects this run wrote under %s\n", n, d.prefix)
		}
	}
	for _, h := range d.hsms {
		if err := h.stop(); err != nil {
			errs = append(errs, fmt.Errorf("stop HSM %s: %w", h.name, err))
		}
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
