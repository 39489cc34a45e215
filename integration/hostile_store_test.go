package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"go.yaml.in/yaml/v3"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/hsmbackup/hsmbackup/internal/miniotest"
)

// hostileCluster2 is the second cluster of TestHostileStore, so that
// objects can be swapped between clusters.
const hostileCluster2 = "cluster-2"

// Words of the errors a damaged backup must meet (the sentinels of
// package backup, as the CLI prints them).
var (
	wantHash     = backup.ErrObjectHash.Error() // "image object does not match its manifest"
	wantManifest = backup.ErrManifest.Error()   // "invalid manifest"
)

// exitCodeVerify is the CLI's exit status for a backup that fails a check
// (docs/CLI.md, "Exit status").
const exitCodeVerify = 4

// TestHostileStore: the store turned against us, between runs. Two
// clusters (an HSM daemon each, their own cluster certificates from one
// customer CA) are backed up several times into one store; then, one case
// at a time, whoever can write to the store damages it: bytes flipped in
// image objects and manifests (header, middle, last bytes, random
// offsets), objects truncated (to 0 bytes too), images and manifests
// swapped between two backups of a cluster and between the clusters, a
// backup moved or copied by hand into the other cluster, manifests or
// images deleted, an older backup's manifest put back over a newer one's,
// and the objects of another tool put in the store (at its root, under the
// clusters' prefix, named like backups, inside a backup's directory).
// Every damaged backup fails `backup verify --deep` with an error that
// names it and the check that failed, and is listed as backup list says
// (INVALID, gone, or READY when only its image is damaged: list reads
// manifests only); a restore of it into a new HSM is refused and leaves
// that HSM as it was. Every undamaged backup still lists READY, verifies
// and passes a dry-run restore, and in some cases is restored for real
// into a new HSM beside the damage, which then holds the backed-up state.
// The store is put back byte for byte after each case. The file store
// takes every case; MinIO a subset, written with the S3 client.
func TestHostileStore(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	fillKeys(t, c, 200)
	h := &hostile{c: c, addr2: newSecondCluster(t, c, hostileCluster2)}
	h.serial2 = healthIn(t, c, h.addr2, hostileCluster2).Serial
	// One new HSM takes every restore that must be refused: a refused
	// restore leaves it unchanged, which is checked after each.
	h.target = c.newHSM(t, "hostile-target", filepath.Join(c.dir, "op"), testFirmware)
	h.targetBefore = c.health(t, h.target)
	if h.targetBefore.Initialized || h.targetBefore.ClusterInitialized {
		t.Fatalf("a new HSM is initialized: %+v", h.targetBefore)
	}
	// Offsets and lengths are drawn at random; the cases' names carry them.
	rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))

	t.Run("file store", func(t *testing.T) {
		s := newService(t, c, "file://"+filepath.Join(c.dir, "store"))
		e := h.setUp(t, "file store", s, &fileObjects{dir: s.storeDir}, 3, 2)
		h.run(t, e, e.fileCases(rng))
	})
	t.Run("MinIO", func(t *testing.T) {
		srv := miniotest.Shared(t)
		bucket := srv.NewBucket(t, miniotest.BucketOptions{})
		s := s3Service(t, c, srv, bucket, srv.URL())
		e := h.setUp(t, "MinIO", s, &s3Objects{cl: srv.Client(t), bucket: bucket, prefix: "hsm/"}, 2, 1)
		h.run(t, e, e.minioCases(rng))
	})

	tried := 0
	for _, n := range h.tried {
		tried += n
	}
	t.Logf("RELIABILITY hostile-store: %d corruptions tried (%d flips, %d truncations, %d swaps, %d deleted, %d replayed manifests, %d foreign objects; %d in a file store, %d in MinIO); caught by verify %d; restores tried %d, refused %d, imported anything unverified %d; targets changed %d; undamaged backups verified %d times, dry-run restored %d, restored %d",
		tried, h.tried[kindFlip], h.tried[kindTruncation], h.tried[kindSwap], h.tried[kindDeleted], h.tried[kindReplayed], h.tried[kindForeign],
		h.byStore["file store"], h.byStore["MinIO"], h.caught, h.restores, h.refused, h.imported, h.changed, h.goodVerified, h.goodDryRuns, h.goodRestored)
	if tried == 0 || h.caught != tried {
		t.Errorf("%d of %d corruptions caught", h.caught, tried)
	}
	if h.imported != 0 || h.changed != 0 || h.refused != h.restores {
		t.Errorf("restores of damaged backups: %d tried, %d refused, %d imported, %d targets changed", h.restores, h.refused, h.imported, h.changed)
	}
	if h.goodRestored == 0 {
		t.Error("no undamaged backup was restored beside the damage")
	}
}

// The kinds of damage, as the RELIABILITY line counts them.
const (
	kindFlip       = "flip"
	kindTruncation = "truncation"
	kindSwap       = "swap"
	kindDeleted    = "deleted"
	kindReplayed   = "replayed"
	kindForeign    = "foreign"
)

// hostile is what TestHostileStore shares between its stores: the two
// clusters, the target of refused restores, and the counts.
type hostile struct {
	c            *cluster
	addr2        string // the second cluster's HSM
	serial2      string
	target       string // the new HSM every damaged backup is restored into
	targetBefore api.Health
	newHSMs      int // HSMs made for restores of undamaged backups
	users        int // users made between backups

	tried                       map[string]int // by kind
	byStore                     map[string]int
	caught                      int
	restores, refused, imported int
	changed                     int
	goodVerified, goodDryRuns   int
	goodRestored                int
}

