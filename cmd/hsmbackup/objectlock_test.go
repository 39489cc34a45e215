package main

import (
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/store"
)

// TestObjectLockResolved: a new backup's lock is each flag over the
// cluster's object_lock setting of the same name, extended (never
// refused) to the backup's retention: its own, else the cluster's policy
// as prune reads it (the entry's retention block, else the file's).
func TestObjectLockResolved(t *testing.T) {
	cfg, err := parseConfig([]byte(`retention: {days: 60}
clusters:
  locked:
    members: ["a:1"]
    object_lock: {mode: governance, days: 10}
  short:
    members: ["a:1"]
    object_lock: {mode: COMPLIANCE, days: 10}
    retention: {days: 30}
  nodays:
    members: ["a:1"]
    object_lock: {mode: COMPLIANCE, days: 10}
    retention: {keep_last: 7}
  plain:
    members: ["a:1"]
`))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{cfg: cfg, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	gov, comp := store.Governance, store.Compliance
	for _, tc := range []struct {
		name      string
		cluster   string
		flags     lockFlags
		retention int
		never     bool
		want      backup.ObjectLock
		err       string // a usage error containing this
	}{
		{name: "none", cluster: "plain", want: backup.ObjectLock{}},
		{name: "unconfigured cluster", cluster: "elsewhere", want: backup.ObjectLock{}},
		{name: "config, extended to the file's retention", cluster: "locked", want: backup.ObjectLock{Mode: gov, Days: 60}},
		{name: "config, extended to the entry's retention", cluster: "short", want: backup.ObjectLock{Mode: comp, Days: 30}},
		{name: "entry's retention without days: no age limit", cluster: "nodays", want: backup.ObjectLock{Mode: comp, Days: 10}},
		{name: "never expires: as set", cluster: "locked", never: true, want: backup.ObjectLock{Mode: gov, Days: 10}},
		{name: "the backup's own retention", cluster: "short", retention: 90, want: backup.ObjectLock{Mode: comp, Days: 90}},
		{name: "own retention shorter than the lock", cluster: "short", retention: 7, flags: lockFlags{days: 20}, want: backup.ObjectLock{Mode: comp, Days: 20}},
		{name: "flag mode beats config", cluster: "short", flags: lockFlags{mode: "GOVERNANCE"}, want: backup.ObjectLock{Mode: gov, Days: 30}},
		{name: "flag days beat config", cluster: "short", flags: lockFlags{days: 365}, want: backup.ObjectLock{Mode: comp, Days: 365}},
		{name: "flags alone", cluster: "plain", flags: lockFlags{mode: "compliance", days: 100}, want: backup.ObjectLock{Mode: comp, Days: 100}},
		{name: "flags alone, extended", cluster: "plain", flags: lockFlags{mode: "COMPLIANCE", days: 1}, want: backup.ObjectLock{Mode: comp, Days: 60}},
		{name: "days without a mode", cluster: "plain", flags: lockFlags{days: 7}, err: "--lock-days needs a lock mode"},
		{name: "mode without days", cluster: "plain", flags: lockFlags{mode: "GOVERNANCE"}, err: "--lock-mode needs a number of days"},
		{name: "unknown mode", cluster: "locked", flags: lockFlags{mode: "WORM"}, err: `lock mode "WORM": want GOVERNANCE or COMPLIANCE`},
	} {
		got, err := e.objectLock(tc.cluster, tc.flags, tc.retention, tc.never)
		switch {
		case tc.err != "":
			if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: %v, want a usage error with %q", tc.name, err, tc.err)
			}
		case err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case got != tc.want:
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

// TestConfigObjectLockProblems: every fault of object_lock settings is
// reported at once, with its line and key path.
func TestConfigObjectLockProblems(t *testing.T) {
	_, err := parseConfig([]byte(`clusters:
  a:
    members: ["a:1"]
    object_lock: {mode: WORM, days: 0}
  b:
    members: ["a:1"]
    object_lock:
      mode: GOVERNANCE
      days: 36501
  c:
    members: ["a:1"]
    object_lock: {days: 7}
  d:
    members: ["a:1"]
    object_lock: {mode: COMPLIANCE, dayz: 7}
  e:
    members: ["a:1"]
    object_lock: {mode: COMPLIANCE, days: many}
  f:
    members: ["a:1"]
    object_lock: COMPLIANCE
`))
	ce, ok := err.(*configErrors)
	if !ok {
		t.Fatalf("error %v (%T), want *configErrors", err, err)
	}
	want := []string{
		`config:4: clusters.a.object_lock.mode: "WORM": want GOVERNANCE or COMPLIANCE`,
		`config:4: clusters.a.object_lock.days: 0: want 1 to 36500 (a lock shorter than the cluster's retention is extended to it)`,
		`config:9: clusters.b.object_lock.days: 36501: want 1 to 36500 (a lock shorter than the cluster's retention is extended to it)`,
		`config:12: clusters.c.object_lock: mode is required`,
		`config:15: clusters.d.object_lock.dayz: unknown setting "dayz" (did you mean "days"?)`,
		`config:15: clusters.d.object_lock: days is required`,
		`config:18: clusters.e.object_lock.days: "many" is not a whole number`,
		`config:21: clusters.f.object_lock: want a mapping of settings, not "COMPLIANCE"`,
	}
	lines := ce.Lines()
	if len(lines) != len(want)+1 || lines[0] != "config config: 8 problems:" {
		t.Errorf("got %d lines:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	for _, w := range want {
		found := false
		for _, l := range lines {
			found = found || l == w
		}
		if !found {
			t.Errorf("missing %q in:\n%s", w, strings.Join(lines, "\n"))
		}
	}
}
