package device

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/audit"
)

func TestRestartKeepsState(t *testing.T) {
	d := newDevice(t, stdHW)
	_, cu := initDevice(t, d)
	initCluster(t, d, "cluster-1")
	keys := fillKeys(t, cu, 50)
	id, fp := d.Identity(), d.PBKFingerprint()
	d.Close()

	d2, err := Open(d.dir, TestOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if d2.Identity() != id || d2.PBKFingerprint() != fp || d2.ClusterID() != "cluster-1" || !d2.ClusterInitialized() {
		t.Fatal("identity, PBK or cluster changed across restart")
	}
	got, err := login(t, d2, "alice").Keys()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(keys) {
		t.Fatalf("%d keys after restart, want %d", len(got), len(keys))
	}
	for i := range keys {
		if got[i].Handle != keys[i].Handle || got[i].KCV != keys[i].KCV {
			t.Fatalf("key %d changed across restart", keys[i].Handle)
		}
	}
}

// A crash between writing the temporary file and renaming it leaves the
// temporary file behind; the committed state is what opens.
func TestCrashMidWriteKeepsCommittedState(t *testing.T) {
	d := newDevice(t, stdHW)
	_, cu := initDevice(t, d)
	keys := fillKeys(t, cu, 10)
	d.Close()
	if err := os.WriteFile(filepath.Join(d.dir, "."+stateFile+".tmp-123"), []byte("half a state"), 0o600); err != nil {
		t.Fatal(err)
	}
	d2, err := Open(d.dir, TestOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	got, err := login(t, d2, "alice").Keys()
	if err != nil || len(got) != len(keys) {
		t.Fatalf("after crash: %d keys, %v", len(got), err)
	}
	// The audit log says what Open removed.
	entries, _, err := d2.AuditLog()
	if err != nil {
		t.Fatal(err)
	}
	if e := entries[len(entries)-2]; e.Op != "state.recovered" || e.Actor != "" || e.Object != "temporary files of an interrupted write removed: 1" {
		t.Fatalf("entry before the login after the crash: %+v, want state.recovered", e)
	}
}

// When sealing fails, the operation fails and memory keeps the committed
// state.
func TestFailedCommitChangesNothing(t *testing.T) {
	d := newDevice(t, stdHW)
	_, cu := initDevice(t, d)
	fillKeys(t, cu, 3)
	before := contentsBytes(t, d)
	// Replace the device directory by a file so no temp file can be made.
	if err := os.RemoveAll(d.dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// The journal fails too (its file was open before: fail its writes).
	d.jr.f.Close()
	for _, what := range []string{"journal", "base"} { // the first failure drops the journal
		if _, err := cu.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256}); err == nil {
			t.Fatalf("generate key succeeded without storage (%s)", what)
		}
		if !bytes.Equal(contentsBytes(t, d), before) {
			t.Fatalf("in-memory state changed by a failed commit (%s)", what)
		}
	}
}

func TestOpenRefusesDamage(t *testing.T) {
	cases := []struct {
		name   string
		damage func(t *testing.T, dir string)
		want   error
	}{
		{"sealed state flipped", func(t *testing.T, dir string) { flipFile(t, filepath.Join(dir, stateFile), 100) }, hsmcore.ErrTampered},
		{"sealed state truncated", func(t *testing.T, dir string) { os.Truncate(filepath.Join(dir, stateFile), 40) }, hsmcore.ErrTampered},
		{"audit entry edited", func(t *testing.T, dir string) {
			editFile(t, filepath.Join(dir, auditFile), `"op":"login"`, `"op":"logim"`)
		}, hsmcore.ErrTampered},
		{"audit entry removed", func(t *testing.T, dir string) {
			b, _ := os.ReadFile(filepath.Join(dir, auditFile))
			lines := strings.SplitAfter(string(b), "\n")
			os.WriteFile(filepath.Join(dir, auditFile), []byte(strings.Join(append(lines[:1], lines[2:]...), "")), 0o600)
		}, hsmcore.ErrTampered},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := newDevice(t, stdHW)
			initDevice(t, d)
			d.Close()
			c.damage(t, d.dir)
			if _, err := Open(d.dir, TestOptions()); !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
	t.Run("seal key readable by others", func(t *testing.T) {
		d := newDevice(t, stdHW)
		d.Close()
		os.Chmod(filepath.Join(d.dir, sealKeyFile), 0o644)
		if _, err := Open(d.dir, TestOptions()); err == nil || !strings.Contains(err.Error(), "0600") {
			t.Fatalf("got %v, want a refusal naming 0600", err)
		}
	})
}

func flipFile(t *testing.T, path string, off int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[off] ^= 1
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func editFile(t *testing.T, path, old, new string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(old)) {
		t.Fatalf("%s does not contain %q", path, old)
	}
	if err := os.WriteFile(path, bytes.Replace(b, []byte(old), []byte(new), 1), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestAuditLogRecordsAndVerifies(t *testing.T) {
	d := newDevice(t, stdHW)
	co, cu := initDevice(t, d)
	k, err := cu.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Wrap: true, Extractable: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cu.WrapKey(k.Handle, k.Handle, hsmcore.AESKWP); err != nil {
		t.Fatal(err)
	}
	d.Login("alice", "wrong password!")
	exportImage(t, co)
	entries, head, err := d.AuditLog()
	if err != nil {
		t.Fatal(err)
	}
	mfrCert, _ := d.Certificates()
	if err := hsmcore.VerifyAuditLog(entries, head, mfrCert); err != nil {
		t.Fatal(err)
	}
	var ops []string
	for _, e := range entries {
		ops = append(ops, e.Actor+":"+e.Op+":"+e.Result)
	}
	got := strings.Join(ops, " ")
	for _, want := range []string{":device.manufacture:ok", "(unauthenticated):device.initialize:ok", "admin:login:ok", "admin:user.create:ok",
		"alice:key.create:ok", "alice:key.wrap:ok", "(unauthenticated):login:denied", "admin:image.export:ok"} {
		if !strings.Contains(got, want) {
			t.Errorf("audit log lacks %q: %s", want, got)
		}
	}
	// A removed tail verifies as a chain but not against the signed head.
	if err := hsmcore.VerifyAuditLog(entries[:len(entries)-1], head, mfrCert); !errors.Is(err, audit.ErrBroken) {
		t.Fatalf("tail removed: got %v, want audit.ErrBroken", err)
	}
	// Another device's certificate does not verify the head.
	other, _ := newDevice(t, stdHW).Certificates()
	if err := hsmcore.VerifyAuditLog(entries, head, other); !errors.Is(err, hsmcore.ErrTampered) {
		t.Fatalf("other device: got %v, want ErrTampered", err)
	}
}

// TestSecretsNeverLeave gathers every secret a device holds and checks
// that none appears, raw, hex or base64, in anything the device hands out:
// images, attestations, audit log, key attributes, certificates, errors.
func TestSecretsNeverLeave(t *testing.T) {
	d := newDevice(t, stdHW)
	co, cu := initDevice(t, d)
	keys := fillKeys(t, cu, 60)
	sealKey, err := os.ReadFile(filepath.Join(d.dir, sealKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	secrets := [][]byte{d.mkbk, d.akbk, d.pbk, sealKey, d.deviceKey.D.Bytes(), d.claim}
	d.mu.Lock()
	for _, k := range d.st.Keys.All() {
		secrets = append(secrets, k.Material)
	}
	for _, u := range d.st.Users {
		secrets = append(secrets, u.Hash)
	}
	d.mu.Unlock()

	var out bytes.Buffer
	out.Write(exportImage(t, co))
	a, _ := d.Attest(hsmcore.NewNonce())
	json.NewEncoder(&out).Encode(a)
	entries, head, _ := d.AuditLog()
	json.NewEncoder(&out).Encode(entries)
	json.NewEncoder(&out).Encode(head)
	json.NewEncoder(&out).Encode(keys)
	m, o := d.Certificates()
	out.Write(m.Raw)
	out.Write(o.Raw)
	for _, k := range keys {
		_, err := cu.WrapKey(k.Handle, k.Handle, hsmcore.AESKWP)
		if err != nil {
			out.WriteString(err.Error())
		}
		_, err = cu.Decrypt(k.Handle, []byte("not a ciphertext at all, really"), nil)
		if err != nil {
			out.WriteString(err.Error())
		}
	}
	_, err = d.Login("admin", "wrong password")
	out.WriteString(err.Error())
	_, err = newDevice(t, hw{"hsm2m.medium", "acme", "other", "2.1.0", false}).claimImport(context.Background(), bytes.NewReader(exportImage(t, co)))
	out.WriteString(err.Error())

	for i, s := range secrets {
		if len(s) < 16 {
			continue // too short to search for without chance matches
		}
		for _, enc := range [][]byte{s, []byte(hex.EncodeToString(s)), []byte(base64.StdEncoding.EncodeToString(s))} {
			if bytes.Contains(out.Bytes(), enc) {
				t.Fatalf("secret %d appears in the device's output", i)
			}
		}
	}
}

// Two processes (or two opens) never hold one device.
func TestDeviceDirIsLocked(t *testing.T) {
	d := newDevice(t, stdHW)
	if _, err := Open(d.dir, TestOptions()); !errors.Is(err, hsmcore.ErrPermission) || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second open: got %v, want a refusal saying the device is in use", err)
	}
	d.Close()
	d2, err := Open(d.dir, TestOptions())
	if err != nil {
		t.Fatalf("open after close: %v", err)
	}
	d2.Close()
}

// TestStateFileTampering: a state file of several chunks refuses to open
// after any change to it: a flipped bit in its salt or in any chunk, a cut
// at a chunk boundary or inside a chunk, a chunk dropped or repeated, a
// byte appended. Each is ErrTampered, and the file is left as it was.
func TestStateFileTampering(t *testing.T) {
	d := newDevice(t, stdHW)
	_, cu := initDevice(t, d)
	fillKeys(t, cu, 2000)
	d.Close()
	path := filepath.Join(d.dir, stateFile)
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	const head, chunk = 8 + stateSalt, 64<<10 + 16
	if len(orig) < head+3*chunk {
		t.Fatalf("state of %d bytes: fewer than three chunks", len(orig))
	}
	flip := func(off int) func([]byte) []byte {
		return func(b []byte) []byte { b[off] ^= 1; return b }
	}
	cases := map[string]func([]byte) []byte{
		"salt flipped":            flip(8),
		"first chunk flipped":     flip(head),
		"middle chunk flipped":    flip(head + chunk + chunk/2),
		"last byte flipped":       flip(len(orig) - 1),
		"cut at a chunk boundary": func(b []byte) []byte { return b[:head+2*chunk] },
		"cut inside a chunk":      func(b []byte) []byte { return b[:len(b)-5] },
		"chunk dropped":           func(b []byte) []byte { return append(b[:head+chunk:head+chunk], b[head+2*chunk:]...) },
		"chunk repeated":          func(b []byte) []byte { return slices.Concat(b[:head+2*chunk], b[head+chunk:]) },
		"byte appended":           func(b []byte) []byte { return append(b, 0) },
		"version 2 magic on it":   func(b []byte) []byte { b[7] = 2; return b },
	}
	for name, damage := range cases {
		t.Run(name, func(t *testing.T) {
			bad := damage(bytes.Clone(orig))
			if err := os.WriteFile(path, bad, 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := Open(d.dir, TestOptions()); !errors.Is(err, hsmcore.ErrTampered) {
				t.Fatalf("got %v, want ErrTampered", err)
			}
			if now, _ := os.ReadFile(path); !bytes.Equal(now, bad) {
				t.Fatal("a refused open changed the state file")
			}
		})
	}
	if err := os.WriteFile(path, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	d2, err := Open(d.dir, TestOptions())
	if err != nil {
		t.Fatalf("the undamaged file: %v", err)
	}
	d2.Close()
}
