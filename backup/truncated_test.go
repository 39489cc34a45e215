package backup

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"testing"

	"github.com/hsmbackup/hsmbackup/backup/backuptest"
	"github.com/hsmbackup/hsmbackup/wrap"
)

// TestVerifyDeepRefusesPrefix: what if the pipeline had stored a prefix of
// the inner image? The prefix is wrapped again with the real keyring and
// the manifest re-signed with the real key, so the object hash and the
// outer layer check out; the HSM's signed statement of the image's length
// and digest refuses it. A manifest that states the prefix's size
// contradicts the statement (ErrManifest, even for a shallow check); one
// that states the whole image's does not match the object's plaintext
// (ErrInnerHeader, for verify --deep).
func TestVerifyDeepRefusesPrefix(t *testing.T) {
	ctx := context.Background()
	member := newMember(t, 300) // more than one 64 KiB chunk
	kr, pub, priv := backuptest.Keys(t)
	st := backuptest.FileStore(t)
	repo := Repo{Store: st}
	m, err := Create(ctx, member, repo, CreateOptions{Recipients: []wrap.Recipient{kr}, SigningKey: priv})
	if err != nil {
		t.Fatal(err)
	}
	if m.ImageStatement == nil || m.ImageSHA256 == "" {
		t.Fatal("Create recorded no image statement")
	}
	key := repo.ObjectKey(testCluster, m.ID, ImageObject)
	rc, err := st.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	plain, err := wrap.Decrypt(ctx, bytes.NewReader(obj), kr)
	if err != nil {
		t.Fatal(err)
	}
	inner, err := io.ReadAll(plain)
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(inner); int64(len(inner)) != m.ImageSize || hex.EncodeToString(sum[:]) != m.ImageSHA256 {
		t.Fatalf("manifest states %d bytes, sha256 %s; the image has %d bytes", m.ImageSize, m.ImageSHA256, len(inner))
	}

	for _, cut := range []int{len(inner) / 2, 64 << 10, len(inner) - 1} {
		prefix := inner[:cut]
		var env bytes.Buffer
		w, err := wrap.Encrypt(ctx, &env, kr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(prefix); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		hdr, err := wrap.ReadHeader(bytes.NewReader(env.Bytes()))
		if err != nil {
			t.Fatal(err)
		}
		raw, err := hdr.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		putObject(t, st, key, env.Bytes())
		sum := sha256.Sum256(env.Bytes())
		psum := sha256.Sum256(prefix)
		for _, tc := range []struct {
			name          string
			change        func(*Manifest)
			shallow, deep error
		}{
			{"manifest states the prefix", func(m *Manifest) {
				m.ImageSize, m.ImageSHA256 = int64(cut), hex.EncodeToString(psum[:])
			}, ErrManifest, ErrManifest},
			{"manifest states the whole image", func(*Manifest) {}, nil, ErrInnerHeader},
		} {
			resign(t, repo, testCluster, m.ID, priv, func(c *Manifest) {
				*c = *m
				c.ObjectSize, c.ObjectSHA256 = int64(env.Len()), hex.EncodeToString(sum[:])
				c.OuterHeader, c.Recipients = raw, hdr.Recipients()
				tc.change(c)
			})
			err := Verify(ctx, repo, testCluster, m.ID, VerifyOptions{PublicKey: pub})
			if (tc.shallow == nil) != (err == nil) || (tc.shallow != nil && !errors.Is(err, tc.shallow)) {
				t.Errorf("cut at %d, %s: verify: %v, want %v", cut, tc.name, err, tc.shallow)
			}
			err = Verify(ctx, repo, testCluster, m.ID, VerifyOptions{PublicKey: pub, Identities: []wrap.Identity{kr}, Deep: true})
			if cut == 64<<10 {
				t.Logf("%s: %v", tc.name, err)
			}
			if !errors.Is(err, tc.deep) {
				t.Errorf("cut at %d, %s: verify --deep: %v, want %v", cut, tc.name, err, tc.deep)
			}
		}
	}
}
