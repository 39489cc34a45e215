package device

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"path/filepath"
	"slices"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/device/internal/kbkdf"
	"github.com/hsmbackup/hsmbackup/hsmcore/device/internal/stream"
	"github.com/hsmbackup/hsmbackup/hsmcore/quorum"
	"github.com/hsmbackup/hsmbackup/internal/atomicfile"
	"github.com/hsmbackup/hsmbackup/internal/strictjson"
)

// contents is what an image carries and a restore replaces: the cluster
// membership, the users and the token keys. It is never modified in place:
// a change builds a new one (copy on write), so an export can stream a
// consistent snapshot without holding the lock.
type contents struct {
	Cluster    *clusterRecord // nil until a cluster CSR is made
	Quorum     quorum.Policy  // operations that need M-of-N approval
	NextHandle uint64
	Users      map[string]*userRecord
	Keys       keyMap

	// Replication (change.go): the cluster's members, the last change of
	// every object (deleted ones included) and, per member, the last of its
	// changes this state holds.
	Members []memberRecord
	Changes changeMap
	Clock   map[string]uint64
}

func newContents() *contents {
	return &contents{NextHandle: 1, Users: map[string]*userRecord{}, Keys: newKeyMap(),
		Changes: newChangeMap(), Clock: map[string]uint64{}}
}

func (c *contents) clone() *contents {
	return &contents{Cluster: c.Cluster, Quorum: c.Quorum, NextHandle: c.NextHandle, Users: maps.Clone(c.Users), Keys: c.Keys.clone(),
		Members: slices.Clone(c.Members), Changes: c.Changes.clone(), Clock: maps.Clone(c.Clock)}
}

// Limits of the state records; an image or sealed file that breaks them is
// malformed.
const (
	maxImageKeys     = 1 << 20
	maxChangeRecords = 4 * maxImageKeys // the last change of every object, deleted ones included
	maxClock         = 1024             // members that ever made a change
)

// contentsHeader is what the first record of serialized contents says:
// in version 1 a JSON line, in version 2 a binary record.
type contentsHeader struct {
	Format     string         `json:"format"`
	Cluster    *clusterRecord `json:"cluster,omitempty"`
	Quorum     *quorum.Policy `json:"quorum,omitempty"`
	NextHandle uint64         `json:"next_handle"`
	Users      int            `json:"users"`
	Keys       int            `json:"keys"`
	// Since replication by change records; absent in older contents.
	Members []memberRecord    `json:"members,omitempty"`
	Clock   map[string]uint64 `json:"clock,omitempty"`
	Changes int               `json:"changes,omitempty"`
}

// recordSource yields the records of serialized contents in order, each
// parsed but not yet checked. A key or change record's byte strings may
// be valid only until the next record is read: readInto packs each first.
type recordSource interface {
	header(*contentsHeader) error
	user(*userRecord) error
	key(*keyRecord) error
	change(*changeMeta) error
	end() error  // requires the end of the contents
	record() int // the number of the record read last, for errors
}

// readContents parses contents of the given version (1, JSON lines; 2,
// binary records), checking every record, and requires the end of r right
// after the last one. maxKeys bounds the key count.
func readContents(r io.Reader, version, maxKeys int) (*contents, error) {
	var src recordSource
	switch version {
	case 1:
		src = newJSONRecords(r)
	case 2:
		br, err := newBinaryRecords(r, contentsMagic)
		if err != nil {
			return nil, err
		}
		src = br
	default:
		return nil, fmt.Errorf("contents version %d: %w", version, hsmcore.ErrUnsupportedVersion)
	}
	c := newContents()
	if err := readInto(c, src, version, maxKeys, false); err != nil {
		return nil, err
	}
	return c, nil
}

