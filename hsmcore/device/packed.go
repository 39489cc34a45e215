package device

import (
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"iter"
	"maps"
	"sync"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

// A state's token keys and change records are held packed: each as one
// string, its record as contents version 2 encodes it (FORMATS 2.3). A
// million keys then take about their sealed size in memory, in objects
// the garbage collector does not scan, and writing the state copies
// records instead of encoding them. Reading a record decodes a fresh copy,
// which its reader may keep or change: a change is made by setting a new
// record, as ever.

// keyMap holds a state's keys: token keys packed, session keys (never
// stored, and tied to their session) as records.
type keyMap struct {
	token   cowMap[uint64, string]
	session map[uint64]*keyRecord
}

func newKeyMap() keyMap {
	return keyMap{token: cowMap[uint64, string]{shard: func(h uint64) uint8 { return uint8(h) }}}
}

// clone returns a copy; changing either leaves the other as it was.
func (m *keyMap) clone() keyMap {
	return keyMap{token: m.token.clone(), session: maps.Clone(m.session)}
}

// Has reports whether m holds key h.
func (m *keyMap) Has(h uint64) bool {
	if _, ok := m.session[h]; ok {
		return true
	}
	return m.token.Get(h) != ""
}

// Get returns key h, or nil.
func (m *keyMap) Get(h uint64) *keyRecord {
	if k := m.session[h]; k != nil {
		return k
	}
	if p := m.token.Get(h); p != "" {
		return unpackKey(p)
	}
	return nil
}

// Set sets key h to k; it fails if k is too large to be stored.
func (m *keyMap) Set(h uint64, k *keyRecord) error {
	if !k.Token {
		m.token.Delete(h)
		if m.session == nil {
			m.session = map[uint64]*keyRecord{}
		}
		m.session[h] = k
		return nil
	}
	p, err := packKey(k)
	if err != nil {
		return fmt.Errorf("key %d: %w", h, err)
	}
	delete(m.session, h)
	m.token.Set(h, p)
	return nil
}

// Delete removes key h, if m holds it.
func (m *keyMap) Delete(h uint64) {
	delete(m.session, h)
	m.token.Delete(h)
}

// Len returns the number of keys, session keys included.
func (m *keyMap) Len() int { return m.token.Len() + len(m.session) }

// Tokens returns the number of token keys.
func (m *keyMap) Tokens() int { return m.token.Len() }

// All yields every key, in no particular order.
func (m *keyMap) All() iter.Seq2[uint64, *keyRecord] {
	return func(yield func(uint64, *keyRecord) bool) {
		for h, k := range m.session {
			if !yield(h, k) {
				return
			}
		}
		for h, p := range m.token.All() {
			if !yield(h, unpackKey(p)) {
				return
			}
		}
	}
}

// CheckValues yields the handle and check value of every token key,
// without decoding the rest of it.
func (m *keyMap) CheckValues() iter.Seq2[uint64, string] {
	return func(yield func(uint64, string) bool) {
		for h, p := range m.token.All() {
			r := keyRecordOf(p)
			off := 8                 // handle
			off += 2 + u16At(r, off) // label
			off += 2 + u16At(r, off) // id
			off += 2 + u16At(r, off) // type
			off += 4                 // bits
			off += 2 + u16At(r, off) // curve
			off += 4 + 2 + 2         // flags, templates
			if !yield(h, r[off+2:off+2+u16At(r, off)]) {
				return
			}
		}
	}
}

// Session yields the session keys.
func (m *keyMap) Session() iter.Seq2[uint64, *keyRecord] { return maps.All(m.session) }

// builders are the buffers records are packed in, reused: a state read
// packs every record, and would otherwise leave a buffer of garbage per
// record.
var builders = sync.Pool{New: func() any { return &recordWriter{b: make([]byte, 0, 512)} }}

func putBuilder(rw *recordWriter) {
	clear(rw.b) // it held key material
	rw.b, rw.err = rw.b[:0], nil
	if cap(rw.b) <= 64<<10 {
		builders.Put(rw)
	}
}

// packKey returns k packed: its class (a byte: 0 secret, 1 private) and
// public key, which the record leaves to be derived from the material,
// then its record.
func packKey(k *keyRecord) (string, error) {
	rw := builders.Get().(*recordWriter)
	defer putBuilder(rw)
	switch k.Class {
	case hsmcore.SecretKey:
		rw.u8(0)
	case hsmcore.PrivateKey:
		rw.u8(1)
	default:
		return "", fmt.Errorf("key class %q", k.Class)
	}
	rw.bytes(k.PublicKey)
	start := len(rw.b)
	rw.keyBody(k)
	if rw.err != nil {
		return "", rw.err
	}
	if n := len(rw.b) - start; n > maxRecord {
		return "", fmt.Errorf("record of %d bytes, limit %d", n, maxRecord)
	}
	return string(rw.b), nil
}

// keyRecordOf returns the contents record in packed key p.
func keyRecordOf(p string) string {
	off := 1                 // the class
	off += 2 + u16At(p, off) // the public key
	return p[off:]
}

// u16At returns the big-endian u16 at p[off:].
func u16At(p string, off int) int { return int(p[off])<<8 | int(p[off+1]) }

func unpackKey(p string) *keyRecord {
	f := fields{s: []byte(p), borrow: true} // the record keeps its copy
	k := &keyRecord{}
	k.Class = hsmcore.SecretKey
	if f.u8() == 1 {
		k.Class = hsmcore.PrivateKey
	}
	k.PublicKey = f.bytes()
	f.key(k)
	if err := f.done(); err != nil {
		panic("hsmcore: packed key record: " + err.Error()) // written by packKey, never changed
	}
	return k
}

var changeSeed = maphash.MakeSeed()

// changeMap holds a state's change records, packed, by object. The
// object each is kept under is the start of its record.
type changeMap struct{ m cowMap[string, string] }

func newChangeMap() changeMap {
	return changeMap{m: cowMap[string, string]{shard: func(o string) uint8 { return uint8(maphash.String(changeSeed, o)) }}}
}

func (m *changeMap) clone() changeMap { return changeMap{m: m.m.clone()} }

// Has reports whether m holds a change of object.
func (m *changeMap) Has(object string) bool { return m.m.Get(object) != "" }

// Get returns the last change of object, or nil.
func (m *changeMap) Get(object string) *changeMeta {
	if p := m.m.Get(object); p != "" {
		return unpackChange(p)
	}
	return nil
}

// Set records c as the last change of its object; it fails if c is too
// large to be stored.
func (m *changeMap) Set(c *changeMeta) error {
	rw := builders.Get().(*recordWriter)
	defer putBuilder(rw)
	rw.changeBody(c)
	if rw.err != nil {
		return fmt.Errorf("change of %s: %w", c.Object, rw.err)
	}
	if len(rw.b) > maxRecord {
		return fmt.Errorf("change of %s: record of %d bytes, limit %d", c.Object, len(rw.b), maxRecord)
	}
	p := string(rw.b)
	m.m.Set(p[2:2+len(c.Object)], p)
	return nil
}

// Len returns the number of change records.
func (m *changeMap) Len() int { return m.m.Len() }

// All yields every change record, in no particular order.
func (m *changeMap) All() iter.Seq2[string, *changeMeta] {
	return func(yield func(string, *changeMeta) bool) {
		for o, p := range m.m.All() {
			if !yield(o, unpackChange(p)) {
				return
			}
		}
	}
}

// Stamps yields the stamp of every change record, without decoding the
// rest of it.
func (m *changeMap) Stamps() iter.Seq2[string, stamp] {
	return func(yield func(string, stamp) bool) {
		for o, p := range m.m.All() {
			off := 2 + len(o)
			n := u16At(p, off)
			origin, seq := p[off+2:off+2+n], p[off+2+n:off+2+n+8]
			if !yield(o, stamp{Origin: origin, Seq: binary.BigEndian.Uint64([]byte(seq))}) {
				return
			}
		}
	}
}

func unpackChange(p string) *changeMeta {
	f := fields{s: []byte(p), borrow: true} // the record keeps its copy
	m := &changeMeta{}
	f.change(m)
	if err := f.done(); err != nil {
		panic("hsmcore: packed change record: " + err.Error()) // written by Set, never changed
	}
	return m
}
