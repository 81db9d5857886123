package remote

import (
	"bytes"
	"container/list"
	"context"
	"errors"
	"fmt"
	"hash"
	"sync"
	"sync/atomic"

	"github.com/imgfs/imgfs/blockdev"
)

// CacheOptions configure a Cache. Zero values take the defaults.
type CacheOptions struct {
	BlockSize int64 // bytes per block; default 1 MiB
	MaxBytes  int64 // memory bound of loaded blocks; default 256 MiB
	ReadAhead int   // blocks fetched ahead of a sequential reader; default 8
	Parallel  int   // concurrent fetches from the device below; default 4
	// SmallReadSize: a read of at most this many bytes that is not part of
	// a sequential run fetches only the SmallReadSize-aligned piece it
	// needs, not the whole block: qcow2 metadata (64 KiB L2 tables, read
	// for every 512 MiB of disk at open) then costs 64 KiB, not 1 MiB.
	// Default 64 KiB; negative disables.
	SmallReadSize int64
	// Hash, when set, is the expected digest of the whole device. Blocks
	// are hashed in order as they arrive; Verify finishes the job.
	Hash HashSpec
}

// Defaults of CacheOptions.
const (
	DefaultBlockSize = 1 << 20
	DefaultCacheSize = 256 << 20
	DefaultReadAhead = 8
	DefaultParallel  = 4
	DefaultSmallRead = 64 << 10
)

// Cache is a Device that keeps fixed-size blocks of the device below in a
// bounded LRU. Concurrent readers of one block share one fetch; a reader
// that goes through the device in order makes the cache fetch the next
// blocks in parallel before they are asked for. A failed fetch is not
// cached: the next read of the block tries again.
type Cache struct {
	d       blockdev.Device
	opts    CacheOptions
	size    int64
	nblocks int64
	sem     chan struct{}
	ctx     context.Context
	cancel  context.CancelFunc
	c       counters

	mu       sync.Mutex
	blocks   map[int64]*cblock
	pieces   map[int64]*cblock // SmallReadSize units for isolated small reads
	lru      list.List         // of *cblock with data, most recent in front
	used     int64
	free     [][]byte // evicted block buffers for reuse (fresh memory is slow to fault in)
	lastEnd  int64    // end of the previous read
	seqBytes int64    // bytes read by the current sequential run

	vmu     sync.Mutex
	vhash   hash.Hash
	vwant   []byte
	vnext   int64        // next block to hash
	vhashed atomic.Int64 // vnext, for readers that do not hold vmu
	vresult error
	vdone   bool
}

type cblock struct {
	idx   int64
	piece bool // a SmallReadSize unit, not a block
	ready chan struct{}
	data  []byte
	err   error
	elem  *list.Element
	// refs counts readers copying from data; an evicted block's buffer is
	// reused only once the last of them is done.
	refs    int
	evicted bool
}

// NewCache puts a block cache in front of d.
func NewCache(d blockdev.Device, opts CacheOptions) (*Cache, error) {
	if opts.BlockSize <= 0 {
		opts.BlockSize = DefaultBlockSize
	}
	if opts.BlockSize%512 != 0 {
		return nil, fmt.Errorf("cache block size %d is not a multiple of 512", opts.BlockSize)
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = DefaultCacheSize
	}
	if opts.MaxBytes < opts.BlockSize {
		opts.MaxBytes = opts.BlockSize
	}
	if opts.ReadAhead < 0 {
		opts.ReadAhead = 0
	} else if opts.ReadAhead == 0 {
		opts.ReadAhead = DefaultReadAhead
	}
	if opts.Parallel <= 0 {
		opts.Parallel = DefaultParallel
	}
	if opts.SmallReadSize == 0 {
		opts.SmallReadSize = DefaultSmallRead
	}
	if opts.SmallReadSize >= opts.BlockSize || opts.SmallReadSize%512 != 0 || opts.BlockSize%max(opts.SmallReadSize, 1) != 0 {
		opts.SmallReadSize = -1
	}
	c := &Cache{d: d, opts: opts, size: d.Size(), sem: make(chan struct{}, opts.Parallel),
		blocks: map[int64]*cblock{}, pieces: map[int64]*cblock{}}
	c.nblocks = (c.size + opts.BlockSize - 1) / opts.BlockSize
	c.ctx, c.cancel = context.WithCancel(context.Background())
	if opts.Hash.Algo != "" {
		h, want, err := opts.Hash.newHash()
		if err != nil {
			return nil, err
		}
		c.vhash, c.vwant = h, want
	}
	return c, nil
}

