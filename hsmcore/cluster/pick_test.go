package cluster

import "testing"

func TestNewest(t *testing.T) {
	v := func(kv ...any) Version {
		out := Version{}
		for i := 0; i < len(kv); i += 2 {
			out[kv[i].(string)] = uint64(kv[i+1].(int))
		}
		return out
	}
	for _, tc := range []struct {
		name string
		vs   []Version
		ok   []bool
		want int
	}{
		{"none", nil, nil, -1},
		{"all down", []Version{v("a", 1), v("a", 2)}, []bool{false, false}, -1},
		{"one", []Version{v("a", 1)}, []bool{true}, 0},
		{"equal: the first", []Version{v("a", 1), v("a", 1)}, []bool{true, true}, 0},
		{"newer last", []Version{v("a", 1), v("a", 1), v("a", 2)}, []bool{true, true, true}, 2},
		{"stale majority loses", []Version{v("a", 3), v("a", 5, "b", 1), v("a", 3)}, []bool{true, true, true}, 1},
		{"empty is oldest", []Version{nil, v("b", 1)}, []bool{true, true}, 1},
		{"newest down", []Version{v("a", 1), v("a", 9)}, []bool{true, false}, 0},
		{"split", []Version{v("a", 2, "b", 1), v("a", 1, "b", 2)}, []bool{true, true}, -1},
	} {
		if got := newest(tc.vs, tc.ok); got != tc.want {
			t.Errorf("%s: newest = %d, want %d", tc.name, got, tc.want)
		}
	}
}
