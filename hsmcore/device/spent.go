package device

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/quorum"
	"github.com/hsmbackup/hsmbackup/internal/atomicfile"
	"github.com/hsmbackup/hsmbackup/internal/strictjson"
)

// spentFile holds the quorum tokens the device consumed and that have not
// expired, sealed under the seal key. It belongs to the device, as its
// audit log does: no image carries it and a zeroization keeps it, so that
// a token's sealed copy cannot be adopted and used again after a restart,
// a zeroization or a restore. A device without the file (made before it
// existed) has spent no token that it remembers.
const spentFile = "quorum.spent"

// spentMagic starts the spent-token file; it is also the AEAD's additional
// data, so that the file cannot pass for the sealed state or the reverse.
var spentMagic = []byte("HSMSPNT\x01")

const spentFormat = "hsmcore-spent/1"

// spentDoc is the spent-token file's plaintext.
type spentDoc struct {
	Format string       `json:"format"`
	Tokens []spentEntry `json:"tokens"`
}

type spentEntry struct {
	ID      string    `json:"id"`      // 32 lower-case hex digits
	Expires time.Time `json:"expires"` // the token's Expires
}

// saveSpent seals the tracker's spent tokens and atomically replaces the
// spent-token file. The caller holds d.mu, and calls it after a token is
// consumed and before the operation it approves commits: after a crash
// between the two the token is spent and the operation not done, never
// the reverse.
func (d *Device) saveSpent() error {
	plain, err := encodeSpent(d.tracker.Spent())
	if err != nil {
		return fmt.Errorf("save spent tokens: %w", err)
	}
	nonce := make([]byte, d.seal.NonceSize())
	rand.Read(nonce)
	out := append(append(make([]byte, 0, len(spentMagic)+len(nonce)+len(plain)+d.seal.Overhead()), spentMagic...), nonce...)
	out = d.seal.Seal(out, nonce, plain, spentMagic)
	if err := atomicfile.WriteFile(filepath.Join(d.dir, spentFile), out, 0o600); err != nil {
		return fmt.Errorf("save spent tokens: %w", err)
	}
	return nil
}

// loadSpent reads the spent-token file, if there is one, into the
// tracker.
func (d *Device) loadSpent() error {
	sealed, err := atomicfile.ReadPrivate(filepath.Join(d.dir, spentFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("spent tokens: %w", err)
	}
	spent, err := d.openSpent(sealed)
	if err != nil {
		return fmt.Errorf("spent tokens: %w", err)
	}
	if err := d.tracker.MarkSpent(spent); err != nil {
		return fmt.Errorf("spent tokens: %v: %w", err, hsmcore.ErrMalformed)
	}
	return nil
}

// openSpent unseals and parses the spent-token file.
func (d *Device) openSpent(sealed []byte) ([]quorum.Spent, error) {
	n := len(spentMagic) + d.seal.NonceSize()
	if len(sealed) < n+d.seal.Overhead() || !bytes.Equal(sealed[:len(spentMagic)], spentMagic) {
		return nil, hsmcore.ErrMalformed
	}
	plain, err := d.seal.Open(nil, sealed[len(spentMagic):n], sealed[n:], spentMagic)
	if err != nil {
		return nil, hsmcore.ErrTampered
	}
	return parseSpent(plain)
}

// encodeSpent is the plaintext of the spent-token file.
func encodeSpent(spent []quorum.Spent) ([]byte, error) {
	doc := spentDoc{Format: spentFormat, Tokens: []spentEntry{}}
	for _, s := range spent {
		doc.Tokens = append(doc.Tokens, spentEntry{ID: hex.EncodeToString(s.ID[:]), Expires: s.Expires.UTC()})
	}
	return json.Marshal(doc)
}

// parseSpent parses what encodeSpent wrote.
func parseSpent(plain []byte) ([]quorum.Spent, error) {
	var doc spentDoc
	if err := strictjson.Unmarshal(plain, &doc); err != nil {
		return nil, fmt.Errorf("%v: %w", err, hsmcore.ErrMalformed)
	}
	if doc.Format != spentFormat {
		return nil, fmt.Errorf("format %q: %w", doc.Format, hsmcore.ErrUnsupportedVersion)
	}
	if len(doc.Tokens) > quorum.MaxSpent {
		return nil, fmt.Errorf("%d tokens, limit %d: %w", len(doc.Tokens), quorum.MaxSpent, hsmcore.ErrMalformed)
	}
	out := make([]quorum.Spent, 0, len(doc.Tokens))
	for _, e := range doc.Tokens {
		id, err := hex.DecodeString(e.ID)
		if err != nil || len(id) != 16 || e.ID != hex.EncodeToString(id) {
			return nil, fmt.Errorf("token id %q: %w", e.ID, hsmcore.ErrMalformed)
		}
		out = append(out, quorum.Spent{ID: [16]byte(id), Expires: e.Expires})
	}
	return out, nil
}
