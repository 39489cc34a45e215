package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/hsmbackup/hsmbackup/internal/testenv"
)

// TestDiskFullAndReadOnly: the disk under the file store, and the disk
// under an HSM daemon's state directory, fills up or turns read-only, for
// real: a small tmpfs filled with zeros or remounted read-only, and an
// ext4 file system on a loop device mounted errors=remount-ro, which the
// kernel turns read-only under the running daemon (as after an I/O
// error; a tmpfs cannot be remounted read-only while files on it are open
// for writing). Every operation the fault meets — a backup on a store
// full before it, full mid-upload, full when its manifest is written or
// read-only; a restore into the HSM; a batch of new keys in it — exits
// non-zero or fails with an error naming the cause and the step. Nothing
// is half-written: backup list shows no new backup and the store holds no
// object of it and no temporary file in .tmp (a failed put removes its
// own; docs/STORAGE.md), and the HSM's state files are byte for byte as
// before (the audit log aside, a separate issue) with its state digest
// unchanged. A daemon restarted while its disk is still full opens with
// its old state; on a read-only disk it may refuse to open, saying why.
// Once the fault is lifted the HSM opens with its old state, and the next
// backup (verified --deep), restore or key batch succeeds.
func TestDiskFullAndReadOnly(t *testing.T) {
	t.Parallel()
	top := t.TempDir()
	fullMount, roMount := filepath.Join(top, "store-full"), filepath.Join(top, "store-ro")
	// First: a machine that cannot mount skips before any set-up.
	mountTmpfs(t, fullMount, "8m")
	mountTmpfs(t, roMount, "8m")

	const keys = 2000 // 512-byte secrets: an image of about 1 MB
	c := newCluster(t)
	fillKeys(t, c, keys)
	s := newService(t, c, "file://"+filepath.Join(fullMount, "store"))
	sro := s.withStore(t, "ro.yaml", filepath.Join(roMount, "store"))
	base := s.create(t) // what the HSM cases restore

	var n diskCounts
	t.Run("file store full", func(t *testing.T) { n.storeFull(t, s, fullMount, base) })
	t.Run("file store read-only", func(t *testing.T) { n.storeReadOnly(t, sro, roMount) })
	t.Run("HSM state full", func(t *testing.T) {
		mnt := filepath.Join(c.dir, "hsm-full")
		mountTmpfs(t, mnt, "8m")
		n.hsmState(t, c, s, base, keys, "hsm-full/hsm", stateFault{
			kind:     "full",
			cause:    "no space left on device",
			mustOpen: true,
			inject:   func(t *testing.T) { fill(t, mnt, 0) },
			lift:     func(t *testing.T) { unfill(t, mnt) },
		})
	})
	t.Run("HSM state read-only", func(t *testing.T) {
		mnt := filepath.Join(c.dir, "hsm-ro")
		disk := mountExt4(t, mnt)
		n.hsmState(t, c, s, base, keys, "hsm-ro/hsm", stateFault{
			kind:   "read-only",
			cause:  "read-only file system",
			inject: disk.fault,
			lift:   disk.lift,
		})
	})

	injected := [5]int{n.faults, n.storeFullFaults, n.storeROFaults, n.hsmFullFaults, n.hsmROFaults}
	if injected != [5]int{8, 3, 1, 2, 2} {
		t.Errorf("faults met (all, store full, store read-only, HSM state full, read-only): %v, want [8 3 1 2 2]", injected)
	}
	if n.clean != n.faults || n.partial != 0 || n.reopened != n.reopenTotal || n.refusedClear != n.refused || n.next != n.nextTotal {
		t.Errorf("not every fault was met cleanly: %+v", n)
	}
	t.Logf("RELIABILITY disk: %d faults (file store full %d, read-only %d; HSM state full %d, read-only %d); "+
		"operations failed cleanly %d, half-written %d, HSM reopened with its old state %d of %d "+
		"(refused to open on a read-only disk %d times, with a clear error %d); next operation succeeded %d of %d",
		n.faults, n.storeFullFaults, n.storeROFaults, n.hsmFullFaults, n.hsmROFaults,
		n.clean, n.partial, n.reopened, n.reopenTotal, n.refused, n.refusedClear, n.next, n.nextTotal)
}

