package device

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/audit"
)

// lowerMaxEntries lowers audit.MaxEntries, so that logs rotate every n
// entries, until the test ends.
func lowerMaxEntries(t *testing.T, n int) {
	old := audit.MaxEntries
	audit.MaxEntries = n
	t.Cleanup(func() { audit.MaxEntries = old })
}

// segmentedDevice makes a closed device whose audit log has at least two
// closed segments of 8 entries and some entries in the active one.
func segmentedDevice(t *testing.T) string {
	t.Helper()
	lowerMaxEntries(t, 8)
	d := newDevice(t, stdHW)
	initDevice(t, d)
	for d.alog.closed < 2 || d.alog.n < 3 {
		login(t, d, "alice").Logout()
	}
	d.Close()
	return d.dir
}

// auditFiles returns the contents of every audit file in dir, by name.
func readAuditFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	names, _ := filepath.Glob(filepath.Join(dir, "audit.log*"))
	out := map[string]string{}
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(n)] = string(b)
	}
	return out
}

// verifiedLog opens dir and returns its whole audit log, checked against
// the signed head, and closes it again.
func verifiedLog(t *testing.T, dir string) []audit.Entry {
	t.Helper()
	d, err := Open(dir, TestOptions())
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer d.Close()
	entries, head, err := d.AuditLog()
	if err != nil {
		t.Fatal(err)
	}
	mc, _ := d.Certificates()
	if err := hsmcore.VerifyAuditLog(entries, head, mc); err != nil {
		t.Fatalf("audit log does not verify: %v", err)
	}
	return entries
}

func rewrite(t *testing.T, path string, f func(lines []string) []string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := f(strings.SplitAfter(string(b), "\n"))
	if err := os.WriteFile(path, []byte(strings.Join(lines, "")), 0o600); err != nil {
		t.Fatal(err)
	}
}