// readInto reads records from src into c, checking each. Whole contents
// (delta false) fill an empty c; a delta (a journal entry) replaces c's
// header and the records it carries.
func readInto(c *contents, src recordSource, version, maxKeys int, delta bool) error {
	var h contentsHeader
	if err := src.header(&h); err != nil {
		return err
	}
	if h.NextHandle < 1 || h.NextHandle > 1<<62 {
		return fmt.Errorf("next handle %d: %w", h.NextHandle, hsmcore.ErrMalformed)
	}
	if h.Users < 0 || h.Users > MaxUsers || h.Keys < 0 || h.Keys > maxKeys || h.Changes < 0 || h.Changes > maxChangeRecords {
		return fmt.Errorf("contents holds %d users, %d keys and %d changes; limits %d, %d and %d: %w", h.Users, h.Keys, h.Changes, MaxUsers, maxKeys, maxChangeRecords, hsmcore.ErrMalformed)
	}
	// A journal entry repeats the header; what it repeats unchanged was
	// checked when the state took it (certificate chains, device keys).
	if delta && slices.EqualFunc(h.Members, c.Members, sameMember) {
		h.Members = c.Members
	} else if err := checkMembers(h.Members); err != nil {
		return err
	}
	if len(h.Clock) > maxClock {
		return fmt.Errorf("state version names %d members: %w", len(h.Clock), hsmcore.ErrMalformed)
	}
	for m, seq := range h.Clock {
		if hsmcore.CheckName(m) != nil || seq == 0 {
			return fmt.Errorf("state version: %w", hsmcore.ErrMalformed)
		}
	}
	if delta && sameCluster(h.Cluster, c.Cluster) {
		h.Cluster = c.Cluster
	} else if h.Cluster != nil {
		if err := h.Cluster.check(); err != nil {
			return fmt.Errorf("cluster: %w: %w", err, hsmcore.ErrMalformed)
		}
	}
	if delta {
		// A journal entry moves the state forward: handles and the state
		// version never go back, so the records it leaves hold.
		if h.NextHandle < c.NextHandle {
			return fmt.Errorf("next handle %d, was %d: %w", h.NextHandle, c.NextHandle, hsmcore.ErrMalformed)
		}
		for m, seq := range c.Clock {
			if h.Clock[m] < seq {
				return fmt.Errorf("state version of %s goes back: %w", m, hsmcore.ErrMalformed)
			}
		}
	}
	c.Cluster = h.Cluster
	c.Quorum = quorum.Policy{}
	if h.Quorum != nil {
		if err := h.Quorum.Validate(); err != nil || len(h.Quorum.Ops) == 0 {
			return fmt.Errorf("quorum policy: %v: %w", err, hsmcore.ErrMalformed)
		}
		c.Quorum = *h.Quorum
	}
	c.NextHandle = h.NextHandle
	for range h.Users {
		u := new(userRecord)
		if err := src.user(u); err != nil {
			return err
		}
		if err := u.check(); err != nil {
			return fmt.Errorf("record %d: %w: %w", src.record(), err, hsmcore.ErrMalformed)
		}
		if old := c.Users[u.Name]; old != nil && (!delta || old.Role != u.Role) {
			return fmt.Errorf("record %d: duplicate user, or one whose role changed: %w", src.record(), hsmcore.ErrMalformed)
		}
		c.Users[u.Name] = u
	}
	if !delta {
		c.Keys.token.reserve(h.Keys)
		c.Changes.m.reserve(h.Changes)
	}
	var k keyRecord // each record is packed as it is stored: one serves them all
	for range h.Keys {
		k = keyRecord{}
		if err := src.key(&k); err != nil {
			return err
		}
		if delta {
			c.Keys.Delete(k.Handle) // the key's new record replaces its old one
		}
		kcv, bits := k.KCV, k.Bits
		if err := k.check(c); err != nil {
			return fmt.Errorf("record %d: %w: %w", src.record(), err, hsmcore.ErrMalformed)
		}
		// Version 1 records may carry values the check derives anew (an
		// older check value); version 2 ones carry exactly what it derives.
		if version == 2 && (k.KCV != kcv || k.Bits != bits) {
			return fmt.Errorf("record %d: key %d: check value or size differs from its material: %w", src.record(), k.Handle, hsmcore.ErrMalformed)
		}
		if err := c.Keys.Set(k.Handle, &k); err != nil {
			return fmt.Errorf("record %d: %w: %w", src.record(), err, hsmcore.ErrMalformed)
		}
	}
	c.Members = h.Members
	c.Clock = h.Clock
	if c.Clock == nil {
		c.Clock = map[string]uint64{}
	}
	var m changeMeta
	for range h.Changes {
		m = changeMeta{}
		if err := src.change(&m); err != nil {
			return err
		}
		if err := m.check(); err != nil {
			return fmt.Errorf("record %d: %w: %w", src.record(), err, hsmcore.ErrMalformed)
		}
		// Version 2 lists objects in strictly ascending order: each once.
		if (!delta && version == 1 && c.Changes.Has(m.Object)) || m.Stamp.Seq > c.Clock[m.Stamp.Origin] {
			return fmt.Errorf("record %d: duplicate change, or one newer than the state: %w", src.record(), hsmcore.ErrMalformed)
		}
		if err := c.Changes.Set(&m); err != nil {
			return fmt.Errorf("record %d: %w: %w", src.record(), err, hsmcore.ErrMalformed)
		}
	}
	if delta {
		if n := c.Keys.Len(); n > maxKeys { // a state being read holds no session keys
			return fmt.Errorf("%d keys, limit %d: %w", n, maxKeys, hsmcore.ErrMalformed)
		}
	}
	return src.end()
}

