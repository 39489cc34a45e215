package device

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/cryptobyte"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/quorum"
)

// Contents, version 2 (docs/FORMATS.md 2.3): a magic, then records, each
// u32be(length) || body, of at most maxRecord bytes: the header, the
// users, the token keys, the changes. Inside a record every string and
// byte string is u16be(length) || bytes, every integer big-endian.

var contentsMagic = []byte("HSMCONT\x02")

const maxRecord = 64 << 10

// Key record flags, in the order of hsmcore.KeyInfo.
const (
	flagToken = 1 << iota
	flagExtractable
	flagSensitive
	flagNeverExtractable
	flagLocal
	flagEncrypt
	flagDecrypt
	flagSign
	flagVerify
	flagWrap
	flagUnwrap
	flagTrusted
	flagWrapWithTrusted
	keyFlags = 1<<iota - 1
)

// Unwrap template flags, in the order of hsmcore.UnwrapTemplate.
const (
	tmplEncrypt = 1 << iota
	tmplDecrypt
	tmplSign
	tmplVerify
	tmplWrap
	tmplUnwrap
	tmplExtractable
	tmplWrapWithTrusted
)

// recordWriter writes length-prefixed records to w, building each in one
// reused buffer.
type recordWriter struct {
	w   io.Writer
	b   []byte
	err error // the first field too long for its prefix
}

func (rw *recordWriter) start() { rw.b = append(rw.b[:0], 0, 0, 0, 0) }

func (rw *recordWriter) finish() error {
	if rw.err != nil {
		return rw.err
	}
	n := len(rw.b) - 4
	if n > maxRecord {
		return fmt.Errorf("record of %d bytes, limit %d", n, maxRecord)
	}
	binary.BigEndian.PutUint32(rw.b, uint32(n))
	_, err := rw.w.Write(rw.b)
	return err
}

func (rw *recordWriter) u8(v uint8)   { rw.b = append(rw.b, v) }
func (rw *recordWriter) u16(v int)    { rw.b = binary.BigEndian.AppendUint16(rw.b, uint16(v)) }
func (rw *recordWriter) u32(v uint32) { rw.b = binary.BigEndian.AppendUint32(rw.b, v) }
func (rw *recordWriter) u64(v uint64) { rw.b = binary.BigEndian.AppendUint64(rw.b, v) }

func (rw *recordWriter) str(s string) {
	if rw.length(len(s)) {
		rw.b = append(rw.b, s...)
	}
}

func (rw *recordWriter) bytes(b []byte) {
	if rw.length(len(b)) {
		rw.b = append(rw.b, b...)
	}
}

// length writes the u16 length of a field, or records that it is too long.
func (rw *recordWriter) length(n int) bool {
	if n > 0xffff {
		rw.err = errors.New("field longer than 65535 bytes")
		return false
	}
	rw.u16(n)
	return true
}

// count writes n as a u16 count, refusing more.
func (rw *recordWriter) count(n int) {
	if n > 0xffff {
		rw.err = errors.New("list longer than 65535 entries")
	}
	rw.u16(n)
}

func boolFlag(b bool, f uint32) uint32 {
	if b {
		return f
	}
	return 0
}

func templateFlags(t *hsmcore.UnwrapTemplate) uint8 {
	return uint8(boolFlag(t.Encrypt, tmplEncrypt) | boolFlag(t.Decrypt, tmplDecrypt) | boolFlag(t.Sign, tmplSign) | boolFlag(t.Verify, tmplVerify) |
		boolFlag(t.Wrap, tmplWrap) | boolFlag(t.Unwrap, tmplUnwrap) | boolFlag(t.Extractable, tmplExtractable) | boolFlag(t.WrapWithTrusted, tmplWrapWithTrusted))
}

func (rw *recordWriter) template(t *hsmcore.UnwrapTemplate) {
	if t == nil {
		rw.u8(0)
		rw.u8(0)
		return
	}
	rw.u8(1)
	rw.u8(templateFlags(t))
}

func (rw *recordWriter) stamp(s stamp) {
	rw.str(s.Origin)
	rw.u64(s.Seq)
}

// writeContents serializes c as contents version 2: the header, then
// every user by name, every token key by handle, and the last change of
// every object by object name.
func writeContents(w io.Writer, c *contents) error {
	users := sortedValues(c.Users, func(u *userRecord) string { return u.Name })
	keys := sortedRecords(&c.Keys.token, func(h uint64) uint64 { return h }, cmp.Compare[uint64])
	for i, p := range keys {
		keys[i] = keyRecordOf(p)
	}
	changes := sortedRecords(&c.Changes.m, namePrefix, strings.Compare)
	if _, err := w.Write(contentsMagic); err != nil {
		return err
	}
	rw := &recordWriter{w: w, b: make([]byte, 0, 4096)}
	return rw.records(c, users, keys, changes)
}

