package device

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

// spentSetup is a cluster member with three officers with signing keys
// and user.delete protected; it returns a sealed token, approved by co2
// and co3 and attached to the officer's session, to delete alice.
func spentSetup(t *testing.T) (d *Device, co *Session, sealed []byte) {
	t.Helper()
	d = newDevice(t, stdHW)
	co, _ = initDevice(t, d)
	initCluster(t, d, "cluster-s")
	keys := officers(t, d, co)
	if err := co.SetQuorum("user.delete", 2); err != nil {
		t.Fatal(err)
	}
	tok, sealed, err := co.QuorumToken("user.delete", deleteAliceObject)
	if err != nil {
		t.Fatal(err)
	}
	co.Approve(tok.ID, approvals(keys, tok, "co2", "co3"))
	return d, co, sealed
}

// deleteAliceObject is the object of an approval to delete alice.
const deleteAliceObject = "alice role=CU"

// The spent-token file outlives a restart; a device without one (made
// before it existed) opens, and one damaged does not.
func TestSpentTokensSurviveReopen(t *testing.T) {
	d, co, sealed := spentSetup(t)
	if err := co.DeleteUser("alice"); err != nil {
		t.Fatalf("approved delete: %v", err)
	}
	d = reopen(t, d, TestOptions())
	if _, err := login(t, d, "admin").AdoptQuorumToken(sealed); !errors.Is(err, hsmcore.ErrQuorum) {
		t.Fatalf("adopting a spent token after a restart: got %v, want ErrQuorum", err)
	}
	d.Close()

	path := filepath.Join(d.dir, spentFile)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	flipFile(t, path, len(good)-1)
	if _, err := Open(d.dir, TestOptions()); !errors.Is(err, hsmcore.ErrTampered) {
		t.Fatalf("open with a damaged spent-token file: got %v, want ErrTampered", err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	d = reopen(t, d, TestOptions())
	if n := len(d.tracker.Spent()); n != 0 {
		t.Fatalf("a device without the file remembers %d tokens", n)
	}
}

// The token is spent on disk before the operation commits: when the
// commit fails, the token stays spent, after a restart too.
func TestTokenSpentBeforeCommit(t *testing.T) {
	d, co, sealed := spentSetup(t)
	statePath := filepath.Join(d.dir, stateFile)
	state, err := os.ReadFile(statePath)
	if err != nil {
		t.Fatal(err)
	}
	// A non-empty directory in the state file's place: the commit's rename
	// fails, while the spent-token file is written.
	if err := os.Remove(statePath); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(statePath, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := co.DeleteUser("alice"); err == nil {
		t.Fatal("delete committed without storage")
	}
	if err := os.RemoveAll(statePath); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(statePath, state, 0o600); err != nil {
		t.Fatal(err)
	}
	d = reopen(t, d, TestOptions())
	if _, err := login(t, d, "alice").Keys(); err != nil {
		t.Fatalf("alice after the failed delete: %v", err)
	}
	if _, err := login(t, d, "admin").AdoptQuorumToken(sealed); !errors.Is(err, hsmcore.ErrQuorum) {
		t.Fatalf("adopting the token of a failed commit: got %v, want ErrQuorum", err)
	}
}