// Open tells a torn last entry, which it truncates and records, from every
// other damage, which it refuses as tampered without touching the files.
func TestOpenTellsTornTailFromTampering(t *testing.T) {
	active := func(dir string) string { return filepath.Join(dir, auditFile) }
	seg1 := func(dir string) string { return filepath.Join(dir, segmentName(1)) }
	torn := []struct {
		name  string
		tail  func(t *testing.T, dir string) string // appended to the active segment
		bytes int
	}{
		{"half an entry", func(t *testing.T, dir string) string {
			return `{"seq":99,"time":"2026-01-02T03:04:05Z","act`
		}, 44},
		{"a whole entry but its newline", func(t *testing.T, dir string) string {
			b, _ := os.ReadFile(active(dir))
			lines := strings.SplitAfter(string(b), "\n")
			return strings.TrimSuffix(lines[0], "\n")
		}, -1},
		{"zeros a crash left", func(t *testing.T, dir string) string { return strings.Repeat("\x00", 512) }, 512},
		{"a line's worth of bytes", func(t *testing.T, dir string) string { return strings.Repeat("x", audit.MaxLineLen) }, audit.MaxLineLen},
	}
	for _, c := range torn {
		t.Run("torn/"+c.name, func(t *testing.T) {
			dir := segmentedDevice(t)
			before := verifiedLog(t, dir)
			tail := c.tail(t, dir)
			if c.bytes < 0 {
				c.bytes = len(tail)
			}
			f, _ := os.OpenFile(active(dir), os.O_WRONLY|os.O_APPEND, 0)
			f.WriteString(tail)
			f.Close()
			after := verifiedLog(t, dir)
			// The old entries, then the recovery: nothing lost.
			if !slices.Equal(after[:len(before)], before) {
				t.Fatal("entries before the torn tail changed")
			}
			rec := after[len(before)]
			if rec.Op != "audit.recovered" || rec.Actor != "" || rec.Object != fmt.Sprintf("torn last entry truncated: %d bytes", c.bytes) {
				t.Fatalf("entry after the last good one: %+v, want audit.recovered of %d bytes", rec, c.bytes)
			}
		})
	}

	tampered := []struct {
		name   string
		damage func(t *testing.T, dir string)
	}{
		{"edited middle entry", func(t *testing.T, dir string) {
			rewrite(t, active(dir), func(l []string) []string {
				l[1] = strings.Replace(l[1], `"result":"ok"`, `"result":"OK"`, 1)
				return l
			})
		}},
		{"removed middle entry", func(t *testing.T, dir string) {
			rewrite(t, active(dir), func(l []string) []string { return append(l[:1], l[2:]...) })
		}},
		{"broken hash in the middle", func(t *testing.T, dir string) {
			rewrite(t, active(dir), func(l []string) []string {
				i := strings.Index(l[1], `"hash":"`) + len(`"hash":"`)
				l[1] = l[1][:i] + strings.Repeat("0", 64) + l[1][i+64:]
				return l
			})
		}},
		{"torn entry in the middle", func(t *testing.T, dir string) {
			rewrite(t, active(dir), func(l []string) []string {
				l[1] = l[1][:len(l[1])/2] + "\n"
				return l
			})
		}},
		{"torn entry before the last", func(t *testing.T, dir string) {
			rewrite(t, active(dir), func(l []string) []string {
				n := len(l) - 2 // l ends with "" after the last "\n"
				l[n-1] = l[n-1][:len(l[n-1])/2]
				return l
			})
		}},
		{"tail longer than a line", func(t *testing.T, dir string) {
			f, _ := os.OpenFile(active(dir), os.O_WRONLY|os.O_APPEND, 0)
			f.WriteString(strings.Repeat("x", audit.MaxLineLen+1))
			f.Close()
		}},
		{"garbage line at the end", func(t *testing.T, dir string) {
			f, _ := os.OpenFile(active(dir), os.O_WRONLY|os.O_APPEND, 0)
			f.WriteString("{}\n")
			f.Close()
		}},
		{"active segment removed", func(t *testing.T, dir string) { os.Remove(active(dir)) }},
		{"closed segment edited", func(t *testing.T, dir string) {
			rewrite(t, seg1(dir), func(l []string) []string {
				l[3] = strings.Replace(l[3], `"result":"ok"`, `"result":"OK"`, 1)
				return l
			})
		}},
		{"closed segment's last entry removed", func(t *testing.T, dir string) {
			rewrite(t, seg1(dir), func(l []string) []string { return append(l[:len(l)-2], "") })
		}},
		{"closed segment torn", func(t *testing.T, dir string) {
			f, _ := os.OpenFile(seg1(dir), os.O_WRONLY|os.O_APPEND, 0)
			f.WriteString(`{"seq":`)
			f.Close()
		}},
		{"closed segment removed", func(t *testing.T, dir string) {
			os.Remove(seg1(dir))
			os.Remove(seg1(dir) + auditHeadExt)
		}},
		{"last closed segment removed, its head left", func(t *testing.T, dir string) {
			segs, _ := filepath.Glob(filepath.Join(dir, auditFile+".0*[0-9]"))
			os.Remove(segs[len(segs)-1])
		}},
		{"staged next segment with entries", func(t *testing.T, dir string) {
			b, _ := os.ReadFile(active(dir))
			writeFile(t, filepath.Join(dir, auditNextFile), b)
		}},
		{"closed segment's head removed", func(t *testing.T, dir string) { os.Remove(seg1(dir) + auditHeadExt) }},
		{"closed segment's head signature broken", func(t *testing.T, dir string) {
			rewrite(t, seg1(dir)+auditHeadExt, func(l []string) []string {
				i := strings.Index(l[0], `"signature":"`) + len(`"signature":"`) + 10
				c := byte('A')
				if l[0][i] == 'A' {
					c = 'B'
				}
				l[0] = l[0][:i] + string(c) + l[0][i+1:]
				return l
			})
		}},
		{"segments swapped", func(t *testing.T, dir string) {
			seg2 := filepath.Join(dir, segmentName(2))
			os.Rename(seg1(dir), dir+"/x")
			os.Rename(seg1(dir)+auditHeadExt, dir+"/x.head")
			os.Rename(seg2, seg1(dir))
			os.Rename(seg2+auditHeadExt, seg1(dir)+auditHeadExt)
			os.Rename(dir+"/x", seg2)
			os.Rename(dir+"/x.head", seg2+auditHeadExt)
		}},
	}
	for _, c := range tampered {
		t.Run("tampered/"+c.name, func(t *testing.T) {
			dir := segmentedDevice(t)
			c.damage(t, dir)
			files := readAuditFiles(t, dir)
			d, err := Open(dir, TestOptions())
			if !errors.Is(err, hsmcore.ErrTampered) {
				if d != nil {
					d.Close()
				}
				t.Fatalf("open: %v, want ErrTampered", err)
			}
			if got := readAuditFiles(t, dir); !mapsEqual(got, files) {
				t.Fatal("a refused open changed the audit files")
			}
		})
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// A failed append (a full disk: half the line written) consumes no
// sequence number and leaves only whole entries: the call fails, the file
// is as before, the next entry continues the chain, and the device opens.
func TestFailedAuditAppendConsumesNothing(t *testing.T) {
	d := newDevice(t, stdHW)
	initDevice(t, d)
	files := readAuditFiles(t, d.dir)
	head := d.auditLog.Head()
	sealed, contents := snapshot(t, d)
	FailAuditWrites(d, 1)
	if _, err := d.Login("admin", testPassword); err == nil {
		t.Fatal("login succeeded without its audit entry")
	}
	if got := readAuditFiles(t, d.dir); !mapsEqual(got, files) {
		t.Fatal("the failed append left bytes in the audit log")
	}
	if d.auditLog.Head() != head {
		t.Fatal("the failed append consumed a sequence number")
	}
	assertUnchanged(t, d, sealed, contents)
	login(t, d, "admin")
	d.Close()
	entries := verifiedLog(t, d.dir)
	if e := entries[head.Seq]; e.Op != "login" || e.Actor != "admin" || e.Prev != head.Hash {
		t.Fatalf("entry after the failure: %+v, want admin's login continuing the head", e)
	}
}

// A rotation cut short at any step leaves files that Open repairs, with
// the whole chain intact.
func TestInterruptedRotationRepaired(t *testing.T) {
	for _, c := range []struct {
		name string
		cut  func(t *testing.T, dir string, closed int, head []byte)
	}{
		{"next segment staged", func(t *testing.T, dir string, closed int, head []byte) {
			writeFile(t, filepath.Join(dir, auditNextFile), nil)
		}},
		{"next segment staged and head written", func(t *testing.T, dir string, closed int, head []byte) {
			writeFile(t, filepath.Join(dir, auditNextFile), nil)
			writeFile(t, filepath.Join(dir, segmentName(closed+1)+auditHeadExt), head)
		}},
		{"active segment closed, next not yet in place", func(t *testing.T, dir string, closed int, head []byte) {
			writeFile(t, filepath.Join(dir, auditNextFile), nil)
			writeFile(t, filepath.Join(dir, segmentName(closed+1)+auditHeadExt), head)
			if err := os.Rename(filepath.Join(dir, auditFile), filepath.Join(dir, segmentName(closed+1))); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			lowerMaxEntries(t, 8)
			d := newDevice(t, stdHW)
			initDevice(t, d)
			for d.alog.closed < 1 || d.alog.n < 1 {
				login(t, d, "alice")
			}
			want, _, err := d.AuditLog()
			if err != nil {
				t.Fatal(err)
			}
			sh, err := d.signHead(d.auditLog.Head())
			if err != nil {
				t.Fatal(err)
			}
			head, _ := json.Marshal(sh)
			closed := d.alog.closed
			d.Close()
			c.cut(t, d.dir, closed, head)
			if got := verifiedLog(t, d.dir); !slices.Equal(got, want) {
				t.Fatalf("after the repair: %d entries, want the %d before", len(got), len(want))
			}
			if _, err := os.Stat(filepath.Join(d.dir, auditNextFile)); !os.IsNotExist(err) {
				t.Fatalf("%s left behind: %v", auditNextFile, err)
			}
		})
	}
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// Refusals of unauthenticated calls beyond the bound of a window are
// counted and recorded as one entry per operation and result when the
// window ends; state-changing unauthenticated calls beyond it are refused
// and change nothing.
func TestUnauthenticatedEntriesBoundedPerWindow(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	opts := TestOptions()
	opts.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	opts.MaxLoginFailures = -1 // the worst case: guesses never lock
	d, _, err := Manufacture(filepath.Join(t.TempDir(), "hsm"), ManufactureConfig{Class: stdHW.class, Firmware: stdHW.firmware,
		Manufacturer: authority(t, "acme"), Operator: authority(t, "cloud")}, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()

	// Cluster CSRs without a claim proof, from anyone: refused, changing
	// nothing, and beyond the bound counted, not written.
	digest := d.StateDigest()
	start := d.auditLog.Head().Seq
	for i := range 3 * UnauthAuditBurst {
		if _, err := d.ClusterCSR(fmt.Sprintf("c%d", i), nil); !errors.Is(err, hsmcore.ErrPermission) {
			t.Fatalf("CSR without a claim proof: %v, want ErrPermission", err)
		}
	}
	if d.StateDigest() != digest {
		t.Fatal("a refused CSR changed the state")
	}
	if grown := d.auditLog.Head().Seq - start; grown != uint64(UnauthAuditBurst) {
		t.Fatalf("%d refused CSRs wrote %d entries, want %d", 3*UnauthAuditBurst, grown, UnauthAuditBurst)
	}
	if err := d.Initialize("admin", testPassword); err != nil {
		t.Fatal(err)
	}
	start = d.auditLog.Head().Seq
	for range 3 * UnauthAuditBurst {
		d.Login("admin", "wrong password")
	}
	if grown := d.auditLog.Head().Seq - start; grown != uint64(UnauthAuditBurst) {
		t.Fatalf("%d failed logins wrote %d entries, want %d", 3*UnauthAuditBurst, grown, UnauthAuditBurst)
	}
	mu.Lock()
	now = now.Add(UnauthAuditWindow)
	mu.Unlock()
	d.Login("admin", "wrong password") // a new window: recorded, after the summary
	entries, _, err := d.AuditLog()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries[start:] {
		if e.Op != "login" {
			got = append(got, e.Actor+" "+e.Op+" "+e.Object)
		}
	}
	want := []string{
		Unauthenticated + " audit.suppressed cluster.csr denied x32",
		Unauthenticated + " audit.suppressed login denied x32",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("summaries %q, want %q", got, want)
	}
	if e := entries[len(entries)-1]; e.Op != "login" || e.Result != "denied" || e.Actor != Unauthenticated {
		t.Fatalf("last entry %+v, want the new window's failed login", e)
	}
}

// A change the disk refuses (its state commit fails) is in the audit log
// as an error of its operation, by its user, on its object, and changes
// nothing; the same change then succeeds. Without the entry, an officer
// reading the log would not know a key or user was attempted.
func TestFailedCommitAudited(t *testing.T) {
	d := newDevice(t, stdHW)
	co, cu := initDevice(t, d)
	k, err := cu.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Label: "kept", Encrypt: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		actor, op, object string
		do                func() error
	}{
		{"alice", "key.create", fmt.Sprint(k.Handle + 1), func() error {
			_, err := cu.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Label: "refused", Encrypt: true})
			return err
		}},
		{"admin", "user.create", "bob " + string(hsmcore.CryptoUser), func() error { return co.CreateUser("bob", hsmcore.CryptoUser, testPassword) }},
		{"alice", "key.delete", fmt.Sprint(k.Handle), func() error { return cu.DeleteKey(k.Handle) }},
		{"alice", "user.password", "alice", func() error { return cu.ChangePassword(testPassword + " again") }},
	} {
		sealed, contents := snapshot(t, d)
		head := d.auditLog.Head()
		d.failCommits = 1
		if err := c.do(); !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("%s on a full disk: %v, want ENOSPC", c.op, err)
		}
		assertUnchanged(t, d, sealed, contents)
		entries, _, err := d.AuditLog()
		if err != nil {
			t.Fatal(err)
		}
		got := entries[head.Seq:]
		if len(got) != 1 || got[0].Actor != c.actor || got[0].Op != c.op || got[0].Object != c.object || got[0].Result != "error" {
			t.Fatalf("audit entries of %s refused by the disk: %+v, want one: %s %s %s error", c.op, got, c.actor, c.op, c.object)
		}
		if err := c.do(); err != nil {
			t.Fatalf("%s once the disk takes it: %v", c.op, err)
		}
	}
}