// sortedRecords returns the values of m ordered by their keys: by
// prefix(key), a number in the keys' order, then, where prefixes are
// equal, by compare.
func sortedRecords[K comparable](m *cowMap[K, string], prefix func(K) uint64, compare func(a, b K) int) []string {
	type entry struct {
		pre uint64
		k   K
		p   string
	}
	entries := make([]entry, 0, m.Len())
	for k, p := range m.All() {
		entries = append(entries, entry{prefix(k), k, p})
	}
	// A radix sort on the prefixes, least significant byte first, skipping
	// the bytes all of them share: no comparisons, no pointers followed.
	tmp := make([]entry, len(entries))
	for shift := uint(0); shift < 64 && len(entries) > 1; shift += 8 {
		var count [256]int
		for _, e := range entries {
			count[byte(e.pre>>shift)]++
		}
		if count[byte(entries[0].pre>>shift)] == len(entries) {
			continue
		}
		pos := 0
		for i, c := range count {
			count[i] = pos
			pos += c
		}
		for _, e := range entries {
			d := byte(e.pre >> shift)
			tmp[count[d]] = e
			count[d]++
		}
		entries, tmp = tmp, entries
	}
	for i := 0; i < len(entries); { // runs of one prefix, in key order
		j := i + 1
		for j < len(entries) && entries[j].pre == entries[i].pre {
			j++
		}
		if j-i > 1 {
			slices.SortFunc(entries[i:j], func(a, b entry) int { return compare(a.k, b.k) })
		}
		i = j
	}
	out := make([]string, len(entries))
	for i, e := range entries {
		out[i] = e.p
	}
	return out
}

// namePrefix returns the first 8 bytes of s, zero-padded, big-endian: in
// the order of the strings wherever two differ.
func namePrefix(s string) uint64 {
	var b [8]byte
	copy(b[:], s)
	return binary.BigEndian.Uint64(b[:])
}

// sortedValues returns m's values ordered by the string key of each.
func sortedValues[K comparable, V any](m map[K]V, key func(V) string) []V {
	out := slices.Collect(maps.Values(m))
	slices.SortFunc(out, func(a, b V) int { return strings.Compare(key(a), key(b)) })
	return out
}

// records writes the header of c, counting the given records, then the
// users given, and the key and change records given as encoded, in their
// order.
func (rw *recordWriter) records(c *contents, users []*userRecord, keys, changes []string) error {
	if err := rw.header(c, len(users), len(keys), len(changes)); err != nil {
		return fmt.Errorf("contents header: %w", err)
	}
	for _, u := range users {
		if err := rw.user(u); err != nil {
			return fmt.Errorf("user %s: %w", u.Name, err)
		}
	}
	for _, r := range slices.Concat(keys, changes) {
		rw.start()
		rw.b = append(rw.b, r...)
		if err := rw.finish(); err != nil {
			return err
		}
	}
	return nil
}

func (rw *recordWriter) header(c *contents, users, keys, changes int) error {
	rw.start()
	rw.u64(c.NextHandle)
	rw.u32(uint32(users))
	rw.u32(uint32(keys))
	rw.u32(uint32(changes))
	if cl := c.Cluster; cl != nil {
		rw.u8(1)
		rw.str(cl.ID)
		rw.bytes(cl.Key)
		rw.bytes(cl.Cert)
		rw.bytes(cl.CA)
	} else {
		rw.u8(0)
	}
	ops := slices.Sorted(maps.Keys(c.Quorum.Ops))
	rw.count(len(ops))
	for _, op := range ops {
		rw.str(op)
		rw.u8(uint8(c.Quorum.Ops[op]))
	}
	rw.count(len(c.Members))
	for _, m := range c.Members {
		rw.str(m.Serial)
		rw.bytes(m.Key)
	}
	serials := slices.Sorted(maps.Keys(c.Clock))
	rw.count(len(serials))
	for _, s := range serials {
		rw.str(s)
		rw.u64(c.Clock[s])
	}
	return rw.finish()
}

func (rw *recordWriter) user(u *userRecord) error {
	rw.start()
	rw.str(u.Name)
	rw.str(string(u.Role))
	rw.bytes(u.Salt)
	rw.bytes(u.Hash)
	rw.u32(uint32(u.Iterations))
	rw.bytes(u.SigningKey)
	return rw.finish()
}

