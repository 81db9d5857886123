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
	"time"

	"github.com/imgfs/imgfs/blockdev"
)

// CacheOptions configure a Cache. Zero values take the defaults.
type CacheOptions struct {
	BlockSize int64 // bytes per block; default 1 MiB
	// MaxBytes bounds the memory of loaded blocks and of blocks being
	// fetched; default 256 MiB.
	MaxBytes int64
	// ReadAhead caps, in blocks, how far ahead of a sequential reader
	// blocks are fetched. The window grows with the run (as far ahead as
	// the run has read); 0 means up to two MaxRequests (at most half of
	// MaxBytes); negative disables read-ahead.
	ReadAhead int
	// MaxRequest caps one request of a sequential run, which grows with
	// the run from a few blocks to this size. Default DefaultMaxRequest,
	// and never more than a quarter of MaxBytes.
	MaxRequest int64
	Parallel   int // concurrent fetches from the device below; default 4
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
	DefaultParallel  = 4
	DefaultSmallRead = 64 << 10
	// DefaultMaxRequest is the largest request of a long sequential run:
	// a server's cost per request (about 11 ms for Glance on loopback,
	// plus a round trip on a real network) is then a small share of each
	// request's transfer time.
	DefaultMaxRequest = 64 << 20
	// seqTolerance is how far, in blocks, a read may start from the end of
	// the previous one and still continue its sequential run (parallel
	// readers of consecutive chunks arrive slightly out of order).
	seqTolerance = 9
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
	maxReq  int64 // blocks per request at most
	window  int64 // blocks of read-ahead at most
	// grown is the read-ahead window in blocks that has proved needed:
	// it starts small and doubles (up to window) each time a sequential
	// reader has to wait for a block read-ahead asked for, i.e. when the
	// server's cost per request is not hidden yet. Fast servers keep a
	// small window (less memory to fault in), slow ones get a large one.
	grown int64
	// hashLag is how many blocks a sequential reader may be ahead of the
	// hash (awaitHash).
	hashLag int64
	near    int64 // bytes: sequential-run tolerance
	ctx     context.Context
	cancel  context.CancelFunc
	c       counters

	mu      sync.Mutex
	blocks  map[int64]*cblock
	pieces  map[int64]*cblock // SmallReadSize units for isolated small reads
	lru     list.List         // of *cblock with data, most recent in front
	used    int64
	free    [][]byte // evicted block buffers for reuse (fresh memory is slow to fault in)
	lastEnd int64    // end of the previous read
	// dropNext is the first block drop-behind has not passed; dropMargin
	// how far behind a run's furthest read it stays (see releaseRead).
	dropNext   int64
	dropMargin int64
	fresh      atomic.Int64 // block buffers allocated, not reused (tests)
	seqBytes   int64        // bytes read by the current sequential run
	// st is the streaming request of the current long run, if any;
	// streamFails counts streams that failed (see streamFailures).
	st          *stream
	streamFails int
	streamIdle  time.Duration // streamIdle; shorter in tests

	vmu   sync.Mutex
	vhash hash.Hash
	vwant []byte
	vnext int64 // next block to hash
	// hashed mirrors vnext for readers that do not hold vmu: blocks
	// before it may be dropped behind a sequential reader.
	hashed atomic.Int64
	// vkick says a block was loaded while another goroutine was hashing
	// (advanceVerify): the hasher looks again before it stops.
	vkick   atomic.Bool
	vresult error
	vdone   bool
	// hashMoved is closed (and replaced) when the hash advances, for
	// readers waiting for it (awaitHash).
	hmu       sync.Mutex
	hashMoved chan struct{}
}

