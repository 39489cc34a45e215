package device

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

// richFixture is testdata/v1/rich.json: an image the version 1 encoder
// wrote of an HSM holding every kind of record (cluster, officers with
// signing keys, a quorum policy, a change that consumed approvals,
// tombstones, keys of every type, shared, renamed, trusted, with an unwrap
// template and one unwrapped under it), the secrets of its hardware, and
// its contents as version 1 JSON lines. testdata/v1/state is the same
// HSM's directory as the version 1 code left it.
type richFixture struct {
	Description        string `json:"description"`
	ManufacturerSecret string `json:"manufacturer_secret"`
	OperatorSecret     string `json:"operator_secret"`
	Image              string `json:"image"`
	ContentsV1         string `json:"contents_v1"`
}

var richHW = hw{"hsm2m.medium", "acme", "cloud", "2.1.0", false}

func richV1(t testing.TB) richFixture {
	t.Helper()
	b, err := os.ReadFile("testdata/v1/rich.json")
	if err != nil {
		t.Fatal(err)
	}
	var f richFixture
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	return f
}

// richContents parses the fixture's version 1 contents.
func richContents(t *testing.T, f richFixture) *contents {
	t.Helper()
	c, err := readContents(bytes.NewReader([]byte(f.ContentsV1)), 1, DefaultCapacity)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Users) < 4 || c.Keys.Len() < 40 || c.Changes.Len() < 40 || len(c.Quorum.Ops) == 0 || c.Cluster == nil || c.Cluster.Cert == nil {
		t.Fatalf("the fixture lacks records: %d users, %d keys, %d changes, quorum %v", len(c.Users), c.Keys.Len(), c.Changes.Len(), c.Quorum.Ops)
	}
	return c
}

// sameContents reports whether a and b hold the same records, however
// their maps are sharded.
func sameContents(a, b *contents) bool {
	return reflect.DeepEqual(plainContents(a), plainContents(b))
}

// plainContents is c with its maps as plain maps, for reflect.DeepEqual.
func plainContents(c *contents) any {
	type plain struct {
		contents
		Keys    map[uint64]*keyRecord
		Changes map[string]*changeMeta
	}
	p := plain{contents: *c, Keys: maps.Collect(c.Keys.All()), Changes: maps.Collect(c.Changes.All())}
	p.contents.Keys, p.contents.Changes = keyMap{}, changeMap{}
	return p
}

func encode(t *testing.T, c *contents) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := writeContents(&b, c); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestContentsV1ToV2Lossless: every record of version 1 contents survives
// being written as version 2 and read back, and version 2 has one encoding.
func TestContentsV1ToV2Lossless(t *testing.T) {
	f := richV1(t)
	c1 := richContents(t, f)
	v2 := encode(t, c1)
	if !bytes.HasPrefix(v2, []byte("HSMCONT\x02")) {
		t.Fatalf("contents start %q", v2[:8])
	}
	c2, err := readContents(bytes.NewReader(v2), 2, DefaultCapacity)
	if err != nil {
		t.Fatal(err)
	}
	if !sameContents(c1, c2) {
		t.Fatal("contents differ after a version 2 round trip")
	}
	if !bytes.Equal(encode(t, c2), v2) {
		t.Fatal("version 2 encoding is not stable")
	}
	if len(v2) >= len(f.ContentsV1) {
		t.Errorf("version 2 contents are %d bytes, version 1 %d", len(v2), len(f.ContentsV1))
	}
}

// TestImageV1StillImports: an image the version 1 encoder wrote imports
// into hardware of its kind, holding exactly what it held; its keys work;
// the HSM exports it again as version 2, which imports to the same state.
func TestImageV1StillImports(t *testing.T) {
	f := richV1(t)
	want := richContents(t, f)
	mfr, op := mustHex(t, f.ManufacturerSecret), mustHex(t, f.OperatorSecret)
	d := vectorDevice(t, mfr, op, richHW)
	h, err := d.claimImport(context.Background(), bytes.NewReader(mustHex(t, f.Image)))
	if err != nil {
		t.Fatal(err)
	}
	if h.Version != 1 || h.ClusterID != "vector-cluster" {
		t.Fatalf("header: version %d, cluster %q", h.Version, h.ClusterID)
	}
	if !sameContents(d.st, want) {
		t.Fatal("the imported state differs from the image's contents")
	}
	cu := login(t, d, "alice")
	keys, err := cu.Keys()
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("a version 1 backup restored")
	used := 0
	for _, k := range keys {
		switch {
		case k.Sign:
			sig, err := cu.Sign(k.Handle, msg)
			if err != nil {
				t.Fatal(err)
			}
			if err := hsmcore.VerifySignature(k, msg, sig); err != nil {
				t.Fatalf("key %d: %v", k.Handle, err)
			}
			used++
		case k.Encrypt && k.Decrypt:
			ct, err := cu.Encrypt(k.Handle, msg, nil)
			if err != nil {
				t.Fatal(err)
			}
			if pt, err := cu.Decrypt(k.Handle, ct, nil); err != nil || !bytes.Equal(pt, msg) {
				t.Fatalf("key %d: %v", k.Handle, err)
			}
			used++
		}
	}
	if used < 30 {
		t.Fatalf("used %d keys", used)
	}

	co := login(t, d, "admin")
	img := exportImage(t, co)
	if img[8] != hsmcore.ImageVersion {
		t.Fatalf("exported version %d", img[8])
	}
	d2 := vectorDevice(t, mfr, op, richHW)
	if _, err := d2.claimImport(context.Background(), bytes.NewReader(img)); err != nil {
		t.Fatal(err)
	}
	if !sameContents(d2.st, want) {
		t.Fatal("the state differs after a version 2 export and import")
	}
}

