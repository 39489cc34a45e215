package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
	"github.com/hsmbackup/hsmbackup/internal/pki"
	"github.com/hsmbackup/hsmbackup/store/storeurl"
	"github.com/hsmbackup/hsmbackup/wrap"
)

// The demo's steps, in the order of demoSteps. Each narrates what it did
// in a few lines. This file holds the first four: the workspace, the HSMs,
// the cluster and its keys; demo_backup.go the backup and its DR copy,
// demo_restore.go the restore and the refusals.

// setUp makes the workspace, the manufacturer and the two operators, the
// customer CA, the master keyring and manifest signing key, and opens the
// store.
func (d *demo) setUp(ctx context.Context) error {
	ws, err := os.MkdirTemp(d.opts.Dir, "hsmbackup-demo-")
	if err != nil {
		return err
	}
	d.ws = ws
	if d.opts.Keep {
		d.out.printf("  workspace      %s (kept)\n", ws)
	} else {
		d.out.printf("  workspace      temporary directory, removed at the end (--keep keeps it)\n")
	}

	d.mfrRoots, d.opRoots = x509.NewCertPool(), x509.NewCertPool()
	for _, a := range []struct {
		dst   **device.Authority
		kind  device.AuthorityKind
		name  string
		roots *x509.CertPool
	}{
		{&d.mfr, device.Manufacturer, demoManufacturer, d.mfrRoots},
		{&d.op, device.Operator, demoOperator, d.opRoots},
		{&d.otherOp, device.Operator, demoOtherOperator, d.opRoots},
	} {
		auth, err := device.NewAuthority(a.kind, a.name)
		if err != nil {
			return err
		}
		if err := auth.Save(filepath.Join(ws, "authorities", a.name)); err != nil {
			return err
		}
		*a.dst = auth
		a.roots.AddCert(auth.Certificate())
		d.out.printf("  %-14s %-14s root CA %q\n", a.kind, a.name, auth.Certificate().Subject.CommonName)
	}
	d.out.printf("  attestation    verifiers trust these three roots, nothing else\n")

	if d.ca, err = pki.NewCA(demoCustomerCA); err != nil {
		return fmt.Errorf("customer CA: %w", err)
	}
	if err := pki.WriteCertificate(filepath.Join(ws, "customer-ca.crt"), d.ca.Cert.Raw); err != nil {
		return err
	}
	if d.clientCert, err = d.ca.Client(demoClientName); err != nil {
		return fmt.Errorf("client certificate: %w", err)
	}
	d.out.printf("  customer CA    %q (ECDSA %s): will sign the cluster certificate;\n", demoCustomerCA, d.ca.Key.Curve.Params().Name)
	d.out.printf("                 issued client certificate %q for mutual TLS\n", demoClientName)

	keyringPath := filepath.Join(ws, "master.keyring")
	if _, err := wrap.GenerateMasterKey(keyringPath, demoMasterKeyID); err != nil {
		return err
	}
	if d.keyring, err = wrap.LoadKeyring(keyringPath); err != nil {
		return err
	}
	if d.verifyKey, d.signingKey, err = ed25519.GenerateKey(rand.Reader); err != nil {
		return err
	}
	d.out.printf("  master keyring %s, current key %s (AES-256; never shown)\n", filepath.Base(keyringPath), d.keyring.Current())
	d.out.printf("  manifest key   Ed25519, public key %x…\n", d.verifyKey[:8])

	url := d.opts.Store
	if url == "" {
		url = "file://" + filepath.Join(ws, "store")
	}
	if d.st, err = storeurl.Open(url, storeurl.Options{Create: true}); err != nil {
		return err
	}
	d.prefix = newRunPrefix(time.Now())
	if d.opts.Store == "" {
		d.out.printf("  store          file store in the workspace, this run under %s\n", d.prefix)
	} else {
		d.out.printf("  store          %s, this run under %s\n", d.opts.Store, d.prefix)
		d.out.printf("                 (deleted at the end unless --keep)\n")
	}
	return nil
}

// serveMembers manufactures HSMs A and B and serves each on loopback.
func (d *demo) serveMembers(ctx context.Context) error {
	var err error
	for _, m := range []struct {
		dst  **demoHSM
		name string
	}{{&d.a, "A"}, {&d.b, "B"}} {
		if *m.dst, err = d.serveHSM(m.name, d.op); err != nil {
			return err
		}
		d.describeHSM(*m.dst)
	}
	d.out.printf("  TLS 1.3        each presents its device certificate until its cluster is initialized\n")
	return nil
}

// describeHSM prints one line about a freshly served HSM.
func (d *demo) describeHSM(h *demoHSM) {
	d.out.printf("  HSM %s          serial %s, %s, firmware %s, operator %s, on %s\n",
		h.name, h.id.Serial, h.id.Class, h.id.Firmware, h.id.Operator, h.addr)
}