func sameMember(a, b memberRecord) bool { return a.Serial == b.Serial && bytes.Equal(a.Key, b.Key) }

func sameCluster(a, b *clusterRecord) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.ID == b.ID && bytes.Equal(a.Key, b.Key) && bytes.Equal(a.Cert, b.Cert) && bytes.Equal(a.CA, b.CA)
}

func policyOrNil(p quorum.Policy) *quorum.Policy {
	if len(p.Ops) == 0 {
		return nil
	}
	return &p
}

// deviceRecord is the first line of the sealed state: what makes the
// device itself, which no image carries.
type deviceRecord struct {
	Identity  hsmcore.Identity `json:"identity"`
	Capacity  int              `json:"capacity"`
	DeviceKey []byte           `json:"device_key"`
	MfrCert   []byte           `json:"manufacturer_cert"`
	OpCert    []byte           `json:"operator_cert"`
	MKBK      []byte           `json:"mkbk"`
	AKBK      []byte           `json:"akbk"`
	// The manufacturer's root certificate, DER, which new members'
	// device certificates must chain to; absent in devices made before.
	MfrRoot []byte `json:"manufacturer_root,omitempty"`
	// The claim secret (hsmcore.Claim); absent in devices made before.
	Claim []byte `json:"claim_secret,omitempty"`
}

// sealMagic starts the sealed state file written now; its last byte is
// the version, 3: streamed, binary contents. Versions 1 (one AEAD seal,
// JSON contents) and 2 (one AEAD seal, binary contents) still open.
var sealMagic = []byte("HSMSEAL\x03")

const (
	stateVersion = 3
	stateSalt    = 32 // random bytes that name a state file and give its key
)

// stateKey derives the key of the state file with salt from the seal key.
func (d *Device) stateKey(salt []byte) []byte {
	return kbkdf.Derive(d.sealKey, []byte("hsmcore state v3"), salt, 32)
}

func stateAAD(salt []byte) []byte { return append(bytes.Clone(sealMagic), salt...) }

