package blockdev

import (
	"fmt"
)

// Stats are the counters of a remote source and the cache in front of it.
type Stats struct {
	Requests     int64 `json:"requests"`      // HTTP requests sent (including retries)
	BytesFetched int64 `json:"bytes_fetched"` // response body bytes received
	Retries      int64 `json:"retries"`       // requests repeated after a transient failure
	TokenRenewal int64 `json:"token_renewals"`
	CacheHits    int64 `json:"cache_hits"`   // block lookups served from memory (or joined a fetch in flight)
	CacheMisses  int64 `json:"cache_misses"` // block lookups that had to fetch
	ReadAhead    int64 `json:"read_ahead"`   // blocks fetched ahead of a sequential reader
	// Timings from the start of the open, in milliseconds (0: not
	// reached, or not known): the cloud token in hand, the disk unlocked
	// and ready, and the first plaintext bytes returned to a reader.
	TokenMS     float64 `json:"token_ms,omitempty"`
	ReadyMS     float64 `json:"ready_ms,omitempty"`
	FirstByteMS float64 `json:"first_byte_ms,omitempty"`
	// The steps in between, to see which waited for which: the image
	// metadata (Glance) in hand, the encryption header parsed, and the
	// passphrase (a Barbican secret) in hand.
	MetadataMS float64 `json:"metadata_ms,omitempty"`
	HeaderMS   float64 `json:"header_ms,omitempty"`
	KeyMS      float64 `json:"key_ms,omitempty"`
}

// String formats the counters on one line for `imgfs cat --stats`.
func (s Stats) String() string {
	line := fmt.Sprintf("%d requests, %s (%d bytes) fetched, %d retries, %d token renewals, cache %d hits / %d misses, %d blocks read ahead",
		s.Requests, IBytes(s.BytesFetched), s.BytesFetched, s.Retries, s.TokenRenewal, s.CacheHits, s.CacheMisses, s.ReadAhead)
	if s.FirstByteMS > 0 {
		line += fmt.Sprintf(", first byte at %.0f ms", s.FirstByteMS)
		if s.TokenMS > 0 {
			line += fmt.Sprintf(" (token at %.0f ms, unlocked at %.0f ms", s.TokenMS, s.ReadyMS)
		} else {
			line += fmt.Sprintf(" (unlocked at %.0f ms", s.ReadyMS)
		}
		sep := "; "
		for _, m := range []struct {
			name string
			ms   float64
		}{{"metadata", s.MetadataMS}, {"header", s.HeaderMS}, {"key", s.KeyMS}} {
			if m.ms > 0 {
				line += fmt.Sprintf("%s%s at %.0f ms", sep, m.name, m.ms)
				sep = ", "
			}
		}
		line += ")"
	}
	return line
}

// Prefetcher is implemented by devices that can start fetching a range
// before anyone reads it (the block cache of remote sources), so that a
// read known to come (the first one after an unlock) finds it in flight or
// cached. Prefetch does not wait; a device may fetch less or nothing.
type Prefetcher interface {
	Prefetch(off, n int64)
}

// StatsReporter is implemented by devices that keep Stats: the HTTP source
// and the Cache (whose Stats include those of the device below it).
type StatsReporter interface {
	Stats() Stats
}

// Add returns the sum of two Stats (a cache's and its source's).
func (s Stats) Add(o Stats) Stats {
	return Stats{
		Requests:     s.Requests + o.Requests,
		BytesFetched: s.BytesFetched + o.BytesFetched,
		Retries:      s.Retries + o.Retries,
		TokenRenewal: s.TokenRenewal + o.TokenRenewal,
		CacheHits:    s.CacheHits + o.CacheHits,
		CacheMisses:  s.CacheMisses + o.CacheMisses,
		ReadAhead:    s.ReadAhead + o.ReadAhead,
		TokenMS:      max(s.TokenMS, o.TokenMS),
		ReadyMS:      max(s.ReadyMS, o.ReadyMS),
		FirstByteMS:  max(s.FirstByteMS, o.FirstByteMS),
		MetadataMS:   max(s.MetadataMS, o.MetadataMS),
		HeaderMS:     max(s.HeaderMS, o.HeaderMS),
		KeyMS:        max(s.KeyMS, o.KeyMS),
	}
}

// IBytes formats a byte count with a binary unit, as "1.5 MiB".
func IBytes(n int64) string {
	const units = "KMGTPE"
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n)/1024, 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if v < 10 {
		return fmt.Sprintf("%.1f %ciB", v, units[i])
	}
	return fmt.Sprintf("%.0f %ciB", v, units[i])
}
