package wrap

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hsmbackup/hsmbackup/internal/atomicfile"
	"github.com/hsmbackup/hsmbackup/internal/keywrap"
)

// Keyring file format (docs/FORMATS.md 8.6).
const (
	keyringMagic   = "hsmbackup-keyring/1"
	keyringStanza  = "keyring"
	masterKeySize  = 32
	maxKeyringSize = 1 << 20
	maxKeyringKeys = 4096
	maxKeyIDLen    = 64
	maxKeyVersion  = 1<<31 - 1
	createdLayout  = "2006-01-02T15:04:05Z"
)

// KeyInfo describes one master key of a keyring: never its bytes.
type KeyInfo struct {
	ID      string    // 1 to 64 bytes of [A-Za-z0-9._-]
	Version int       // 1, then one more for each rotation
	Created time.Time // UTC, to the second
	Current bool      // new envelopes are wrapped under this key
}

// String returns "id vN".
func (k KeyInfo) String() string { return k.ID + " v" + strconv.Itoa(k.Version) }

type masterKey struct {
	KeyInfo
	key func() []byte // see secretBytes
}

// secretBytes hides b in a closure: fmt and other reflection cannot look
// into a func, so not even a wrong verb on a struct that holds a keyring
// ("%s" dereferences nested pointers) prints key bytes.
func secretBytes(b []byte) func() []byte { return func() []byte { return b } }

// A Keyring is a set of versioned AES-256 master keys, one of them current.
// As a Recipient it wraps data keys under the current key with AES key wrap
// with padding (RFC 5649); as an Identity it unwraps under whichever key and
// version a stanza names, so envelopes made before a rotation still open.
// Its String and GoString never show key bytes. A Keyring is safe for
// concurrent use.
type Keyring struct {
	keys    []*masterKey // sorted by id, then version; pointers, so that even
	current int          // printing a Keyring value shows no key bytes
}

var (
	_ Recipient = (*Keyring)(nil)
	_ Identity  = (*Keyring)(nil)
)

// Current returns the key that Wrap uses.
func (k *Keyring) Current() KeyInfo { return k.keys[k.current].KeyInfo }

// Keys lists the keyring's keys, sorted by id and version.
func (k *Keyring) Keys() []KeyInfo {
	out := make([]KeyInfo, len(k.keys))
	for i, m := range k.keys {
		out[i] = m.KeyInfo
	}
	return out
}

// String names the current key and counts the keys; it never shows key bytes.
func (k Keyring) String() string {
	if len(k.keys) == 0 {
		return "wrap.Keyring(empty)"
	}
	return fmt.Sprintf("wrap.Keyring(current %s, %d keys)", k.keys[k.current].KeyInfo, len(k.keys))
}

// GoString is String.
func (k Keyring) GoString() string { return k.String() }

// Format prints String whatever the verb, so that no fmt verb (%x, %#v, a
// wrong one) prints key bytes, whether given a Keyring or a *Keyring.
func (k Keyring) Format(f fmt.State, _ rune) { io.WriteString(f, k.String()) }

// Wrap wraps dek under the current master key: a stanza "keyring" with
// arguments id and version.
func (k *Keyring) Wrap(ctx context.Context, dek []byte) (Stanza, error) {
	if err := ctx.Err(); err != nil {
		return Stanza{}, err
	}
	cur := k.keys[k.current]
	body, err := keywrap.Wrap(cur.key(), dek)
	if err != nil {
		return Stanza{}, fmt.Errorf("keyring %s: %w", cur.KeyInfo, err)
	}
	return Stanza{Type: keyringStanza, Args: []string{cur.ID, strconv.Itoa(cur.Version)}, Body: body}, nil
}

// Unwrap unwraps the data key from the first "keyring" stanza whose key id
// and version the keyring holds. A stanza for a held key that does not
// unwrap is ErrTampered; no stanza for a held key is ErrUnknownKey.
func (k *Keyring) Unwrap(ctx context.Context, stanzas []Stanza) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for _, s := range stanzas {
		if s.Type != keyringStanza || len(s.Args) != 2 {
			continue
		}
		v, ok := parseVersion(s.Args[1])
		if !ok {
			continue
		}
		m := k.find(s.Args[0], v)
		if m == nil {
			continue
		}
		dek, err := keywrap.Unwrap(m.key(), s.Body)
		if err != nil || len(dek) != dekSize {
			clear(dek)
			return nil, fmt.Errorf("%w: stanza for keyring key %s does not unwrap", ErrTampered, m.KeyInfo)
		}
		return dek, nil
	}
	return nil, fmt.Errorf("%w: keyring holds %s", ErrUnknownKey, k.summary())
}

func (k *Keyring) find(id string, version int) *masterKey {
	for i := range k.keys {
		if k.keys[i].ID == id && k.keys[i].Version == version {
			return k.keys[i]
		}
	}
	return nil
}