// Size returns the size of the device below.
func (c *Cache) Size() int64 { return c.size }

// Stats returns the cache's counters plus those of the device below.
func (c *Cache) Stats() blockdev.Stats {
	s := c.c.snapshot()
	if r, ok := c.d.(blockdev.StatsReporter); ok {
		s = s.Add(r.Stats())
	}
	return s
}

// Mode returns the mode of the device below (ModeRange if it has none).
func (c *Cache) Mode() Mode {
	if m, ok := c.d.(ModeReporter); ok {
		return m.Mode()
	}
	return ModeRange
}

// Close stops read-ahead and drops the cached blocks. It does not close
// the device below.
func (c *Cache) Close() error {
	c.cancel()
	c.mu.Lock()
	c.blocks = map[int64]*cblock{}
	c.pieces = map[int64]*cblock{}
	c.lru.Init()
	c.used = 0
	c.mu.Unlock()
	return nil
}

// ReadAt implements io.ReaderAt.
func (c *Cache) ReadAt(p []byte, off int64) (int, error) {
	n, eof := blockdev.Clip(p, off, c.size)
	if n == 0 {
		return 0, eof
	}
	bs := c.opts.BlockSize
	first, last := off/bs, (off+int64(n)-1)/bs
	var units []*cblock
	if ps := c.opts.SmallReadSize; ps > 0 && int64(n) <= ps && off/ps == (off+int64(n)-1)/ps && c.isolated(off) {
		units = []*cblock{c.get(off/ps, true, false)}
	} else {
		units = c.getRange(first, last, false)
	}
	sequential := c.readAhead(off, int64(n), last)
	dropBefore := int64(-1)
	if sequential {
		// Drop-behind: a sequential reader will not come back to the blocks
		// it has read past, so their buffers are reused at once instead of
		// the cache growing to MaxBytes of stale data. With a checksum to
		// verify, only blocks already hashed go; the hasher drops the others
		// once it is done with them (advanceVerify).
		dropBefore = (off + int64(n)) / bs
		if c.vhash != nil {
			dropBefore = min(dropBefore, c.vhashed.Load())
		}
	}
	defer c.release(units, dropBefore)
	done := 0
	for _, b := range units {
		select {
		case <-b.ready:
		case <-c.ctx.Done():
			return done, errSourceClosed
		}
		if b.err != nil {
			return done, b.err
		}
		start := b.idx * c.unit(b.piece)
		lo := max(off+int64(done), start) - start
		done += copy(p[done:n], b.data[lo:])
	}
	return n, eof
}

// isolated reports whether a small read at off is no part of a sequential
// run and its block is not cached: it is then served by a piece.
func (c *Cache) isolated(off int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.blocks[off/c.opts.BlockSize]; ok {
		return false
	}
	return !(c.seqBytes > 0 && off == c.lastEnd) && c.seqBytes < c.opts.BlockSize
}

func (c *Cache) unit(piece bool) int64 {
	if piece {
		return c.opts.SmallReadSize
	}
	return c.opts.BlockSize
}

func (c *Cache) mapFor(piece bool) map[int64]*cblock {
	if piece {
		return c.pieces
	}
	return c.blocks
}

// readAhead detects sequential reading and fetches the blocks after it. A
// read counts as sequential when it starts near the end of the previous one
// (parallel readers of consecutive chunks arrive slightly out of order).
// Read-ahead starts once a run has covered two blocks and grows with the
// run up to ReadAhead blocks, so scattered header reads fetch nothing extra.
func (c *Cache) readAhead(off, n, last int64) (sequential bool) {
	if c.opts.ReadAhead == 0 {
		return false
	}
	bs := c.opts.BlockSize
	window := int64(c.opts.ReadAhead+1) * bs
	c.mu.Lock()
	if off >= c.lastEnd-window && off <= c.lastEnd+window && c.seqBytes > 0 {
		c.seqBytes += n
		c.lastEnd = max(c.lastEnd, off+n)
	} else {
		c.seqBytes = n
		c.lastEnd = off + n
	}
	ahead := int64(0)
	sequential = c.seqBytes >= 2*bs
	if sequential {
		ahead = min(int64(c.opts.ReadAhead), c.seqBytes/bs)
	}
	c.mu.Unlock()
	if ahead == 0 || last+1 >= c.nblocks {
		return sequential
	}
	// Fetch in batches: only once half of the window is missing, so that
	// the missing blocks go out as a few large requests, not one each.
	end := min(last+ahead, c.nblocks-1)
	missing := int64(0)
	c.mu.Lock()
	for i := last + 1; i <= end; i++ {
		if _, ok := c.blocks[i]; !ok {
			missing++
		}
	}
	c.mu.Unlock()
	if missing*2 >= end-last || end == c.nblocks-1 {
		c.getRange(last+1, end, true)
	}
	return sequential
}

