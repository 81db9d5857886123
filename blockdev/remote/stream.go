package remote

import (
	"context"
	"errors"
	"sync/atomic"
	"time"
)

// streamer is implemented by devices that can read the rest of the object
// from an offset with one request, asking for each unit's memory only as
// its bytes come (HTTP in range mode: one open-ended `Range: bytes=N-`).
type streamer interface {
	StreamUnits(ctx context.Context, off, unit int64, next func(i int64) []byte, done func(i int64)) error
}

// Streams of long sequential runs. A run that has read streamAfter blocks
// in order is served by one streaming request from the block after its
// front to the end of the object, read as far as the reader goes (the
// read-ahead window past the reader's furthest block, as with requests)
// and ended when the reader stops for streamIdle or a run elsewhere takes
// over. The server's cost per request and the round trip are then paid
// once per run, not once per request; and the stream asks for block
// memory only as bytes arrive, reusing the buffers the reader drops
// behind it, so a fast server costs no more memory than a slow one.
const (
	streamAfter = 4
	// streamAhead is how many blocks past the reader's front a stream may
	// fetch once the run is long enough: enough to keep a TCP window of
	// a fast, distant server open while the reader catches up.
	streamAhead = 16

	// streamFailures is how many streams may fail (not stop) before the
	// cache reads by ranges only.
	streamFailures = 3
)

// streamIdle: a stream whose reader has not moved on for this long ends.
const streamIdle = 5 * time.Second

// stream is the state of the streaming request of a run; the fields are
// guarded by the cache's mu.
type stream struct {
	cancel context.CancelFunc
	start  int64 // the first block
	// pos is the next block the stream will read; queue holds the blocks
	// [pos, pos+len(queue)) it has claimed (nil for a block somebody else
	// had claimed first: its bytes are read and dropped).
	pos   int64
	queue []*cblock
	// limit: blocks before it may be read now.
	limit   int64
	stopped bool
	wake    chan struct{}
	flag    *atomic.Bool // the blocks' streaming flag: bytes are arriving
}

// stopStreamLocked ends s: the blocks it claimed and has not started to
// read are given back at once (their readers fetch them by ranges, and a
// new stream may claim them); the one it is reading, it gives back itself.
func (c *Cache) stopStreamLocked(s *stream) {
	s.stopped = true
	s.poke()
	if len(s.queue) > 1 {
		for _, b := range s.queue[1:] {
			if b != nil {
				b.err = errStreamStopped
				if c.blocks[b.idx] == b {
					delete(c.blocks, b.idx)
				}
				close(b.ready)
			}
		}
		s.queue = s.queue[:1]
	}
	if c.st == s {
		c.st = nil
	}
}

// claimed returns the first block the stream has not claimed.
func (s *stream) claimed() int64 { return s.pos + int64(len(s.queue)) }

func (s *stream) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// streamClaim has the running stream claim the blocks up to last when a
// read reaches past its position and starts no further past its claimed
// frontier than a run's tolerance (parallel readers of consecutive chunks
// arrive out of order), so that the reader waits for the stream instead
// of fetching those blocks itself, which the stream would then read again.
// A read further away is not the stream's: a random reader must not make
// it fetch everything in between.
func (c *Cache) streamClaim(first, last int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.st
	if s == nil || s.stopped || last < s.pos || first > s.claimed()+c.near/c.opts.BlockSize {
		return
	}
	c.extendStreamLocked(s, last+1)
}

// extendStreamLocked lets s read the blocks before limit, claiming them.
func (c *Cache) extendStreamLocked(s *stream, limit int64) {
	limit = min(limit, c.nblocks)
	for i := s.claimed(); i < limit; i++ {
		b, created := c.claimLocked(i, false, true)
		if !created {
			b = nil
		} else {
			b.streaming = s.flag
		}
		s.queue = append(s.queue, b)
	}
	if limit > s.limit {
		s.limit = limit
		s.poke()
	}
}

