package device

import (
	"bytes"
	"cmp"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/internal/atomicfile"
)

// The journal (docs/FORMATS.md 3.1): device.journal holds the changes
// made since device.sealed was written, each sealed as one entry, so that
// a change costs in proportion to what it changes, not to the whole state.
// An entry names the base it extends (the base's nonce) and its place in
// the journal in its additional data, so entries are neither moved
// between journals nor reordered. When the journal has grown to half the
// base, or a change deletes something (a deleted key's material must not
// stay on disk), the whole state is sealed as a new base and the journal
// restarts.

const journalFile = "device.journal"

var (
	journalMagic = []byte("HSMJRNL\x01")
	deltaMagic   = []byte("HSMDLTA\x01")
)

const (
	maxJournalEntry = 16 << 20 // a larger change writes a new base
	minCompaction   = 1 << 20  // the journal grows to at least this before a new base
)

// journal is the open journal file.
type journal struct {
	f    *os.File
	base []byte // the nonce of the device.sealed it extends
	seq  uint64 // entries in it
	size int64  // its length
}

func journalAAD(base []byte, seq uint64) []byte {
	aad := append(bytes.Clone(journalMagic), base...)
	return binary.BigEndian.AppendUint64(aad, seq)
}

// commit makes next the device's contents: durable first, then swapped
// in. The caller holds d.mu. On error nothing changed.
func (d *Device) commit(next *contents) error {
	if d.failCommits > 0 {
		d.failCommits--
		return fmt.Errorf("seal state: write: %w", syscall.ENOSPC)
	}
	if d.jr != nil {
		delta, ok, err := encodeDelta(d.st, next)
		if err != nil {
			return fmt.Errorf("seal state: %w", err)
		}
		if ok && len(delta) <= maxJournalEntry && d.jr.size+int64(len(delta)) <= max(minCompaction, d.baseSize/2) {
			err := d.appendJournal(delta)
			clear(delta)
			if err != nil {
				return fmt.Errorf("seal state: %w", err)
			}
			d.st, d.digestOK = next, false
			return nil
		}
		clear(delta)
	}
	return d.writeBase(next)
}

// writeBase seals next as device.sealed and starts an empty journal on it.
func (d *Device) writeBase(next *contents) error {
	base, size, err := d.writeState(next)
	if err != nil {
		return err
	}
	d.st, d.digestOK, d.baseSize = next, false, size
	if d.jr != nil {
		d.jr.f.Close()
		d.jr = nil
	}
	// The state is committed: a journal that fails to start only means
	// the next change writes a base again. The old journal names the old
	// base and is ignored.
	d.jr, _ = d.newJournal(base)
	return nil
}

// newJournal atomically replaces the journal with an empty one on base.
func (d *Device) newJournal(base []byte) (*journal, error) {
	path := filepath.Join(d.dir, journalFile)
	head := append(bytes.Clone(journalMagic), base...)
	if err := atomicfile.WriteFile(path, head, 0o600); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	return &journal{f: f, base: base, size: int64(len(head))}, nil
}

// appendJournal seals delta as the next entry and makes it durable. If
// that fails, the journal is cut back to where it was; if that fails too,
// it is dropped, and the next change writes a base.
func (d *Device) appendJournal(delta []byte) error {
	j := d.jr
	nonce := make([]byte, d.seal.NonceSize())
	rand.Read(nonce)
	entry := make([]byte, 4, 4+len(nonce)+len(delta)+d.seal.Overhead())
	entry = append(entry, nonce...)
	entry = d.seal.Seal(entry, nonce, delta, journalAAD(j.base, j.seq+1))
	binary.BigEndian.PutUint32(entry, uint32(len(entry)-4))
	_, err := j.f.WriteAt(entry, j.size)
	if err == nil {
		err = j.f.Sync()
	}
	if err != nil {
		if j.f.Truncate(j.size) != nil || j.f.Sync() != nil {
			j.f.Close()
			d.jr = nil
		}
		return fmt.Errorf("journal: %w", err)
	}
	j.seq++
	j.size += int64(len(entry))
	return nil
}

