package remote

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A sequential reader leaves behind no more than the read-ahead window:
// blocks it has read past are dropped and their buffers reused, so the
// cache does not grow to MaxBytes of data nobody will read again.
func TestCacheSequentialReaderDropsBehind(t *testing.T) {
	data := testData(96<<20, 7)
	srv, _ := fileServer(t, data)
	h, err := OpenHTTP(context.Background(), srv.URL+"/image", HTTPOptions{Size: int64(len(data))})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	c, _ := NewCache(h, CacheOptions{})
	defer c.Close()
	buf := make([]byte, 1<<20)
	for off := 0; off < len(data); off += len(buf) {
		if _, err := c.ReadAt(buf, int64(off)); err != nil || !bytes.Equal(buf, data[off:off+len(buf)]) {
			t.Fatalf("offset %d: %v or bytes differ", off, err)
		}
	}
	c.mu.Lock()
	used := c.used
	c.mu.Unlock()
	if limit := int64(12 << 20); used > limit { // all was read: the drop margin and a few blocks
		t.Fatalf("after a 96 MiB sequential read the cache holds %d bytes, want <= %d (drop-behind)", used, limit)
	}
	// the stream's read-ahead and the drop margin in fresh buffers; the
	// rest reused
	if fresh := c.fresh.Load(); fresh > 48 {
		t.Fatalf("%d fresh block buffers for a 96-block read: dropped blocks are not reused", fresh)
	}
}

