package remote

import (
	"testing"
	"time"
)

// readSeq reads n bytes from off in 1 MiB reads and checks them.
func readSeq(t *testing.T, c *Cache, off, n int64) {
	t.Helper()
	buf := make([]byte, 1<<20)
	for end := off + n; off < end; off += int64(len(buf)) {
		if _, err := c.ReadAt(buf, off); err != nil {
			t.Fatalf("read at %d: %v", off, err)
		}
		checkPattern(t, buf, off)
	}
}

// waitActive waits until the server is sending at most n answers.
func waitActive(t *testing.T, ps *patternServer, n int32, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for ps.active.Load() > n {
		if time.Now().After(deadline) {
			t.Fatalf("server still sends %d answers after %s, want <= %d", ps.active.Load(), within, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A stream goes only as far as its reader: a reader that jumps elsewhere
// ends it (the server stops sending) and starts one where it reads now;
// what was fetched is what was read plus the read-ahead, not the rest of
// the object.
func TestStreamEndsWhenTheReaderJumps(t *testing.T) {
	const size = 1 << 30
	c, ps := openPattern(t, size, 0, CacheOptions{})
	readSeq(t, c, 0, 32<<20)
	waitActive(t, ps, 1, 2*time.Second) // the stream, waiting for its reader
	if ps.active.Load() != 1 {
		t.Fatalf("no stream after a 32 MiB sequential read: %v", ps.requests())
	}
	readSeq(t, c, 512<<20, 32<<20)
	waitActive(t, ps, 1, 2*time.Second) // the first stream ended, the second waits
	s := c.Stats()
	if limit := int64(64+2*streamAhead) << 20; s.BytesFetched > limit {
		t.Fatalf("fetched %d bytes for 64 MiB read in two runs, want <= %d", s.BytesFetched, limit)
	}
	if streams := ps.streams(); streams != 2 {
		t.Fatalf("%d streams for two runs, want 2: %v", streams, ps.requests())
	}
	t.Logf("%+v; requests %v", s, ps.requests())
}

// A reader that stops ends its stream after streamIdle: no connection is
// held open for a mount nobody reads.
func TestStreamEndsWhenTheReaderStops(t *testing.T) {
	c, ps := openPattern(t, 1<<30, 0, CacheOptions{})
	c.streamIdle = 200 * time.Millisecond
	readSeq(t, c, 0, 16<<20)
	waitActive(t, ps, 0, 3*time.Second)
	c.mu.Lock()
	st := c.st
	c.mu.Unlock()
	if st != nil {
		t.Fatal("the stopped stream is still the cache's")
	}
	// the run goes on: a new stream serves it
	readSeq(t, c, 16<<20, 16<<20)
	if s := c.Stats(); s.BytesFetched > (32+streamAhead)<<20 {
		t.Fatalf("fetched %d bytes for 32 MiB", s.BytesFetched)
	}
}

// A stream that breaks off (a proxy gives up, the server restarts) costs
// nothing but a request: the blocks it had not delivered are read by
// ranges, the bytes are exact, and later streams are tried again.
func TestStreamThatBreaksIsReadByRanges(t *testing.T) {
	const size = 256 << 20
	c, ps := openPattern(t, size, 0, CacheOptions{})
	ps.cut = 20<<20 + 12345 // every answer of more than 20 MiB breaks there
	readSeq(t, c, 0, size)
	streams := ps.streams()
	if streams < 2 {
		t.Fatalf("%d streams, want a new one after the first broke: %v", streams, ps.requests())
	}
	t.Logf("%d streams; %+v", streams, c.Stats())
	// after streamFailures broken streams the cache keeps to ranges
	c.mu.Lock()
	fails := c.streamFails
	c.mu.Unlock()
	if fails != min(streams, streamFailures) {
		t.Fatalf("%d stream failures counted for %d streams", fails, streams)
	}
	if streams > streamFailures {
		t.Fatalf("%d streams after %d failures", streams, streamFailures)
	}
}

// streams counts the requests that asked for the rest of the object from
// somewhere past its start: the cache's streams.
func (p *patternServer) streams() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for i, r := range p.reqs {
		if p.offs[i] > 0 && p.offs[i]+r == p.size && r > 64<<20 {
			n++
		}
	}
	return n
}

// Random reads past a stream's front are not the stream's: it does not
// fetch everything up to them (the lazy path fetches what it reads).
func TestStreamIgnoresRandomReadsAhead(t *testing.T) {
	c, ps := openPattern(t, 1<<30, 0, CacheOptions{})
	readSeq(t, c, 0, 16<<20)
	if ps.active.Load() != 1 {
		t.Fatalf("no stream after a 16 MiB run: %v", ps.requests())
	}
	before := c.Stats().BytesFetched
	small := make([]byte, 4096)
	for i := range 20 {
		off := int64(32<<20) + int64(i)*(5<<20) + 12345 // 32-132 MiB, 5 MiB apart
		if _, err := c.ReadAt(small, off); err != nil {
			t.Fatal(err)
		}
		checkPattern(t, small, off)
	}
	time.Sleep(200 * time.Millisecond) // whatever the stream would fetch
	got := c.Stats().BytesFetched - before
	// the stream's read-ahead (and one block more: the first read is within
	// the run's tolerance of its front), then a 64 KiB piece each
	if limit := int64((streamAhead+seqTolerance)<<20 + 20*DefaultSmallRead); got > limit {
		t.Fatalf("20 random 4 KiB reads past a stream fetched %d bytes, want <= %d", got, limit)
	}
	t.Logf("20 random reads after a run: %d bytes fetched", got)
}
