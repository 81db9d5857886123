package remote

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgfs/imgfs/blockdev"
)

// patternByte is byte off of patternServer's object: no storage needed for
// objects of hundreds of MiB.
func patternByte(off int64) byte { return byte(off*7 + off>>9 + off>>20) }

// patternServer serves an object of size bytes of patternByte with Range
// support and records the size of every range asked for.
type patternServer struct {
	size int64
	cost time.Duration // the server's cost per request, before it answers
	// cut, when set, ends every answer of more than cut bytes after cut
	// bytes by closing the connection (a proxy or server that gives up).
	cut    int64
	active atomic.Int32 // answers being sent
	mu     sync.Mutex
	reqs   []int64
	offs   []int64
}

func (p *patternServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var a, b int64
	if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &a, &b); err != nil || a > b || b >= p.size {
		http.Error(w, "want a closed range", http.StatusBadRequest)
		return
	}
	p.active.Add(1)
	defer p.active.Add(-1)
	time.Sleep(p.cost)
	p.mu.Lock()
	p.reqs = append(p.reqs, b-a+1)
	p.offs = append(p.offs, a)
	p.mu.Unlock()
	w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", a, b, p.size))
	w.Header().Set("Content-Length", fmt.Sprint(b-a+1))
	w.WriteHeader(http.StatusPartialContent)
	buf := make([]byte, 256<<10)
	for off := a; off <= b; {
		n := min(int64(len(buf)), b+1-off)
		for i := range n {
			buf[i] = patternByte(off + i)
		}
		if p.cut > 0 && b-a+1 > p.cut && off+n > a+p.cut {
			if n = a + p.cut - off; n > 0 {
				w.Write(buf[:n])
			}
			panic(http.ErrAbortHandler)
		}
		if _, err := w.Write(buf[:n]); err != nil {
			return
		}
		off += n
	}
}

func (p *patternServer) requests() []int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]int64(nil), p.reqs...)
}

// checkPattern checks every 511th byte of buf and its last one (cheap
// enough for the reader to keep up with the network).
func checkPattern(t *testing.T, buf []byte, off int64) {
	t.Helper()
	for i := 0; i < len(buf); i += 511 {
		if buf[i] != patternByte(off+int64(i)) {
			t.Fatalf("byte %d differs", off+int64(i))
		}
	}
	if n := len(buf); n > 0 && buf[n-1] != patternByte(off+int64(n-1)) {
		t.Fatalf("byte %d differs", off+int64(n-1))
	}
}

