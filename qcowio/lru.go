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

// flight merges concurrent loads of the same key into one call.
type flight[V any] struct {
	mu    sync.Mutex
	calls map[int64]*flightCall[V]
}

type flightCall[V any] struct {
	done chan struct{}
	val  V
	err  error
}

// do runs load for key unless a load of key is already running, in which
// case it waits for that one and returns its result.
func (f *flight[V]) do(key int64, load func() (V, error)) (V, error) {
	f.mu.Lock()
	if c, ok := f.calls[key]; ok {
		f.mu.Unlock()
		<-c.done
		return c.val, c.err
	}
	if f.calls == nil {
		f.calls = make(map[int64]*flightCall[V])
	}
	c := &flightCall[V]{done: make(chan struct{})}
	f.calls[key] = c
	f.mu.Unlock()

	c.val, c.err = load()
	f.mu.Lock()
	delete(f.calls, key)
	f.mu.Unlock()
	close(c.done)
	return c.val, c.err
}
