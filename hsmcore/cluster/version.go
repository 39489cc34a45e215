package cluster

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Version is a member's state version: for each member serial, the
// sequence number of the last change made there that the state holds.
// Members apply each member's changes in order and without gaps, so a
// state whose version covers another's holds every change the other
// holds (docs/CLUSTER.md).
type Version map[string]uint64

// Covers reports whether v holds every change w holds.
func (v Version) Covers(w Version) bool {
	for m, n := range w {
		if v[m] < n {
			return false
		}
	}
	return true
}

func (v Version) String() string {
	if len(v) == 0 {
		return "0"
	}
	parts := make([]string, 0, len(v))
	for _, m := range slices.Sorted(maps.Keys(v)) {
		parts = append(parts, fmt.Sprintf("%s:%d", m, v[m]))
	}
	return strings.Join(parts, ",")
}

// newest returns the index of the first state whose version covers every
// other's, or -1 if there is none: changes were made on both sides of a
// split. States with ok false (members that cannot be reached) are left
// out.
func newest(vs []Version, ok []bool) int {
	for i, v := range vs {
		if !ok[i] {
			continue
		}
		all := true
		for j, w := range vs {
			if ok[j] && !v.Covers(w) {
				all = false
				break
			}
		}
		if all {
			return i
		}
	}
	return -1
}