// newUserName is a user name not used before.
func (h *hostile) newUserName() string {
	h.users++
	return fmt.Sprintf("between-%d", h.users)
}

// backupRef names one backup: its cluster and id, and a short label for
// the case names (a1 is cluster-1's oldest, b1 cluster-2's).
type backupRef struct{ label, cluster, id string }

// hostileStore is one store of TestHostileStore, its backups, and every
// object in it as backup create left them.
type hostileStore struct {
	name     string
	s        *service
	objs     objectStore
	a, b     []backupRef       // the backups of cluster-1 and of cluster-2, oldest first
	digest   map[string]string // the source HSM's state digest when each backup was made, by id
	pristine map[string]string // every object of the store by key
}

// hostileCase is one way of damaging the store.
type hostileCase struct {
	kind, name string
	// damage damages the store, which is as pristine, and returns the keys
	// of the objects it changed, added or removed.
	damage  func(t *testing.T) []string
	victims []victim
	// good, if set, is restored for real into a new HSM while the damage
	// is in place; next, if set, a backup of cluster-1 is made in the
	// damaged store and verifies (the next run goes on).
	good *backupRef
	next bool
}

// victim is a backup (or what is named like one) that a case damaged, and
// how the CLI must tell.
type victim struct {
	ref backupRef
	// listed is its state in backup list: READY (its manifest is
	// untouched), INVALID, or "" (not listed at all).
	listed string
	// code is the exit status of verify (0: any failure status, as for
	// a backup not listed at all: no such backup, exit 1); wants, words of
	// its error (and of restore's) besides the backup id.
	code  int
	wants []string
}

// setUp makes nA backups of cluster-1 and nB of cluster-2 in s's store,
// a change to each cluster between two backups, and records the store.
func (h *hostile) setUp(t *testing.T, name string, s *service, objs objectStore, nA, nB int) *hostileStore {
	t.Helper()
	s.addCluster(t, hostileCluster2, h.addr2)
	e := &hostileStore{name: name, s: s, objs: objs, digest: map[string]string{}}
	for i := range nA {
		if i > 0 {
			addUser(t, h.c, h.c.addr, testCluster, h.newUserName())
		}
		id := s.create(t)
		e.a = append(e.a, backupRef{fmt.Sprintf("a%d", i+1), testCluster, id})
		e.digest[id] = h.c.health(t, h.c.addr).StateDigest
	}
	for i := range nB {
		if i > 0 {
			addUser(t, h.c, h.addr2, hostileCluster2, h.newUserName())
		}
		id := s.createIn(t, hostileCluster2, h.serial2)
		e.b = append(e.b, backupRef{fmt.Sprintf("b%d", i+1), hostileCluster2, id})
		e.digest[id] = healthIn(t, h.c, h.addr2, hostileCluster2).StateDigest
	}
	e.pristine = objs.snapshot(t)
	for _, r := range e.all() {
		for _, name := range []string{backup.ImageObject, backup.ManifestObject} {
			if _, ok := e.pristine[e.key(r, name)]; !ok {
				t.Fatalf("%s: no object %s after backup create: %v", name, e.key(r, name), slices.Sorted(maps.Keys(e.pristine)))
			}
		}
		wantLines(t, s.cli(t, "backup", "verify", "--deep", "--cluster", r.cluster, r.id), r.id+" of cluster "+r.cluster+": OK")
	}
	return e
}

// run runs every case against e, one at a time, putting the store back
// after each.
func (h *hostile) run(t *testing.T, e *hostileStore, cases []hostileCase) {
	if h.tried == nil {
		h.tried, h.byStore = map[string]int{}, map[string]int{}
	}
	for i, k := range cases {
		t.Run(k.kind+" "+k.name, func(t *testing.T) {
			h.tried[k.kind]++
			h.byStore[e.name]++
			defer e.putBack(t)
			if h.runCase(t, e, i, k) {
				h.caught++
			}
		})
	}
}

