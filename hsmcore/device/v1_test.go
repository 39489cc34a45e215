package device

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"io"
	"maps"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/device/internal/stream"
	"github.com/hsmbackup/hsmbackup/internal/atomicfile"
	"github.com/hsmbackup/hsmbackup/internal/keywrap"
)

// writeContentsV1 is the version 1 encoder as it was: tests make with it
// the version 1 images and sealed state that no code writes any more.
func writeContentsV1(w io.Writer, c *contents) error {
	users := slices.Sorted(maps.Keys(c.Users))
	var handles []uint64
	for h, k := range c.Keys.All() {
		if k.Token {
			handles = append(handles, h)
		}
	}
	slices.Sort(handles)
	enc := json.NewEncoder(w)
	var objects []string
	for o := range c.Changes.All() {
		objects = append(objects, o)
	}
	slices.Sort(objects)
	h := contentsHeader{Format: contentsFormat1, Cluster: c.Cluster, Quorum: policyOrNil(c.Quorum), NextHandle: c.NextHandle, Users: len(users), Keys: len(handles),
		Members: c.Members, Changes: len(objects)}
	if len(c.Clock) > 0 {
		h.Clock = c.Clock
	}
	if err := enc.Encode(h); err != nil {
		return err
	}
	for _, name := range users {
		if err := enc.Encode(c.Users[name]); err != nil {
			return err
		}
	}
	for _, h := range handles {
		if err := enc.Encode(c.Keys.Get(h)); err != nil {
			return err
		}
	}
	for _, o := range objects {
		if err := enc.Encode(c.Changes.Get(o)); err != nil {
			return err
		}
	}
	return nil
}

// imageV1 returns c as a version 1 image of d.
func imageV1(t *testing.T, d *Device, c *contents) []byte {
	t.Helper()
	ebk := make([]byte, 32)
	rand.Read(ebk)
	wrapped, err := keywrap.Wrap(d.pbk, ebk)
	if err != nil {
		t.Fatal(err)
	}
	h := &hsmcore.ImageHeader{Version: 1, Created: time.Now(), Source: d.id, ClusterID: c.clusterID(), PBKFingerprint: pbkFingerprint(d.pbk), WrappedEBK: wrapped}
	rand.Read(h.ImageID[:])
	raw, err := h.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	img := bytes.NewBuffer(bytes.Clone(raw))
	enc, err := stream.NewWriter(img, ebk, raw)
	if err != nil {
		t.Fatal(err)
	}
	zw, _ := zstd.NewWriter(enc)
	if err := writeContentsV1(zw, c); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	return img.Bytes()
}

// sealV1 replaces d's state file with c, sealed as the version 1 code
// sealed it.
func sealV1(t *testing.T, d *Device, c *contents) {
	t.Helper()
	keyDER, err := x509.MarshalPKCS8PrivateKey(d.deviceKey)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	rec := deviceRecord{Identity: d.id, Capacity: d.capacity, DeviceKey: keyDER, MfrCert: d.mfrCert, OpCert: d.opCert, MKBK: d.mkbk, AKBK: d.akbk, MfrRoot: d.mfrRoot, Claim: d.claim}
	if err := json.NewEncoder(&buf).Encode(rec); err != nil {
		t.Fatal(err)
	}
	if err := writeContentsV1(&buf, c); err != nil {
		t.Fatal(err)
	}
	magic := []byte("HSMSEAL\x01")
	nonce := make([]byte, d.seal.NonceSize())
	rand.Read(nonce)
	out := d.seal.Seal(append(bytes.Clone(magic), nonce...), nonce, buf.Bytes(), magic)
	if err := atomicfile.WriteFile(filepath.Join(d.dir, stateFile), out, 0o600); err != nil {
		t.Fatal(err)
	}
}
