package device

import (
	"iter"
	"maps"
)

// cowMap is a map that is cheap to copy and to change after copying: its
// entries are spread over shards, a copy shares every shard, and a change
// copies only the shard it changes (copy on write). A state of a million
// keys is copied for a change in a few microseconds instead of tens of
// milliseconds, and the journal finds what a change touched by comparing
// shard pointers. The zero value is not usable: it needs its shard
// function (see newKeyMap and newChangeMap).
type cowMap[K comparable, V any] struct {
	shards [cowShards]*cowShard[K, V]
	owned  [cowShards / 64]uint64 // shards this copy made, and may change in place
	n      int
	shard  func(K) uint8
}

const cowShards = 256

type cowShard[K comparable, V any] struct{ m map[K]V }

// clone returns a copy that shares every shard with m; changing either
// leaves the other as it was (both copy a shard before they change it).
func (m *cowMap[K, V]) clone() cowMap[K, V] {
	m.owned = [cowShards / 64]uint64{}
	return *m
}

// Get returns the value of k, or the zero value.
func (m *cowMap[K, V]) Get(k K) V {
	var zero V
	if sh := m.shards[m.shard(k)]; sh != nil {
		return sh.m[k]
	}
	return zero
}

// Set sets k to v.
func (m *cowMap[K, V]) Set(k K, v V) {
	sh := m.own(m.shard(k))
	if _, ok := sh.m[k]; !ok {
		m.n++
	}
	sh.m[k] = v
}

// Delete removes k, if m holds it.
func (m *cowMap[K, V]) Delete(k K) {
	i := m.shard(k)
	if sh := m.shards[i]; sh == nil {
		return
	} else if _, ok := sh.m[k]; !ok {
		return
	}
	delete(m.own(i).m, k)
	m.n--
}

// Len returns the number of entries.
func (m *cowMap[K, V]) Len() int { return m.n }

// All yields every entry, in no particular order. Changing m while it
// runs is allowed; the entries yielded are then those of some shard
// before or after the change.
func (m *cowMap[K, V]) All() iter.Seq2[K, V] {
	return func(yield func(K, V) bool) {
		for _, sh := range m.shards {
			if sh == nil {
				continue
			}
			for k, v := range sh.m {
				if !yield(k, v) {
					return
				}
			}
		}
	}
}

// changed yields, for every shard that is not old's, m's shard and old's
// (either nil if empty).
func (m *cowMap[K, V]) changed(old *cowMap[K, V]) iter.Seq2[map[K]V, map[K]V] {
	return func(yield func(map[K]V, map[K]V) bool) {
		for i, sh := range m.shards {
			if sh == old.shards[i] {
				continue
			}
			var a, b map[K]V
			if sh != nil {
				a = sh.m
			}
			if o := old.shards[i]; o != nil {
				b = o.m
			}
			if !yield(a, b) {
				return
			}
		}
	}
}

// reserve makes room for n entries in an empty m, spread as its shards
// spread them, so that filling it does not grow every shard many times.
func (m *cowMap[K, V]) reserve(n int) {
	for i := range m.shards {
		if m.shards[i] == nil {
			m.shards[i] = &cowShard[K, V]{m: make(map[K]V, n/cowShards+n/cowShards/8)}
			m.owned[i/64] |= 1 << (i % 64)
		}
	}
}

// own returns shard i, first copied if m shares it.
func (m *cowMap[K, V]) own(i uint8) *cowShard[K, V] {
	if m.owned[i/64]&(1<<(i%64)) == 0 {
		sh := &cowShard[K, V]{m: map[K]V{}}
		if old := m.shards[i]; old != nil {
			sh.m = maps.Clone(old.m)
		}
		m.shards[i] = sh
		m.owned[i/64] |= 1 << (i % 64)
	}
	return m.shards[i]
}