// AuditPage pages through the log as AuditLog returns it whole: from
// every sequence number, with every limit, a page is the entries from
// there, at most limit and none past its segment's end; past the head it
// is empty; a damaged segment fails its pages as tampering, the others
// still read.
func TestAuditPage(t *testing.T) {
	dir := segmentedDevice(t)
	d, err := Open(dir, TestOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for d.alog.closed < 4 {
		login(t, d, "alice").Logout()
	}
	whole, head, err := d.AuditLog()
	if err != nil {
		t.Fatal(err)
	}
	ends := map[uint64]bool{head.Head.Seq: true} // the last entry of each segment
	for k := 1; k <= d.alog.closed; k++ {
		h, err := d.segmentHead(k)
		if err != nil {
			t.Fatal(err)
		}
		ends[h.Seq] = true
	}
	for _, limit := range []int{1, 3, 8, 100} {
		for from := uint64(1); from <= head.Head.Seq+2; from++ {
			page, sh, err := d.AuditPage(from, limit)
			if err != nil {
				t.Fatalf("page of %d from %d: %v", limit, from, err)
			}
			if sh.Head.Seq < head.Head.Seq || !d.signedHeadValid(sh) {
				t.Fatalf("page of %d from %d: head %d, signed %t; want the head, signed", limit, from, sh.Head.Seq, d.signedHeadValid(sh))
			}
			if from > head.Head.Seq {
				if len(page) != 0 {
					t.Fatalf("page from %d, past the head %d: %d entries", from, head.Head.Seq, len(page))
				}
				continue
			}
			last := from + uint64(len(page)) - 1
			if len(page) == 0 || len(page) > limit || !slices.Equal(page, whole[from-1:last]) {
				t.Fatalf("page of %d from %d: %d entries, not the log's from there", limit, from, len(page))
			}
			if len(page) < limit && !ends[last] {
				t.Fatalf("page of %d from %d: %d entries, ending at %d, within a segment", limit, from, len(page), last)
			}
			for s := from; s < last; s++ {
				if ends[s] {
					t.Fatalf("page of %d from %d runs past the end of a segment at %d", limit, from, s)
				}
			}
		}
	}
	if _, _, err := d.AuditPage(0, 8); !errors.Is(err, hsmcore.ErrInvalid) {
		t.Errorf("page from 0: %v, want ErrInvalid", err)
	}
	if _, _, err := d.AuditPage(1, 0); !errors.Is(err, hsmcore.ErrInvalid) {
		t.Errorf("page of 0 entries: %v, want ErrInvalid", err)
	}

	// Segment 2 edited under the running device: its pages fail, the
	// first segment's and the active one's still read.
	seg := filepath.Join(dir, segmentName(2))
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(seg, []byte(strings.Replace(string(b), `"alice"`, `"mallory"`, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	first, _ := d.segmentHead(1)
	if _, _, err := d.AuditPage(first.Seq+1, 8); !errors.Is(err, hsmcore.ErrTampered) {
		t.Errorf("page of an edited segment: %v, want ErrTampered", err)
	}
	if _, _, err := d.AuditPage(1, 8); err != nil {
		t.Errorf("page of the first segment, the second edited: %v", err)
	}
	if _, _, err := d.AuditPage(head.Head.Seq, 8); err != nil {
		t.Errorf("page of the active segment, the second edited: %v", err)
	}
}
