package device

import (
	"maps"
	"testing"
)

// TestCowMap: a clone shares every shard until one side changes it; a
// change on either side never shows on the other; changed names exactly
// the shards a change copied.
func TestCowMap(t *testing.T) {
	a := cowMap[uint64, *keyRecord]{shard: func(h uint64) uint8 { return uint8(h) }}
	want := map[uint64]*keyRecord{}
	for h := uint64(1); h <= 2000; h++ {
		k := &keyRecord{}
		a.Set(h, k)
		want[h] = k
	}
	b := a.clone()
	if n := countChanged(&b, &a); n != 0 {
		t.Fatalf("a fresh clone differs in %d shards", n)
	}
	b.Set(7, &keyRecord{})
	b.Delete(300)
	b.Set(5000, &keyRecord{})
	a.Set(9, &keyRecord{}) // on the original, after the clone
	if a.Get(7) != want[7] || a.Get(300) != want[300] || a.Get(5000) != nil || a.Len() != 2000 {
		t.Fatal("a change of the clone shows in the original")
	}
	if b.Get(9) != want[9] || b.Get(300) != nil || b.Len() != 2000 {
		t.Fatal("a change of the original shows in the clone, or the clone's count is off")
	}
	// 7, 300, 5000 and 9 fall in shards 7, 44, 136 and 9.
	if n := countChanged(&b, &a); n != 4 {
		t.Fatalf("%d shards changed, want 4", n)
	}
	got := maps.Collect(b.All())
	if len(got) != b.Len() || got[300] != nil || got[5000] == nil {
		t.Fatalf("All yields %d entries", len(got))
	}
	b.Delete(424242) // absent: nothing changes
	if b.Len() != 2000 {
		t.Fatal("deleting an absent key changed the count")
	}
}

func countChanged(m, old *cowMap[uint64, *keyRecord]) int {
	n := 0
	for range m.changed(old) {
		n++
	}
	return n
}