// writeState seals the device record and c as a state file, streamed in
// chunks (so that no buffer of the state's size is made), and atomically
// replaces the state file. It returns the file's salt (which names it: the
// journal extends it) and the plaintext's size. On error the file on disk
// is unchanged.
func (d *Device) writeState(c *contents) (salt []byte, size int64, err error) {
	keyDER, err := x509.MarshalPKCS8PrivateKey(d.deviceKey)
	if err != nil {
		return nil, 0, fmt.Errorf("seal state: %w", err)
	}
	defer clear(keyDER)
	salt = make([]byte, stateSalt)
	rand.Read(salt)
	key := d.stateKey(salt)
	defer clear(key)
	rec := deviceRecord{Identity: d.id, Capacity: d.capacity, DeviceKey: keyDER, MfrCert: d.mfrCert, OpCert: d.opCert, MKBK: d.mkbk, AKBK: d.akbk, MfrRoot: d.mfrRoot, Claim: d.claim}
	err = atomicfile.Write(filepath.Join(d.dir, stateFile), 0o600, func(f io.Writer) error {
		w := bufio.NewWriterSize(f, 1<<20)
		w.Write(sealMagic)
		w.Write(salt)
		sw, err := stream.NewWriter(w, key, stateAAD(salt))
		if err != nil {
			return err
		}
		cw := &countWriter{w: sw}
		if err := json.NewEncoder(cw).Encode(rec); err != nil {
			return err
		}
		if err := writeContents(cw, c); err != nil {
			return err
		}
		if err := sw.Close(); err != nil {
			return err
		}
		size = cw.n
		return w.Flush()
	})
	if err != nil {
		return nil, 0, fmt.Errorf("seal state: %w", err)
	}
	return salt, size, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// readState reads a state file into d, and returns its version and the
// name of the base it is (a version 2 file's nonce, a version 3 file's
// salt).
func (d *Device) readState(r io.Reader) (version int, base []byte, err error) {
	magic := make([]byte, len(sealMagic))
	if _, err := io.ReadFull(r, magic); err != nil || !bytes.Equal(magic[:len(magic)-1], sealMagic[:len(sealMagic)-1]) {
		return 0, nil, fmt.Errorf("sealed state: %w", hsmcore.ErrMalformed)
	}
	version = int(magic[len(magic)-1])
	var plain io.Reader
	switch version {
	case 1, 2:
		base = make([]byte, d.seal.NonceSize())
		if _, err := io.ReadFull(r, base); err != nil {
			return 0, nil, fmt.Errorf("sealed state: %w", hsmcore.ErrMalformed)
		}
		sealed, err := io.ReadAll(r)
		if err != nil {
			return 0, nil, fmt.Errorf("sealed state: %w", err)
		}
		p, err := d.seal.Open(sealed[:0], base, sealed, magic)
		if err != nil {
			return 0, nil, fmt.Errorf("sealed state: %w", hsmcore.ErrTampered)
		}
		defer clear(p)
		plain = bytes.NewReader(p)
	case 3:
		base = make([]byte, stateSalt)
		if _, err := io.ReadFull(r, base); err != nil {
			return 0, nil, fmt.Errorf("sealed state: %w", hsmcore.ErrMalformed)
		}
		key := d.stateKey(base)
		defer clear(key)
		sr, err := stream.NewReader(bufio.NewReaderSize(r, 1<<20), key, stateAAD(base))
		if err != nil {
			return 0, nil, fmt.Errorf("sealed state: %w", err)
		}
		plain = sr
	default:
		return 0, nil, fmt.Errorf("sealed state: version %d: %w", version, hsmcore.ErrUnsupportedVersion)
	}
	src := &errRecorder{r: plain}
	cr := &countReader{r: src}
	br := bufio.NewReaderSize(cr, 64<<10)
	first, err := br.ReadSlice('\n')
	if src.err != nil {
		return 0, nil, fmt.Errorf("sealed state: %w", hsmcore.ErrTampered)
	}
	if err != nil {
		return 0, nil, fmt.Errorf("sealed state: device record: %w", hsmcore.ErrMalformed)
	}
	var rec deviceRecord
	if err := strictjson.Unmarshal(first[:len(first)-1], &rec); err != nil {
		return 0, nil, fmt.Errorf("sealed state: %w: %w", err, hsmcore.ErrMalformed)
	}
	k, err := x509.ParsePKCS8PrivateKey(rec.DeviceKey)
	key, ok := k.(*ecdsa.PrivateKey)
	if err != nil || !ok || len(rec.MKBK) != 32 || len(rec.AKBK) != 32 || (rec.Claim != nil && len(rec.Claim) != hsmcore.ClaimSecretSize) {
		return 0, nil, fmt.Errorf("sealed state: device record: %w", hsmcore.ErrMalformed)
	}
	c, err := readContents(br, min(version, 2), rec.Capacity)
	if src.err != nil {
		return 0, nil, fmt.Errorf("sealed state: %w", hsmcore.ErrTampered) // a chunk failed, or the file was cut
	}
	if err != nil {
		return 0, nil, fmt.Errorf("sealed state: %w", err)
	}
	d.id, d.capacity, d.deviceKey = rec.Identity, rec.Capacity, key
	d.mfrCert, d.opCert, d.mkbk, d.akbk, d.mfrRoot, d.claim = rec.MfrCert, rec.OpCert, rec.MKBK, rec.AKBK, rec.MfrRoot, rec.Claim
	d.st = c
	d.baseSize = cr.n
	return version, base, nil
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
