package scheduler

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"testing"
	"time"
)

// FuzzParseLease: a lease record read from the store, whoever wrote it,
// parses to a lease of the one format in one of the three states, or is
// refused; what parses writes back to bytes that parse to the same lease.
func FuzzParseLease(f *testing.F) {
	for _, st := range []LeaseState{LeaseHeld, LeaseDone, LeaseFailed} {
		b, err := json.Marshal(&leaseRecord{Format: leaseFormat, Job: "backup/prod-1", Slot: slot1, Holder: "host-1-abc",
			Generation: 7, State: st, Nonce: "n0", DurationSeconds: 60, Written: slot1.Add(time.Second)})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"format":"hsmbackup-lease-v1","state":"held","state":"done"}`))
	f.Add([]byte(`{"format":"hsmbackup-lease-v1","State":"held","generation":-1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseLease(b)
		if err != nil {
			if r != nil {
				t.Fatal("a lease and an error")
			}
			return
		}
		if r.Format != leaseFormat {
			t.Fatalf("format %q parsed", r.Format)
		}
		switch r.State {
		case LeaseHeld, LeaseDone, LeaseFailed:
		default:
			t.Fatalf("state %q parsed", r.State)
		}
		again, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		r2, err := parseLease(again)
		if err != nil {
			t.Fatalf("a parsed lease, written again, does not parse: %v", err)
		}
		if r2.Job != r.Job || !r2.Slot.Equal(r.Slot) || r2.Holder != r.Holder || r2.Generation != r.Generation ||
			r2.State != r.State || r2.Nonce != r.Nonce {
			t.Fatalf("lease changed by a round trip: %+v, then %+v", r, r2)
		}
	})
}

// FuzzParseRunRecord: a run record read from the store is taken only if
// its signature, by the manifest signing key, verifies: whatever is done
// to a signed record's bytes, a record that parses as verified says
// exactly what the signed one said (no edit passes through a parsing
// ambiguity: duplicate or differently cased keys, another spelling of a
// time).
func FuzzParseRunRecord(f *testing.F) {
	_, priv, err := ed25519.GenerateKey(bytes.NewReader(make([]byte, 64)))
	if err != nil {
		f.Fatal(err)
	}
	pub := priv.Public().(ed25519.PublicKey)
	last := slot1.Add(-time.Hour)
	signed := &RunRecord{Format: runRecordFormat, Cluster: "prod-1", Kind: KindDrill, Slot: slot1,
		Started: slot1, Finished: slot1.Add(time.Minute), OK: false, Error: "restore: refused",
		BackupID: "backup-20261203T023000Z-abcdefghij", Holder: "host-1", LastSuccess: &last,
		Failures: []Failure{{At: slot1, Error: "restore: refused"}}}
	msg, err := recordSigningBytes(signed)
	if err != nil {
		f.Fatal(err)
	}
	signed.Signature = ed25519.Sign(priv, msg)
	good, err := json.Marshal(signed)
	if err != nil {
		f.Fatal(err)
	}
	if r, err := parseRun(good, "prod-1", KindDrill, pub); err != nil || r == nil {
		f.Fatalf("the signed record: %v, %v", r, err)
	}
	f.Add(good)
	f.Add(bytes.Replace(good, []byte(`"ok":false`), []byte(`"ok":false,"OK":true`), 1))
	f.Add(bytes.Replace(good, []byte(`Z"`), []byte(`+00:00"`), 1))
	f.Add(bytes.Replace(good, []byte(`"error":"restore: refused",`), nil, 1))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseRun(b, "prod-1", KindDrill, pub)
		if err != nil {
			if r != nil || !errors.Is(err, ErrRecordUnverified) {
				t.Fatalf("%v, %v: want no record and ErrRecordUnverified", r, err)
			}
			return
		}
		if r == nil {
			return // not a run record of this job: rewritten by the next run
		}
		got, err := recordSigningBytes(r)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("an edited record verified:\n%s\nsigned:\n%s", got, msg)
		}
		// Without a key, still only this job's records, bounded.
		if r2, _ := parseRun(b, "prod-1", KindBackup, nil); r2 != nil {
			t.Fatal("a drill record taken as the backup job's")
		}
	})
}