// TestImageVersionBindsContents: an image's version says how its contents
// are encoded; a body of one version under a header of the other fails.
func TestImageVersionBindsContents(t *testing.T) {
	f := richV1(t)
	img := mustHex(t, f.Image)
	img[8] = 2
	d := vectorDevice(t, mustHex(t, f.ManufacturerSecret), mustHex(t, f.OperatorSecret), richHW)
	if _, err := d.claimImport(context.Background(), bytes.NewReader(img)); !errors.Is(err, hsmcore.ErrTampered) {
		t.Fatalf("version 1 body under a version 2 header: got %v, want ErrTampered (the header is every chunk's additional data)", err)
	}
}

// TestStateV1Opens: an HSM directory the version 1 code sealed opens,
// holding what it held; it is sealed anew as version 3, which opens to
// the same state plus the next change.
func TestStateV1Opens(t *testing.T) {
	want := richContents(t, richV1(t))
	dir := copyState(t, "testdata/v1/state")
	d, err := Open(dir, TestOptions())
	if err != nil {
		t.Fatal(err)
	}
	if !sameContents(d.st, want) {
		d.Close()
		t.Fatal("the opened state differs from what the version 1 code sealed")
	}
	cu := login(t, d, "alice")
	k, err := cu.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Label: "after the upgrade", Encrypt: true, Decrypt: true})
	if err != nil {
		t.Fatal(err)
	}
	cu.Logout()
	if sealed := stateBytes(t, d); !bytes.HasPrefix(sealed, []byte("HSMSEAL\x03")) {
		t.Fatalf("state sealed as %q", sealed[:8])
	}
	before := encode(t, d.st)
	d.Close()
	d, err = Open(dir, TestOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if !bytes.Equal(encode(t, d.st), before) || d.st.Keys.Get(k.Handle) == nil || d.st.Keys.Len() != want.Keys.Len()+1 {
		t.Fatal("the version 3 state does not reopen as it was sealed")
	}
	if _, err := d.Login("alice", testPassword); err != nil {
		t.Fatal(err)
	}
}

// TestStateV2Opens: an HSM directory the version 2 code left, a base and
// a journal entry after it (testdata/v2/state: the version 1 fixture
// opened by that code, then one key made), opens holding both, and is
// sealed anew as version 3, with an empty journal, which reopens the same.
func TestStateV2Opens(t *testing.T) {
	want := richContents(t, richV1(t))
	dir := copyState(t, "testdata/v2/state")
	if b, err := os.ReadFile(filepath.Join(dir, stateFile)); err != nil || !bytes.HasPrefix(b, []byte("HSMSEAL\x02")) {
		t.Fatalf("the fixture is not a version 2 state: %v", err)
	}
	d, err := Open(dir, TestOptions())
	if err != nil {
		t.Fatal(err)
	}
	var added *keyRecord
	for _, k := range d.st.Keys.All() {
		if !want.Keys.Has(k.Handle) {
			added = k
		}
	}
	if d.st.Keys.Len() != want.Keys.Len()+1 || added == nil || added.Label != "in version 2" {
		d.Close()
		t.Fatalf("opened %d keys of %d, the journal's key %+v", d.st.Keys.Len(), want.Keys.Len()+1, added)
	}
	if b, err := os.ReadFile(filepath.Join(dir, stateFile)); err != nil || !bytes.HasPrefix(b, []byte("HSMSEAL\x03")) {
		t.Fatalf("not sealed anew as version 3: %v", err)
	}
	before := encode(t, d.st)
	d.Close()
	d, err = Open(dir, TestOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if !bytes.Equal(encode(t, d.st), before) {
		t.Fatal("the version 3 state does not reopen as it was sealed")
	}
	if _, err := d.Login("alice", testPassword); err != nil {
		t.Fatal(err)
	}
}

// copyState copies an HSM directory from testdata into a new directory.
func copyState(t *testing.T, from string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "hsm")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(from + "/*")
	for _, src := range files {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(src)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