// diskCounts are what TestDiskFullAndReadOnly counts and asserts.
type diskCounts struct {
	faults                                                     int // operations attempted under a fault
	storeFullFaults, storeROFaults, hsmFullFaults, hsmROFaults int
	clean                                                      int // ... that failed with a clear error
	partial                                                    int // ... that left something half-written
	reopened, reopenTotal                                      int // daemons that opened with the old state, of those that had to
	refused, refusedClear                                      int // daemons that refused to open on a read-only disk, clearly
	next, nextTotal                                            int // operations after the fault was lifted that succeeded
}

// storeFull runs backup create against the file store on the tmpfs mnt
// when it is full, when the image is larger than the space left, and
// when only the image fits (so the manifest's write fails), freeing the
// space after each; base is the backup already there.
func (n *diskCounts) storeFull(t *testing.T, s *service, mnt, base string) {
	ids := []string{base}
	list := s.list(t)
	if len(list) != 1 || list[0].ID != base {
		t.Fatalf("backup list before the faults: %+v, want %s alone", list, base)
	}
	size := list[0].ObjectSize
	mfi, err := os.Stat(s.object(base, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	const page = 4096
	imagePages := (size + page - 1) / page
	// Room for the image and less than half a manifest: the image, of the
	// same HSM state, is as large as the first one's.
	margin := min(16, mfi.Size()/2/page) * page
	if size < 2*64*page || mfi.Size() < 2*page {
		t.Fatalf("image of %d bytes, manifest of %d: too small for this test", size, mfi.Size())
	}
	t.Logf("an image of %d bytes (%d pages), a manifest of %d", size, imagePages, mfi.Size())
	kinds := []struct {
		name  string
		leave int64 // bytes free
		step  string
	}{
		{"full before the backup", 0, "store image"},
		{"full mid-upload", 64 * page, "store image"},
		{"full when the manifest is written", imagePages*page + margin, "write manifest"},
	}
	for _, k := range kinds {
		fill(t, mnt, k.leave)
		n.faults++
		n.storeFullFaults++
		res := s.cliRes(t, "backup", "create", "--cluster", testCluster)
		if cleanFailure(t, k.name+": backup create", res, "no space left on device", k.step) {
			n.clean++
		}
		if !s.holdsOnly(t, ids) {
			n.partial++
		}
		unfill(t, mnt)
		if id, ok := s.createAndVerify(t, "after "+k.name); ok {
			ids = append(ids, id)
			n.next++
		}
		n.nextTotal++
	}
	s.holdsOnly(t, ids)
}

// storeReadOnly runs backup create against the file store on the tmpfs
// mnt remounted read-only, where reading it still works, then again once
// it is writable.
func (n *diskCounts) storeReadOnly(t *testing.T, s *service, mnt string) {
	base := s.create(t)
	command(t, "mount", "-o", "remount,ro", mnt)
	remounted := false
	t.Cleanup(func() {
		if !remounted {
			command(t, "mount", "-o", "remount,rw", mnt)
		}
	})
	wantReadOnly(t, mnt)
	n.faults++
	n.storeROFaults++
	res := s.cliRes(t, "backup", "create", "--cluster", testCluster)
	if cleanFailure(t, "read-only store: backup create", res, "read-only file system", "store image") {
		n.clean++
	}
	if !s.holdsOnly(t, []string{base}) {
		n.partial++
	}
	if res := s.cliRes(t, "backup", "verify", "--deep", base); res.Code != 0 {
		t.Errorf("read-only store: backup verify --deep %s, made before: %s", base, res)
	}
	command(t, "mount", "-o", "remount,rw", mnt)
	remounted = true
	if id, ok := s.createAndVerify(t, "after the read-only store"); ok {
		n.next++
		s.holdsOnly(t, []string{base, id})
	}
	n.nextTotal++
}

// stateFault is a fault of the disk under an HSM's state directory.
type stateFault struct {
	kind     string // "full", "read-only"
	cause    string // what every error it causes must say
	mustOpen bool   // a daemon started while it lasts must open
	inject   func(t *testing.T)
	lift     func(t *testing.T)
}

// hsmState makes a new HSM in c.dir/name, on the faulty disk, and meets
// the fault twice: with a restore of backup base into it, and, once that
// has been done, with a batch of new keys; keys is what base holds.
func (n *diskCounts) hsmState(t *testing.T, c *cluster, s *service, base string, keys int, name string, f stateFault) {
	ctx := context.Background()
	dir := filepath.Join(c.dir, name)
	addr := c.newHSM(t, name, filepath.Join(c.dir, "op"), testFirmware)
	count := func() {
		n.faults++
		if f.kind == "full" {
			n.hsmFullFaults++
		} else {
			n.hsmROFaults++
		}
	}

	// A restore writes a whole new state.
	before, files := c.health(t, addr), stateFiles(t, dir)
	f.inject(t)
	count()
	res := s.cliRes(t, c.restoreArgs(base, addr)...)
	if cleanFailure(t, "restore into an HSM whose disk is "+f.kind, res, f.cause, "target "+addr, "import image") {
		n.clean++
	}
	if !c.unchanged(t, "after the failed restore", addr, dir, before, files) {
		n.partial++
	}
	n.reopen(t, c, addr, dir, before, files, f)
	n.nextTotal++
	if res := s.cliRes(t, c.restoreArgs(base, addr)...); res.Code != 0 {
		t.Errorf("restore once the disk is no longer %s: %s", f.kind, res)
	} else if h := c.health(t, addr); !h.ClusterInitialized || h.KeyCount != keys {
		t.Errorf("HSM %s after the restore: %d keys (cluster initialized %t), want the backup's %d", addr, h.KeyCount, h.ClusterInitialized, keys)
	} else {
		n.next++
	}

	// A batch of keys goes to the journal.
	batch := make([]hsmcore.KeySpec, 64)
	for i := range batch {
		batch[i] = hsmcore.KeySpec{Type: hsmcore.GenericSecret, Bits: 4096, Label: "disk " + f.kind}
	}
	cu := c.memberClient(t, addr)
	if _, err := cu.Login(ctx, "app", c.password+"-app"); err != nil {
		t.Fatalf("log in to %s after the restore: %v", addr, err)
	}
	before, files = c.health(t, addr), stateFiles(t, dir)
	f.inject(t)
	count()
	_, err := cu.GenerateKeys(ctx, batch)
	if err != nil {
		c.outputs = append(c.outputs, err.Error())
	}
	if cleanError(t, "create keys in an HSM whose disk is "+f.kind, err, f.cause, "key.create") {
		n.clean++
	}
	cu.Close()
	if !c.unchanged(t, "after the failed key batch", addr, dir, before, files) {
		n.partial++
	}
	n.reopen(t, c, addr, dir, before, files, f)
	n.nextTotal++
	cu = c.memberClient(t, addr)
	if _, err := cu.Login(ctx, "app", c.password+"-app"); err != nil {
		t.Errorf("log in to %s once the disk is no longer %s: %v", addr, f.kind, err)
	} else if _, err := cu.GenerateKeys(ctx, batch); err != nil {
		t.Errorf("create keys once the disk is no longer %s: %v", f.kind, err)
	} else if h := c.health(t, addr); h.KeyCount != before.KeyCount+len(batch) {
		t.Errorf("HSM %s holds %d keys after a batch of %d, was %d", addr, h.KeyCount, len(batch), before.KeyCount)
	} else {
		n.next++
	}
}

// reopen stops the daemon on addr and starts it again while the fault
// lasts: it must open with its old state where f.mustOpen, and may refuse
// to, clearly, where not; then lifts the fault and restarts the daemon,
// which must open with its old state.
func (n *diskCounts) reopen(t *testing.T, c *cluster, addr, dir string, before api.Health, files map[string]string, f stateFault) {
	t.Helper()
	Stop(t, addr)
	opened, res, stop := serveOnce(t, dir, addr)
	switch {
	case opened:
		n.reopenTotal++
		if c.unchanged(t, "restarted on a disk still "+f.kind, addr, dir, before, files) {
			n.reopened++
		}
		stop()
	case f.mustOpen:
		n.reopenTotal++
		t.Errorf("the daemon restarted on a disk still %s did not open: %s", f.kind, res)
	default:
		n.refused++
		if cleanFailure(t, "daemon started on a "+f.kind+" disk", res, f.cause, "open device") {
			n.refusedClear++
		}
	}
	f.lift(t)
	RestartDaemon(t, addr)
	n.reopenTotal++
	if c.unchanged(t, "restarted once the disk is no longer "+f.kind, addr, dir, before, files) {
		n.reopened++
	}
}

// unchanged reports whether the HSM on addr reports the state before,
// and its state files in dir are as they were, reporting any difference.
func (c *cluster) unchanged(t *testing.T, when, addr, dir string, before api.Health, files map[string]string) bool {
	t.Helper()
	ok := true
	if h := c.health(t, addr); h.StateDigest != before.StateDigest || h.KeyCount != before.KeyCount || h.UserCount != before.UserCount ||
		h.Initialized != before.Initialized || h.ClusterInitialized != before.ClusterInitialized {
		t.Errorf("%s: HSM %s reports state digest %s (%d keys, %d users, in cluster %t), was %s (%d, %d, %t)", when, addr,
			h.StateDigest, h.KeyCount, h.UserCount, h.ClusterInitialized, before.StateDigest, before.KeyCount, before.UserCount, before.ClusterInitialized)
		ok = false
	}
	if now := stateFiles(t, dir); !maps.Equal(now, files) {
		t.Errorf("%s: the state files of %s changed:\nnow %v\nwas %v", when, dir, now, files)
		ok = false
	}
	return ok
}

// stateFiles returns the SHA-256 of every file in an HSM's directory but
// its audit log (a separate issue) and its lock: its state, journal,
// spent tokens, login failures, and any temporary file left.
func stateFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, "audit.log") || name == "device.lock" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		out[name] = hex.EncodeToString(sum[:8])
	}
	return out
}

