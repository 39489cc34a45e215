package device

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// reopenedContents opens dir and returns its contents encoded, and the
// state digest it reports.
func reopenedContents(t *testing.T, dir string) ([]byte, string, error) {
	t.Helper()
	d, err := Open(dir, TestOptions())
	if err != nil {
		return nil, "", err
	}
	defer d.Close()
	return contentsBytes(t, d), d.StateDigest(), nil
}

// TestJournalChangesInProportion: a change of one object in an HSM full of
// keys appends one small entry to the journal and leaves device.sealed as
// it was; reopened, the HSM holds every change, with the same digest.
func TestJournalChangesInProportion(t *testing.T) {
	d := newDevice(t, stdHW)
	co, cu := initDevice(t, d)
	initCluster(t, d, "cluster-1")
	keys := fillKeys(t, cu, 300)
	base := readFile(t, filepath.Join(d.dir, stateFile))
	journal := len(readFile(t, filepath.Join(d.dir, journalFile)))

	k, err := cu.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Label: "one more", Encrypt: true, Decrypt: true})
	if err != nil {
		t.Fatal(err)
	}
	grown := len(readFile(t, filepath.Join(d.dir, journalFile))) - journal
	if grown <= 0 || grown > 8<<10 {
		t.Fatalf("one key grew the journal by %d bytes (the base is %d)", grown, len(base))
	}
	lbl := "renamed"
	steps := []func() error{
		func() error { return cu.SetAttributes(keys[3].Handle, hsmcore.AttributeChange{Label: &lbl}) },
		func() error { return co.CreateUser("bob", hsmcore.CryptoUser, testPassword) },
		func() error { return cu.ShareKey(k.Handle, "bob", true) },
		func() error { return cu.ChangePassword(testPassword + " again") },
		func() error { return co.SetTrusted(keys[300-1].Handle, true) },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	if !bytes.Equal(readFile(t, filepath.Join(d.dir, stateFile)), base) {
		t.Fatal("a small change rewrote device.sealed")
	}
	want, digest := contentsBytes(t, d), d.StateDigest()
	d.Close()
	got, gotDigest, err := reopenedContents(t, d.dir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) || gotDigest != digest {
		t.Fatal("the reopened HSM differs from the one closed")
	}
}

// TestJournalCrashAtEveryByte cuts the journal's last entry at every
// length a crash during its append can leave (and fills the rest with
// zeros, as a file system may): the HSM opens with the state before the
// change, and goes on; only the whole entry gives the state after it.
func TestJournalCrashAtEveryByte(t *testing.T) {
	d := newDevice(t, stdHW)
	_, cu := initDevice(t, d)
	fillKeys(t, cu, 20)
	before := contentsBytes(t, d)
	jpath := filepath.Join(d.dir, journalFile)
	old := readFile(t, jpath)
	if _, err := cu.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256}); err != nil {
		t.Fatal(err)
	}
	after := contentsBytes(t, d)
	full := readFile(t, jpath)
	d.Close()
	entry := full[len(old):]
	if len(entry) == 0 {
		t.Fatal("the change did not go to the journal")
	}
	for cut := 0; cut <= len(entry); cut++ {
		for _, zeros := range []bool{false, true} {
			if zeros && cut == len(entry) {
				continue
			}
			j := append(bytes.Clone(old), entry[:cut]...)
			if zeros {
				j = append(j, make([]byte, len(entry)-cut)...)
			}
			writeFile(t, jpath, j)
			got, _, err := reopenedContents(t, d.dir)
			if err != nil {
				t.Fatalf("cut at %d of %d (zeros %v): %v", cut, len(entry), zeros, err)
			}
			want, whole := before, bytes.Equal(j[len(old):], entry) // zeros may end it as it ended
			if whole {
				want = after
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("cut at %d of %d (zeros %v): neither the old state nor the new", cut, len(entry), zeros)
			}
			if !whole && !bytes.Equal(readFile(t, jpath), old) {
				t.Fatalf("cut at %d: the torn entry was not cut off", cut)
			}
		}
	}

	// After a torn tail is cut off, the HSM goes on and keeps what it does.
	writeFile(t, jpath, append(bytes.Clone(old), entry[:len(entry)/2]...))
	d2, err := Open(d.dir, TestOptions())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := login(t, d2, "alice").GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128}); err != nil {
		t.Fatal(err)
	}
	want := contentsBytes(t, d2)
	d2.Close()
	if got, _, err := reopenedContents(t, d.dir); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("a change after the repair did not last: %v", err)
	}
}

