package wrap

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestKeyringFileLifecycle: generate, rotate, generate a second id, list;
// the file stays 0600 and every envelope made along the way still opens.
func TestKeyringFileLifecycle(t *testing.T) {
	path := filepath.Join(t.TempDir(), "master.keyring")
	if _, err := RotateMasterKey(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("rotate before generate: %v", err)
	}
	before := time.Now().Add(-time.Second)
	info, err := GenerateMasterKey(path, "prod")
	if err != nil {
		t.Fatal(err)
	}
	if info.ID != "prod" || info.Version != 1 || !info.Current || info.Created.Before(before.Truncate(time.Second)) || info.Created.Location() != time.UTC {
		t.Errorf("generated %+v", info)
	}
	checkMode(t, path, 0o600)

	var envs [][]byte
	sealWithFile := func() {
		k, err := LoadKeyring(path)
		if err != nil {
			t.Fatal(err)
		}
		envs = append(envs, seal(t, []byte(k.Current().String()), k))
	}
	sealWithFile()
	for want := 2; want <= 3; want++ {
		info, err := RotateMasterKey(path)
		if err != nil {
			t.Fatal(err)
		}
		if info.ID != "prod" || info.Version != want || !info.Current {
			t.Errorf("rotation %d gave %+v", want, info)
		}
		sealWithFile()
	}
	if _, err := GenerateMasterKey(path, "prod"); err == nil || !strings.Contains(err.Error(), "already") {
		t.Errorf("generate of an existing id: %v", err)
	}
	if _, err := GenerateMasterKey(path, "dr-site"); err != nil {
		t.Fatal(err)
	}
	sealWithFile()
	if info, err := RotateMasterKey(path); err != nil || info.ID != "dr-site" || info.Version != 2 {
		t.Errorf("rotate after a second generate: %+v, %v", info, err)
	}
	checkMode(t, path, 0o600)

	list, err := ListMasterKeys(path)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ki := range list {
		s := ki.String()
		if ki.Current {
			s += "*"
		}
		got = append(got, s)
	}
	if want := "dr-site v1,dr-site v2*,prod v1,prod v2,prod v3"; strings.Join(got, ",") != want {
		t.Errorf("list = %s, want %s", strings.Join(got, ","), want)
	}
	k, err := LoadKeyring(path)
	if err != nil {
		t.Fatal(err)
	}
	for i, env := range envs {
		if p, herr, berr := open(env, k); herr != nil || berr != nil {
			t.Errorf("envelope %d (%s): %v, %v", i, p, herr, berr)
		}
	}
	// No temporary files left behind.
	if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 1 {
		t.Errorf("%d entries in the keyring's directory", len(ents))
	}
}

func checkMode(tb testing.TB, path string, want os.FileMode) {
	tb.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		tb.Fatal(err)
	}
	if fi.Mode().Perm() != want {
		tb.Errorf("%s has mode %04o, want %04o", path, fi.Mode().Perm(), want)
	}
}

// TestKeyFileModeRefused: a keyring or private key readable by others is
// refused by every operation, with a message that says 0600.
func TestKeyFileModeRefused(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "master.keyring")
	if _, err := GenerateMasterKey(path, "prod"); err != nil {
		t.Fatal(err)
	}
	priv, pub := filepath.Join(dir, "backup.key"), filepath.Join(dir, "backup.pub")
	if _, err := GenerateHPKEKey(priv, pub); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o660} {
		for _, p := range []string{path, priv} {
			if err := os.Chmod(p, mode); err != nil {
				t.Fatal(err)
			}
		}
		for name, call := range map[string]func() error{
			"LoadKeyring":      func() error { _, err := LoadKeyring(path); return err },
			"ListMasterKeys":   func() error { _, err := ListMasterKeys(path); return err },
			"RotateMasterKey":  func() error { _, err := RotateMasterKey(path); return err },
			"GenerateKey":      func() error { _, err := GenerateMasterKey(path, "other"); return err },
			"LoadHPKEIdentity": func() error { _, err := LoadHPKEIdentity(priv); return err },
		} {
			if err := call(); err == nil || !strings.Contains(err.Error(), "0600") {
				t.Errorf("mode %04o: %s = %v; want a refusal naming 0600", mode, name, err)
			}
		}
	}
	os.Chmod(path, 0o600)
	if list, err := ListMasterKeys(path); err != nil || len(list) != 1 {
		t.Errorf("after chmod 0600: %v, %v", list, err)
	}
}