// runCase damages the store as k says, checks what the CLI makes of it,
// and reports whether every victim was caught.
func (h *hostile) runCase(t *testing.T, e *hostileStore, i int, k hostileCase) bool {
	c, s := h.c, e.s
	// Not vacuous: every object the case means to change did change.
	keys := k.damage(t)
	now := e.objs.snapshot(t)
	caught := len(keys) > 0
	if !caught {
		t.Errorf("the case changed no object: it tests nothing")
	}
	for _, key := range keys {
		was, before := e.pristine[key]
		is, after := now[key]
		if before == after && was == is {
			caught = false
			t.Errorf("%s is as it was: the case tests nothing", key)
		}
	}

	listed := e.listing(t)
	orphans := e.orphans(t)
	damaged := map[string]bool{}
	for _, v := range k.victims {
		r := v.ref
		damaged[r.cluster+"/"+r.id] = true
		if got := listed[r.cluster+"/"+r.id]; got != v.listed {
			caught = false
			t.Errorf("backup list shows %s (%s of %s) as %q, want %q", r.label, r.id, r.cluster, got, v.listed)
		}
		// An image left without its manifest is no backup, but is reported.
		if image := e.key(r, backup.ImageObject); v.listed == "" {
			if _, left := now[image]; left != orphans[image] {
				caught = false
				t.Errorf("backup list --orphans lists %s: %t, want %t (the image is left: %t)", image, orphans[image], left, left)
			}
		}
		wants := append([]string{r.id}, v.wants...)
		res := s.cliRes(t, "backup", "verify", "--deep", "--cluster", r.cluster, r.id)
		if !failedWith(t, "verify --deep "+r.label, res, v.code, wants...) {
			caught = false
		}

		h.restores++
		res = s.cliRes(t, append(c.restoreArgs(r.id, h.target), "--cluster", r.cluster)...)
		if res.Code == 0 {
			h.imported++
			t.Errorf("the restore of the damaged %s succeeded: %s", r.label, res)
		} else {
			h.refused++
			failedWith(t, "restore of "+r.label, res, 0, wants...)
		}
		if got := c.health(t, h.target); got.StateDigest != h.targetBefore.StateDigest ||
			got.Initialized != h.targetBefore.Initialized || got.ClusterInitialized != h.targetBefore.ClusterInitialized {
			h.changed++
			t.Fatalf("the restore of the damaged %s changed the target %s: %+v, was %+v", r.label, h.target, got, h.targetBefore)
		}
	}

	// The undamaged backups: listed, verified, restorable.
	var good []backupRef
	for _, r := range e.all() {
		if damaged[r.cluster+"/"+r.id] {
			continue
		}
		good = append(good, r)
		if got := listed[r.cluster+"/"+r.id]; got != "READY" {
			t.Errorf("backup list shows the undamaged %s (%s of %s) as %q, want READY", r.label, r.id, r.cluster, got)
		}
		res := s.cliRes(t, "backup", "verify", "--deep", "--cluster", r.cluster, r.id)
		if res.Code != 0 {
			t.Errorf("verify --deep of the undamaged %s: %s", r.label, res)
			continue
		}
		wantLines(t, res.Stdout, r.id+" of cluster "+r.cluster+": OK (signature, object hash, outer layer, inner header)")
		h.goodVerified++
	}
	if len(good) == 0 {
		t.Fatal("no undamaged backup left to check")
	}
	r := good[i%len(good)]
	res := s.cliRes(t, append(c.restoreArgs(r.id, h.target), "--cluster", r.cluster, "--dry-run")...)
	if res.Code != 0 {
		t.Errorf("dry-run restore of the undamaged %s: %s", r.label, res)
	} else {
		wantLines(t, res.Stdout, r.id+" would restore into HSM "+h.targetBefore.Serial+" at "+h.target)
		h.goodDryRuns++
	}
	c.wantUnchanged(t, h.target, h.targetBefore)
	if k.good != nil {
		h.restoreGood(t, e, *k.good)
	}
	if k.next {
		id := s.create(t)
		wantLines(t, s.cli(t, "backup", "verify", "--deep", "--cluster", testCluster, id), id+" of cluster "+testCluster+": OK")
	}
	return caught
}

// restoreGood restores the undamaged backup r into a new HSM, which must
// then hold the state its source had when r was made.
func (h *hostile) restoreGood(t *testing.T, e *hostileStore, r backupRef) {
	t.Helper()
	c := h.c
	h.newHSMs++
	addr := c.newHSM(t, fmt.Sprintf("restored-%d", h.newHSMs), filepath.Join(c.dir, "op"), testFirmware)
	before := c.health(t, addr)
	out := e.s.cli(t, append(c.restoreArgs(r.id, addr), "--cluster", r.cluster)...)
	wantLines(t, out, r.id+" restored into HSM "+before.Serial+" at "+addr)
	got := healthIn(t, c, addr, r.cluster)
	if got.StateDigest != e.digest[r.id] || !got.Initialized || !got.ClusterInitialized || got.ClusterID != r.cluster {
		t.Fatalf("HSM %s after restoring %s: %+v; want cluster %s in state %s, as when the backup was made", addr, r.label, got, r.cluster, e.digest[r.id])
	}
	h.goodRestored++
}