// serveOnce starts `hsm serve` on the device in dir at addr, as
// RestartDaemon does, but on a disk that may not let it open: it reports
// whether it opened (printed "listening on"), and if not, how it exited.
// stop ends a daemon that opened; the test's end does too.
func serveOnce(t *testing.T, dir, addr string) (opened bool, res Result, stop func()) {
	t.Helper()
	cmd := exec.Command(Binary(t), "hsm", "serve", "--device", dir, "--listen", addr,
		"--password-iterations", fmt.Sprint(TestPasswordIterations))
	listening := make(chan string, 1)
	logs := &syncBuffer{}
	cmd.Stdout = &lineWatcher{prefix: "listening on ", found: listening}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start hsm serve: %v", err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	stop = func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(StopGrace):
			t.Errorf("hsm serve --device %s ignored SIGTERM for %s: killing it", dir, StopGrace)
			cmd.Process.Kill()
			<-done
		}
	}
	t.Cleanup(stop)
	select {
	case <-listening:
		return true, Result{}, stop
	case <-done:
		return false, Result{Stderr: logs.String(), Code: cmd.ProcessState.ExitCode()}, stop
	case <-time.After(StartTimeout):
		stop()
		t.Fatalf("hsm serve --device %s: neither listening nor exited after %s; stderr:\n%s", dir, StartTimeout, logs)
	}
	panic("unreachable")
}

