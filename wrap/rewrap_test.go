package wrap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
)

// TestRewrapKeepsBody rotates the keyring and rewraps envelopes of every
// sweep length to the new version plus an HPKE key and an HSM key: the body
// bytes are identical, the object id and flags kept, the new header names
// only the new recipients, and the old version no longer opens it.
func TestRewrapKeepsBody(t *testing.T) {
	k := testKeyring(t, "prod", 2)
	v1, v2 := subset(t, k, 1), subset(t, k, 2)
	id := testIdentity(t)
	hsm := mustHSMRecipient(t, newFakeHSM(t, "h1"))
	for _, n := range sweep {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			p := pattern(n)
			old := seal(t, p, v1)
			var out bytes.Buffer
			if err := Rewrap(context.Background(), bytes.NewReader(old), &out, []Identity{k}, v2, id.Recipient(), hsm); err != nil {
				t.Fatal(err)
			}
			neu := out.Bytes()
			oh, nh := headerLen(t, old), headerLen(t, neu)
			if !bytes.Equal(old[oh:], neu[nh:]) {
				t.Fatal("the body changed")
			}
			ho, _ := ReadHeader(bytes.NewReader(old))
			hn, _ := ReadHeader(bytes.NewReader(neu))
			if ho.ObjectID != hn.ObjectID || ho.EmptyBody != hn.EmptyBody {
				t.Error("object id or flags changed")
			}
			if got := hn.Recipients(); len(got) != 3 || got[0] != "keyring prod 2" {
				t.Errorf("new recipients %q", got)
			}
			for _, ident := range []Identity{v2, id, hsm} {
				if got, herr, berr := open(neu, ident); herr != nil || berr != nil || !bytes.Equal(got, p) {
					t.Errorf("%v: %v, %v", ident, herr, berr)
				}
			}
			if _, herr, _ := open(neu, v1); !errors.Is(herr, ErrUnknownKey) {
				t.Errorf("old key on the rewrapped envelope: %v", herr)
			}
			// Rewrapping again, back to v1 alone, round-trips the bytes.
			var back bytes.Buffer
			if err := Rewrap(context.Background(), bytes.NewReader(neu), &back, []Identity{hsm}, v1); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(back.Bytes()[headerLen(t, back.Bytes()):], old[oh:]) {
				t.Error("the body changed on the second rewrap")
			}
		})
	}
}

// TestRewrapAuthenticatesBody: Rewrap of a tampered, truncated or extended
// body fails, so a caller never replaces a good object with a bad one
// unknowingly; a tampered header fails before anything is written.
func TestRewrapAuthenticatesBody(t *testing.T) {
	k := testKeyring(t, "prod", 1)
	env := seal(t, pattern(2*PackageSize+13), k)
	hl := headerLen(t, env)
	flip := func(i int) []byte { b := bytes.Clone(env); b[i] ^= 1; return b }
	for name, c := range map[string]struct {
		env  []byte
		want error
	}{
		"body byte":        {flip(hl + PackageSize), ErrTampered},
		"last byte":        {flip(len(env) - 1), ErrTampered},
		"cut at boundary":  {env[:hl+16+PackageSize+16], ErrTruncated},
		"trailing byte":    {append(bytes.Clone(env), 0), ErrTampered},
		"header MAC byte":  {flip(hl - 1), ErrTampered},
		"header only, cut": {env[:hl-1], ErrTruncated},
	} {
		var out bytes.Buffer
		err := Rewrap(context.Background(), bytes.NewReader(c.env), &out, []Identity{k}, k)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v; want %v", name, err, c.want)
		}
		if name == "header MAC byte" && out.Len() != 0 {
			t.Errorf("%s: %d bytes written", name, out.Len())
		}
	}
	empty := seal(t, nil, k)
	if err := Rewrap(context.Background(), bytes.NewReader(append(bytes.Clone(empty), 1)), &bytes.Buffer{}, []Identity{k}, k); !errors.Is(err, ErrTampered) {
		t.Errorf("empty envelope with a trailing byte: %v", err)
	}
	if err := Rewrap(context.Background(), bytes.NewReader(env), &bytes.Buffer{}, []Identity{k}); err == nil {
		t.Error("Rewrap to no recipients succeeded")
	}
	boom := errors.New("disk full")
	if err := Rewrap(context.Background(), bytes.NewReader(env), failingWriter{boom}, []Identity{k}, k); !errors.Is(err, boom) {
		t.Errorf("Rewrap to a failing writer: %v", err)
	}
}