// fileCases are the cases of the file store: every kind, at random
// offsets and lengths, and objects only a file system holds.
func (e *hostileStore) fileCases(rng *rand.Rand) []hostileCase {
	a1, a2, a3, b1, b2 := e.a[0], e.a[1], e.a[2], e.b[0], e.b[1]
	var cases []hostileCase

	// Flips: the outer header's first, middle and last bytes, the body's
	// first byte, random offsets, the last tag and the last byte.
	hdr, n := e.layout(a2)
	offsets := []int{0, 1, hdr / 2, hdr - 1, hdr, hdr + rng.IntN(n-hdr), hdr + rng.IntN(n-hdr), n - 17, n - 1}
	for _, off := range offsets {
		cases = append(cases, e.flipCase(a2, backup.ImageObject, off, randomBit(rng)))
	}
	_, nb := e.layout(b1)
	cases = append(cases, e.flipCase(b1, backup.ImageObject, rng.IntN(nb), randomBit(rng)))
	m := len(e.object(a3, backup.ManifestObject))
	for _, off := range []int{0, rng.IntN(m), rng.IntN(m), rng.IntN(m), rng.IntN(m), m - 1} {
		cases = append(cases, e.flipCase(a3, backup.ManifestObject, off, randomBit(rng)))
	}
	cases = append(cases, e.flipCase(b2, backup.ManifestObject, rng.IntN(len(e.object(b2, backup.ManifestObject))), randomBit(rng)),
		e.signedOnlyCase(a3, rng), e.signedOnlyCase(b2, rng))

	// Truncations, to 0 bytes too.
	for _, l := range []int{0, 1, 2 + rng.IntN(hdr-2), hdr + rng.IntN(n-hdr-1), n - 1} {
		cases = append(cases, e.truncateCase(a2, backup.ImageObject, l))
	}
	cases = append(cases, e.truncateCase(b2, backup.ImageObject, rng.IntN(len(e.object(b2, backup.ImageObject)))))
	ma := len(e.object(a1, backup.ManifestObject))
	for _, l := range []int{0, 1 + rng.IntN(ma-2), 1 + rng.IntN(ma-2), ma - 1} {
		cases = append(cases, e.truncateCase(a1, backup.ManifestObject, l))
	}
	cases = append(cases, e.truncateCase(b1, backup.ManifestObject, rng.IntN(len(e.object(b1, backup.ManifestObject)))))

	// Swaps within cluster-1, then between the clusters.
	cases = append(cases,
		e.swapCase("image of a1 under a2", []string{backup.ImageObject}, a1, a2, false),
		e.swapCase("images of a1 and a3 exchanged", []string{backup.ImageObject}, a1, a3, true),
		e.swapCase("manifests of a1 and a2 exchanged", []string{backup.ManifestObject}, a1, a2, true),
		e.swapCase("backups a2 and a3 exchanged whole", []string{backup.ImageObject, backup.ManifestObject}, a2, a3, true),
		e.swapCase("image of b1 under a2", []string{backup.ImageObject}, b1, a2, false),
		e.swapCase("images of a1 and b2 exchanged", []string{backup.ImageObject}, a1, b2, true),
		e.swapCase("manifests of a3 and b2 exchanged", []string{backup.ManifestObject}, a3, b2, true).restoring(b1),
		e.copyIntoCase(b1, testCluster, false),
		e.copyIntoCase(a2, hostileCluster2, true),
	)

	// Deletions.
	cases = append(cases,
		e.deleteCase(a2, backup.ManifestObject).restoring(a3), // the newest, the one before it gone
		e.deleteCase(b1, backup.ManifestObject),
		e.deleteCase(a3, backup.ImageObject),
		e.deleteCase(b2, backup.ImageObject),
	)

	// Replays: an older backup's manifest over a newer one's.
	cases = append(cases,
		e.replayCase(a1, a2),
		e.replayCase(a1, a3),
		e.replayCase(a2, a3),
		e.replayCase(b1, b2),
		e.replayCase(b1, a3),
	)

	// Another tool's objects; in the last case the next run backs up,
	// and the oldest backup restores.
	cases = append(cases, e.foreignCases(rng, true)...)
	last := &cases[len(cases)-1]
	*last = last.restoring(a1)
	last.next = true
	return cases
}

// minioCases are a subset of the cases, for MinIO.
func (e *hostileStore) minioCases(rng *rand.Rand) []hostileCase {
	a1, a2, b1 := e.a[0], e.a[1], e.b[0]
	hdr, n := e.layout(a2)
	m := len(e.object(a1, backup.ManifestObject))
	cases := []hostileCase{
		e.flipCase(a2, backup.ImageObject, rng.IntN(hdr), randomBit(rng)),
		e.flipCase(a2, backup.ImageObject, hdr+rng.IntN(n-hdr), randomBit(rng)),
		e.flipCase(a1, backup.ManifestObject, rng.IntN(m), randomBit(rng)),
		e.signedOnlyCase(a1, rng),
		e.truncateCase(a2, backup.ImageObject, 0),
		e.truncateCase(a1, backup.ManifestObject, 1+rng.IntN(m-2)),
		e.swapCase("images of a1 and a2 exchanged", []string{backup.ImageObject}, a1, a2, true),
		e.swapCase("manifests of a2 and b1 exchanged", []string{backup.ManifestObject}, a2, b1, true),
		e.copyIntoCase(b1, testCluster, false),
		e.deleteCase(a2, backup.ManifestObject).restoring(b1),
		e.deleteCase(a1, backup.ImageObject),
		e.replayCase(a1, a2),
	}
	return append(cases, e.foreignCases(rng, false)...)
}

// flipCase flips bit of the byte at off of r's object name.
func (e *hostileStore) flipCase(r backupRef, name string, off int, bit byte) hostileCase {
	orig := e.object(r, name)
	k := hostileCase{kind: kindFlip, name: fmt.Sprintf("%s of %s: byte %d of %d ^ %#02x", name, r.label, off, len(orig), bit),
		damage: func(t *testing.T) []string {
			b := []byte(orig)
			b[off] ^= bit
			e.objs.put(t, e.key(r, name), b)
			return []string{e.key(r, name)}
		}}
	return k.with(e.damagedAs(r, name))
}

// truncateCase cuts r's object name to l bytes.
func (e *hostileStore) truncateCase(r backupRef, name string, l int) hostileCase {
	orig := e.object(r, name)
	k := hostileCase{kind: kindTruncation, name: fmt.Sprintf("%s of %s to %d of %d bytes", name, r.label, l, len(orig)),
		damage: func(t *testing.T) []string {
			e.objs.put(t, e.key(r, name), []byte(orig[:l]))
			return []string{e.key(r, name)}
		}}
	return k.with(e.damagedAs(r, name))
}

// swapCase puts from's objects names under to's id and, if both ways,
// to's under from's.
func (e *hostileStore) swapCase(what string, names []string, from, to backupRef, both bool) hostileCase {
	k := hostileCase{kind: kindSwap, name: what, damage: func(t *testing.T) []string {
		var keys []string
		for _, name := range names {
			e.objs.put(t, e.key(to, name), []byte(e.object(from, name)))
			keys = append(keys, e.key(to, name))
			if both {
				e.objs.put(t, e.key(from, name), []byte(e.object(to, name)))
				keys = append(keys, e.key(from, name))
			}
		}
		return keys
	}}
	k = k.with(e.swappedAs(to, from, names))
	if both {
		k = k.with(e.swappedAs(from, to, names))
	}
	return k
}