// get returns block (or piece) idx, starting its fetch if nobody has.
func (c *Cache) get(idx int64, piece, prefetch bool) *cblock {
	b, created := c.claim(idx, piece, prefetch)
	if created {
		go c.load([]*cblock{b})
	}
	return b
}

// claim returns block (or piece) idx and whether the caller created it
// and must load it.
func (c *Cache) claim(idx int64, piece, prefetch bool) (*cblock, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.mapFor(piece)
	if b, ok := m[idx]; ok {
		if !prefetch {
			c.c.hits.Add(1)
			b.refs++
		}
		if b.elem != nil {
			c.lru.MoveToFront(b.elem)
		}
		return b, false
	}
	b := &cblock{idx: idx, piece: piece, ready: make(chan struct{})}
	if !prefetch {
		b.refs = 1
	}
	m[idx] = b
	if prefetch {
		c.c.readAhead.Add(1)
	} else {
		c.c.misses.Add(1)
	}
	return b, true
}

// maxRunBytes bounds one request for consecutive missing blocks.
const maxRunBytes = 8 << 20

// getRange returns blocks [first, last], loading the missing ones with one
// request per run of consecutive missing blocks (at most maxRunBytes):
// fewer, larger requests for sequential readers.
func (c *Cache) getRange(first, last int64, prefetch bool) []*cblock {
	out := make([]*cblock, 0, last-first+1)
	maxRun := max(1, maxRunBytes/c.opts.BlockSize)
	var run []*cblock
	flush := func() {
		if len(run) > 0 {
			go c.load(run)
			run = nil
		}
	}
	for i := first; i <= last; i++ {
		b, created := c.claim(i, false, prefetch)
		out = append(out, b)
		if !created {
			flush()
			continue
		}
		run = append(run, b)
		if int64(len(run)) >= maxRun {
			flush()
		}
	}
	flush()
	return out
}

// load fetches a run of consecutive units with one read (one HTTP range
// request: ReadVec) straight into the units' own buffers, at most Parallel
// reads at a time.
func (c *Cache) load(run []*cblock) {
	select {
	case c.sem <- struct{}{}:
	case <-c.ctx.Done():
		for _, b := range run {
			c.finish(b, nil, errSourceClosed)
		}
		return
	}
	u := c.unit(run[0].piece)
	start := run[0].idx * u
	end := min((run[len(run)-1].idx+1)*u, c.size)
	bufs := make([][]byte, len(run))
	for i, b := range run {
		n := min((b.idx+1)*u, end) - b.idx*u
		if b.piece {
			bufs[i] = make([]byte, n)
		} else {
			bufs[i] = c.allocBlock(n)
		}
	}
	err := blockdev.ReadVec(c.d, bufs, start)
	<-c.sem
	for i, b := range run {
		if err != nil {
			c.finish(b, nil, err)
			if !b.piece {
				c.recycle(bufs[i])
			}
			continue
		}
		c.finish(b, bufs[i], nil)
	}
}

// allocBlock returns a buffer of n <= BlockSize bytes, reusing an evicted
// block's buffer when there is one: on the VMs imgfs runs on, faulting in
// fresh memory costs more than the network transfer it would hold.
func (c *Cache) allocBlock(n int64) []byte {
	c.mu.Lock()
	if k := len(c.free); k > 0 {
		b := c.free[k-1]
		c.free = c.free[:k-1]
		c.mu.Unlock()
		return b[:n]
	}
	c.mu.Unlock()
	return make([]byte, n, c.opts.BlockSize)
}

// recycle keeps a block buffer for reuse. c.mu must not be held.
func (c *Cache) recycle(b []byte) {
	c.mu.Lock()
	c.recycleLocked(b)
	c.mu.Unlock()
}

func (c *Cache) recycleLocked(b []byte) {
	if int64(cap(b)) == c.opts.BlockSize && int64(len(c.free)) < c.opts.MaxBytes/c.opts.BlockSize/4+1 {
		c.free = append(c.free, b)
	}
}

