package remote

import (
	"sync/atomic"

	"github.com/imgfs/imgfs/blockdev"
)

// counters is the shared, lock-free form of Stats.
type counters struct {
	requests, bytes, retries, renewals, hits, misses, readAhead atomic.Int64
}

func (c *counters) snapshot() blockdev.Stats {
	return blockdev.Stats{
		Requests:     c.requests.Load(),
		BytesFetched: c.bytes.Load(),
		Retries:      c.retries.Load(),
		TokenRenewal: c.renewals.Load(),
		CacheHits:    c.hits.Load(),
		CacheMisses:  c.misses.Load(),
		ReadAhead:    c.readAhead.Load(),
	}
}