// streamRun is readAhead's part for a sequential run whose front block is
// front and whose read-ahead may reach end (inclusive): it extends the
// run's stream, or starts one once the run is long enough, and reports
// whether a stream serves the run (then no range requests are needed).
func (c *Cache) streamRun(front, end, runBlocks int64) bool {
	sd, ok := c.d.(streamer)
	if !ok {
		return false
	}
	limit := max(end+1, front+1+min(streamAhead, max(1, c.window/2), runBlocks))
	if c.vhash != nil {
		// As for requests: no further than a window past the hash.
		limit = min(limit, c.hashed.Load()+c.window+1)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.streamFails >= streamFailures {
		return false
	}
	if s := c.st; s != nil && !s.stopped {
		// The reader is behind the stream by up to its read-ahead.
		if front+1 >= s.start-seqTolerance && front+1 <= s.claimed()+seqTolerance {
			c.extendStreamLocked(s, limit)
			return true
		}
		if runBlocks < streamAfter {
			return false
		}
		c.stopStreamLocked(s) // a run elsewhere takes over
	}
	if runBlocks < streamAfter {
		return false
	}
	// Start past every block claimed near the front (parallel readers
	// claim their chunks out of order): the stream must not reach a block
	// another request is loading, whose bytes it would read again.
	start := front + 1
	for i := front + 1; i < min(c.nblocks, front+1+c.window); i++ {
		if _, ok := c.blocks[i]; ok {
			start = i + 1
		}
	}
	if start >= c.nblocks {
		return false
	}
	ctx, cancel := context.WithCancel(c.ctx)
	s := &stream{cancel: cancel, start: start, pos: start, limit: start, wake: make(chan struct{}, 1), flag: new(atomic.Bool)}
	c.st = s
	c.extendStreamLocked(s, limit)
	go c.runStream(ctx, sd, s)
	return true
}

// runStream reads s until the object ends, the reader stops or goes
// elsewhere, or the request fails; blocks it claimed and did not fill are
// then given back (their readers fetch them by ranges).
func (c *Cache) runStream(ctx context.Context, sd streamer, s *stream) {
	defer s.cancel()
	bs := c.opts.BlockSize
	start := s.pos
	var cur *cblock
	var curBuf []byte
	var scratch []byte
	idle := time.NewTimer(c.streamIdle)
	defer idle.Stop()
	next := func(i int64) []byte {
		idx := start + i
		c.mu.Lock()
		for idx >= s.limit && !s.stopped {
			c.mu.Unlock()
			idle.Reset(c.streamIdle)
			select {
			case <-s.wake:
			case <-idle.C:
				c.mu.Lock()
				c.stopStreamLocked(s)
				c.mu.Unlock()
			case <-ctx.Done():
				c.mu.Lock()
				c.stopStreamLocked(s)
				c.mu.Unlock()
			}
			c.mu.Lock()
		}
		if s.stopped || idx != s.pos || len(s.queue) == 0 {
			c.mu.Unlock()
			return nil
		}
		b := s.queue[0]
		c.mu.Unlock()
		n := min(bs, c.size-idx*bs)
		if b == nil {
			if scratch == nil {
				scratch = make([]byte, bs)
			}
			cur, curBuf = nil, nil
			return scratch[:n]
		}
		cur, curBuf = b, c.allocBlock(n)
		c.reserve(n)
		return curBuf
	}
	done := func(i int64) {
		s.flag.Store(true)
		c.mu.Lock()
		s.pos++
		s.queue = s.queue[1:]
		c.mu.Unlock()
		if cur != nil {
			c.finishStreamed(cur, curBuf)
			cur, curBuf = nil, nil
		}
	}
	err := sd.StreamUnits(ctx, start*bs, bs, next, done)
	c.mu.Lock()
	if err != nil && !errors.Is(err, errStreamStopped) && ctx.Err() == nil {
		c.streamFails++
		if errors.Is(err, errNoStream) {
			c.streamFails = streamFailures
		}
	}
	s.stopped = true
	rest := s.queue
	s.queue = nil
	if c.st == s {
		c.st = nil
	}
	c.mu.Unlock()
	if cur != nil {
		c.finish(cur, nil, int64(len(curBuf)), errStreamStopped)
		c.recycle(curBuf)
		rest = rest[1:]
	}
	for _, b := range rest {
		if b != nil {
			c.finish(b, nil, 0, errStreamStopped)
		}
	}
}