// copyIntoCase copies backup r by hand into cluster's directory, under
// the same id, and with move removes it from its own.
func (e *hostileStore) copyIntoCase(r backupRef, cluster string, move bool) hostileCase {
	there := backupRef{r.label + " in " + cluster, cluster, r.id}
	what := "copied"
	if move {
		what = "moved"
	}
	k := hostileCase{kind: kindSwap, name: fmt.Sprintf("backup %s %s into %s", r.label, what, cluster), damage: func(t *testing.T) []string {
		var keys []string
		for _, name := range []string{backup.ImageObject, backup.ManifestObject} {
			e.objs.put(t, e.key(there, name), []byte(e.object(r, name)))
			keys = append(keys, e.key(there, name))
			if move {
				e.objs.remove(t, e.key(r, name))
				keys = append(keys, e.key(r, name))
			}
		}
		if dir := e.key(r, ""); move && e.has(dir) { // a file store's directory goes too, as with mv
			e.objs.remove(t, dir)
		}
		return keys
	}}
	k = k.with(victim{ref: there, listed: "INVALID", code: exitCodeVerify,
		wants: []string{wantManifest, "it describes backup " + r.id + " of cluster " + r.cluster}})
	if move {
		k = k.with(e.goneAs(r))
	}
	return k
}

// deleteCase removes r's object name.
func (e *hostileStore) deleteCase(r backupRef, name string) hostileCase {
	k := hostileCase{kind: kindDeleted, name: fmt.Sprintf("%s of %s", name, r.label), damage: func(t *testing.T) []string {
		e.objs.remove(t, e.key(r, name))
		return []string{e.key(r, name)}
	}}
	if name == backup.ManifestObject {
		return k.with(e.goneAs(r))
	}
	return k.with(victim{ref: r, listed: "READY", code: exitCodeVerify, wants: []string{wantHash, "the image object is missing"}})
}

// replayCase puts the manifest of the older backup over the newer's.
func (e *hostileStore) replayCase(older, newer backupRef) hostileCase {
	k := hostileCase{kind: kindReplayed, name: fmt.Sprintf("manifest of %s over %s's", older.label, newer.label), damage: func(t *testing.T) []string {
		e.objs.put(t, e.key(newer, backup.ManifestObject), []byte(e.object(older, backup.ManifestObject)))
		return []string{e.key(newer, backup.ManifestObject)}
	}}
	return k.with(e.swappedAs(newer, older, []string{backup.ManifestObject}))
}

// foreignCases fill the store with another tool's objects (noise) and in
// each case one more object named like a backup of ours. withDirs adds
// what only a file system holds: empty directories, a directory where a
// manifest should be, a file where a backup's directory should be.
func (e *hostileStore) foreignCases(rng *rand.Rand, withDirs bool) []hostileCase {
	p := e.objs.root()
	a1, a2 := e.a[0], e.a[1]
	noise := func(t *testing.T) []string {
		objs := map[string][]byte{
			"README.txt":                   []byte("objects of the nightly export job; do not edit\n"),
			".DS_Store":                    garbage(rng, 6148),
			"other-tool/state.json":        []byte(`{"version":3,"last_run":"2026-11-30T02:00:00Z"}`),
			"other-tool/blobs/00/0001.bin": garbage(rng, 1+rng.IntN(64<<10)),
			p + "README":                   []byte("hsm backups\n"),
			p + "clusters.json":            []byte(`["cluster-1","cluster-2"]`),
			p + "clusters/index.html":      []byte("<html></html>"),
			p + "clusters/" + testCluster + "/notes.txt":                               []byte("rotate keys in march\n"),
			p + "clusters/" + testCluster + "/backups/backups.csv":                     []byte("id,size\n"),
			p + "clusters/" + testCluster + "/backups/" + a1.id + "/image.sha256":      []byte(fmt.Sprintf("%x  image\n", garbage(rng, 32))),
			p + "clusters/" + testCluster + "/backups/" + a2.id + "/manifest.json.bak": garbage(rng, 1+rng.IntN(4096)),
			p + "clusters/" + hostileCluster2 + "/snapshots/2026-12-01.tar.gz":         garbage(rng, 1+rng.IntN(16<<10)),
			p + "clusters/" + hostileCluster2 + "/backups/not-a-backup/data":           garbage(rng, 100),
		}
		if withDirs {
			objs["other-tool/empty/"] = nil
			objs[p+"clusters/"+testCluster+"/backups/tmp/"] = nil
		}
		var keys []string
		for _, k := range slices.Sorted(maps.Keys(objs)) {
			e.objs.put(t, k, objs[k])
			keys = append(keys, k)
		}
		return keys
	}
	foreign := func(name string, v victim, put func(t *testing.T, dir string) []string) hostileCase {
		dir := e.key(v.ref, "")
		return hostileCase{kind: kindForeign, name: name, damage: func(t *testing.T) []string {
			return append(noise(t), put(t, dir)...)
		}, victims: []victim{v}}
	}
	named := func(cluster string) backupRef {
		return backupRef{"a foreign backup-named directory", cluster, foreignID(rng)}
	}
	cases := []hostileCase{
		foreign("garbage named like a backup", victim{ref: named(testCluster), listed: "INVALID", code: exitCodeVerify, wants: []string{wantManifest}},
			func(t *testing.T, dir string) []string {
				e.objs.put(t, dir+backup.ManifestObject, garbage(rng, 1+rng.IntN(8192)))
				e.objs.put(t, dir+backup.ImageObject, garbage(rng, 1+rng.IntN(64<<10)))
				return []string{dir + backup.ManifestObject, dir + backup.ImageObject}
			}),
		foreign("an image of garbage without a manifest", victim{ref: named(testCluster), listed: "", wants: []string{"object not found"}},
			func(t *testing.T, dir string) []string {
				e.objs.put(t, dir+backup.ImageObject, garbage(rng, 1+rng.IntN(64<<10)))
				return []string{dir + backup.ImageObject}
			}),
		foreign("another tool's JSON as a manifest", victim{ref: named(hostileCluster2), listed: "INVALID", code: exitCodeVerify, wants: []string{wantManifest}},
			func(t *testing.T, dir string) []string {
				e.objs.put(t, dir+backup.ManifestObject, []byte(`{"format":"other-tool/1","id":"x","objects":["image"]}`))
				e.objs.put(t, dir+backup.ImageObject, []byte("image"))
				return []string{dir + backup.ManifestObject, dir + backup.ImageObject}
			}),
		foreign("a2's objects under a new backup id", victim{ref: named(testCluster), listed: "INVALID", code: exitCodeVerify,
			wants: []string{wantManifest, "it describes backup " + a2.id + " of cluster " + testCluster}},
			func(t *testing.T, dir string) []string {
				e.objs.put(t, dir+backup.ManifestObject, []byte(e.object(a2, backup.ManifestObject)))
				e.objs.put(t, dir+backup.ImageObject, []byte(e.object(a2, backup.ImageObject)))
				return []string{dir + backup.ManifestObject, dir + backup.ImageObject}
			}),
	}
	if withDirs {
		cases = append(cases,
			foreign("a directory where a manifest should be", victim{ref: named(testCluster), listed: "", wants: []string{"object not found"}},
				func(t *testing.T, dir string) []string {
					e.objs.put(t, dir+backup.ManifestObject+"/", nil)
					e.objs.put(t, dir+backup.ManifestObject+"/part-0", garbage(rng, 100))
					e.objs.put(t, dir+backup.ImageObject, garbage(rng, 100))
					return []string{dir + backup.ManifestObject + "/part-0", dir + backup.ImageObject}
				}),
			foreign("a file where a backup's directory should be", victim{ref: named(testCluster), listed: "", wants: []string{"object not found"}},
				func(t *testing.T, dir string) []string {
					file := strings.TrimSuffix(dir, "/")
					e.objs.put(t, file, garbage(rng, 100))
					return []string{file}
				}),
		)
	}
	return cases
}

