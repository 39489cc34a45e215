package cluster

import "testing"

func TestMostHeld(t *testing.T) {
	for _, tc := range []struct {
		digests []string
		want    int
	}{
		{nil, -1},
		{[]string{"", ""}, -1},
		{[]string{"a"}, 0},
		{[]string{"", "a"}, 1},
		{[]string{"a", "b"}, 0},
		{[]string{"a", "b", "b"}, 1},
		{[]string{"", "a", "b", "a", "b"}, 1},
	} {
		if got := mostHeld(tc.digests); got != tc.want {
			t.Errorf("mostHeld(%q) = %d, want %d", tc.digests, got, tc.want)
		}
	}
}