// keyBody appends the fields of k's record.
func (rw *recordWriter) keyBody(k *keyRecord) {
	rw.u64(k.Handle)
	rw.str(k.Label)
	rw.bytes(k.ID)
	rw.str(string(k.Type))
	rw.u32(uint32(k.Bits))
	rw.str(k.Curve)
	rw.u32(boolFlag(k.Token, flagToken) | boolFlag(k.Extractable, flagExtractable) | boolFlag(k.Sensitive, flagSensitive) |
		boolFlag(k.NeverExtractable, flagNeverExtractable) | boolFlag(k.Local, flagLocal) |
		boolFlag(k.Encrypt, flagEncrypt) | boolFlag(k.Decrypt, flagDecrypt) | boolFlag(k.Sign, flagSign) | boolFlag(k.Verify, flagVerify) |
		boolFlag(k.Wrap, flagWrap) | boolFlag(k.Unwrap, flagUnwrap) | boolFlag(k.Trusted, flagTrusted) | boolFlag(k.WrapWithTrusted, flagWrapWithTrusted))
	rw.template(k.UnwrapTemplate)
	rw.template(k.Bound)
	rw.str(k.KCV)
	rw.str(k.Owner)
	rw.count(len(k.SharedWith))
	for _, u := range k.SharedWith {
		rw.str(u)
	}
	rw.str(k.Origin)
	rw.bytes(k.Material)
}

// changeBody appends the fields of m's record.
func (rw *recordWriter) changeBody(m *changeMeta) {
	rw.str(m.Object)
	rw.stamp(m.Stamp)
	if m.Prev != nil {
		rw.u8(1)
		rw.stamp(*m.Prev)
	} else {
		rw.u8(0)
	}
	rw.str(m.Actor)
	rw.str(m.Op)
	if p := m.Proof; p != nil {
		rw.u8(1)
		rw.b = append(rw.b, p.Token.ID[:]...)
		rw.str(p.Token.Op)
		rw.str(p.Token.Object)
		rw.u64(uint64(p.Token.Issued.UnixNano()))
		rw.u64(uint64(p.Token.Expires.UnixNano()))
		rw.count(len(p.Approvals))
		for _, a := range p.Approvals {
			rw.str(a.Officer)
			rw.bytes(a.Signature)
		}
	} else {
		rw.u8(0)
	}
}

// binaryRecords reads contents version 2 for readContents.
type binaryRecords struct {
	r   io.Reader
	buf []byte
	n   int // records read

	// The last user, key and object read: each list is in strictly
	// ascending order, so that one state has one encoding.
	lastUser   string
	lastHandle uint64
	lastObject string

	f      fields            // the record being read
	intern map[string]string // the short strings records repeat
}

// newBinaryRecords reads the magic (contentsMagic, or deltaMagic for a
// journal entry) and returns a reader of the records after it.
func newBinaryRecords(r io.Reader, want []byte) (*binaryRecords, error) {
	magic := make([]byte, len(want))
	if _, err := io.ReadFull(r, magic); err != nil {
		return nil, fmt.Errorf("contents: %w: %w", noEOF(err), hsmcore.ErrMalformed)
	}
	if !bytes.Equal(magic, want) {
		return nil, fmt.Errorf("contents: not %q: %w", want, hsmcore.ErrMalformed)
	}
	return &binaryRecords{r: r, buf: make([]byte, 4096), intern: map[string]string{}}, nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func (br *binaryRecords) record() int { return br.n }

// next reads the next record; its bytes stay valid until the one after.
func (br *binaryRecords) next() (*fields, error) {
	br.n++
	var pre [4]byte
	if _, err := io.ReadFull(br.r, pre[:]); err != nil {
		return nil, br.readErr(err)
	}
	n := binary.BigEndian.Uint32(pre[:])
	if n > maxRecord {
		return nil, fmt.Errorf("record %d: %d bytes, limit %d: %w", br.n, n, maxRecord, hsmcore.ErrMalformed)
	}
	if int(n) > cap(br.buf) {
		br.buf = make([]byte, n)
	}
	b := br.buf[:n]
	if _, err := io.ReadFull(br.r, b); err != nil {
		return nil, br.readErr(noEOF(err))
	}
	br.f = fields{s: cryptobyte.String(b), intern: br.intern}
	return &br.f, nil
}

// readErr keeps the source's own error (a failed chunk, say) and calls an
// early end of the contents malformed.
func (br *binaryRecords) readErr(err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return fmt.Errorf("record %d: unexpected end: %w", br.n, hsmcore.ErrMalformed)
	}
	return fmt.Errorf("record %d: %w", br.n, err)
}