// summary lists the keys as "a v1-v3, b v1".
func (k *Keyring) summary() string {
	var parts []string
	for i := 0; i < len(k.keys); {
		j := i
		for j+1 < len(k.keys) && k.keys[j+1].ID == k.keys[i].ID {
			j++
		}
		s := k.keys[i].String()
		if j > i {
			s += "-v" + strconv.Itoa(k.keys[j].Version)
		}
		parts = append(parts, s)
		i = j + 1
	}
	return strings.Join(parts, ", ")
}

// LoadKeyring reads the keyring file at path. The file must be a regular
// file of mode 0600 (or stricter) and is refused otherwise.
func LoadKeyring(path string) (*Keyring, error) {
	b, err := atomicfile.ReadPrivate(path)
	if err != nil {
		return nil, fmt.Errorf("load keyring: %w", err)
	}
	defer clear(b)
	k, err := parseKeyring(b)
	if err != nil {
		return nil, fmt.Errorf("load keyring %s: %w", path, err)
	}
	return k, nil
}

// ListMasterKeys lists the keys of the keyring file at path (see
// LoadKeyring): ids, versions, creation times and which is current, never
// key bytes.
func ListMasterKeys(path string) ([]KeyInfo, error) {
	k, err := LoadKeyring(path)
	if err != nil {
		return nil, err
	}
	defer k.clear()
	return k.Keys(), nil
}

// GenerateMasterKey adds a new random master key id, version 1, to the
// keyring file at path and makes it current. If the file does not exist it
// is created, mode 0600; an id already in the keyring is an error.
func GenerateMasterKey(path, id string) (KeyInfo, error) {
	return generateMasterKey(path, id, time.Now())
}

// RotateMasterKey adds the next version of the current key's id to the
// keyring file at path, as a new random key, and makes it current. Older
// versions stay, so envelopes wrapped under them still open; Rewrap moves
// an envelope to the new version.
func RotateMasterKey(path string) (KeyInfo, error) {
	return rotateMasterKey(path, time.Now())
}

func generateMasterKey(path, id string, now time.Time) (KeyInfo, error) {
	if err := checkKeyID(id); err != nil {
		return KeyInfo{}, err
	}
	for {
		info, err := updateKeyring(path, func(k *Keyring) (KeyInfo, error) {
			for _, m := range k.keys {
				if m.ID == id {
					return KeyInfo{}, fmt.Errorf("key id %q is already in the keyring (rotate it instead)", id)
				}
			}
			return k.add(id, 1, now), nil
		})
		if !errors.Is(err, fs.ErrNotExist) {
			if err != nil {
				return KeyInfo{}, err
			}
			return info, nil
		}
		k := &Keyring{}
		info = k.add(id, 1, now)
		b := k.marshal()
		err = createExclusive(path, 0o600, b)
		clear(b)
		k.clear()
		if err == nil {
			return info, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return KeyInfo{}, err
		}
		// Another process created the file meanwhile: add to it.
	}
}

func rotateMasterKey(path string, now time.Time) (KeyInfo, error) {
	info, err := updateKeyring(path, func(k *Keyring) (KeyInfo, error) {
		id := k.Current().ID
		last := 0
		for _, m := range k.keys {
			if m.ID == id {
				last = max(last, m.Version)
			}
		}
		if last >= maxKeyVersion {
			return KeyInfo{}, fmt.Errorf("key %s has no next version", k.Current())
		}
		return k.add(id, last+1, now), nil
	})
	if err != nil {
		return KeyInfo{}, err
	}
	return info, nil
}

// updateKeyring changes the keyring file at path under an exclusive lock
// and replaces it atomically. It returns an error wrapping fs.ErrNotExist
// if there is no such file.
func updateKeyring(path string, change func(*Keyring) (KeyInfo, error)) (KeyInfo, error) {
	unlock, err := lockFile(path)
	if err != nil {
		return KeyInfo{}, err
	}
	defer unlock()
	k, err := LoadKeyring(path)
	if err != nil {
		return KeyInfo{}, err
	}
	defer k.clear()
	info, err := change(k)
	if err != nil {
		return KeyInfo{}, err
	}
	b := k.marshal()
	defer clear(b)
	if err := atomicfile.WriteFile(path, b, 0o600); err != nil {
		return KeyInfo{}, err
	}
	return info, nil
}

// add adds a new random key and makes it current.
func (k *Keyring) add(id string, version int, now time.Time) KeyInfo {
	m := &masterKey{KeyInfo: KeyInfo{ID: id, Version: version, Created: now.UTC().Truncate(time.Second)}}
	key := make([]byte, masterKeySize)
	rand.Read(key)
	m.key = secretBytes(key)
	i, _ := slices.BinarySearchFunc(k.keys, m, compareKeys)
	k.keys = slices.Insert(k.keys, i, m)
	k.setCurrent(i)
	return k.keys[i].KeyInfo
}

func (k *Keyring) setCurrent(i int) {
	for j := range k.keys {
		k.keys[j].Current = j == i
	}
	k.current = i
}

func (k *Keyring) clear() {
	for _, m := range k.keys {
		clear(m.key())
	}
}

func compareKeys(a, b *masterKey) int {
	if c := strings.Compare(a.ID, b.ID); c != 0 {
		return c
	}
	return a.Version - b.Version
}