// TestConcurrentRotations: rotations from many goroutines (each its own
// open file, as separate processes would be) lose none.
func TestConcurrentRotations(t *testing.T) {
	path := filepath.Join(t.TempDir(), "master.keyring")
	if _, err := GenerateMasterKey(path, "prod"); err != nil {
		t.Fatal(err)
	}
	const n = 12
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			if _, err := RotateMasterKey(path); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	list, err := ListMasterKeys(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != n+1 || list[n].Version != n+1 || !list[n].Current {
		t.Errorf("after %d concurrent rotations: %v", n, list)
	}
}

// TestKeyringSecretsStayOut: no way of printing a keyring or identity, and
// no error, shows key bytes.
func TestKeyringSecretsStayOut(t *testing.T) {
	k := testKeyring(t, "prod", 2)
	id := testIdentity(t)
	seed, err := id.sk().Bytes()
	if err != nil {
		t.Fatal(err)
	}
	var secrets [][]byte
	for _, m := range k.keys {
		secrets = append(secrets, m.key())
	}
	secrets = append(secrets, seed)
	var outs []string
	type config struct {
		Keyring  *Keyring
		keyring  Keyring
		Identity *HPKEIdentity
		identity HPKEIdentity
	}
	for _, v := range []any{k, *k, id, *id, k.Keys(), k.Current(), config{k, *k, id, *id}, &config{k, *k, id, *id}} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x"} {
			outs = append(outs, fmt.Sprintf(verb, v))
		}
	}
	env := seal(t, []byte("x"), k)
	n := headerLen(t, env)
	for _, bad := range [][]byte{env[:10], append(bytes.Clone(env[:n-1]), env[n-1]^1)} {
		_, herr, _ := open(bad, k)
		if herr == nil {
			t.Fatal("a damaged header opened")
		}
		outs = append(outs, herr.Error())
	}
	for _, out := range outs {
		for _, s := range secrets {
			for _, enc := range []string{string(s), hex.EncodeToString(s), base64.StdEncoding.EncodeToString(s), fmt.Sprint(s), fmt.Sprintf("% x", s)} {
				if strings.Contains(out, enc) {
					t.Fatalf("%q shows key bytes", out)
				}
			}
		}
	}
	if s := k.String(); s != "wrap.Keyring(current prod v2, 2 keys)" {
		t.Errorf("String = %q", s)
	}
}

// TestParseKeyring: the keyring file is strict, and what parses marshals
// back byte for byte.
func TestParseKeyring(t *testing.T) {
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0x42}, 32))
	good := "hsmbackup-keyring/1\ncurrent prod 2\n" +
		"key dr 1 2026-01-01T00:00:00Z " + key + "\n" +
		"key prod 1 2026-01-02T00:00:00Z " + key + "\n" +
		"key prod 2 2026-02-02T00:00:00Z " + key + "\n"
	k, err := parseKeyring([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(k.marshal()); got != good {
		t.Errorf("marshal =\n%s\nwant\n%s", got, good)
	}
	if k.Current().String() != "prod v2" {
		t.Errorf("current %v", k.Current())
	}
	for name, bad := range map[string]string{
		"empty":              "",
		"no newline at end":  strings.TrimSuffix(good, "\n"),
		"CRLF":               strings.ReplaceAll(good, "\n", "\r\n"),
		"other magic":        strings.Replace(good, "keyring/1", "keyring/2", 1),
		"no keys":            "hsmbackup-keyring/1\ncurrent prod 2\n",
		"current missing":    strings.Replace(good, "current prod 2", "current prod 3", 1),
		"no current line":    strings.Replace(good, "current prod 2\n", "", 1),
		"version 0":          strings.Replace(good, "key dr 1", "key dr 0", 1),
		"version 01":         strings.Replace(good, "key dr 1", "key dr 01", 1),
		"version +1":         strings.Replace(good, "key dr 1", "key dr +1", 1),
		"out of order":       strings.Replace(good, "key dr 1", "key zz 1", 1),
		"repeated":           strings.Replace(good, "prod 2 2026", "prod 1 2026", 1),
		"bad id":             strings.Replace(good, "key dr 1", "key d/r 1", 1),
		"short key":          strings.Replace(good, key, key[:40]+"==", 1),
		"unpadded key":       strings.Replace(good, key, strings.TrimRight(key, "="), 1),
		"local time":         strings.Replace(good, "2026-01-01T00:00:00Z", "2026-01-01T00:00:00+01:00", 1),
		"fractional seconds": strings.Replace(good, "2026-01-01T00:00:00Z", "2026-01-01T00:00:00.5Z", 1),
		"double space":       strings.Replace(good, "key dr 1", "key  dr 1", 1),
		"trailing field":     strings.Replace(good, key+"\n", key+" x\n", 1),
		"blank line":         good + "\n",
		"comment":            good + "# note\n",
	} {
		if _, err := parseKeyring([]byte(bad)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v; want ErrMalformed", name, err)
		}
	}
}

// TestKeyringStanza: the keyring's stanza names id and version; a stanza
// for a held key that does not unwrap is ErrTampered, not "unknown".
func TestKeyringStanza(t *testing.T) {
	k := testKeyring(t, "prod", 2)
	dek := randomBytes(t, dekSize)
	s, err := k.Wrap(context.Background(), dek)
	if err != nil {
		t.Fatal(err)
	}
	if s.String() != "keyring prod 2" || len(s.Body) != 40 {
		t.Errorf("stanza %q with %d-byte body", s, len(s.Body))
	}
	got, err := k.Unwrap(context.Background(), []Stanza{{Type: "other", Body: []byte{1}}, s})
	if err != nil || !bytes.Equal(got, dek) {
		t.Errorf("Unwrap = %v", err)
	}
	s.Body[3] ^= 1
	if _, err := k.Unwrap(context.Background(), []Stanza{s}); !errors.Is(err, ErrTampered) {
		t.Errorf("tampered stanza: %v", err)
	}
	s.Args[1] = "3"
	if _, err := k.Unwrap(context.Background(), []Stanza{s}); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("stanza for v3: %v", err)
	}
}

func TestGenerateMasterKeyBadID(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k")
	for _, id := range []string{"", "a b", "ü", strings.Repeat("a", 65), "a/b"} {
		if _, err := GenerateMasterKey(path, id); !errors.Is(err, ErrMalformed) {
			t.Errorf("id %q: %v", id, err)
		}
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Error("a keyring file was created for a bad id")
	}
}
