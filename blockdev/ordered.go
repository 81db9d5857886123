package blockdev

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"runtime"
	"sync"
)

// DefaultOrderedChunk is ReadOrdered's default chunk size.
const DefaultOrderedChunk = 4 << 20

// OrderedOptions configure ReadOrdered. Zero values take the defaults.
type OrderedOptions struct {
	// ChunkSize is the size of each chunk (the last one may be shorter);
	// default DefaultOrderedChunk.
	ChunkSize int64
	// Workers is how many chunks are read at once; default
	// max(2, GOMAXPROCS).
	Workers int
	// ZeroIsHole reports a chunk that reads as all zeros as a hole too.
	ZeroIsHole bool
}

// ReadOrdered reads d from start to end in chunks, several at a time (so
// fetching and decrypting overlap with the caller's work), and calls fn with
// each chunk in order. data holds the chunk's n bytes, with capacity for a
// whole chunk, or is nil for a hole: a range that d's data map (if d is a
// Mapper) says holds no data, found without reading it, or with ZeroIsHole a
// chunk that reads as zeros. data is valid only during the call. At most
// Workers+3 chunk buffers exist; they are reused, not reallocated (fresh
// memory is slow to fault in on the VMs imgfs runs on), and zeroed before
// ReadOrdered returns so that plaintext does not linger. The first error,
// in order, from a read or from fn stops the reading and is returned.
func ReadOrdered(ctx context.Context, d Device, opts OrderedOptions, fn func(off int64, n int, data []byte) error) error {
	chunk := opts.ChunkSize
	if chunk <= 0 {
		chunk = DefaultOrderedChunk
	}
	if chunk > math.MaxInt32 {
		return fmt.Errorf("ordered read: chunk size %d too large", chunk)
	}
	workers := opts.Workers
	if workers <= 0 {
		workers = max(2, runtime.GOMAXPROCS(0))
	}
	size := d.Size()
	mapper, _ := d.(Mapper)
	bufs := chunkBufs{size: int(chunk)}
	defer bufs.zero()
	var hint holeHint
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	type piece struct {
		off  int64
		n    int
		buf  []byte // nil for a hole
		err  error
		done chan struct{}
	}
	work := make(chan *piece, workers+2)
	ordered := make(chan *piece, workers+2)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for p := range work {
				p.buf, p.err = readPiece(d, mapper, &hint, &bufs, p.off, p.n, opts.ZeroIsHole)
				close(p.done)
			}
		})
	}
	go func() {
		defer close(ordered)
		defer close(work)
		for off := int64(0); off < size; {
			n := int(min(chunk, size-off))
			p := &piece{off: off, n: n, done: make(chan struct{})}
			select {
			case ordered <- p:
			case <-ctx.Done():
				return
			}
			work <- p
			off += int64(n)
		}
	}()

	var err error
	var done int64
	for p := range ordered {
		<-p.done
		if err == nil {
			err = p.err
		}
		if err == nil {
			err = ctx.Err()
		}
		if err == nil {
			var data []byte
			if p.buf != nil {
				data = p.buf[:p.n]
			}
			err = fn(p.off, p.n, data)
		}
		if p.buf != nil {
			bufs.put(p.buf)
		}
		if err != nil {
			cancel()
		}
		done += int64(p.n)
	}
	wg.Wait()
	if err == nil && done != size {
		// The producer stopped early: the caller's context was cancelled.
		if err = ctx.Err(); err == nil {
			err = fmt.Errorf("ordered read: %d of %d bytes", done, size)
		}
	}
	return err
}

// readPiece reads n bytes at off into a chunk buffer, or returns a nil
// buffer for a hole.
func readPiece(d Device, mapper Mapper, hint *holeHint, bufs *chunkBufs, off int64, n int, zeroIsHole bool) ([]byte, error) {
	end := off + int64(n)
	if mapper != nil {
		if hint.covers(off, end) {
			return nil, nil
		}
		// An error means the map could not answer, perhaps because of
		// damage past this chunk (a qcow2 L2 table checked when first
		// read): then the chunk is read, and fails only if it is damaged
		// itself.
		next, err := mapper.NextData(off)
		if errors.Is(err, io.EOF) {
			next, err = math.MaxInt64, nil
		}
		if err == nil && next >= end {
			hint.set(off, next)
			return nil, nil
		}
	}
	buf := bufs.get()
	if err := ReadFull(d, buf[:n], off); err != nil {
		bufs.put(buf)
		return nil, err
	}
	if zeroIsHole && AllZero(buf[:n]) {
		bufs.put(buf)
		return nil, nil
	}
	return buf, nil
}

// holeHint remembers the last answer of the data map: no data in
// [from, next). Without it every chunk of a long hole would scan the map to
// the hole's end again (quadratic: a 1 TiB sparse disk took many minutes).
type holeHint struct {
	mu         sync.Mutex
	from, next int64
}

func (h *holeHint) covers(off, end int64) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.from <= off && end <= h.next
}

func (h *holeHint) set(from, next int64) {
	h.mu.Lock()
	h.from, h.next = from, next
	h.mu.Unlock()
}

// chunkBufs is a fixed set of chunk buffers: made on first need, reused
// until the read ends, then zeroed once. A sync.Pool would lose them at
// every garbage collection, and zeroing each before reuse would cost a
// memset of every byte read.
type chunkBufs struct {
	size int
	mu   sync.Mutex
	free [][]byte
	all  [][]byte
}

func (c *chunkBufs) get() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if k := len(c.free); k > 0 {
		b := c.free[k-1]
		c.free = c.free[:k-1]
		return b
	}
	b := make([]byte, c.size)
	c.all = append(c.all, b)
	return b
}

func (c *chunkBufs) put(b []byte) {
	c.mu.Lock()
	c.free = append(c.free, b[:c.size])
	c.mu.Unlock()
}

// zero clears every buffer; no reader may still use one.
func (c *chunkBufs) zero() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, b := range c.all {
		clear(b)
	}
}

// AllZero reports whether b holds only zero bytes.
func AllZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