// openPattern opens a Cache over a patternServer of size bytes.
func openPattern(t *testing.T, size int64, cost time.Duration, opts CacheOptions) (*Cache, *patternServer) {
	t.Helper()
	ps := &patternServer{size: size, cost: cost}
	srv := httptest.NewServer(ps)
	t.Cleanup(srv.Close)
	h, err := OpenHTTP(context.Background(), srv.URL+"/image", HTTPOptions{Size: size})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	c, err := NewCache(h, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, ps
}

// A 256 MiB sequential read as imgfs cat does it (4 MiB chunks, two
// readers in order) from a server that takes 30 ms to answer each request
// (Glance takes 11 ms on loopback; add the round trip on a real network)
// goes out as a few small requests and then one stream to the end, not as
// 64 requests of 4 MiB; the stream asks for memory only as bytes come, so
// the cache holds little more than its read-ahead.
func TestCacheSequentialRunStreams(t *testing.T) {
	const size = 256 << 20
	c, ps := openPattern(t, size, 30*time.Millisecond, CacheOptions{})
	maxUsed := readAsCat(t, c, func(off int64, data []byte) error {
		checkPattern(t, data, off)
		return nil
	})
	reqs := ps.requests()
	var total, largest int64
	for _, r := range reqs {
		total += r
		largest = max(largest, r)
	}
	t.Logf("%d requests, largest %d MiB, %d MiB asked for, cache peak %d MiB: %v", len(reqs), largest>>20, total>>20, maxUsed>>20, reqs)
	if len(reqs) > 4 {
		t.Errorf("%d requests for a 256 MiB sequential read, want <= 4 (a stream after the first blocks; 4 MiB requests would be 64)", len(reqs))
	}
	if largest < size/2 {
		t.Errorf("largest request %d bytes: no stream", largest)
	}
	if total != size {
		t.Errorf("asked for %d bytes for %d", total, size)
	}
	if s := c.Stats(); s.BytesFetched != size {
		t.Errorf("fetched %d bytes for %d", s.BytesFetched, size)
	}
	// the reader's two 4 MiB chunks, the stream's read-ahead, slack
	if limit := int64(8+streamAhead+8) << 20; maxUsed > limit {
		t.Errorf("cache held %d bytes, want <= %d", maxUsed, limit)
	}
	if t.Failed() {
		ps.mu.Lock()
		for i, o := range ps.offs {
			t.Logf("request %d: MiB %d-%d", i, o>>20, (o+ps.reqs[i])>>20)
		}
		ps.mu.Unlock()
	}
}

// The memory bound holds with a small cache: a 16 MiB cache reads a long
// run by requests of at most a quarter of it and then a stream, and
// never holds more than 16 MiB, fetched or being fetched.
func TestCacheRequestsFitTheMemoryBound(t *testing.T) {
	const size = 96 << 20
	c, ps := openPattern(t, size, 30*time.Millisecond, CacheOptions{MaxBytes: 16 << 20})
	buf := make([]byte, 1<<20)
	maxUsed := int64(0)
	for off := int64(0); off < size; off += int64(len(buf)) {
		if _, err := c.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
		checkPattern(t, buf, off)
		c.mu.Lock()
		maxUsed = max(maxUsed, c.used)
		c.mu.Unlock()
	}
	reqs := ps.requests()
	ps.mu.Lock()
	offs := append([]int64(nil), ps.offs...)
	ps.mu.Unlock()
	for i, r := range reqs {
		if stream := offs[i]+r == size && r > 4<<20; r > 4<<20 && !stream {
			t.Fatalf("a request of %d bytes with a 16 MiB cache (cap 4 MiB): %v", r, reqs)
		}
	}
	if maxUsed > 16<<20 {
		t.Fatalf("cache held %d bytes, bound 16 MiB", maxUsed)
	}
	if s := c.Stats(); s.BytesFetched != size {
		t.Fatalf("fetched %d bytes for %d", s.BytesFetched, size)
	}
	t.Logf("%d requests, cache peak %d MiB", len(reqs), maxUsed>>20)
}

// Random small reads still fetch one 64 KiB piece each, and scattered
// 1 MiB reads one block each: the lazy path does not read more because
// sequential runs now grow.
func TestCacheRandomReadsKeepSmallRequests(t *testing.T) {
	const size = 1 << 30
	c, ps := openPattern(t, size, 0, CacheOptions{})
	r := rand.New(rand.NewPCG(14, 14))
	const n = 64
	for i := range n {
		// far apart: 16 MiB slots, so no read continues another's run
		off := int64(i)*(16<<20) + r.Int64N(2048)*4096 // within one 64 KiB piece
		small := make([]byte, 4096)
		if _, err := c.ReadAt(small, off); err != nil {
			t.Fatal(err)
		}
		checkPattern(t, small, off)
	}
	for i := range n {
		off := int64(i)*(16<<20) + 12<<20
		big := make([]byte, 1<<20)
		if _, err := c.ReadAt(big, off); err != nil {
			t.Fatal(err)
		}
		checkPattern(t, big, off)
	}
	reqs := ps.requests()
	var pieces, blocks int
	for _, r := range reqs {
		switch r {
		case DefaultSmallRead:
			pieces++
		case DefaultBlockSize:
			blocks++
		default:
			t.Errorf("a request of %d bytes", r)
		}
	}
	if pieces != n || blocks != n {
		t.Fatalf("%d requests (%d pieces, %d blocks), want %d of each", len(reqs), pieces, blocks, n)
	}
	if s := c.Stats(); s.ReadAhead != 0 {
		t.Fatalf("random reads read ahead: %+v", s)
	}
}

// cutServer serves patternByte ranges, ending its first answer after cut
// body bytes; it records the ranges asked for.
type cutServer struct {
	patternServer
	cut    int64
	served atomic.Int64
	ranges []string
}

func (c *cutServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	c.ranges = append(c.ranges, r.Header.Get("Range"))
	c.mu.Unlock()
	if c.served.Add(1) > 1 {
		c.patternServer.ServeHTTP(w, r)
		return
	}
	var a, b int64
	fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &a, &b)
	w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", a, b, c.size))
	w.Header().Set("Content-Length", fmt.Sprint(b-a+1))
	w.WriteHeader(http.StatusPartialContent)
	buf := make([]byte, c.cut)
	for i := range buf {
		buf[i] = patternByte(a + int64(i))
	}
	w.Write(buf)
	// returning with the body short of Content-Length breaks the connection
}

// A large request that breaks off is retried from the first block it had
// not completed, and the blocks it did complete were handed over at once.
func TestHTTPReadVecEachResumes(t *testing.T) {
	const size = 8 << 20
	cs := &cutServer{patternServer: patternServer{size: size}, cut: 2<<20 + 12345}
	srv := httptest.NewServer(cs)
	defer srv.Close()
	h, err := OpenHTTP(context.Background(), srv.URL, HTTPOptions{Size: size, Retry: fastRetry})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	bufs := make([][]byte, 4)
	for i := range bufs {
		bufs[i] = make([]byte, 1<<20)
	}
	var order []int
	if err := h.ReadVecEach(bufs, 1<<20, func(i int) { order = append(order, i) }); err != nil {
		t.Fatal(err)
	}
	for i, b := range bufs {
		checkPattern(t, b, int64(1+i)<<20)
	}
	if fmt.Sprint(order) != "[0 1 2 3]" {
		t.Fatalf("done calls %v, want [0 1 2 3]", order)
	}
	want := []string{"bytes=1048576-5242879", "bytes=3145728-5242879"}
	if fmt.Sprint(cs.ranges) != fmt.Sprint(want) {
		t.Fatalf("ranges %q, want %q (the retry starts at the first incomplete block)", cs.ranges, want)
	}
	if s := h.Stats(); s.BytesFetched != 2<<20+12345+2<<20 {
		t.Fatalf("fetched %d bytes, want %d", s.BytesFetched, 2<<20+12345+2<<20)
	}
}

// readAsCat reads all of c as imgfs cat does (4 MiB chunks, two readers,
// in order), checking each chunk, and returns the most the cache held.
func readAsCat(t *testing.T, c *Cache, check func(off int64, data []byte) error) (maxUsed int64) {
	t.Helper()
	err := blockdev.ReadOrdered(context.Background(), c, blockdev.OrderedOptions{ChunkSize: 4 << 20, Workers: 2},
		func(off int64, n int, data []byte) error {
			if err := check(off, data[:n]); err != nil {
				return err
			}
			c.mu.Lock()
			maxUsed = max(maxUsed, c.used)
			c.mu.Unlock()
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	return maxUsed
}