// withStore returns the service with a config of its own, name, for the
// file store in dir.
func (s *service) withStore(t *testing.T, name, dir string) *service {
	t.Helper()
	o := *s
	o.store, o.storeDir = "file://"+dir, dir
	o.config = s.writeConfig(t, name, o.store, s.c.addr)
	return &o
}

// createAndVerify runs backup create, then backup verify --deep of the
// backup it made, reporting a failure of either as an error.
func (s *service) createAndVerify(t *testing.T, when string) (string, bool) {
	t.Helper()
	res := s.cliRes(t, "backup", "create", "--cluster", testCluster)
	m := createdLine.FindStringSubmatch(res.Stdout)
	if res.Code != 0 || m == nil {
		t.Errorf("%s: backup create: %s", when, res)
		return "", false
	}
	if v := s.cliRes(t, "backup", "verify", "--deep", m[1]); v.Code != 0 {
		t.Errorf("%s: backup verify --deep %s: %s", when, m[1], v)
		return m[1], false
	}
	return m[1], true
}

// holdsOnly reports whether backup list shows exactly the backups ids and
// the file store holds their two objects each and no other file: none of
// a failed backup, no temporary file in .tmp. It reports what differs.
func (s *service) holdsOnly(t *testing.T, ids []string) bool {
	t.Helper()
	ok := true
	var listed []string
	for _, b := range s.list(t) {
		listed = append(listed, b.ID)
	}
	slices.Sort(listed)
	if want := slices.Sorted(slices.Values(ids)); !slices.Equal(listed, want) {
		t.Errorf("backup list shows %v, want %v", listed, want)
		ok = false
	}
	want := map[string]bool{}
	for _, id := range ids {
		for _, o := range []string{"image", "manifest.json"} {
			want[filepath.ToSlash(filepath.Join("clusters", testCluster, "backups", id, o))] = true
		}
	}
	var extra []string
	err := filepath.WalkDir(s.storeDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(s.storeDir, path)
		if err != nil {
			return err
		}
		if rel = filepath.ToSlash(rel); want[rel] {
			delete(want, rel)
		} else {
			extra = append(extra, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk the store %s: %v", s.storeDir, err)
	}
	if len(extra) > 0 || len(want) > 0 {
		t.Errorf("the store %s holds files of no listed backup %q, lacks %v", s.storeDir, extra, slices.Sorted(maps.Keys(want)))
		ok = false
	}
	return ok
}

// cleanError reports whether err is an error mentioning every one of
// wants; it reports what is wrong.
func cleanError(t *testing.T, what string, err error, wants ...string) bool {
	t.Helper()
	if err == nil {
		t.Errorf("%s: succeeded", what)
		return false
	}
	ok := true
	for _, w := range wants {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%s: error %q does not mention %q", what, err, w)
			ok = false
		}
	}
	t.Logf("%s: %v", what, err)
	return ok
}

// fillerName is the file of zeros that fills a disk, beside what it holds.
const fillerName = "filler"

// fill writes zeros to a file in dir, the root of a tmpfs, until only
// leave bytes (whole blocks) are free on it, or with leave 0 until it is
// full.
func fill(t *testing.T, dir string, leave int64) {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	bs, free := st.Bsize, int64(st.Bavail)*st.Bsize
	if leave%bs != 0 || leave > free {
		t.Fatalf("fill %s leaving %d bytes: %d free in blocks of %d", dir, leave, free, bs)
	}
	f, err := os.OpenFile(filepath.Join(dir, fillerName), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 64<<10)
	zeros := make([]byte, 64<<10)
	for todo := free - leave; todo > 0 || leave == 0; {
		k := int64(len(zeros))
		if leave != 0 {
			k = min(k, todo)
		}
		_, err := w.Write(zeros[:k])
		if err == nil {
			err = w.Flush()
		}
		if leave == 0 && errors.Is(err, syscall.ENOSPC) {
			break
		}
		if err != nil {
			t.Fatalf("fill %s: %v", dir, err)
		}
		todo -= k
	}
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if got := int64(st.Bavail) * st.Bsize; got != leave {
		t.Fatalf("fill %s: %d bytes free, want %d", dir, got, leave)
	}
}

// unfill removes the file fill wrote.
func unfill(t *testing.T, dir string) {
	t.Helper()
	if err := os.Remove(filepath.Join(dir, fillerName)); err != nil {
		t.Fatal(err)
	}
}

// mountTmpfs mounts a tmpfs of size ("8m") on dir, made if need be, and
// unmounts it when the test ends. A refused mount (not root, no
// CAP_SYS_ADMIN) skips the test, or fails it under
// HSMBACKUP_TEST_DISALLOW_SKIP=1.
func mountTmpfs(t *testing.T, dir, size string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		testenv.Skip(t, "skipped: cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): mount -t tmpfs on %s: %v: %s", dir, err, bytes.TrimSpace(out))
	}
	t.Cleanup(func() { unmount(t, dir) })
}

