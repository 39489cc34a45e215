package device

import (
	"bytes"
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/audit"
	"github.com/hsmbackup/hsmbackup/internal/atomicfile"
	"github.com/hsmbackup/hsmbackup/internal/strictjson"
)

// The audit log is a chain of segments (see docs/FORMATS.md): closed
// segments audit.log.000001, audit.log.000002, … each with its head
// signed by the device key in audit.log.NNNNNN.head, then the active
// segment, audit.log, which continues the chain. A rotation stages the
// next active segment as audit.log.new.
const (
	auditNextFile = auditFile + ".new"
	auditHeadExt  = ".head"
)

// auditSegmentEntries is how many entries the active segment takes before
// it is closed and a new one begun (or audit.MaxEntries, if lower): no
// file ever holds more than Decode reads.
var auditSegmentEntries = 1 << 16

func segmentLimit() int { return max(1, min(auditSegmentEntries, audit.MaxEntries)) }

func segmentName(k int) string { return fmt.Sprintf("%s.%06d", auditFile, k) }

// segmentNumber parses the NNNNNN of a segment's name, which must be as
// segmentName writes it.
func segmentNumber(s string) (int, bool) {
	k, err := strconv.Atoi(s)
	return k, err == nil && k >= 1 && segmentName(k) == auditFile+"."+s
}

// auditFiles is the open audit log of a device: the active segment, where
// its whole entries end, and how many segments are closed.
type auditFiles struct {
	f      *os.File // the active segment; nil once the device is closed
	off    int64    // bytes of whole, synced entries in f
	n      int      // entries in f
	closed int      // closed segments
	// broken is set when a failed append could not be undone, or a
	// rotation was left half done: nothing more is appended until the
	// device is opened again, which repairs the files.
	broken error

	failNext int // tests only: appends that fail as on a full disk
}

// put writes line at the end of the whole entries and syncs it. It does
// not move off: the caller does once the entry counts.
func (a *auditFiles) put(line []byte) error {
	if a.failNext > 0 {
		a.failNext--
		a.f.WriteAt(line[:len(line)/2], a.off)
		return fmt.Errorf("audit: write: %w", syscall.ENOSPC)
	}
	if _, err := a.f.WriteAt(line, a.off); err != nil {
		return fmt.Errorf("audit: write: %w", err)
	}
	if err := a.f.Sync(); err != nil {
		return fmt.Errorf("audit: sync: %w", err)
	}
	return nil
}

// undo cuts whatever a failed put left after the whole entries. If even
// that fails the log is broken until the device is opened again.
func (a *auditFiles) undo() {
	err := a.f.Truncate(a.off)
	if err == nil {
		err = a.f.Sync()
	}
	if err != nil {
		a.broken = fmt.Errorf("a failed append could not be undone: %w", err)
	}
}

// audit appends one entry to the audit log and syncs it. The caller holds
// d.mu or owns d exclusively. On error no entry was added: the sequence
// number is not consumed and the file holds only whole entries.
func (d *Device) audit(actor, op, object, result string) error {
	if d.alog.f == nil {
		return errors.New("audit: device closed")
	}
	d.rollUnauth()
	return d.appendAudit(actor, op, object, result)
}

// appendAudit is audit without the bookkeeping of unauthenticated calls.
func (d *Device) appendAudit(actor, op, object, result string) error {
	a := &d.alog
	if a.f == nil {
		return errors.New("audit: device closed")
	}
	var rotErr error
	if a.broken == nil && a.n >= segmentLimit() {
		rotErr = d.rotateAudit()
	}
	if a.broken != nil {
		return fmt.Errorf("audit: log unusable until the device is opened again: %w", a.broken)
	}
	if rotErr != nil && a.n >= audit.MaxEntries {
		return fmt.Errorf("audit: %w", rotErr)
	}
	e := d.auditLog.Next(d.opts.now(), auditField(actor), op, auditField(object), result)
	line := encodeEntry(e)
	if err := a.put(line); err != nil {
		a.undo()
		return err
	}
	a.off += int64(len(line))
	a.n++
	d.auditLog.Advance(e)
	return nil
}

