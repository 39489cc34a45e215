package wrap

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/internal/keywrap"
)

// fakeHSM is a software stand-in for a master key inside an HSM cluster:
// AES-KWP under a KEK that the test holds. Its fields are knobs.
type fakeHSM struct {
	id      string
	kek     []byte
	down    error // if set, every call fails with it, as an unreachable cluster
	wraps   atomic.Int32
	unwraps atomic.Int32
}

var _ HSMKey = (*fakeHSM)(nil)

func newFakeHSM(tb testing.TB, id string) *fakeHSM {
	tb.Helper()
	return &fakeHSM{id: id, kek: randomBytes(tb, 32)}
}

func (f *fakeHSM) KeyID() string { return f.id }

func (f *fakeHSM) WrapKey(ctx context.Context, dek []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if f.down != nil {
		return nil, f.down
	}
	f.wraps.Add(1)
	return keywrap.Wrap(f.kek, dek)
}

func (f *fakeHSM) UnwrapKey(ctx context.Context, wrapped []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if f.down != nil {
		return nil, f.down
	}
	f.unwraps.Add(1)
	dek, err := keywrap.Unwrap(f.kek, wrapped)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTampered, err)
	}
	return dek, nil
}

func mustHSMRecipient(tb testing.TB, key HSMKey) *HSMRecipient {
	tb.Helper()
	r, err := NewHSMRecipient(key)
	if err != nil {
		tb.Fatal(err)
	}
	return r
}

func randomBytes(tb testing.TB, n int) []byte {
	tb.Helper()
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// pattern returns n bytes that differ from package to package and from
// offset to offset, so that a reordering or an off-by-one shows.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/PackageSize)
	}
	return b
}

var testTime = time.Date(2026, 3, 14, 15, 9, 26, 0, time.UTC)

// testKeyring returns an in-memory keyring holding versions 1..versions of
// id, random keys, the last current.
func testKeyring(tb testing.TB, id string, versions int) *Keyring {
	tb.Helper()
	k := &Keyring{}
	for v := 1; v <= versions; v++ {
		k.add(id, v, testTime.Add(time.Duration(v)*time.Hour))
	}
	return k
}

// keyringWith returns a keyring of one key with the given bytes.
func keyringWith(tb testing.TB, id string, version int, key []byte) *Keyring {
	tb.Helper()
	text := fmt.Sprintf("%s\ncurrent %s %d\nkey %s %d %s %s\n", keyringMagic, id, version, id, version,
		testTime.Format(createdLayout), base64.StdEncoding.EncodeToString(key))
	k, err := parseKeyring([]byte(text))
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// subset returns a keyring holding only the given versions of k's keys.
func subset(tb testing.TB, k *Keyring, versions ...int) *Keyring {
	tb.Helper()
	out := &Keyring{}
	for _, m := range k.keys {
		for _, v := range versions {
			if m.Version == v {
				c := *m
				out.keys = append(out.keys, &c)
			}
		}
	}
	out.setCurrent(len(out.keys) - 1)
	return out
}

func testIdentity(tb testing.TB) *HPKEIdentity {
	tb.Helper()
	kem, _, _ := hpkeSuite()
	sk, err := kem.GenerateKey()
	if err != nil {
		tb.Fatal(err)
	}
	return newHPKEIdentity(sk)
}

// seal makes an envelope of plaintext for recipients.
func seal(tb testing.TB, plaintext []byte, recipients ...Recipient) []byte {
	tb.Helper()
	var buf bytes.Buffer
	w, err := Encrypt(context.Background(), &buf, recipients...)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := w.Write(plaintext); err != nil {
		tb.Fatal(err)
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// open decrypts an envelope fully; header errors and body errors are told
// apart by which of the two is returned.
func open(envelope []byte, identities ...Identity) (plaintext []byte, headerErr, bodyErr error) {
	r, err := Decrypt(context.Background(), bytes.NewReader(envelope), identities...)
	if err != nil {
		return nil, err, nil
	}
	plaintext, err = io.ReadAll(r)
	return plaintext, nil, err
}

// headerLen returns the length of an envelope's header.
func headerLen(tb testing.TB, envelope []byte) int {
	tb.Helper()
	h, raw, err := readHeader(bytes.NewReader(envelope))
	if err != nil || h == nil {
		tb.Fatalf("readHeader: %v", err)
	}
	return len(raw)
}