// initCluster initializes the cluster on HSM A as a CloudHSM customer
// does (cluster.Bootstrap, the steps 'hsmbackup cluster init' and 'cluster
// activate' run), then logs in as the first crypto officer and adds HSM B
// as a member.
func (d *demo) initCluster(ctx context.Context) error {
	d.officerPassword = newPassword()
	cfg := d.memberTarget("", "").tls
	cfg.Addr = d.a.addr
	// The attestation, to a fresh nonce, proves what the HSM is and that
	// the CSR's key is the cluster key that HSM made.
	st, cert, err := cluster.Bootstrap(ctx, cluster.BootstrapConfig{
		Client: cfg,
		Challenge: hsmcore.ChallengeOptions{
			ManufacturerRoots: d.mfrRoots,
			OperatorRoots:     d.opRoots,
			Expect:            hsmcore.Expectation{Class: demoClass, Manufacturer: demoManufacturer, Operator: demoOperator, MinFirmware: demoFirmware},
		},
		Sign:     d.ca.SignCSR,
		Officer:  demoOfficer,
		Password: d.officerPassword,
	})
	if err != nil {
		return err
	}
	d.clusterCert = cert.Raw
	d.out.printf("  attested       HSM A: %s/%s/%s, fresh nonce, both chains verified\n", st.Manufacturer, st.Class, st.Operator)
	d.out.printf("  cluster CSR    for %s; its key is the one HSM A attests to\n", demoClusterID)
	d.out.printf("  initialized    the customer CA signed it; HSM A now presents the cluster certificate\n")
	d.out.printf("                 and accepts only clients with certificates from the customer CA\n")

	d.officer, err = d.memberTarget(demoOfficer, d.officerPassword, d.a).open(ctx, nil, d.mfrRoots, d.opRoots)
	if err != nil {
		return fmt.Errorf("log in as %s: %w", demoOfficer, err)
	}
	d.closers = append(d.closers, d.officer.Close)
	d.out.printf("  crypto officer %q created and logged in over mutual TLS (random password, not shown)\n", demoOfficer)

	if err := d.officer.AddMember(ctx, d.b.addr, cluster.AddOptions{}); err != nil {
		return err
	}
	d.out.printf("  member added   HSM B: attested (same class, manufacturer, operator), cloned from A by image\n")
	return d.membersInSync(ctx, d.officer)
}

// membersInSync checks that every member of c is healthy and holds the
// same state, and says so.
func (d *demo) membersInSync(ctx context.Context, c *cluster.Cluster) error {
	ms := c.Members(ctx)
	for _, m := range ms {
		if !m.Healthy || !m.InSync || m.Digest != ms[0].Digest {
			return fmt.Errorf("member %s: healthy %t, in sync %t, state digest %s", m.Addr, m.Healthy, m.InSync, m.Digest)
		}
	}
	d.out.printf("  members        %d, in sync: state digest %s on each\n", len(ms), short(ms[0].Digest))
	return nil
}

// createKeys creates the crypto user, who generates keys on the cluster
// and uses them.
func (d *demo) createKeys(ctx context.Context) error {
	d.userPassword = newPassword()
	if err := d.officer.CreateUser(ctx, demoUser, hsmcore.CryptoUser, d.userPassword); err != nil {
		return fmt.Errorf("create crypto user: %w", err)
	}
	cu, err := d.memberTarget(demoUser, d.userPassword, d.a, d.b).open(ctx, nil, nil, nil)
	if err != nil {
		return fmt.Errorf("log in as %s: %w", demoUser, err)
	}
	defer cu.Close()
	d.out.printf("  crypto user    %q created on every member and logged in (random password, not shown)\n", demoUser)

	keys, err := cu.GenerateKeys(ctx, []hsmcore.KeySpec{
		{Type: hsmcore.AES, Bits: 256, Label: "payroll-data", Encrypt: true, Decrypt: true},
		{Type: hsmcore.EC, Curve: "P-384", Label: "payroll-approval", Sign: true, Verify: true},
		{Type: hsmcore.RSA, Bits: 2048, Label: "legacy-signing", Sign: true, Verify: true},
	})
	if err != nil {
		return fmt.Errorf("generate keys: %w", err)
	}
	d.aesKey, d.signers = keys[0], keys[1:]
	d.out.printf("  generated %d non-extractable keys, replicated to both members:\n", len(keys))
	if err := d.keyTable(keys); err != nil {
		return err
	}

	if d.ciphertext, err = cu.Encrypt(ctx, d.aesKey.Handle, demoMessage, nil); err != nil {
		return fmt.Errorf("encrypt: %w", err)
	}
	d.out.printf("  message        %q\n", demoMessage)
	d.out.printf("  encrypted      with key %d (AES-256-GCM): %d bytes\n", d.aesKey.Handle, len(d.ciphertext))
	for _, k := range d.signers {
		sig, err := cu.Sign(ctx, k.Handle, demoMessage)
		if err != nil {
			return fmt.Errorf("sign with key %d: %w", k.Handle, err)
		}
		d.signatures = append(d.signatures, sig)
		d.out.printf("  signed         with key %d (%s): %d-byte signature\n", k.Handle, signatureScheme(k), len(sig))
	}
	return d.membersInSync(ctx, cu)
}

// keyTable prints keys as an indented table.
func (d *demo) keyTable(keys []hsmcore.KeyInfo) error {
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "    HANDLE\tTYPE\tLABEL\tKCV")
	for _, k := range keys {
		fmt.Fprintf(tw, "    %d\t%s\t%s\t%s\n", k.Handle, keyType(k), k.Label, k.KCV)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	d.out.printf("%s", buf.String())
	return nil
}

// keyType names a key's algorithm and size, e.g. "AES-256", "EC P-384".
func keyType(k hsmcore.KeyInfo) string {
	switch k.Type {
	case hsmcore.EC:
		return "EC " + k.Curve
	case hsmcore.GenericSecret:
		return fmt.Sprintf("secret-%d", k.Bits)
	}
	return fmt.Sprintf("%s-%d", strings.ToUpper(string(k.Type)), k.Bits)
}

// signatureScheme names the scheme hsmcore's Sign uses with key k.
func signatureScheme(k hsmcore.KeyInfo) string {
	switch {
	case k.Type == hsmcore.EC && k.Curve == "P-384":
		return "ECDSA P-384, SHA-384"
	case k.Type == hsmcore.EC:
		return "ECDSA P-256, SHA-256"
	default:
		return "RSA-PSS, SHA-256"
	}
}