func encodeEntry(e audit.Entry) []byte {
	var b bytes.Buffer
	if err := audit.Encode(&b, e); err != nil {
		panic("hsmcore: " + err.Error()) // Next built e: it encodes
	}
	return b.Bytes()
}

// rotateAudit closes the active segment: its head, signed, goes to the
// segment's head file, the segment is renamed audit.log.NNNNNN, and an
// empty active segment takes its place. On error the active segment is
// unchanged and still in use, unless the log is left broken.
func (d *Device) rotateAudit() error {
	a := &d.alog
	k := a.closed + 1
	active, next := filepath.Join(d.dir, auditFile), filepath.Join(d.dir, auditNextFile)
	seg := filepath.Join(d.dir, segmentName(k))
	sh, err := d.signHead(d.auditLog.Head())
	if err != nil {
		return fmt.Errorf("rotate: %w", err)
	}
	head, err := json.Marshal(sh)
	if err != nil {
		return fmt.Errorf("rotate: %w", err)
	}
	nf, err := os.OpenFile(next, os.O_CREATE|os.O_TRUNC|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("rotate: %w", err)
	}
	undo := func(err error) error {
		nf.Close()
		os.Remove(next)
		os.Remove(seg + auditHeadExt)
		return fmt.Errorf("rotate: %w", err)
	}
	if err := nf.Sync(); err != nil {
		return undo(err)
	}
	if err := atomicfile.WriteFile(seg+auditHeadExt, head, 0o600); err != nil {
		return undo(err)
	}
	if err := os.Rename(active, seg); err != nil {
		return undo(err)
	}
	// The old segment is closed: never written again.
	a.f.Close()
	a.f, a.off, a.n, a.closed = nf, 0, 0, k
	if err := os.Rename(next, active); err != nil {
		a.broken = fmt.Errorf("rotate: %w", err) // Open finishes the rename
		return a.broken
	}
	atomicfile.SyncDir(d.dir) // durability only: Open repairs an interrupted rotation
	return nil
}

// openAudit opens the audit log of a device being opened: it repairs an
// interrupted rotation, verifies every closed segment against its signed
// head and the active segment as their continuation, and truncates a torn
// last entry, recording that it did. Any other damage is ErrTampered.
func (d *Device) openAudit() error {
	n, err := d.auditSegments()
	if err != nil {
		return err
	}
	start, err := d.readSegments(n, nil)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(d.dir, auditFile), os.O_RDWR, 0)
	if err != nil {
		return err
	}
	entries, complete, torn, err := audit.DecodeTorn(f)
	if err == nil {
		err = audit.VerifyFrom(start, entries, nil)
	}
	if err != nil {
		f.Close()
		return fmt.Errorf("%s: %w: %w", auditFile, err, hsmcore.ErrTampered)
	}
	head := start
	if len(entries) > 0 {
		last := entries[len(entries)-1]
		head = audit.Head{Seq: last.Seq, Hash: last.Hash}
	}
	d.auditLog = audit.New(head)
	d.alog = auditFiles{f: f, off: complete, n: len(entries), closed: n}
	if torn > 0 {
		if err := d.recoverTornAudit(torn); err != nil {
			f.Close()
			d.alog.f = nil
			return err
		}
	}
	return nil
}

// recoverTornAudit replaces the torn bytes after the last whole entry
// with an "audit.recovered" entry that counts them. The entry is written
// over them before they are cut, so that a failure at any point leaves a
// torn tail for the next Open to recover again, never an unrecorded cut.
func (d *Device) recoverTornAudit(torn int) error {
	a := &d.alog
	e := d.auditLog.Next(d.opts.now(), "", "audit.recovered", fmt.Sprintf("torn last entry truncated: %d bytes", torn), "ok")
	line := encodeEntry(e)
	if err := a.put(line); err != nil {
		return fmt.Errorf("recover torn entry: %w", err)
	}
	if err := a.f.Truncate(a.off + int64(len(line))); err != nil {
		return fmt.Errorf("recover torn entry: %w", err)
	}
	if err := a.f.Sync(); err != nil {
		return fmt.Errorf("recover torn entry: %w", err)
	}
	a.off += int64(len(line))
	a.n++
	d.auditLog.Advance(e)
	return nil
}

