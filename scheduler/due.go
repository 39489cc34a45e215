package scheduler

import "time"

// maxGap bounds the time between two slots of any schedule that fires:
// a yearly 29 February skips 2100, so eight years plus slack.
const maxGap = 9 * 366 * 24 * time.Hour

// Next is the first slot of sched strictly after now, in sched's zone; the
// zero time if there is none within robfig's five-year search window. Slots
// are whole seconds.
func Next(sched Schedule, now time.Time) time.Time {
	if sched.s == nil {
		return time.Time{}
	}
	return in(sched.s.Next(now), sched.loc)
}

func in(t time.Time, loc *time.Location) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.In(loc)
}

// Last is the latest slot of sched at or before now, in sched's zone; the
// zero time if there is none (the zero Schedule).
func Last(sched Schedule, now time.Time) time.Time {
	if sched.s == nil {
		return time.Time{}
	}
	// robfig has no Prev: widen a window back from now until a slot falls
	// in it, then walk forward to the last slot at or before now. The
	// window before the one that found a slot had none, so the walk stays
	// short.
	for w := time.Minute; w <= 2*maxGap; w *= 2 {
		t := sched.s.Next(now.Add(-w))
		if t.IsZero() || t.After(now) {
			continue
		}
		for {
			n := sched.s.Next(t)
			if n.IsZero() || n.After(now) {
				return in(t, sched.loc)
			}
			t = n
		}
	}
	return time.Time{}
}

// Due reports whether a backup of a cluster on sched is due at now, and
// for which slot: slot is the latest time sched fires at or before now,
// and the backup is due if the cluster's newest READY backup (lastReady;
// the zero time if it has none) is older than that slot. However many
// slots were missed, only the latest is due: one catch-up, not one per
// slot. A READY backup stamped after now (the clock stepped back) covers
// every slot before its time: not due, so no storm of backups.
func Due(sched Schedule, lastReady, now time.Time) (slot time.Time, due bool) {
	slot = Last(sched, now)
	if slot.IsZero() {
		return time.Time{}, false
	}
	return slot, lastReady.Before(slot)
}
