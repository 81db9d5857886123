package qcowio

import (
	"container/list"
	"sync"
)

// lru is a size-bounded, least-recently-used cache safe for concurrent use.
// It caches L2 tables and decompressed clusters; values are never modified
// after insertion, so readers share them without copying.
type lru[V any] struct {
	mu    sync.Mutex
	max   int // entries
	order *list.List
	items map[int64]*list.Element
}

type lruEntry[V any] struct {
	key int64
	val V
}

// newLRU returns a cache of at most budget/entrySize entries, and at least
// minEntries.
func newLRU[V any](budget, entrySize int64, minEntries int) *lru[V] {
	n := int(budget / entrySize)
	if n < minEntries {
		n = minEntries
	}
	return &lru[V]{max: n, order: list.New(), items: make(map[int64]*list.Element)}
}

func (c *lru[V]) get(key int64) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[key]; ok {
		c.order.MoveToFront(el)
		return el.Value.(*lruEntry[V]).val, true
	}
	var zero V
	return zero, false
}

func (c *lru[V]) put(key int64, val V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[key]; ok {
		el.Value.(*lruEntry[V]).val = val
		c.order.MoveToFront(el)
		return
	}
	c.items[key] = c.order.PushFront(&lruEntry[V]{key, val})
	for c.order.Len() > c.max {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.items, last.Value.(*lruEntry[V]).key)
	}
}