// auditSegments lists the closed segments, which must be numbered from 1
// with no gap, each with its head file, and returns how many there are.
// It first repairs an interrupted rotation (repairRotation).
func (d *Device) auditSegments() (int, error) {
	ents, err := os.ReadDir(d.dir)
	if err != nil {
		return 0, err
	}
	segs, heads := map[int]bool{}, map[int]bool{}
	var active, next bool
	for _, e := range ents {
		name := e.Name()
		switch rest, ok := strings.CutPrefix(name, auditFile+"."); {
		case name == auditFile:
			active = true
		case name == auditNextFile:
			next = true
		case ok:
			rest, isHead := strings.CutSuffix(rest, auditHeadExt)
			if k, ok := segmentNumber(rest); ok && isHead {
				heads[k] = true
			} else if ok {
				segs[k] = true
			}
		}
	}
	n := len(segs)
	if next {
		stray := active && heads[n+1] && !segs[n+1]
		if err := d.repairRotation(active, stray, n+1); err != nil {
			return 0, err
		}
		if stray {
			delete(heads, n+1)
		}
		active = true
		if err := atomicfile.SyncDir(d.dir); err != nil {
			return 0, err
		}
	}
	if !active {
		return 0, fmt.Errorf("%s missing: %w", auditFile, hsmcore.ErrTampered)
	}
	for k := 1; k <= n; k++ {
		if !segs[k] || !heads[k] {
			return 0, fmt.Errorf("segment %s or its head missing: %w", segmentName(k), hsmcore.ErrTampered)
		}
	}
	if len(heads) != n {
		return 0, fmt.Errorf("a segment head without its segment: %w", hsmcore.ErrTampered)
	}
	return n, nil
}

// repairRotation finishes or undoes a rotation cut short: the staged next
// segment, which is empty until it is in place, takes the active one's
// place if that was closed already, or else is removed, with the head
// file written for segment k if the active segment was not closed.
func (d *Device) repairRotation(active, strayHead bool, k int) error {
	// Only a staged segment can be repaired: one with an entry in it
	// was written to, which no rotation does.
	next := filepath.Join(d.dir, auditNextFile)
	if fi, err := os.Stat(next); err != nil {
		return err
	} else if fi.Size() != 0 {
		return fmt.Errorf("%s not empty: %w", auditNextFile, hsmcore.ErrTampered)
	}
	if !active {
		return os.Rename(next, filepath.Join(d.dir, auditFile))
	}
	if strayHead {
		if err := os.Remove(filepath.Join(d.dir, segmentName(k)+auditHeadExt)); err != nil {
			return err
		}
	}
	return os.Remove(next)
}

// readSegments reads and verifies the closed segments 1 to n in order,
// calling visit (if not nil) with each one's entries, and returns the
// head of the last: where the active segment starts.
func (d *Device) readSegments(n int, visit func([]audit.Entry)) (audit.Head, error) {
	start := audit.Head{}
	for k := 1; k <= n; k++ {
		entries, head, err := d.readSegment(k, start)
		if err != nil {
			return audit.Head{}, fmt.Errorf("%s: %w: %w", segmentName(k), err, hsmcore.ErrTampered)
		}
		if visit != nil {
			visit(entries)
		}
		start = head
	}
	return start, nil
}

// segmentHead reads the head the device signed when it closed segment k
// (k 0: the log's start, before any entry).
func (d *Device) segmentHead(k int) (audit.Head, error) {
	if k == 0 {
		return audit.Head{}, nil
	}
	b, err := os.ReadFile(filepath.Join(d.dir, segmentName(k)+auditHeadExt))
	if err != nil {
		return audit.Head{}, err
	}
	var sh hsmcore.SignedHead
	if err := strictjson.Unmarshal(b, &sh); err != nil {
		return audit.Head{}, fmt.Errorf("head: %w", err)
	}
	if !d.signedHeadValid(sh) {
		return audit.Head{}, errors.New("head: not signed by this device")
	}
	return sh.Head, nil
}