// fields reads one record's fields; a field missing or malformed is
// remembered, and done reports it.
type fields struct {
	s      cryptobyte.String
	bad    bool // set by the first read that fails
	intern map[string]string
	// borrow: byte strings read are slices of s, not copies. For records
	// used before s is reused: those a state read packs at once, and
	// those unpacked from a copy of their own.
	borrow bool
}

func (f *fields) fail() { f.bad = true }

func (f *fields) u8() uint8 {
	var v uint8
	if !f.s.ReadUint8(&v) {
		f.fail()
	}
	return v
}

func (f *fields) u16() int {
	var v uint16
	if !f.s.ReadUint16(&v) {
		f.fail()
	}
	return int(v)
}

func (f *fields) u32() uint32 {
	var v uint32
	if !f.s.ReadUint32(&v) {
		f.fail()
	}
	return v
}

func (f *fields) u64() uint64 {
	var v uint64
	if !f.s.ReadUint64(&v) {
		f.fail()
	}
	return v
}

func (f *fields) raw() []byte {
	var v cryptobyte.String
	if !f.s.ReadUint16LengthPrefixed(&v) {
		f.fail()
	}
	return v
}

func (f *fields) str() string { return string(f.raw()) }

// name reads a string that records repeat (a type, a user, an origin):
// one copy of each serves them all, up to a bounded number.
func (f *fields) name() string {
	b := f.raw()
	if s, ok := f.intern[string(b)]; ok {
		return s
	}
	s := string(b)
	if f.intern != nil && len(s) <= 64 && len(f.intern) < 4096 {
		f.intern[s] = s
	}
	return s
}

// bytes returns a byte string, a copy unless f borrows; nil when it is
// empty.
func (f *fields) bytes() []byte {
	if v := f.raw(); len(v) > 0 {
		if f.borrow {
			return v // capped by cryptobyte: an append copies, never overwrites what follows
		}
		return bytes.Clone(v)
	}
	return nil
}

// flag reads a u8 that must be 0 or 1.
func (f *fields) flag() bool {
	switch f.u8() {
	case 0:
		return false
	case 1:
		return true
	}
	f.fail()
	return false
}

func (f *fields) template() *hsmcore.UnwrapTemplate {
	present, bits := f.flag(), f.u8()
	if !present {
		if bits != 0 {
			f.fail()
		}
		return nil
	}
	return &hsmcore.UnwrapTemplate{Encrypt: bits&tmplEncrypt != 0, Decrypt: bits&tmplDecrypt != 0, Sign: bits&tmplSign != 0, Verify: bits&tmplVerify != 0,
		Wrap: bits&tmplWrap != 0, Unwrap: bits&tmplUnwrap != 0, Extractable: bits&tmplExtractable != 0, WrapWithTrusted: bits&tmplWrapWithTrusted != 0}
}

func (f *fields) stamp() stamp { return stamp{Origin: f.name(), Seq: f.u64()} }

// done reports whether every field read and nothing follows them.
func (f *fields) done() error {
	if f.bad || !f.s.Empty() {
		return errors.New("fields missing, malformed or left over")
	}
	return nil
}

func (br *binaryRecords) header(h *contentsHeader) error {
	f, err := br.next()
	if err != nil {
		return err
	}
	h.NextHandle = f.u64()
	h.Users, h.Keys, h.Changes = int(f.u32()), int(f.u32()), int(f.u32())
	if f.flag() {
		h.Cluster = &clusterRecord{ID: f.str(), Key: f.bytes(), Cert: f.bytes(), CA: f.bytes()}
	}
	if n := f.u16(); n > 0 {
		h.Quorum = &quorum.Policy{Ops: make(map[string]int, n)}
		prev := ""
		for range n {
			op := f.str()
			if op <= prev {
				f.fail() // strictly ascending: each once, one encoding
			}
			prev = op
			h.Quorum.Ops[op] = int(f.u8())
		}
	}
	for range f.u16() {
		h.Members = append(h.Members, memberRecord{Serial: f.str(), Key: f.bytes()})
	}
	if n := f.u16(); n > 0 {
		h.Clock = make(map[string]uint64, n)
		prev := ""
		for range n {
			s := f.str()
			if s <= prev {
				f.fail()
			}
			prev = s
			h.Clock[s] = f.u64()
		}
	}
	if err := f.done(); err != nil {
		return fmt.Errorf("record %d: header: %w: %w", br.n, err, hsmcore.ErrMalformed)
	}
	return nil
}