// damagedAs is how a backup whose object name was damaged in place fails:
// its manifest is invalid, or its image does not match it.
func (e *hostileStore) damagedAs(r backupRef, name string) victim {
	if name == backup.ManifestObject {
		return victim{ref: r, listed: "INVALID", code: exitCodeVerify, wants: []string{wantManifest}}
	}
	return victim{ref: r, listed: "READY", code: exitCodeVerify, wants: []string{wantHash}}
}

// swappedAs is how backup r fails with the objects names of other in
// place of its own.
func (e *hostileStore) swappedAs(r, other backupRef, names []string) victim {
	if slices.Contains(names, backup.ManifestObject) {
		return victim{ref: r, listed: "INVALID", code: exitCodeVerify,
			wants: []string{wantManifest, "it describes backup " + other.id + " of cluster " + other.cluster}}
	}
	return victim{ref: r, listed: "READY", code: exitCodeVerify, wants: []string{wantHash}}
}

// goneAs is how backup r fails without its manifest: not listed, not
// found.
func (e *hostileStore) goneAs(r backupRef) victim {
	return victim{ref: r, listed: "", wants: []string{"object not found"}}
}

// with is k with one more victim.
func (k hostileCase) with(v victim) hostileCase {
	k.victims = append(k.victims, v)
	return k
}

// restoring is k restoring the undamaged backup r for real.
func (k hostileCase) restoring(r backupRef) hostileCase {
	k.good = &r
	return k
}

// all are the store's backups.
func (e *hostileStore) all() []backupRef { return append(slices.Clone(e.a), e.b...) }

// key is the key of r's object name ("" for its directory's prefix).
func (e *hostileStore) key(r backupRef, name string) string {
	return e.objs.root() + "clusters/" + r.cluster + "/backups/" + r.id + "/" + name
}

// object is r's object name as backup create stored it.
func (e *hostileStore) object(r backupRef, name string) string { return e.pristine[e.key(r, name)] }

// has reports whether the pristine store holds key.
func (e *hostileStore) has(key string) bool {
	_, ok := e.pristine[key]
	return ok
}

// layout returns the length of r's outer header and of its image object.
func (e *hostileStore) layout(r backupRef) (hdr, n int) {
	m, err := backup.ParseManifest([]byte(e.object(r, backup.ManifestObject)))
	if err != nil {
		panic(fmt.Sprintf("manifest of %s: %v", r.id, err))
	}
	if len(m.OuterHeader) < 16 || m.ObjectSize < int64(len(m.OuterHeader))+64 || int(m.ObjectSize) != len(e.object(r, backup.ImageObject)) {
		panic(fmt.Sprintf("manifest of %s: outer header of %d bytes, object of %d", r.id, len(m.OuterHeader), m.ObjectSize))
	}
	return len(m.OuterHeader), int(m.ObjectSize)
}