// readSegment reads closed segment k, which must continue the chain
// after start and end at the head the device signed when closing it.
func (d *Device) readSegment(k int, start audit.Head) ([]audit.Entry, audit.Head, error) {
	head, err := d.segmentHead(k)
	if err != nil {
		return nil, audit.Head{}, err
	}
	path := filepath.Join(d.dir, segmentName(k))
	f, err := os.Open(path)
	if err != nil {
		return nil, audit.Head{}, err
	}
	defer f.Close()
	entries, err := audit.Decode(f)
	if err == nil {
		err = audit.VerifyFrom(start, entries, &head)
	}
	if err == nil && len(entries) == 0 {
		err = errors.New("empty segment")
	}
	return entries, head, err
}

func (d *Device) signedHeadValid(sh hsmcore.SignedHead) bool {
	return sh.Serial == d.id.Serial &&
		ecdsa.VerifyASN1(&d.deviceKey.PublicKey, hsmcore.DomainDigest(hsmcore.AuditHeadDomain, sh.SignedMessage()), sh.Signature)
}

// AuditLog returns the device's whole audit log, every segment's entries
// from the first, and its head, signed by the device key so that a
// verifier also detects a removed tail. It checks the chain first: every
// closed segment against its signed head, and the active segment as their
// continuation; a log damaged while the device runs is ErrTampered.
// Refusals of unauthenticated calls not yet recorded are recorded first,
// as their "audit.suppressed" entries.
func (d *Device) AuditLog() ([]audit.Entry, hsmcore.SignedHead, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.alog.f == nil {
		return nil, hsmcore.SignedHead{}, errors.New("audit log: device closed")
	}
	d.flushSuppressed() // on failure they stay counted, for later
	var all []audit.Entry
	start, err := d.readSegments(d.alog.closed, func(es []audit.Entry) { all = append(all, es...) })
	if err != nil {
		return nil, hsmcore.SignedHead{}, fmt.Errorf("audit log: %w", err)
	}
	head := d.auditLog.Head()
	entries, err := audit.Decode(io.NewSectionReader(d.alog.f, 0, d.alog.off))
	if err == nil {
		err = audit.VerifyFrom(start, entries, &head)
	}
	if err != nil {
		return nil, hsmcore.SignedHead{}, fmt.Errorf("audit log: %s: %w: %w", auditFile, err, hsmcore.ErrTampered)
	}
	sh, err := d.signHead(head)
	return append(all, entries...), sh, err
}