// TestJournalNewBaseCrash: a new base (written when a change deletes
// something) replaces device.sealed and then the journal. A crash before
// the rename leaves the old base and journal (the old state); one between
// the two renames leaves the new base beside the old journal, which names
// the old base and is ignored (the new state).
func TestJournalNewBaseCrash(t *testing.T) {
	d := newDevice(t, stdHW)
	_, cu := initDevice(t, d)
	keys := fillKeys(t, cu, 20)
	if _, err := cu.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256}); err != nil {
		t.Fatal(err)
	}
	spath, jpath := filepath.Join(d.dir, stateFile), filepath.Join(d.dir, journalFile)
	oldBase, oldJournal, before := readFile(t, spath), readFile(t, jpath), contentsBytes(t, d)
	if err := cu.DeleteKey(keys[0].Handle); err != nil {
		t.Fatal(err)
	}
	newBase, after := readFile(t, spath), contentsBytes(t, d)
	if bytes.Equal(newBase, oldBase) || len(readFile(t, jpath)) >= len(oldJournal) {
		t.Fatal("a deletion did not write a new base and start the journal again")
	}
	d.Close()

	writeFile(t, spath, oldBase)
	writeFile(t, jpath, oldJournal)
	writeFile(t, filepath.Join(d.dir, "."+stateFile+".tmp-1"), newBase)
	if got, _, err := reopenedContents(t, d.dir); err != nil || !bytes.Equal(got, before) {
		t.Fatalf("crash before the base's rename: %v", err)
	}
	writeFile(t, spath, newBase)
	writeFile(t, jpath, oldJournal)
	if got, _, err := reopenedContents(t, d.dir); err != nil || !bytes.Equal(got, after) {
		t.Fatalf("crash between the renames: %v", err)
	}
}

// TestJournalTampering: entries are bound to their journal, their base
// and their place; only the last one may be torn.
func TestJournalTampering(t *testing.T) {
	d := newDevice(t, stdHW)
	_, cu := initDevice(t, d)
	fillKeys(t, cu, 5)
	jpath := filepath.Join(d.dir, journalFile)
	head := readFile(t, jpath)
	var entries, states [][]byte
	for range 3 {
		prev := len(readFile(t, jpath))
		if _, err := cu.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256}); err != nil {
			t.Fatal(err)
		}
		entries = append(entries, readFile(t, jpath)[prev:])
		states = append(states, contentsBytes(t, d))
	}
	d.Close()
	other := newDevice(t, stdHW)
	_, ocu := initDevice(t, other)
	prev := len(readFile(t, filepath.Join(other.dir, journalFile)))
	if _, err := ocu.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256}); err != nil {
		t.Fatal(err)
	}
	foreign := readFile(t, filepath.Join(other.dir, journalFile))[prev:]
	flipped := bytes.Clone(entries[0])
	flipped[20] ^= 1

	join := func(parts ...[]byte) []byte { return bytes.Join(append([][]byte{head}, parts...), nil) }
	for name, j := range map[string][]byte{
		"first entry flipped":            join(flipped, entries[1], entries[2]),
		"entries swapped":                join(entries[1], entries[0], entries[2]),
		"another HSM's entry in between": join(entries[0], foreign, entries[1]),
		"length beyond any entry":        join(entries[0], []byte{0xff, 0xff, 0xff, 0xff}, entries[1]),
	} {
		t.Run(name, func(t *testing.T) {
			writeFile(t, jpath, j)
			d2, err := Open(d.dir, TestOptions())
			if err == nil {
				d2.Close()
			}
			if !errors.Is(err, hsmcore.ErrTampered) && !errors.Is(err, hsmcore.ErrMalformed) {
				t.Fatalf("got %v, want ErrTampered or ErrMalformed", err)
			}
			if strings.Contains(err.Error(), "\x00") {
				t.Fatal("binary in the error")
			}
		})
	}
	// Entries cut from the end (or a last one that does not open, which
	// is what a crash during its append leaves) are a rollback to an
	// earlier state, as an older device.sealed put back would be: the HSM
	// opens without them. A real HSM holds a counter in tamper-responsive
	// memory against this; docs/THREATS.md names the limit.
	writeFile(t, jpath, join(entries[0], entries[2]))
	got, _, err := reopenedContents(t, d.dir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, states[0]) {
		t.Fatal("not the state of the entries kept")
	}
	// A journal not of this base (left by a crash after a new base) is
	// ignored: what it held is in the base that replaced it.
	writeFile(t, jpath, append(append(bytes.Clone(journalMagic), make([]byte, 12)...), entries[0]...))
	if _, _, err := reopenedContents(t, d.dir); err != nil {
		t.Fatalf("a stale journal: %v", err)
	}
}

// TestJournalCompacts: once the journal has grown to its limit, the next
// change writes a new base and the journal starts again, holding all.
func TestJournalCompacts(t *testing.T) {
	d := newDevice(t, stdHW)
	_, cu := initDevice(t, d)
	jpath := filepath.Join(d.dir, journalFile)
	for i := 0; ; i++ {
		prev := len(readFile(t, jpath))
		if _, err := cu.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256}); err != nil {
			t.Fatal(err)
		}
		if n := len(readFile(t, jpath)); n < prev {
			if prev < minCompaction/2 {
				t.Fatalf("the journal restarted at %d bytes", prev)
			}
			break
		}
		if i > 20_000 {
			t.Fatal("the journal never restarted")
		}
	}
	want := contentsBytes(t, d)
	d.Close()
	if got, _, err := reopenedContents(t, d.dir); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("after a new base: %v", err)
	}
}