type cblock struct {
	idx      int64
	piece    bool // a SmallReadSize unit, not a block
	prefetch bool // claimed by read-ahead
	// streaming is set once the first unit of the request that loads
	// this one has arrived: waiting for it then is waiting for bytes on
	// the wire, not for the server to answer.
	streaming *atomic.Bool
	ready     chan struct{}
	data      []byte
	err       error
	elem      *list.Element
	// refs counts readers copying from data; an evicted block's buffer is
	// reused only once the last of them is done.
	refs    int
	evicted bool
	// consumed: a sequential reader has read past it; it is dropped once
	// hashed.
	consumed bool
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
	if opts.MaxRequest <= 0 {
		opts.MaxRequest = DefaultMaxRequest
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
	c.maxReq = max(1, min(opts.MaxRequest, opts.MaxBytes/4)/opts.BlockSize)
	c.near = seqTolerance * opts.BlockSize
	switch {
	case opts.ReadAhead < 0:
		c.window = 0
	case opts.ReadAhead > 0:
		c.window = int64(opts.ReadAhead)
		c.near = int64(opts.ReadAhead+1) * opts.BlockSize
	default:
		c.window = max(1, min(2*c.maxReq, opts.MaxBytes/2/opts.BlockSize))
	}
	c.grown = min(c.window, initialWindow)
	c.hashLag = max(1, min(c.window, hashLagBytes/opts.BlockSize))
	// The run's tolerance for out-of-order reads, within a quarter of the
	// window so that the hash's lag (at most a window), the stream's
	// read-ahead (at most half of one) and this margin fit in MaxBytes.
	c.dropMargin = min(c.near/opts.BlockSize, c.window/4)
	c.streamIdle = streamIdle
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
	for e := c.lru.Front(); e != nil; e = e.Next() {
		c.used -= int64(len(e.Value.(*cblock).data))
	}
	c.blocks = map[int64]*cblock{}
	c.pieces = map[int64]*cblock{}
	c.lru.Init()
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
	if c.vhash != nil && c.continuesRun(off) {
		// before this read claims blocks: they count against the bound
		c.awaitHash(last)
	}
	var units []*cblock
	if ps := c.opts.SmallReadSize; ps > 0 && int64(n) <= ps && off/ps == (off+int64(n)-1)/ps && c.isolated(off) {
		units = []*cblock{c.get(off/ps, true, false)}
	} else {
		c.streamClaim(first, last)
		units = c.getRange(first, last, false)
	}
	sequential := c.readAhead(off, int64(n), last)
	starved := false
	defer func() {
		if starved {
			c.grow()
		}
	}()
	readEnd := int64(-1)
	if sequential {
		readEnd = (off + int64(n)) / bs
	}
	defer func() { c.releaseRead(units, readEnd) }()
	done := 0
	for i := 0; i < len(units); i++ {
		b := units[i]
		select {
		case <-b.ready:
		default:
			if sequential && b.prefetch && !starved {
				c.mu.Lock()
				st := b.streaming
				c.mu.Unlock()
				starved = st == nil || !st.Load()
			}
			select {
			case <-b.ready:
			case <-c.ctx.Done():
				return done, errSourceClosed
			}
		}
		if errors.Is(b.err, errStreamStopped) {
			// The stream that had claimed it ended first: fetch it now.
			units[i] = c.get(b.idx, b.piece, false)
			c.release([]*cblock{b})
			i--
			continue
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

// Prefetch implements blockdev.Prefetcher: it starts fetching the blocks
// of [off, off+n) as read-ahead, in one request, without waiting and
// without counting as a read (the sequential-run detection is untouched).
// A range that a read could serve with one SmallReadSize piece is not
// prefetched, since its whole block would cost more than the read; nor is
// more than one request's worth (MaxRequest) or half of MaxBytes.
func (c *Cache) Prefetch(off, n int64) {
	if off < 0 || n <= 0 || off >= c.size {
		return
	}
	n = min(n, c.size-off, c.maxReq*c.opts.BlockSize, c.opts.MaxBytes/2)
	if ps := c.opts.SmallReadSize; ps > 0 && n <= ps && off/ps == (off+n-1)/ps {
		return
	}
	bs := c.opts.BlockSize
	c.getRange(off/bs, (off+n-1)/bs, true)
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
// Read-ahead starts once a run has covered two blocks and its window grows
// with the run — as far ahead as the run has read, up to c.grown blocks —
// so scattered header reads fetch nothing extra. The window is refilled
// only once half of it is missing, so each request is about half the
// window: requests double as the run goes on (4, 8, 16 … MiB, rclone's
// chunk doubling), up to c.maxReq blocks, and about two are in flight.
// c.grown itself doubles (grow, up to c.window) while the reader waits for
// requests the server has not started answering, so a server's cost per
// request (Glance: about 11 ms on loopback, more behind a load balancer or
// across a WAN) is paid once per tens of MiB and hidden behind the other
// request's transfer, while a fast server keeps a small window.
func (c *Cache) readAhead(off, n, last int64) (sequential bool) {
	if c.window == 0 {
		return false
	}
	bs := c.opts.BlockSize
	c.mu.Lock()
	// A reader may lag behind a long run by as much as the run's window:
	// parallel readers (cat's workers, the kernel's read-ahead) wait on
	// large requests in turn.
	grown := c.grown
	if c.seqBytes > 0 && c.inRunLocked(off) {
		c.seqBytes += n
		c.lastEnd = max(c.lastEnd, off+n)
	} else {
		c.seqBytes = n
		c.lastEnd = off + n
		c.dropNext = off / bs // a new run drops behind itself only
	}
	ahead := int64(0)
	run := c.seqBytes / bs
	sequential = c.seqBytes >= 2*bs
	if sequential {
		ahead = min(grown, c.seqBytes/bs)
	}
	// The window starts at the run's furthest read, not at this read: a
	// parallel reader that is behind must not fetch again the blocks that
	// one ahead of it has already read and dropped.
	front := max(last, (c.lastEnd-1)/bs)
	c.mu.Unlock()
	if ahead == 0 || front+1 >= c.nblocks {
		return sequential
	}
	end := min(front+ahead, c.nblocks-1)
	if c.vhash != nil {
		// The hash takes blocks in order from the first; blocks the
		// reads skipped (the header, read in small pieces) are fetched
		// now, or the hash would wait for them until Verify.
		// hashed is read under mu: the hasher moves it on before it
		// drops the block (under mu), so a block seen missing here is
		// not one just hashed.
		c.mu.Lock()
		h := c.hashed.Load()
		_, ok := c.blocks[h]
		c.mu.Unlock()
		if h < front {
			if !ok {
				c.getRange(h, min(h+c.maxReq-1, front), true)
			}
		}
		// Hashing (sha512: 400-700 MB/s a core) may be slower than the
		// network. Unhashed blocks must stay cached, so read-ahead waits
		// for the hash rather than outrun it by more than the largest
		// window (at most half of MaxBytes) and have the LRU evict blocks
		// the hash still needs (Verify would fetch them again).
		end = min(end, c.hashed.Load()+c.window)
		if end <= front {
			return sequential
		}
	}
	if c.streamRun(front, end, run) {
		return sequential
	}
	missing := int64(0)
	c.mu.Lock()
	for i := front + 1; i <= end; i++ {
		if _, ok := c.blocks[i]; !ok {
			missing++
		}
	}
	c.mu.Unlock()
	if missing*2 >= ahead || (end == c.nblocks-1 && missing > 0) {
		c.getRange(front+1, end, true)
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
	return c.claimLocked(idx, piece, prefetch)
}

// claimLocked is claim with c.mu held.
func (c *Cache) claimLocked(idx int64, piece, prefetch bool) (*cblock, bool) {
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
		b.prefetch = true
	} else {
		c.c.misses.Add(1)
	}
	return b, true
}

// initialWindow is the read-ahead window, in blocks, before it grows.
const initialWindow = 8

// grow doubles the read-ahead window, up to c.window.
func (c *Cache) grow() {
	c.mu.Lock()
	if c.seqBytes/c.opts.BlockSize < 2*c.grown {
		// The run is still shorter than the window: read-ahead was
		// limited by the run's length, not by the window.
		c.mu.Unlock()
		return
	}
	c.grown = min(2*c.grown, c.window)
	c.mu.Unlock()
}

// getRange returns blocks [first, last], loading the missing ones with one
// request per run of consecutive missing blocks (at most c.maxReq blocks):
// fewer, larger requests for sequential readers.
func (c *Cache) getRange(first, last int64, prefetch bool) []*cblock {
	out := make([]*cblock, 0, last-first+1)
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
		if int64(len(run)) >= c.maxReq {
			flush()
		}
	}
	flush()
	return out
}

// eachVectorReader is implemented by devices that can say, during one
// vectored read, when each buffer is complete (HTTP: as the body streams
// by), so that the blocks of a large request are served as they arrive.
type eachVectorReader interface {
	ReadVecEach(bufs [][]byte, off int64, done func(i int)) error
}

// load fetches a run of consecutive units with one read (one HTTP range
// request: ReadVec) straight into the units' own buffers, at most Parallel
// reads at a time. Each unit is ready as soon as its bytes are in, not
// when the whole run is. The run's memory counts against MaxBytes from the
// moment it is allocated.
func (c *Cache) load(run []*cblock) {
	select {
	case c.sem <- struct{}{}:
	case <-c.ctx.Done():
		for _, b := range run {
			c.finish(b, nil, 0, errSourceClosed)
		}
		return
	}
	u := c.unit(run[0].piece)
	start := run[0].idx * u
	end := min((run[len(run)-1].idx+1)*u, c.size)
	// Reserve first: the blocks evicted to make room give their buffers
	// to this run, instead of the run's fresh memory adding to theirs.
	c.reserve(end - start)
	bufs := make([][]byte, len(run))
	for i, b := range run {
		n := min((b.idx+1)*u, end) - b.idx*u
		if b.piece {
			bufs[i] = make([]byte, n)
		} else {
			bufs[i] = c.allocBlock(n)
		}
	}
	streaming := new(atomic.Bool)
	c.mu.Lock()
	for _, b := range run {
		b.streaming = streaming
	}
	c.mu.Unlock()
	finished := 0
	var err error
	if er, ok := c.d.(eachVectorReader); ok {
		err = er.ReadVecEach(bufs, start, func(i int) {
			streaming.Store(true)
			c.finish(run[i], bufs[i], int64(len(bufs[i])), nil)
			finished = i + 1
		})
	} else {
		err = blockdev.ReadVec(c.d, bufs, start)
		if err == nil {
			for i, b := range run {
				c.finish(b, bufs[i], int64(len(bufs[i])), nil)
			}
			finished = len(run)
		}
	}
	<-c.sem
	if err == nil && finished < len(run) {
		err = fmt.Errorf("read of %d bytes at %d ended after %d of %d units", end-start, start, finished, len(run))
	}
	for i := finished; i < len(run); i++ {
		c.finish(run[i], nil, int64(len(bufs[i])), err)
		if !run[i].piece {
			c.recycle(bufs[i])
		}
	}
}

// reserve counts n bytes being fetched against MaxBytes, evicting the
// least recently used blocks to make room.
func (c *Cache) reserve(n int64) {
	c.mu.Lock()
	c.used += n
	c.evictLocked(0)
	c.mu.Unlock()
}

// evictLocked drops least recently used units until the memory bound
// holds, keeping at least keep of them (the one just loaded). c.mu is held.
func (c *Cache) evictLocked(keep int) {
	for c.used > c.opts.MaxBytes && c.lru.Len() > keep {
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
	c.fresh.Add(1)
	return make([]byte, n, c.opts.BlockSize)
}

// recycle keeps a block buffer for reuse. c.mu must not be held.
func (c *Cache) recycle(b []byte) {
	c.mu.Lock()
	c.recycleLocked(b)
	c.mu.Unlock()
}

func (c *Cache) recycleLocked(b []byte) {
	// Spare buffers are not counted in c.used: at most a quarter of
	// MaxBytes of them (one largest request) are kept.
	if int64(cap(b)) == c.opts.BlockSize && int64(len(c.free)) < max(1, c.opts.MaxBytes/4/c.opts.BlockSize) {
		c.free = append(c.free, b)
	}
}

// releaseRead ends a read's use of its units. A sequential run (readEnd
// >= 0: the block after the read) will not come back to the blocks it has
// read past, so they are dropped and their buffers reused instead of the
// cache growing to MaxBytes of stale data (drop-behind); a block the
// checksum has not taken in yet is marked consumed instead, and
// advanceVerify drops it once hashed. The parallel reads of one run (cat's
// workers, the kernel's FUSE reads) arrive out of order, so a block is
// dropped only once the run has read dropMargin blocks past it: dropping
// it as soon as one read reached its end refetched it for a slower read of
// its start.
func (c *Cache) releaseRead(units []*cblock, readEnd int64) {
	if readEnd >= 0 {
		c.mu.Lock()
		hashed := int64(1<<63 - 1)
		if c.vhash != nil {
			hashed = c.hashed.Load()
		}
		upTo := readEnd - c.dropMargin
		for i := max(c.dropNext, upTo-2*c.window-1); i < upTo; i++ { // bounded work per read
			if b, ok := c.blocks[i]; ok {
				if i < hashed {
					c.dropLocked(b)
				} else {
					b.consumed = true
				}
			}
		}
		c.dropNext = max(c.dropNext, upTo)
		c.mu.Unlock()
	}
	c.release(units)
}

// releaseHashed ends the hasher's use of b, dropping it if its sequential
// reader is done with it.
func (c *Cache) releaseHashed(b *cblock) {
	c.mu.Lock()
	if b.consumed {
		c.dropLocked(b)
	}
	c.mu.Unlock()
	c.release([]*cblock{b})
}

// dropLocked removes b from the cache; its buffer is reused now if no
// reader holds it, else once the last one is done. c.mu is held.
func (c *Cache) dropLocked(b *cblock) {
	if b.elem != nil && c.blocks[b.idx] == b {
		c.lru.Remove(b.elem)
		b.elem = nil
		delete(c.blocks, b.idx)
		c.used -= int64(len(b.data))
		b.evicted = true
		if b.refs == 0 && !b.piece && b.data != nil {
			c.recycleLocked(b.data)
			b.data = nil
		}
	}
}

// release ends the readers' use of units: an evicted block whose last
// reader is done gives its buffer back.
func (c *Cache) release(units []*cblock) {
	c.mu.Lock()
	for _, b := range units {
		b.refs--
		if b.refs == 0 && b.evicted && !b.piece && b.data != nil {
			c.recycleLocked(b.data)
			b.data = nil
		}
	}
	c.mu.Unlock()
}

// finish ends the fetch of b: data (reserved bytes long, counted in
// c.used since reserve) or err. A unit that was dropped meanwhile (Close)
// gives its reservation back at once.
func (c *Cache) finish(b *cblock, data []byte, reserved int64, err error) {
	c.settle(b, data, reserved, err)
	if err == nil && !b.piece && c.vhash != nil {
		c.advanceVerify()
	}
}

// settle is finish without hashing.
func (c *Cache) settle(b *cblock, data []byte, reserved int64, err error) {
	c.mu.Lock()
	m := c.mapFor(b.piece)
	switch {
	case err != nil:
		b.err = err
		c.used -= reserved
		if m[b.idx] == b {
			delete(m, b.idx) // not cached: the next read retries
		}
	case m[b.idx] == b:
		b.data = data
		b.elem = c.lru.PushFront(b)
		c.evictLocked(1)
	default:
		b.data = data
		b.evicted = true
		c.used -= reserved
	}
	c.mu.Unlock()
	close(b.ready)
}

// finishStreamed is finish for a block a stream filled: the hash runs on
// another goroutine, so that the stream goes on reading the network
// meanwhile.
func (c *Cache) finishStreamed(b *cblock, data []byte) {
	c.settle(b, data, int64(len(data)), nil)
	if c.vhash != nil {
		go c.advanceVerify()
	}
}

// advanceVerify hashes loaded blocks in order from vnext on, unless
// another goroutine is hashing: that one looks again before it stops
// (vkick), or the block loaded meanwhile would wait for the next one, and
// a reader waiting for the hash (awaitHash) with it.
func (c *Cache) advanceVerify() {
	c.vkick.Store(true)
	if !c.vmu.TryLock() {
		return
	}
	for {
		c.vkick.Store(false)
		c.hashLoaded()
		c.vmu.Unlock()
		if !c.vkick.Load() || !c.vmu.TryLock() {
			return
		}
	}
}

// hashLoaded hashes the loaded blocks from vnext on. c.vmu is held.
func (c *Cache) hashLoaded() {
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
		c.vnext++
		c.hashed.Store(c.vnext)
		c.releaseHashed(b)
		c.signalHash()
	}
}

// continuesRun reports whether a read at off continues the sequential run
// (as readAhead will judge it).
func (c *Cache) continuesRun(off int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seqBytes >= 2*c.opts.BlockSize && c.inRunLocked(off)
}

// inRunLocked reports whether a read at off lies within the current run:
// near its end, or behind it by as much as the run's window (parallel
// readers, cat's workers or the kernel's read-ahead, wait on large
// requests in turn) or, when the run is hashed, the hash's lag (they wait
// for the hash in turn: a worker that fell a few chunks behind while the
// others went on started a new run, which then did not wait for the hash).
// c.mu is held.
func (c *Cache) inRunLocked(off int64) bool {
	behind := max(c.near, min(c.seqBytes, c.grown*c.opts.BlockSize))
	if c.vhash != nil {
		behind = max(behind, min(c.seqBytes, c.hashLag*c.opts.BlockSize))
	}
	return off >= c.lastEnd-behind && off <= c.lastEnd+c.near
}

// awaitHash holds a sequential reader of blocks up to last until the hash
// is no more than hashLag blocks behind them. The reader is faster than
// the hash when the network is (sha512 runs at ~0.7 GB/s a core, AES-XTS
// at several); unhashed blocks must stay cached, so without this wait the
// LRU would evict blocks the hash still needs once the lag exceeded the
// cache, and Verify would fetch them again. The lag is short: a reader
// that runs further ahead gains nothing (the hash sets the pace), and
// each block of lag is a buffer held, taken fresh from the kernel (a lag
// of a whole window made a 512 MiB cat hold 130 MiB and spend a third of
// its system time faulting it in). The blocks the hash waits for
// are loaded or loading (readAhead fetches those the reads skipped); the
// wait still gives up after a while rather than trust that.
func (c *Cache) awaitHash(last int64) {
	deadline := time.Now().Add(hashWait)
	for last > c.hashed.Load()+c.hashLag {
		c.hmu.Lock()
		if c.hashMoved == nil {
			c.hashMoved = make(chan struct{})
		}
		moved := c.hashMoved
		c.hmu.Unlock()
		if last <= c.hashed.Load()+c.hashLag {
			return
		}
		wait := time.Until(deadline)
		if wait <= 0 {
			return
		}
		t := time.NewTimer(wait)
		select {
		case <-moved:
			t.Stop()
			deadline = time.Now().Add(hashWait)
		case <-t.C:
			return
		case <-c.ctx.Done():
			t.Stop()
			return
		}
	}
}

// hashWait bounds how long a reader waits for a hash that does not move.
const hashWait = 2 * time.Second

// hashLagBytes is how far a sequential reader may run ahead of the hash
// (awaitHash), at most a window.
const hashLagBytes = 16 << 20

func (c *Cache) signalHash() {
	c.hmu.Lock()
	if c.hashMoved != nil {
		close(c.hashMoved)
		c.hashMoved = nil
	}
	c.hmu.Unlock()
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
		// What the reads left unhashed is fetched in runs of up to
		// maxReq blocks, not block by block.
		units := c.getRange(c.vnext, min(c.vnext+c.maxReq, c.nblocks)-1, false)
		for i, b := range units {
			var err error
			select {
			case <-b.ready:
				err = b.err
			case <-ctx.Done():
				err = ctx.Err()
			}
			if errors.Is(err, errStreamStopped) {
				c.release(units[i:])
				break // fetch the rest again
			}
			if err != nil {
				c.release(units[i:])
				return err
			}
			c.vhash.Write(b.data)
			c.release([]*cblock{b})
			c.vnext++
			c.hashed.Store(c.vnext)
			c.signalHash()
		}
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