// marshal encodes the keyring file (docs/FORMATS.md 8.6).
func (k *Keyring) marshal() []byte {
	var b bytes.Buffer
	b.WriteString(keyringMagic + "\n")
	cur := k.Current()
	fmt.Fprintf(&b, "current %s %d\n", cur.ID, cur.Version)
	for _, m := range k.keys {
		fmt.Fprintf(&b, "key %s %d %s %s\n", m.ID, m.Version, m.Created.UTC().Format(createdLayout),
			base64.StdEncoding.EncodeToString(m.key()))
	}
	return b.Bytes()
}

// parseKeyring parses a keyring file; what it accepts, marshal gives back
// byte for byte.
func parseKeyring(b []byte) (*Keyring, error) {
	if len(b) > maxKeyringSize {
		return nil, fmt.Errorf("%w: keyring of %d bytes, at most %d", ErrMalformed, len(b), maxKeyringSize)
	}
	if len(b) == 0 || b[len(b)-1] != '\n' {
		return nil, fmt.Errorf("%w: keyring does not end with a newline", ErrMalformed)
	}
	lines := strings.Split(string(b[:len(b)-1]), "\n")
	if lines[0] != keyringMagic {
		return nil, fmt.Errorf("%w: line 1: not %q", ErrMalformed, keyringMagic)
	}
	if len(lines) < 3 {
		return nil, fmt.Errorf("%w: keyring without keys", ErrMalformed)
	}
	if len(lines)-2 > maxKeyringKeys {
		return nil, fmt.Errorf("%w: more than %d keys", ErrMalformed, maxKeyringKeys)
	}
	f := strings.Split(lines[1], " ")
	if len(f) != 3 || f[0] != "current" {
		return nil, fmt.Errorf("%w: line 2: want \"current <id> <version>\"", ErrMalformed)
	}
	curID := f[1]
	curVersion, ok := parseVersion(f[2])
	if !ok {
		return nil, fmt.Errorf("%w: line 2: bad version", ErrMalformed)
	}
	k := &Keyring{current: -1}
	for i, line := range lines[2:] {
		n := i + 3
		f := strings.Split(line, " ")
		if len(f) != 5 || f[0] != "key" {
			k.clear()
			return nil, fmt.Errorf("%w: line %d: want \"key <id> <version> <created> <base64 key>\"", ErrMalformed, n)
		}
		m, err := parseKeyLine(f[1:])
		if err != nil {
			k.clear()
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if len(k.keys) > 0 && compareKeys(k.keys[len(k.keys)-1], m) >= 0 {
			clear(m.key())
			k.clear()
			return nil, fmt.Errorf("%w: line %d: keys out of order or repeated", ErrMalformed, n)
		}
		if m.ID == curID && m.Version == curVersion {
			k.current = len(k.keys)
		}
		k.keys = append(k.keys, m)
	}
	if k.current < 0 {
		k.clear()
		return nil, fmt.Errorf("%w: current key %s v%d is not in the keyring", ErrMalformed, curID, curVersion)
	}
	k.setCurrent(k.current)
	return k, nil
}

func parseKeyLine(f []string) (*masterKey, error) {
	m := new(masterKey)
	if err := checkKeyID(f[0]); err != nil {
		return m, err
	}
	v, ok := parseVersion(f[1])
	if !ok {
		return m, fmt.Errorf("%w: bad version", ErrMalformed)
	}
	t, err := time.Parse(createdLayout, f[2])
	if err != nil || t.Format(createdLayout) != f[2] {
		return m, fmt.Errorf("%w: bad creation time", ErrMalformed)
	}
	key, err := base64.StdEncoding.Strict().DecodeString(f[3])
	if err != nil || len(key) != masterKeySize {
		clear(key)
		return m, fmt.Errorf("%w: key is not %d bytes of base64", ErrMalformed, masterKeySize)
	}
	m.ID, m.Version, m.Created, m.key = f[0], v, t, secretBytes(key)
	return m, nil
}

// parseVersion parses a version in canonical decimal, 1 to maxKeyVersion.
func parseVersion(s string) (int, bool) {
	v, err := strconv.Atoi(s)
	if err != nil || v < 1 || v > maxKeyVersion || strconv.Itoa(v) != s {
		return 0, false
	}
	return v, true
}

func checkKeyID(id string) error {
	if len(id) < 1 || len(id) > maxKeyIDLen {
		return fmt.Errorf("%w: key id of %d bytes, want 1 to %d", ErrMalformed, len(id), maxKeyIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%w: key id may hold only A-Z a-z 0-9 . _ -", ErrMalformed)
		}
	}
	return nil
}

// createExclusive writes data to a new file at path, mode perm, atomically:
// a crash leaves no file or the whole file, and an existing file is never
// replaced (the error then wraps fs.ErrExist).
func createExclusive(path string, perm os.FileMode, data []byte) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := io.Copy(f, bytes.NewReader(data)); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s: %w", path, fs.ErrExist)
		}
		return err
	}
	return atomicfile.SyncDir(dir)
}