// AuditPage returns a page of the audit log: the entries from sequence
// number from (1 is the first), at most limit of them and none past the
// end of the segment holding from, with the log's head signed by the
// device key. The segment is checked as AuditLog checks it (a closed one
// against its signed head, the active one as the continuation of the last
// closed one up to the head); a from past the head returns no entry.
// Paging from 1 to a head returns the whole log without holding it at
// once, on either side: hsmcore/client's AuditLog checks that the pages
// chain to the head of the first. Refusals of unauthenticated calls not
// yet recorded are recorded first.
func (d *Device) AuditPage(from uint64, limit int) ([]audit.Entry, hsmcore.SignedHead, error) {
	if from < 1 || limit < 1 {
		return nil, hsmcore.SignedHead{}, fmt.Errorf("audit log: a page of %d entries from %d: %w", limit, from, hsmcore.ErrInvalid)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.alog.f == nil {
		return nil, hsmcore.SignedHead{}, errors.New("audit log: device closed")
	}
	d.flushSuppressed() // on failure they stay counted, for later
	head := d.auditLog.Head()
	var page []audit.Entry
	if from <= head.Seq {
		entries, err := d.segmentOf(from, head)
		if err != nil {
			return nil, hsmcore.SignedHead{}, fmt.Errorf("audit log: %w: %w", err, hsmcore.ErrTampered)
		}
		i := from - entries[0].Seq
		page = entries[i:min(uint64(len(entries)), i+uint64(limit))]
	}
	sh, err := d.signHead(head)
	return page, sh, err
}

// segmentOf reads and checks the segment holding entry seq, at most head:
// the first closed segment whose signed head is at or past seq (a binary
// search over the heads), else the active one. The caller holds d.mu.
func (d *Device) segmentOf(seq uint64, head audit.Head) ([]audit.Entry, error) {
	n := d.alog.closed
	var headErr error
	k := 1 + sort.Search(n, func(i int) bool {
		h, err := d.segmentHead(i + 1)
		if err != nil {
			headErr = fmt.Errorf("%s: %w", segmentName(i+1), err)
			return true
		}
		return h.Seq >= seq
	})
	if headErr != nil {
		return nil, headErr
	}
	start, err := d.segmentHead(k - 1)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", segmentName(k-1), err)
	}
	var entries []audit.Entry
	name := auditFile
	if k <= n {
		name = segmentName(k)
		entries, _, err = d.readSegment(k, start)
	} else if entries, err = audit.Decode(io.NewSectionReader(d.alog.f, 0, d.alog.off)); err == nil {
		err = audit.VerifyFrom(start, entries, &head)
	}
	if err == nil && (len(entries) == 0 || seq <= start.Seq || seq > entries[len(entries)-1].Seq) {
		err = fmt.Errorf("entry %d: not in the segment its heads place it in", seq)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return entries, nil
}

// Unauthenticated is the actor of the audit entries of calls made without
// a session (cluster set-up, image import into an empty device, device
// initialization, failed logins): never a name the caller chose, which
// goes to the entry's object.
const Unauthenticated = "(unauthenticated)"

// Bounds on the audit entries of unauthenticated calls: at most
// UnauthAuditBurst entries per operation per UnauthAuditWindow. Beyond
// that a refusal is only counted, and the counts are recorded as one
// "audit.suppressed" entry per operation and result at the end of the
// window (or before the log is read or the device closed); a call that
// would change the device's state is refused with ErrFull instead. They
// are variables so that tests can change them.
var (
	UnauthAuditBurst  = 16
	UnauthAuditWindow = time.Minute
)

// unauthLimiter counts the audit entries of unauthenticated calls in the
// current window.
type unauthLimiter struct {
	start      time.Time
	used       map[string]int    // entries by operation
	suppressed map[string]uint64 // refusals not recorded, by "op result"
}

// auditUnauth records an entry of an unauthenticated call, or, for a
// refusal once op has had its entries in this window, only counts it.
// The caller holds d.mu.
func (d *Device) auditUnauth(op, object, result string) error {
	if d.alog.f == nil {
		return errors.New("audit: device closed")
	}
	d.rollUnauth()
	l := &d.unauth
	if result != "ok" && l.used[op] >= UnauthAuditBurst {
		l.suppressed[op+" "+result]++
		return nil
	}
	l.used[op]++
	return d.appendAudit(Unauthenticated, op, object, result)
}

// limitUnauth refuses an unauthenticated call that would change the
// device's state once op has had its entries in this window. The caller
// holds d.mu.
func (d *Device) limitUnauth(op string) error {
	d.rollUnauth()
	if d.unauth.used[op] >= UnauthAuditBurst {
		d.unauth.suppressed[op+" limited"]++
		return fmt.Errorf("%s: too many unauthenticated calls, retry later: %w", op, hsmcore.ErrFull)
	}
	return nil
}

// rollUnauth starts a new window once the current one is over, recording
// the refusals counted in it first.
func (d *Device) rollUnauth() {
	l := &d.unauth
	now := d.opts.now()
	if l.used == nil {
		l.used, l.suppressed, l.start = map[string]int{}, map[string]uint64{}, now
		return
	}
	if now.Sub(l.start) < UnauthAuditWindow && !now.Before(l.start) {
		return
	}
	if d.flushSuppressed() != nil {
		return // the window goes on; tried again at the next entry
	}
	clear(l.used)
	l.start = now
}

// flushSuppressed records the refusals counted and not yet recorded, one
// entry per operation and result: object "<op> <result> x<count>".
func (d *Device) flushSuppressed() error {
	l := &d.unauth
	for _, k := range slices.Sorted(maps.Keys(l.suppressed)) {
		if err := d.appendAudit(Unauthenticated, "audit.suppressed", fmt.Sprintf("%s x%d", k, l.suppressed[k]), "ok"); err != nil {
			return err
		}
		delete(l.suppressed, k)
	}
	return nil
}