// listing runs backup list --json and returns the state of each backup
// listed, by "cluster/id": INVALID for a manifest it skipped, which must
// come with a reason.
func (e *hostileStore) listing(t *testing.T) map[string]string {
	t.Helper()
	out := e.s.cli(t, "backup", "list", "--json")
	got := map[string]string{}
	summaries, invalid := 0, 0
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var l struct {
			MessageType string `json:"message_type"`
			ClusterID   string `json:"cluster_id"`
			BackupID    string `json:"backup_id"`
			State       string `json:"state"`
			Reason      string `json:"reason"`
			Invalid     int    `json:"invalid"`
		}
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Fatalf("backup list --json: %v\n%s", err, out)
		}
		switch l.MessageType {
		case "result":
			got[l.ClusterID+"/"+l.BackupID] = l.State
		case "invalid":
			if l.Reason == "" {
				t.Errorf("backup list --json: an invalid manifest without a reason: %s", line)
			}
			got[l.ClusterID+"/"+l.BackupID] = "INVALID"
			invalid++
		case "summary":
			summaries++
			if l.Invalid != invalid {
				t.Errorf("backup list --json: the summary counts %d invalid manifests, %d listed:\n%s", l.Invalid, invalid, out)
			}
		default:
			t.Fatalf("backup list --json: a line of type %q:\n%s", l.MessageType, out)
		}
	}
	if summaries != 1 {
		t.Fatalf("backup list --json: %d summary lines:\n%s", summaries, out)
	}
	return got
}

// orphans runs backup list --orphans --json and returns the keys of the
// stray objects it reports.
func (e *hostileStore) orphans(t *testing.T) map[string]bool {
	t.Helper()
	out := e.s.cli(t, "backup", "list", "--orphans", "--json")
	got := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var l struct {
			MessageType string `json:"message_type"`
			Key         string `json:"key"`
		}
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Fatalf("backup list --orphans --json: %v\n%s", err, out)
		}
		if l.MessageType == "result" {
			got[e.objs.root()+l.Key] = true
		}
	}
	return got
}

// putBack puts every object of the store back as it was before the case
// and checks that it is.
func (e *hostileStore) putBack(t *testing.T) {
	t.Helper()
	now := e.objs.snapshot(t)
	// The longest keys first: what is in a directory before the directory.
	extra := slices.Collect(func(yield func(string) bool) {
		for k := range now {
			if _, ok := e.pristine[k]; !ok && !yield(k) {
				return
			}
		}
	})
	slices.SortFunc(extra, func(a, b string) int { return len(b) - len(a) })
	for _, k := range extra {
		e.objs.remove(t, k)
	}
	for _, k := range slices.Sorted(maps.Keys(e.pristine)) {
		if v, ok := now[k]; !ok || v != e.pristine[k] {
			e.objs.put(t, k, []byte(e.pristine[k]))
		}
	}
	if now := e.objs.snapshot(t); !maps.Equal(now, e.pristine) {
		t.Fatalf("the store was not put back: %d objects, want %d", len(now), len(e.pristine))
	}
}

// objectStore is a store as whoever can write to it sees it: objects by
// key, read and written around hsmbackup. A key ending in "/" is a
// directory in a file store, an empty object (a folder marker) in S3.
type objectStore interface {
	root() string // the key prefix of the service's objects
	snapshot(t *testing.T) map[string]string
	put(t *testing.T, key string, data []byte)
	remove(t *testing.T, key string)
}

// fileObjects is a file store's directory.
type fileObjects struct{ dir string }

func (f *fileObjects) root() string { return "" }

func (f *fileObjects) snapshot(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(f.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == f.dir {
			return err
		}
		rel, err := filepath.Rel(f.dir, path)
		if err != nil {
			return err
		}
		if d.IsDir() {
			out[filepath.ToSlash(rel)+"/"] = ""
			return nil
		}
		data, err := os.ReadFile(path)
		out[filepath.ToSlash(rel)] = string(data)
		return err
	})
	if err != nil {
		t.Fatalf("read the store %s: %v", f.dir, err)
	}
	return out
}

