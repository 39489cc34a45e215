package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/audit"
)

// The demo's steps, in order. Each narrates what it did in a few lines.

// setUp makes the workspace and the three authorities, and the trust pools
// a verifier holds: the root certificates only.
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
	for _, a := range []struct {
		dst  **hsmcore.Authority
		kind hsmcore.AuthorityKind
		name string
	}{
		{&d.mfr, hsmcore.Manufacturer, demoManufacturer},
		{&d.op, hsmcore.Operator, demoOperator},
		{&d.otherOp, hsmcore.Operator, demoOtherOperator},
	} {
		auth, err := hsmcore.NewAuthority(a.kind, a.name)
		if err != nil {
			return err
		}
		if err := auth.Save(filepath.Join(ws, "authorities", a.name)); err != nil {
			return err
		}
		*a.dst = auth
		d.out.printf("  %-14s %-14s root CA %q\n", a.kind, a.name, auth.Certificate().Subject.CommonName)
	}
	d.mfrRoots = x509.NewCertPool()
	d.mfrRoots.AddCert(d.mfr.Certificate())
	d.opRoots = x509.NewCertPool()
	d.opRoots.AddCert(d.op.Certificate())
	d.out.printf("  verifier trusts the %s and %s root certificates, nothing else\n", demoManufacturer, demoOperator)
	return nil
}

// prepareA manufactures HSM A, creates its crypto officer and crypto user,
// and generates the user's keys.
func (d *demo) prepareA(ctx context.Context) error {
	a, err := d.manufacture("hsm-a", d.op)
	if err != nil {
		return err
	}
	d.a = a
	id := a.Identity()
	d.out.printf("  manufactured   serial %s, class %s, firmware %s, operator %s\n", id.Serial, id.Class, id.Firmware, id.Operator)

	officerPassword, userPassword := newPassword(), newPassword()
	if err := a.Initialize(demoOfficer, officerPassword); err != nil {
		return err
	}
	if d.aOfficer, err = a.Login(demoOfficer, officerPassword); err != nil {
		return err
	}
	if err := d.aOfficer.CreateUser(demoUser, hsmcore.CryptoUser, userPassword); err != nil {
		return err
	}
	if d.aUser, err = a.Login(demoUser, userPassword); err != nil {
		return err
	}
	d.userPassword = userPassword
	d.out.printf("  users          crypto officer %q, crypto user %q (random passwords, not shown)\n", demoOfficer, demoUser)

	keys, err := d.aUser.GenerateKeys([]hsmcore.KeySpec{
		{Type: hsmcore.AES, Bits: 256, Label: "payroll-data", Encrypt: true, Decrypt: true},
		{Type: hsmcore.EC, Curve: "P-384", Label: "payroll-approval", Sign: true, Verify: true},
		{Type: hsmcore.RSA, Bits: 2048, Label: "legacy-signing", Sign: true, Verify: true},
	})
	if err != nil {
		return err
	}
	d.aesKey, d.signers = keys[0], keys[1:]
	d.out.printf("  generated %d non-extractable token keys owned by %q:\n", len(keys), demoUser)
	return d.keyTable(keys)
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

// useKeysOnA encrypts the message and signs it with each signing key.
func (d *demo) useKeysOnA(ctx context.Context) error {
	ct, err := d.aUser.Encrypt(d.aesKey.Handle, demoMessage, nil)
	if err != nil {
		return err
	}
	d.ciphertext = ct
	d.out.printf("  message        %q\n", demoMessage)
	d.out.printf("  encrypted      with key %d (AES-256-GCM): %d bytes of nonce, ciphertext and tag\n", d.aesKey.Handle, len(ct))
	for _, k := range d.signers {
		sig, err := d.aUser.Sign(k.Handle, demoMessage)
		if err != nil {
			return err
		}
		d.signatures = append(d.signatures, sig)
		d.out.printf("  signed         with key %d (%s): %d-byte signature\n", k.Handle, signatureScheme(k), len(sig))
	}
	return nil
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

// exportImage streams A's image into a file in the workspace.
func (d *demo) exportImage(ctx context.Context) error {
	h, r, err := d.aOfficer.ExportImage(ctx)
	if err != nil {
		return err
	}
	defer r.Close()
	d.imagePath = filepath.Join(d.ws, demoImage)
	f, err := os.OpenFile(d.imagePath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	sum := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, sum), r)
	if err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", demoImage, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", demoImage, err)
	}
	d.header = h
	d.out.printf("  image          %s, %d bytes, streamed from the HSM by crypto officer %q\n", demoImage, n, demoOfficer)
	d.out.printf("  sha256         %x\n", sum.Sum(nil))
	d.out.printf("  image id       %x\n", h.ImageID)
	d.out.printf("  source         serial %s, %s/%s/%s, firmware %s\n", h.Source.Serial, h.Source.Manufacturer, h.Source.Class, h.Source.Operator, h.Source.Firmware)
	d.out.printf("  PBK            fingerprint %x (first 8 bytes); the body is under a fresh EBK wrapped by the PBK\n", h.PBKFingerprint[:8])
	return nil
}