// ext4Disk is a small ext4 file system in a file, mounted on dir through
// a loop device with errors=remount-ro.
type ext4Disk struct {
	img, dir string
	mounted  bool
}

// mountExt4 makes an ext4Disk and mounts it on dir, made if need be,
// until the test ends. Like mountTmpfs, it skips the test where it cannot.
func mountExt4(t *testing.T, dir string) *ext4Disk {
	t.Helper()
	mkfs := testenv.LookPath(t, "mkfs.ext4")
	d := &ext4Disk{img: filepath.Join(t.TempDir(), "ext4.img"), dir: dir}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(d.img, 32<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs, "-q", "-F", d.img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 %s: %v: %s", d.img, err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop,errors=remount-ro", d.img, dir).CombinedOutput(); err != nil {
		testenv.Skip(t, "skipped: cannot mount an ext4 image through a loop device (needs root, CAP_SYS_ADMIN and /dev/loop*): %v: %s", err, bytes.TrimSpace(out))
	}
	d.mounted = true
	t.Cleanup(func() {
		if d.mounted {
			unmount(t, dir)
		}
	})
	return d
}

// fault turns the file system read-only as the kernel does after an
// error (the mount shows emergency_ro): files open for writing on it,
// such as a running daemon's, then fail every write with EROFS.
func (d *ext4Disk) fault(t *testing.T) {
	t.Helper()
	src := mountSource(t, d.dir)
	trigger := filepath.Join("/sys/fs/ext4", filepath.Base(src), "trigger_fs_error")
	if err := os.WriteFile(trigger, []byte("disk fault injected by TestDiskFullAndReadOnly\n"), 0o200); err != nil {
		t.Fatalf("turn %s (%s) read-only: %v", d.dir, src, err)
	}
	wantReadOnly(t, d.dir)
}