func (f *fileObjects) put(t *testing.T, key string, data []byte) {
	t.Helper()
	path := filepath.Join(f.dir, filepath.FromSlash(key))
	if strings.HasSuffix(key, "/") {
		if err := os.MkdirAll(path, 0o700); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func (f *fileObjects) remove(t *testing.T, key string) {
	t.Helper()
	if err := os.Remove(filepath.Join(f.dir, filepath.FromSlash(key))); err != nil {
		t.Fatal(err)
	}
}

// s3Objects is a bucket, written with the minio-go client.
type s3Objects struct {
	cl             *minio.Client
	bucket, prefix string
}

func (s *s3Objects) root() string { return s.prefix }

func (s *s3Objects) snapshot(t *testing.T) map[string]string {
	t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	for oi := range s.cl.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Recursive: true}) {
		if oi.Err != nil {
			t.Fatal(oi.Err)
		}
		obj, err := s.cl.GetObject(ctx, s.bucket, oi.Key, minio.GetObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(obj)
		obj.Close()
		if err != nil {
			t.Fatalf("get %s: %v", oi.Key, err)
		}
		out[oi.Key] = string(data)
	}
	return out
}

func (s *s3Objects) put(t *testing.T, key string, data []byte) {
	t.Helper()
	if _, err := s.cl.PutObject(context.Background(), s.bucket, key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

func (s *s3Objects) remove(t *testing.T, key string) {
	t.Helper()
	if err := s.cl.RemoveObject(context.Background(), s.bucket, key, minio.RemoveObjectOptions{}); err != nil {
		t.Fatalf("remove %s: %v", key, err)
	}
}

// failedWith reports whether res is a failure with exit status code (any
// of 1-6 if 0) reported as one line "hsmbackup: ..." last on stderr,
// after log lines only, that contains every one of wants; it fails t
// (without stopping it) if not.
func failedWith(t *testing.T, what string, res Result, code int, wants ...string) bool {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(res.Stderr, "\n"), "\n")
	last := lines[len(lines)-1]
	ok := res.Code >= 1 && res.Code <= 6 && (code == 0 || res.Code == code) &&
		strings.HasPrefix(last, "hsmbackup: ") && strings.HasSuffix(res.Stderr, "\n")
	for _, l := range lines[:len(lines)-1] {
		ok = ok && logLine.MatchString(l)
	}
	if !ok {
		t.Errorf("%s: want exit status %d and one line \"hsmbackup: ...\" last on stderr; got %s", what, code, res)
		return false
	}
	for _, w := range wants {
		if !strings.Contains(last, w) {
			t.Errorf("%s: error %q does not mention %q", what, last, w)
			ok = false
		}
	}
	return ok
}

// randomBit is one bit of a byte, at random.
func randomBit(rng *rand.Rand) byte { return 1 << rng.IntN(8) }

// signedOnlyCase flips bit 0x01 of a decimal digit of r's object_sha256
// (0 and 1, 2 and 3... swap): the manifest stays well formed, in its one
// encoding, and only its signature refuses it.
func (e *hostileStore) signedOnlyCase(r backupRef, rng *rand.Rand) hostileCase {
	m := e.object(r, backup.ManifestObject)
	const member = `"object_sha256":"`
	i := strings.Index(m, member)
	if i < 0 {
		panic("manifest of " + r.id + " without " + member)
	}
	i += len(member)
	var digits []int
	for j := i; j < i+64; j++ {
		if m[j] >= '0' && m[j] <= '9' {
			digits = append(digits, j)
		}
	}
	if len(digits) == 0 {
		panic("object_sha256 of " + r.id + " without a decimal digit")
	}
	k := e.flipCase(r, backup.ManifestObject, digits[rng.IntN(len(digits))], 0x01)
	k.victims[0].wants = append(k.victims[0].wants, "bad signature")
	return k
}

// garbage returns n random bytes.
func garbage(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// foreignID returns an id of the form backup create gives, of no backup.
func foreignID(rng *rand.Rand) string {
	const letters = "abcdefghijklmnopqrstuvwxyz234567"
	b := make([]byte, 10)
	for i := range b {
		b[i] = letters[rng.IntN(len(letters))]
	}
	return "backup-" + time.Now().UTC().Add(-time.Duration(rng.IntN(1000))*time.Hour).Format("20060102T150405Z") + "-" + string(b)
}

// newSecondCluster makes a new HSM into cluster id with the CLI, as
// newCluster made the first: its CSR signed by the same customer CA, the
// same officer and password. It returns the HSM's address.
func newSecondCluster(t *testing.T, c *cluster, id string) string {
	t.Helper()
	addr := c.newHSM(t, "hsm-"+id, filepath.Join(c.dir, "op"), testFirmware)
	csr, crt := filepath.Join(c.dir, id+".csr"), filepath.Join(c.dir, id+".crt")
	out := c.run(t, "cluster", "init", "--addr", addr, "--claim", c.claims[addr], "--manufacturer-root", c.mfrRoot,
		"--operator-root", c.opRoot, "--cluster-id", id, "--csr-out", csr)
	wantLines(t, out, "cluster CSR for "+id+" from HSM ")
	c.ca.Sign(t, csr, crt)
	out = c.run(t, "cluster", "init", "--addr", addr, "--claim", c.claims[addr], "--manufacturer-root", c.mfrRoot,
		"--cert", crt, "--customer-ca", c.ca.Cert)
	wantLines(t, out, "cluster "+id+" initialized on HSM ")
	out = c.run(t, "cluster", "activate", "--addr", addr, "--customer-ca", c.ca.Cert, "--cert", c.cert, "--key", c.key,
		"--cluster-id", id, "--user", testOfficer, "--password-file", c.passwordFile)
	wantLines(t, out, "cluster "+id+" activated on HSM ")
	return addr
}

// addCluster adds cluster id, of the HSMs members, to the service's
// config, with the credentials of the first cluster.
func (s *service) addCluster(t *testing.T, id string, members ...string) {
	t.Helper()
	data, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	clusters := cfg["clusters"].(map[string]any)
	entry := maps.Clone(clusters[testCluster].(map[string]any))
	entry["members"] = members
	entry["tags"] = map[string]string{"owner": "treasury"}
	clusters[id] = entry
	if data, err = yaml.Marshal(cfg); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.config, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// createIn runs backup create for cluster, whose source must be the HSM
// serial, and returns the new backup's id.
func (s *service) createIn(t *testing.T, cluster, serial string) string {
	t.Helper()
	out := s.cli(t, "backup", "create", "--cluster", cluster)
	m := createdLine.FindStringSubmatch(out)
	if m == nil || m[2] != cluster || m[3] != serial {
		t.Fatalf("backup create printed no line \"created ID: cluster %s, from HSM %s, ...\":\n%s", cluster, serial, out)
	}
	return m[1]
}

// healthIn is c.health for an HSM of cluster.
func healthIn(t *testing.T, c *cluster, addr, cluster string) api.Health {
	t.Helper()
	h, err := c.clientIn(t, addr, cluster).Health(context.Background())
	if err != nil {
		t.Fatalf("health of %s: %v", addr, err)
	}
	return h
}

// addUser has the officer of cluster create a crypto user on the HSM on
// addr: a change between two backups.
func addUser(t *testing.T, c *cluster, addr, cluster, name string) {
	t.Helper()
	ctx := context.Background()
	cl := c.clientIn(t, addr, cluster)
	if _, err := cl.Login(ctx, testOfficer, c.password); err != nil {
		t.Fatal(err)
	}
	if err := cl.CreateUser(ctx, name, hsmcore.CryptoUser, c.password+"-"+name); err != nil {
		t.Fatalf("create user %s on %s: %v", name, addr, err)
	}
}