// Reused buffers never change bytes a reader is still copying: random and
// sequential readers on a cache much smaller than the data (so blocks are
// evicted and recycled all the time) always get the right bytes.
func TestCacheRecycledBuffersKeepReadsExact(t *testing.T) {
	data := testData(24<<20, 8)
	srv, _ := fileServer(t, data)
	h, err := OpenHTTP(context.Background(), srv.URL+"/image", HTTPOptions{Size: int64(len(data))})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	c, _ := NewCache(h, CacheOptions{MaxBytes: 3 << 20, ReadAhead: 2})
	defer c.Close()
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() { defer wg.Done(); checkReads(t, c, data, uint64(100+g), 40) }()
	}
	for g := 0; g < 2; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 700<<10)
			for off := g * 1000; off+len(buf) <= len(data); off += len(buf) {
				if _, err := c.ReadAt(buf, int64(off)); err != nil || !bytes.Equal(buf, data[off:off+len(buf)]) {
					t.Errorf("sequential reader %d at %d: %v or bytes differ", g, off, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// With a checksum to verify, a sequential reader still drops behind: the
// blocks the hasher is done with go, so a whole verified read does not
// fill the cache to MaxBytes (it used to: 256 MiB of a 1 GiB image), and
// the read is fetched once and verified.
func TestCacheVerifiedSequentialReaderDropsBehind(t *testing.T) {
	data := testData(128<<20, 9)
	sum := sha512.Sum512(data)
	srv, _ := fileServer(t, data)
	for _, corrupt := range []bool{false, true} {
		h, err := OpenHTTP(context.Background(), srv.URL+"/image", HTTPOptions{Size: int64(len(data))})
		if err != nil {
			t.Fatal(err)
		}
		want := hex.EncodeToString(sum[:])
		if corrupt {
			want = flipHex(want)
		}
		c, err := NewCache(h, CacheOptions{Hash: HashSpec{"sha512", want}})
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1<<20)
		maxUsed := int64(0)
		for off := 0; off < len(data); off += len(buf) {
			if _, err := c.ReadAt(buf, int64(off)); err != nil || !bytes.Equal(buf, data[off:off+len(buf)]) {
				t.Fatalf("offset %d: %v or bytes differ", off, err)
			}
			c.mu.Lock()
			maxUsed = max(maxUsed, c.used)
			c.mu.Unlock()
		}
		err = c.Verify(context.Background())
		if corrupt != errors.Is(err, ErrIntegrity) {
			t.Fatalf("corrupt %v: Verify = %v", corrupt, err)
		}
		if limit := int64(96 << 20); maxUsed > limit { // hasher lag plus a read-ahead window that may grow to 64 MiB requests; without drop-behind: all 128 MiB
			t.Fatalf("a verified 128 MiB sequential read held up to %d bytes in the cache, want <= %d", maxUsed, limit)
		}
		t.Logf("corrupt %v: %+v", corrupt, c.Stats())
		if st := c.Stats(); st.BytesFetched != int64(len(data)) {
			t.Fatalf("fetched %d bytes, want %d (once)", st.BytesFetched, len(data))
		}
		c.Close()
		h.Close()
	}
}

// A reader faster than the hash (cat decrypts at ~1.2 GB/s, sha512 runs
// at ~0.7 GB/s a core) waits for it rather than run so far ahead that the
// LRU evicts blocks the hash still needs: the image is fetched once,
// verified, and the cache holds at most its bound.
func TestCacheReaderWaitsForTheHash(t *testing.T) {
	const size = 384 << 20
	data := testData(size, 12)
	const bound = 24 << 20
	c := checkedCache(t, data, CacheOptions{MaxBytes: bound})
	maxUsed := readAsCat(t, c, func(off int64, b []byte) error {
		if !bytes.Equal(b, data[off:off+int64(len(b))]) {
			return fmt.Errorf("bytes at %d differ", off)
		}
		return nil
	})
	if err := c.Verify(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := c.Stats()
	t.Logf("%+v; cache peak %d MiB, stream failures %d", st, maxUsed>>20, c.streamFails)
	if st.BytesFetched != size {
		t.Fatalf("fetched %d bytes for %d: blocks the hash needed were evicted and fetched again", st.BytesFetched, size)
	}
	if maxUsed > bound {
		t.Fatalf("cache held %d bytes, bound %d", maxUsed, bound)
	}
}

// Prefetch fetches the blocks a read of the same range would, and the read
// then finds them: the same requests and bytes as the read alone, and no
// miss; a range a small read would serve with a piece is not prefetched.
func TestCachePrefetchServesTheRead(t *testing.T) {
	data := testData(16<<20, 3)
	for _, n := range []int64{1 << 20, 4 << 20} {
		var want [2]int64 // requests, bytes of the read alone
		for _, prefetch := range []bool{false, true} {
			srv, requests := fileServer(t, data)
			h, err := OpenHTTP(context.Background(), srv.URL+"/image", HTTPOptions{Size: int64(len(data))})
			if err != nil {
				t.Fatal(err)
			}
			c, err := NewCache(h, CacheOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if prefetch {
				c.Prefetch(2<<20+100, 4<<10) // one small piece: left to the read
				if r := requests.Load(); r != 0 {
					t.Fatalf("a small range was prefetched (%d requests)", r)
				}
				c.Prefetch(2<<20, n)
				time.Sleep(50 * time.Millisecond) // the request is under way before the read, as during an unlock
			}
			buf := make([]byte, n)
			if _, err := c.ReadAt(buf, 2<<20); err != nil || !bytes.Equal(buf, data[2<<20:2<<20+n]) {
				t.Fatalf("read: %v or bytes differ", err)
			}
			time.Sleep(50 * time.Millisecond) // read-ahead the read started
			st := c.Stats()
			got := [2]int64{requests.Load(), st.BytesFetched}
			if !prefetch {
				want = got
			} else if got != want || st.CacheMisses != 0 {
				t.Fatalf("%d bytes: with a prefetch %v requests/bytes and %d misses, want %v as without and no miss", n, got, st.CacheMisses, want)
			}
			c.Close()
			h.Close()
		}
	}
}

// A verified sequential read stays close to the hash: the hash (sha512,
// ~0.7 GB/s a core) sets the pace, and every block a reader is ahead of
// it is a buffer held and, the first time, faulted in. Letting the reader
// run a whole window ahead (128 blocks with the default cache) held
// 130 MiB for a 512 MiB cat of a Glance image.
func TestCacheVerifiedReadStaysNearTheHash(t *testing.T) {
	data := testData(192<<20, 13)
	c := checkedCache(t, data, CacheOptions{})
	bs := c.opts.BlockSize
	var lead atomic.Int64 // blocks the furthest read got past the hash
	maxUsed := readAsCat(t, c, func(off int64, b []byte) error {
		if !bytes.Equal(b, data[off:off+int64(len(b))]) {
			return fmt.Errorf("bytes at %d differ", off)
		}
		ahead := (off+int64(len(b))-1)/bs - c.hashed.Load()
		for l := lead.Load(); ahead > l && !lead.CompareAndSwap(l, ahead); l = lead.Load() {
		}
		return nil
	})
	if err := c.Verify(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Logf("reads up to %d blocks past the hash (lag %d blocks of %d KiB), cache peak %d MiB, %d fresh block buffers",
		lead.Load(), c.hashLag, bs>>10, maxUsed>>20, c.fresh.Load())
	if c.hashLag*bs != hashLagBytes {
		t.Fatalf("hash lag %d blocks, want %d MiB", c.hashLag, hashLagBytes>>20)
	}
	if lead.Load() > c.hashLag {
		t.Fatalf("a read was served %d blocks past the hash, want <= %d", lead.Load(), c.hashLag)
	}
	// the lag, the stream's read-ahead, the drop margin and the chunks
	// of cat's two workers
	if limit := hashLagBytes + (streamAhead+c.dropMargin)*bs + 8<<20; maxUsed > limit {
		t.Fatalf("cache held %d MiB during a verified read, want <= %d MiB", maxUsed>>20, limit>>20)
	}
}

// checkedCache serves data over HTTP through a Cache with opts that checks
// its sha512; both are closed at the end of the test.
func checkedCache(t *testing.T, data []byte, opts CacheOptions) *Cache {
	t.Helper()
	sum := sha512.Sum512(data)
	srv, _ := fileServer(t, data)
	h, err := OpenHTTP(context.Background(), srv.URL+"/image", HTTPOptions{Size: int64(len(data))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	opts.Hash = HashSpec{"sha512", hex.EncodeToString(sum[:])}
	c, err := NewCache(h, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