// lift unmounts the file system turned read-only (no process may have a
// file open on it) and mounts it again, writable.
func (d *ext4Disk) lift(t *testing.T) {
	t.Helper()
	command(t, "umount", d.dir)
	d.mounted = false
	if out, err := exec.Command("mount", "-o", "loop,errors=remount-ro", d.img, d.dir).CombinedOutput(); err != nil {
		t.Fatalf("mount %s on %s again: %v: %s", d.img, d.dir, err, out)
	}
	d.mounted = true
	probe := filepath.Join(d.dir, "probe")
	if err := os.WriteFile(probe, nil, 0o600); err != nil {
		t.Fatalf("%s mounted again is not writable: %v", d.dir, err)
	}
	os.Remove(probe)
}

// mountSource returns the device mounted on dir, from /proc/self/mountinfo.
func mountSource(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	src := ""
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		i := slices.Index(f, "-")
		if len(f) > 4 && f[4] == dir && i > 0 && i+2 < len(f) {
			src = f[i+2] // the last mount on dir wins
		}
	}
	if src == "" {
		t.Fatalf("nothing mounted on %s", dir)
	}
	return src
}

// wantReadOnly fails t unless creating a file in dir fails with EROFS.
func wantReadOnly(t *testing.T, dir string) {
	t.Helper()
	probe := filepath.Join(dir, "probe")
	err := os.WriteFile(probe, nil, 0o600)
	if err == nil {
		os.Remove(probe)
	}
	if !errors.Is(err, syscall.EROFS) {
		t.Fatalf("%s is not read-only: creating a file in it: %v", dir, err)
	}
}

// command runs name with args, failing t if it fails.
func command(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
}

// unmount unmounts dir, lazily if it is busy.
func unmount(t *testing.T, dir string) {
	t.Helper()
	out, err := exec.Command("umount", dir).CombinedOutput()
	if err == nil {
		return
	}
	if out2, err2 := exec.Command("umount", "-l", dir).CombinedOutput(); err2 != nil {
		t.Errorf("umount %s: %v: %s; umount -l: %v: %s", dir, err, bytes.TrimSpace(out), err2, bytes.TrimSpace(out2))
	}
}