// release ends the readers' use of units: an evicted block whose last
// reader is done gives its buffer back. Blocks before index dropBefore are
// evicted first (drop-behind for sequential readers).
func (c *Cache) release(units []*cblock, dropBefore int64) {
	c.mu.Lock()
	for _, b := range units {
		if !b.piece && b.idx < dropBefore && b.elem != nil && c.blocks[b.idx] == b {
			c.lru.Remove(b.elem)
			b.elem = nil
			delete(c.blocks, b.idx)
			c.used -= int64(len(b.data))
			b.evicted = true
		}
		b.refs--
		if b.refs == 0 && b.evicted && !b.piece && b.data != nil {
			c.recycleLocked(b.data)
			b.data = nil
		}
	}
	c.mu.Unlock()
}

func (c *Cache) finish(b *cblock, data []byte, err error) {
	c.mu.Lock()
	m := c.mapFor(b.piece)
	if err != nil {
		b.err = err
		if m[b.idx] == b {
			delete(m, b.idx) // not cached: the next read retries
		}
	} else {
		b.data = data
		if m[b.idx] == b {
			b.elem = c.lru.PushFront(b)
			c.used += int64(len(data))
			for c.used > c.opts.MaxBytes && c.lru.Len() > 1 {
				old := c.lru.Remove(c.lru.Back()).(*cblock)
				old.elem = nil
				delete(c.mapFor(old.piece), old.idx)
				c.used -= int64(len(old.data))
				old.evicted = true
				if old.refs == 0 && !old.piece {
					c.recycleLocked(old.data)
					old.data = nil
				}
			}
		}
	}
	c.mu.Unlock()
	close(b.ready)
	if err == nil && !b.piece && c.vhash != nil {
		c.advanceVerify(false)
	}
}

// advanceVerify hashes loaded blocks in order from vnext on. With wait
// false it gives up at once if another goroutine is hashing.
func (c *Cache) advanceVerify(wait bool) {
	if wait {
		c.vmu.Lock()
	} else if !c.vmu.TryLock() {
		return
	}
	defer c.vmu.Unlock()
	for c.vnext < c.nblocks {
		var b *cblock
		c.mu.Lock()
		if bb, ok := c.blocks[c.vnext]; ok && bb.data != nil {
			b = bb
			b.refs++
		}
		c.mu.Unlock()
		if b == nil {
			return
		}
		c.vhash.Write(b.data)
		// a sequential reader already past this block will not come back
		drop := int64(-1)
		c.mu.Lock()
		if c.seqBytes >= 2*c.opts.BlockSize {
			drop = c.lastEnd / c.opts.BlockSize
		}
		c.mu.Unlock()
		c.release([]*cblock{b}, drop)
		c.vnext++
		c.vhashed.Store(c.vnext)
	}
}

// Verify checks the whole device against CacheOptions.Hash: blocks hashed
// as they arrived count, the rest are read now (through the cache). It
// returns an error wrapping ErrIntegrity on a mismatch.
func (c *Cache) Verify(ctx context.Context) error {
	if c.vhash == nil {
		return errors.New("no checksum to verify against")
	}
	c.vmu.Lock()
	defer c.vmu.Unlock()
	if c.vdone {
		return c.vresult
	}
	for c.vnext < c.nblocks {
		if err := ctx.Err(); err != nil {
			return err
		}
		b := c.get(c.vnext, false, false)
		select {
		case <-b.ready:
		case <-ctx.Done():
			return ctx.Err()
		}
		if b.err != nil {
			c.release([]*cblock{b}, -1)
			return b.err
		}
		c.vhash.Write(b.data)
		c.release([]*cblock{b}, -1)
		c.vnext++
		c.vhashed.Store(c.vnext)
	}
	c.vdone = true
	if got := c.vhash.Sum(nil); !bytes.Equal(got, c.vwant) {
		c.vresult = fmt.Errorf("%s of the image is %x, metadata says %x: %w", c.opts.Hash.Algo, got, c.vwant, ErrIntegrity)
	}
	return c.vresult
}

// VerifiedPrefix returns how many bytes from the start have been hashed.
func (c *Cache) VerifiedPrefix() int64 {
	c.vmu.Lock()
	defer c.vmu.Unlock()
	return min(c.vnext*c.opts.BlockSize, c.size)
}
