package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
	"github.com/hsmbackup/hsmbackup/internal/pki"
	"github.com/hsmbackup/hsmbackup/restore"
	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/store/storeurl"
	"github.com/hsmbackup/hsmbackup/wrap"
)

// The demo's steps, in order. Each narrates what it did in a few lines.

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
	if d.st, err = storeurl.Open(url, storeurl.Options{}); err != nil {
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
	cfg := d.clusterClientConfig()
	cfg.Addr, cfg.ManufacturerRoots = d.a.addr, nil
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

	d.officer, err = cluster.Open(ctx, cluster.Config{
		Members:       []string{d.a.addr},
		Client:        d.clusterClientConfig(),
		OperatorRoots: d.opRoots,
	}, demoOfficer, d.officerPassword)
	if err != nil {
		return fmt.Errorf("log in as %s: %w", demoOfficer, err)
	}
	d.closers = append(d.closers, d.officer.Close)
	d.out.printf("  crypto officer %q created and logged in over mutual TLS (random password, not shown)\n", demoOfficer)

	if err := d.officer.AddMember(ctx, d.b.addr); err != nil {
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
	cu, err := cluster.Open(ctx, cluster.Config{
		Members: []string{d.a.addr, d.b.addr},
		Client:  d.clusterClientConfig(),
	}, demoUser, d.userPassword)
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

// takeBackup backs the cluster up from member A, over a crypto officer's
// session on that member.
func (d *demo) takeBackup(ctx context.Context) error {
	src, err := d.memberClient(d.a)
	if err != nil {
		return err
	}
	defer src.Close()
	if _, err := src.Login(ctx, demoOfficer, d.officerPassword); err != nil {
		return fmt.Errorf("log in on HSM A: %w", err)
	}
	defer src.Logout(context.WithoutCancel(ctx))
	m, err := backup.Create(ctx, src, backup.Repo{Store: d.st, Prefix: d.prefix}, backup.CreateOptions{
		ClusterID:          demoClusterID,
		Recipients:         []wrap.Recipient{d.keyring},
		SigningKey:         d.signingKey,
		Tags:               map[string]string{"made-by": "hsmbackup-demo"},
		ClusterCertificate: d.clusterCert,
		CustomerCA:         d.ca.Cert.Raw,
	})
	if err != nil {
		return err
	}
	d.manifest = m
	d.out.printf("  backup         %s of %s, taken from HSM A (serial %s)\n", m.ID, m.ClusterID, m.Source.Serial)
	d.out.printf("  inner image    %d bytes, encrypted by the HSM under its PBK, image id %s\n", m.ImageSize, m.ImageID)
	d.out.printf("  outer envelope wrapped again to %s, streamed into the store\n", strings.Join(m.Recipients, ", "))
	d.out.printf("  stored         %s: %d bytes, sha256 %s\n", backup.ImageObject, m.ObjectSize, short(m.ObjectSHA256))
	d.out.printf("  manifest       %s, signed with the Ed25519 key, written last and create-only\n", backup.ManifestObject)
	d.out.printf("                 both under %s\n", strings.TrimSuffix(backup.Repo{Prefix: d.prefix}.ObjectKey(m.ClusterID, m.ID, ""), "/"))
	return nil
}

// listAndVerify lists the run's backups and verifies the new one in full.
func (d *demo) listAndVerify(ctx context.Context) error {
	ms, err := backup.List(ctx, backup.Repo{Store: d.st, Prefix: d.prefix}, backup.Filter{})
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "    BACKUP\tCLUSTER\tSOURCE\tSTATE\tOBJECT BYTES\tCREATED")
	for _, m := range ms {
		fmt.Fprintf(tw, "    %s\t%s\t%s\t%s\t%d\t%s\n", m.ID, m.ClusterID, m.Source.Serial, m.State, m.ObjectSize, m.Created.Format(time.RFC3339))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	d.out.printf("  listed %d backup(s):\n%s", len(ms), buf.String())
	if len(ms) != 1 || ms[0].ID != d.manifest.ID {
		return fmt.Errorf("listed %d backups, want just %s", len(ms), d.manifest.ID)
	}
	err = backup.Verify(ctx, backup.Repo{Store: d.st, Prefix: d.prefix}, d.manifest.ClusterID, d.manifest.ID, d.verifyOptions())
	if err != nil {
		return err
	}
	d.out.printf("  verified       manifest signature, object SHA-256, outer envelope, inner image header: ok\n")
	return nil
}

// verifyOptions verify backups in full, as restore does.
func (d *demo) verifyOptions() backup.VerifyOptions {
	return backup.VerifyOptions{PublicKey: d.verifyKey, Identities: []wrap.Identity{d.keyring}, Deep: true}
}

// restoreOptions are the options of every restore in the demo.
func (d *demo) restoreOptions() restore.Options {
	return restore.Options{
		PublicKey:         d.verifyKey,
		Identities:        []wrap.Identity{d.keyring},
		ManufacturerRoots: d.mfrRoots,
		OperatorRoots:     d.opRoots,
	}
}

// restoreInto restores the demo's backup into the HSM behind target.
func (d *demo) restoreInto(ctx context.Context, target *client.Client) (*restore.Result, error) {
	return restore.Restore(ctx, backup.Repo{Store: d.st, Prefix: d.prefix}, d.manifest.ClusterID, d.manifest.ID, target, d.restoreOptions())
}

// freshTarget serves a new HSM for operator op and returns it with a
// client that trusts it as a device: a restore target.
func (d *demo) freshTarget(name string, op *device.Authority) (*demoHSM, *client.Client, error) {
	h, err := d.serveHSM(name, op)
	if err != nil {
		return nil, nil, err
	}
	cl, err := d.deviceClient(h)
	if err != nil {
		return nil, nil, err
	}
	return h, cl, nil
}

// restoreIntoC restores the backup into a fresh HSM of the same class,
// manufacturer and operator, then logs in there as the crypto user and
// uses the keys made before the backup.
func (d *demo) restoreIntoC(ctx context.Context) error {
	c, target, err := d.freshTarget("C", d.op)
	if err != nil {
		return err
	}
	defer target.Close()
	d.out.printf("  HSM C          serial %s, %s, operator %s, uninitialized, on %s\n", c.id.Serial, c.id.Class, c.id.Operator, c.addr)
	res, err := d.restoreInto(ctx, target)
	if err != nil {
		return err
	}
	d.out.printf("  restored       %s into HSM C (serial %s): backup verified in full,\n", res.BackupID, res.TargetSerial)
	d.out.printf("                 HSM C attested (fresh nonce, class, operator, PBK), image streamed in and committed\n")

	cu, err := d.memberClient(c)
	if err != nil {
		return err
	}
	defer cu.Close()
	if _, err := cu.Login(ctx, demoUser, d.userPassword); err != nil {
		return fmt.Errorf("log in on HSM C: %w", err)
	}
	defer cu.Logout(context.WithoutCancel(ctx))
	d.out.printf("  logged in      on HSM C as %q over mutual TLS: it presents the %s certificate now\n", demoUser, demoClusterID)
	pt, err := cu.Decrypt(ctx, d.aesKey.Handle, d.ciphertext, nil)
	if err != nil {
		return fmt.Errorf("decrypt on HSM C: %w", err)
	}
	if !bytes.Equal(pt, demoMessage) {
		return fmt.Errorf("decrypted message differs from the original: %w", hsmcore.ErrTampered)
	}
	d.out.printf("  decrypted      the ciphertext made before the backup, with key %d: %q\n", d.aesKey.Handle, pt)
	for i, k := range d.signers {
		if err := cu.Verify(ctx, k.Handle, demoMessage, d.signatures[i]); err != nil {
			return fmt.Errorf("verify signature by key %d on HSM C: %w", k.Handle, err)
		}
		d.out.printf("  verified       the signature made before the backup with key %d (%s)\n", k.Handle, keyType(k))
	}
	restored, err := cu.Keys(ctx)
	if err != nil {
		return err
	}
	want := append([]hsmcore.KeyInfo{d.aesKey}, d.signers...)
	if err := sameKeys(restored, want); err != nil {
		return err
	}
	d.out.printf("  restored keys work on HSM C: %d keys, same handles and KCVs as in the cluster\n", len(restored))
	return nil
}

// sameKeys checks that got and want list the same keys: handle, type,
// label and KCV.
func sameKeys(got, want []hsmcore.KeyInfo) error {
	if len(got) != len(want) {
		return fmt.Errorf("restored HSM holds %d keys, want %d", len(got), len(want))
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.Handle != w.Handle || g.Type != w.Type || g.Label != w.Label || g.KCV != w.KCV {
			return fmt.Errorf("restored key %d (%s, KCV %s) differs from key %d (%s, KCV %s)", g.Handle, g.Label, g.KCV, w.Handle, w.Label, w.KCV)
		}
	}
	return nil
}

// refuseMismatch shows a genuine HSM of the same class but another
// operator failing the restore's attestation, and left unchanged.
func (d *demo) refuseMismatch(ctx context.Context) error {
	h, target, err := d.freshTarget("D", d.otherOp)
	if err != nil {
		return err
	}
	defer target.Close()
	d.out.printf("  HSM D          serial %s, %s, operator %s, uninitialized, on %s\n", h.id.Serial, h.id.Class, h.id.Operator, h.addr)
	d.out.printf("                 genuine: both chains verify; only the operator differs\n")
	before, err := target.Health(ctx)
	if err != nil {
		return err
	}
	_, err = d.restoreInto(ctx, target)
	if !errors.Is(err, hsmcore.ErrAttestation) {
		return fmt.Errorf("restore into HSM D (%s): got %v, want %w", h.addr, err, hsmcore.ErrAttestation)
	}
	d.out.printf("  refused        %v\n", err)
	return d.unchanged(ctx, "D", target, before)
}

// refuseTampered flips one byte of the stored image object and shows
// verify naming the layer that failed and restore refusing the backup.
func (d *demo) refuseTampered(ctx context.Context) error {
	key := backup.Repo{Prefix: d.prefix}.ObjectKey(d.manifest.ClusterID, d.manifest.ID, backup.ImageObject)
	off, size, err := flipStoredByte(ctx, d.st, key)
	if err != nil {
		return fmt.Errorf("tamper with %s: %w", key, err)
	}
	d.out.printf("  tampered       flipped byte %d of %d of the stored image object, through the store\n", off, size)

	err = backup.Verify(ctx, backup.Repo{Store: d.st, Prefix: d.prefix}, d.manifest.ClusterID, d.manifest.ID, d.verifyOptions())
	if !errors.Is(err, backup.ErrObjectHash) {
		return fmt.Errorf("verify the tampered backup: got %v, want %w", err, backup.ErrObjectHash)
	}
	d.out.printf("  verify failed  at the %s layer: %v\n", verifyLayer(err), err)

	h, target, err := d.freshTarget("E", d.op)
	if err != nil {
		return err
	}
	defer target.Close()
	d.out.printf("  HSM E          serial %s, %s, operator %s, uninitialized, on %s: a fit target\n", h.id.Serial, h.id.Class, h.id.Operator, h.addr)
	before, err := target.Health(ctx)
	if err != nil {
		return err
	}
	_, err = d.restoreInto(ctx, target)
	if !errors.Is(err, backup.ErrObjectHash) {
		return fmt.Errorf("restore of the tampered backup: got %v, want %w", err, backup.ErrObjectHash)
	}
	d.out.printf("  refused        %v\n", err)
	return d.unchanged(ctx, "E", target, before)
}

// verifyLayer names the layer a failed backup.Verify reports.
func verifyLayer(err error) string {
	switch {
	case errors.Is(err, backup.ErrManifest):
		return "manifest"
	case errors.Is(err, backup.ErrObjectHash):
		return "object hash"
	case errors.Is(err, backup.ErrOuterLayer):
		return "outer envelope"
	case errors.Is(err, backup.ErrInnerHeader):
		return "inner image header"
	}
	return "storage"
}

// maxTamperSize bounds the object flipStoredByte reads into memory: the
// demo's image is a few kilobytes.
const maxTamperSize = 64 << 20

// flipStoredByte replaces the object at key with a copy whose middle byte
// is flipped, through the store's API, and returns the byte's offset and
// the object's size.
func flipStoredByte(ctx context.Context, st store.Store, key string) (off, size int64, err error) {
	rc, err := st.Get(ctx, key)
	if err != nil {
		return 0, 0, err
	}
	b, err := io.ReadAll(io.LimitReader(rc, maxTamperSize+1))
	rc.Close()
	if err != nil {
		return 0, 0, err
	}
	if len(b) == 0 || len(b) > maxTamperSize {
		return 0, 0, fmt.Errorf("object of %d bytes", len(b))
	}
	off = int64(len(b) / 2)
	b[off] ^= 0xff
	if err := st.Put(ctx, key, bytes.NewReader(b), store.PutOptions{}); err != nil {
		return 0, 0, err
	}
	return off, int64(len(b)), nil
}