// restoreIntoB attests a new matching HSM, restores the image into it, and
// uses the restored keys there.
func (d *demo) restoreIntoB(ctx context.Context) error {
	b, err := d.manufacture("hsm-b", d.op)
	if err != nil {
		return err
	}
	st, err := d.attest(b, d.header)
	if err != nil {
		return err
	}
	d.out.printf("  attestation verified: serial %s, %s/%s/%s, firmware %s\n", st.Serial, st.Manufacturer, st.Class, st.Operator, st.Firmware)
	d.out.printf("                 both device certificates chain to the roots; fresh nonce; PBK matches the image\n")

	h, err := importFile(ctx, b, d.imagePath)
	if err != nil {
		return err
	}
	d.out.printf("  imported       image %x into uninitialized HSM B (no session needed)\n", h.ImageID)

	s, err := b.Login(demoUser, d.userPassword)
	if err != nil {
		return err
	}
	defer s.Logout()
	d.out.printf("  logged in      as %q with the password set on HSM A\n", demoUser)
	pt, err := s.Decrypt(d.aesKey.Handle, d.ciphertext, nil)
	if err != nil {
		return err
	}
	if !bytes.Equal(pt, demoMessage) {
		return fmt.Errorf("decrypted message differs from the original: %w", hsmcore.ErrTampered)
	}
	d.out.printf("  decrypted      A's ciphertext with key %d: %q\n", d.aesKey.Handle, pt)
	for i, k := range d.signers {
		if err := s.Verify(k.Handle, demoMessage, d.signatures[i]); err != nil {
			return fmt.Errorf("signature by key %d: %w", k.Handle, err)
		}
		d.out.printf("  verified       A's signature with key %d (%s)\n", k.Handle, keyType(k))
	}
	restored, err := s.Keys()
	if err != nil {
		return err
	}
	want := append([]hsmcore.KeyInfo{d.aesKey}, d.signers...)
	if err := sameKeys(restored, want); err != nil {
		return err
	}
	d.out.printf("  restored keys work on HSM B: %d keys, same handles and KCVs as on HSM A\n", len(restored))
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

// refuseMismatch shows an HSM of the same class but another operator
// failing attestation and refusing the image itself.
func (d *demo) refuseMismatch(ctx context.Context) error {
	c, err := d.manufacture("hsm-c", d.otherOp)
	if err != nil {
		return err
	}
	id := c.Identity()
	d.out.printf("  manufactured   serial %s, class %s, operator %s\n", id.Serial, id.Class, id.Operator)
	if _, err = d.attest(c, d.header); !errors.Is(err, hsmcore.ErrAttestation) {
		return fmt.Errorf("attestation of HSM C: got %v, want %w", err, hsmcore.ErrAttestation)
	}
	d.out.printf("  attestation    rejected: %v\n", err)
	d.out.printf("  import anyway, to show that the HSM checks for itself:\n")
	_, err = importFile(ctx, c, d.imagePath)
	if !errors.Is(err, hsmcore.ErrHardwareMismatch) {
		return fmt.Errorf("import into HSM C: got %v, want %w", err, hsmcore.ErrHardwareMismatch)
	}
	d.out.printf("  refused        %v\n", err)
	return d.unchanged("C", c)
}

// refuseTampered flips one byte in the middle of a copy of the image and
// shows a fresh matching HSM refusing it.
func (d *demo) refuseTampered(ctx context.Context) error {
	path := filepath.Join(d.ws, demoTampered)
	off, size, err := tamperedCopy(d.imagePath, path)
	if err != nil {
		return err
	}
	d.out.printf("  tampered copy  %s: byte %d of %d flipped (inside the encrypted body)\n", demoTampered, off, size)
	dev, err := d.manufacture("hsm-d", d.op)
	if err != nil {
		return err
	}
	d.out.printf("  manufactured   serial %s, same class, manufacturer and operator as HSM A\n", dev.Identity().Serial)
	_, err = importFile(ctx, dev, path)
	if !errors.Is(err, hsmcore.ErrTampered) {
		return fmt.Errorf("import of tampered image: got %v, want %w", err, hsmcore.ErrTampered)
	}
	d.out.printf("  refused        %v\n", err)
	return d.unchanged("D", dev)
}

// unchanged checks that a device that refused an import is still
// uninitialized and that its audit log records the refusal.
func (d *demo) unchanged(name string, dev *hsmcore.Device) error {
	if dev.Initialized() {
		return fmt.Errorf("HSM %s has users after a refused import", name)
	}
	entries, _, err := dev.AuditLog()
	if err != nil {
		return err
	}
	if len(entries) == 0 {
		return fmt.Errorf("HSM %s's audit log is empty", name)
	}
	last := entries[len(entries)-1]
	if last.Op != "image.import" || last.Result != "refused" {
		return fmt.Errorf("HSM %s's last audit entry is %s %s, want image.import refused", name, last.Op, last.Result)
	}
	d.out.printf("  HSM %s unchanged: still uninitialized; its audit log records %s %s\n", name, last.Op, last.Result)
	return nil
}

// tamperedCopy copies the image at src to dst and flips one byte in the
// middle of dst's body, returning its offset and the file size.
func tamperedCopy(src, dst string) (off, size int64, err error) {
	data, err := os.ReadFile(src)
	if err != nil {
		return 0, 0, err
	}
	_, raw, err := hsmcore.ReadImageHeader(bytes.NewReader(data))
	if err != nil {
		return 0, 0, err
	}
	size = int64(len(data))
	off = int64(len(raw)) + (size-int64(len(raw)))/2
	data[off] ^= 0xff
	if err := os.WriteFile(dst, data, 0o600); err != nil {
		return 0, 0, err
	}
	return off, size, nil
}

// importFile streams the image at path into dev, which must be
// uninitialized.
func importFile(ctx context.Context, dev *hsmcore.Device, path string) (*hsmcore.ImageHeader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return dev.ImportImage(ctx, nil, bufio.NewReader(f))
}

// verifyAudit verifies A's audit log against the head its device key
// signed, taking the device certificate from a verified attestation.
func (d *demo) verifyAudit(ctx context.Context) error {
	st, err := d.attest(d.a, d.header)
	if err != nil {
		return err
	}
	entries, head, err := d.a.AuditLog()
	if err != nil {
		return err
	}
	if err := hsmcore.VerifyAuditLog(entries, head, st.Certificate); err != nil {
		return err
	}
	d.out.printf("  audit log      %d entries verified: hash chain intact, head signed by the device key of %s\n", len(entries), head.Serial)
	d.out.printf("  operations     %s\n", opCounts(entries))
	return nil
}

// opCounts summarizes audit entries as "op n, op n, …" in order of first
// appearance.
func opCounts(entries []audit.Entry) string {
	var order []string
	count := map[string]int{}
	for _, e := range entries {
		if count[e.Op] == 0 {
			order = append(order, e.Op)
		}
		count[e.Op]++
	}
	parts := make([]string, len(order))
	for i, op := range order {
		parts[i] = fmt.Sprintf("%s %d", op, count[op])
	}
	return strings.Join(parts, ", ")
}