func (br *binaryRecords) user(u *userRecord) error {
	f, err := br.next()
	if err != nil {
		return err
	}
	u.Name, u.Role, u.Salt, u.Hash = f.name(), hsmcore.Role(f.name()), f.bytes(), f.bytes()
	u.Iterations = int(f.u32())
	u.SigningKey = f.bytes()
	if u.Name <= br.lastUser {
		f.fail()
	}
	br.lastUser = u.Name
	if err := f.done(); err != nil {
		return fmt.Errorf("record %d: user: %w: %w", br.n, err, hsmcore.ErrMalformed)
	}
	return nil
}

func (br *binaryRecords) key(k *keyRecord) error {
	f, err := br.next()
	if err != nil {
		return err
	}
	f.borrow = true // k is packed before the next record is read
	f.key(k)
	if k.Handle <= br.lastHandle {
		f.fail()
	}
	br.lastHandle = k.Handle
	if err := f.done(); err != nil {
		return fmt.Errorf("record %d: key: %w: %w", br.n, err, hsmcore.ErrMalformed)
	}
	return nil
}

// key reads the fields of a key record into k.
func (f *fields) key(k *keyRecord) {
	k.Handle, k.Label, k.ID = f.u64(), f.str(), f.bytes()
	k.Type = hsmcore.KeyType(f.name())
	k.Bits = int(f.u32())
	k.Curve = f.name()
	fl := f.u32()
	if fl&^keyFlags != 0 {
		f.fail()
	}
	k.Token, k.Extractable, k.Sensitive = fl&flagToken != 0, fl&flagExtractable != 0, fl&flagSensitive != 0
	k.NeverExtractable, k.Local = fl&flagNeverExtractable != 0, fl&flagLocal != 0
	k.Encrypt, k.Decrypt, k.Sign, k.Verify = fl&flagEncrypt != 0, fl&flagDecrypt != 0, fl&flagSign != 0, fl&flagVerify != 0
	k.Wrap, k.Unwrap, k.Trusted, k.WrapWithTrusted = fl&flagWrap != 0, fl&flagUnwrap != 0, fl&flagTrusted != 0, fl&flagWrapWithTrusted != 0
	k.UnwrapTemplate, k.Bound = f.template(), f.template()
	k.KCV, k.Owner = f.str(), f.name()
	if n := f.u16(); n > 0 {
		k.SharedWith = make([]string, n)
		for i := range k.SharedWith {
			k.SharedWith[i] = f.name()
		}
	}
	k.Origin = f.str()
	k.Material = f.bytes()
}

func (br *binaryRecords) change(m *changeMeta) error {
	f, err := br.next()
	if err != nil {
		return err
	}
	f.borrow = true // m is packed before the next record is read
	f.change(m)
	if m.Object <= br.lastObject {
		f.fail()
	}
	br.lastObject = m.Object
	if err := f.done(); err != nil {
		return fmt.Errorf("record %d: change: %w: %w", br.n, err, hsmcore.ErrMalformed)
	}
	return nil
}

// change reads the fields of a change record into m.
func (f *fields) change(m *changeMeta) {
	m.Object, m.Stamp = f.str(), f.stamp()
	if f.flag() {
		p := f.stamp()
		m.Prev = &p
	}
	m.Actor, m.Op = f.name(), f.name()
	if f.flag() {
		p := new(quorumProof)
		var id []byte
		if !f.s.ReadBytes(&id, len(p.Token.ID)) {
			f.fail()
		}
		copy(p.Token.ID[:], id)
		p.Token.Op, p.Token.Object = f.str(), f.str()
		p.Token.Issued = time.Unix(0, int64(f.u64())).UTC()
		p.Token.Expires = time.Unix(0, int64(f.u64())).UTC()
		if n := f.u16(); n > 0 {
			p.Approvals = make([]quorum.Approval, n)
			for i := range p.Approvals {
				p.Approvals[i] = quorum.Approval{Officer: f.str(), Signature: f.bytes()}
			}
		}
		m.Proof = p
	}
}

// end requires the contents to end after the last record.
func (br *binaryRecords) end() error {
	var b [1]byte
	n, err := io.ReadFull(br.r, b[:])
	if n > 0 {
		return fmt.Errorf("record %d: data after the last record: %w", br.n+1, hsmcore.ErrMalformed)
	}
	if err != io.EOF {
		return fmt.Errorf("record %d: %w", br.n+1, err)
	}
	return nil
}