// openJournal replays the journal on the base just read (its nonce base)
// into d.st. A journal of another base (one a crash left behind a new
// base) or none starts afresh; a torn last entry, what a crash during an
// append leaves, was never acknowledged and is cut off; any other damage
// is ErrTampered or ErrMalformed.
func (d *Device) openJournal(base []byte) error {
	path := filepath.Join(d.dir, journalFile)
	head := append(bytes.Clone(journalMagic), base...)
	b, err := atomicfile.ReadPrivate(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		d.jr, err = d.newJournal(base)
		return err
	case err != nil:
		return fmt.Errorf("journal: %w", err)
	case !bytes.HasPrefix(b, journalMagic):
		return fmt.Errorf("journal: %w", hsmcore.ErrMalformed)
	case !bytes.HasPrefix(b, head):
		// The journal of an earlier base, which a crash left behind
		// the new one: the base holds all of it.
		d.jr, err = d.newJournal(base)
		return err
	}
	j := &journal{base: base, size: int64(len(journalMagic) + len(base))}
	rest := b[j.size:]
	for len(rest) > 0 {
		if len(rest) < 4 || allZero(rest) {
			break // an append a crash cut short, or the zeros it left
		}
		n := int(binary.BigEndian.Uint32(rest))
		if n < d.seal.NonceSize()+d.seal.Overhead() || n > maxJournalEntry+d.seal.NonceSize()+d.seal.Overhead() {
			return fmt.Errorf("journal entry %d: %d bytes: %w", j.seq+1, n, hsmcore.ErrMalformed)
		}
		if n > len(rest)-4 {
			break // cut short by a crash
		}
		e := rest[4 : 4+n]
		ns := d.seal.NonceSize()
		delta, err := d.seal.Open(nil, e[:ns], e[ns:], journalAAD(base, j.seq+1))
		if err != nil {
			if len(rest) == 4+n {
				// The last entry: an append a crash cut short, which left
				// whatever the disk held. Never acknowledged: cut off.
				break
			}
			return fmt.Errorf("journal entry %d: %w", j.seq+1, hsmcore.ErrTampered)
		}
		err = applyDelta(d.st, delta, d.capacity)
		clear(delta)
		if err != nil {
			return fmt.Errorf("journal entry %d: %w", j.seq+1, err)
		}
		j.seq++
		j.size += int64(4 + n)
		rest = rest[4+n:]
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	if int64(len(b)) > j.size { // a torn tail: cut it off
		if err := f.Truncate(j.size); err != nil {
			f.Close()
			return fmt.Errorf("journal: %w", err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return fmt.Errorf("journal: %w", err)
		}
	}
	j.f = f
	d.jr = j
	return nil
}

// encodeDelta returns the journal entry that turns old into next: next's
// header, then the users, token keys and changes that are new or replaced
// (a replaced record differs in its packed bytes, and only the shards a
// change copied can hold one). ok is false
// when next deletes a user, a token key or a change, or replaces most of
// the state: such a change writes a new base.
func encodeDelta(old, next *contents) (_ []byte, ok bool, err error) {
	var users []*userRecord
	for name, u := range next.Users {
		if old.Users[name] != u {
			users = append(users, u)
		}
	}
	for name := range old.Users {
		if next.Users[name] == nil {
			return nil, false, nil // deleted
		}
	}
	keys, deleted := changedRecords(&next.Keys.token, &old.Keys.token)
	if deleted {
		return nil, false, nil
	}
	changes, deleted := changedRecords(&next.Changes.m, &old.Changes.m)
	if deleted {
		return nil, false, nil
	}
	if n := len(keys) + len(changes); n > 1024 && n > (next.Keys.Tokens()+next.Changes.Len())/4 {
		return nil, false, nil // most of the state: a new base is as cheap
	}
	slices.SortFunc(users, func(a, b *userRecord) int { return strings.Compare(a.Name, b.Name) })
	for i, p := range keys {
		keys[i] = keyRecordOf(p)
	}
	var buf bytes.Buffer
	buf.Write(deltaMagic)
	rw := &recordWriter{w: &buf, b: make([]byte, 0, 4096)}
	if err := rw.records(next, users, keys, changes); err != nil {
		return nil, false, err
	}
	return buf.Bytes(), true, nil
}

// changedRecords returns the values in m that old does not hold, ordered
// by their keys, or deleted if old holds a key m does not.
func changedRecords[K cmp.Ordered](m, old *cowMap[K, string]) (values []string, deleted bool) {
	var ks []K
	for now, was := range m.changed(old) {
		for k, v := range now {
			if was[k] != v {
				ks = append(ks, k)
			}
		}
		for k := range was {
			if _, ok := now[k]; !ok {
				return nil, true
			}
		}
	}
	slices.Sort(ks)
	values = make([]string, len(ks))
	for i, k := range ks {
		values[i] = m.Get(k)
	}
	return values, false
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// applyDelta applies a journal entry's delta to c, checking every record
// as readContents does.
func applyDelta(c *contents, delta []byte, maxKeys int) error {
	br, err := newBinaryRecords(bytes.NewReader(delta), deltaMagic)
	if err != nil {
		return err
	}
	return readInto(c, br, 2, maxKeys, true)
}

// stateDigest returns the SHA-256 of the device's contents as version 2
// encodes them, computed when a change made it stale. The caller holds
// d.mu.
func (d *Device) stateDigest() [32]byte {
	if !d.digestOK {
		h := sha256.New()
		if err := writeContents(h, d.st); err != nil {
			// Unreachable: every record was encoded when it was committed.
			panic("hsmcore: encode state: " + err.Error())
		}
		h.Sum(d.digest[:0])
		d.digestOK = true
	}
	return d.digest
}
