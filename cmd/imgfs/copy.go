package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/imgfs/imgfs/blockdev"
)

// streamChunk is the unit of the copy pipeline: large enough that the
// layers below decrypt in parallel and fetch in few requests, small enough
// to keep memory bounded (streamChunk × queue depth).
const streamChunk = 4 << 20

type copyStats struct {
	written, holes int64
	elapsed        time.Duration
}

func (s copyStats) rate() float64 {
	if s.elapsed <= 0 {
		return 0
	}
	return float64(s.written) / s.elapsed.Seconds()
}

// streamChunkBuf is a chunk buffer of the pipeline.
type streamChunkBuf = [streamChunk]byte

// chunkBufs is the pipeline's fixed set of chunk buffers: made on first
// need, reused until the copy ends, then zeroed once (plaintext must not
// linger). A sync.Pool would lose them at every garbage collection, and on
// the VMs imgfs runs on faulting in fresh memory costs more than the
// decryption; zeroing each buffer before reuse would cost a memset of
// every byte copied.
type chunkBufs struct {
	mu   sync.Mutex
	free []*streamChunkBuf
	all  []*streamChunkBuf
}

func (c *chunkBufs) get() *streamChunkBuf {
	c.mu.Lock()
	defer c.mu.Unlock()
	if k := len(c.free); k > 0 {
		b := c.free[k-1]
		c.free = c.free[:k-1]
		return b
	}
	b := new(streamChunkBuf)
	c.all = append(c.all, b)
	return b
}

func (c *chunkBufs) put(b *streamChunkBuf) {
	c.mu.Lock()
	c.free = append(c.free, b)
	c.mu.Unlock()
}

// zero clears every buffer; the pipeline must have stopped.
func (c *chunkBufs) zero() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, b := range c.all {
		clear(b[:])
	}
}

// piece is one chunk of the pipeline, filled by a worker.
type piece struct {
	off  int64
	n    int
	buf  *streamChunkBuf
	hole bool
	err  error
	done chan struct{}
}

// streamDevice copies d to out in order while several goroutines read
// ahead (fetch, decrypt and re-encrypt overlap). When sparse is set, out is
// a fresh regular file: holes (from the device's data map, or all-zero
// chunks) are skipped and the file is truncated to d's size. At most
// workers+3 chunk buffers exist; they are zeroed when the copy ends.
func streamDevice(ctx context.Context, out *os.File, d blockdev.Device, sparse bool, prog *progress) (copyStats, error) {
	start := time.Now()
	var st copyStats
	size := d.Size()
	workers := max(2, runtime.GOMAXPROCS(0))
	mapper, _ := d.(blockdev.Mapper)
	var bufs chunkBufs
	var hint holeHint
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	work := make(chan *piece, workers+2)
	ordered := make(chan *piece, workers+2)

	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for pc := range work {
				fillPiece(pc, d, mapper, &hint, &bufs)
				close(pc.done)
			}
		})
	}
	go func() {
		defer close(ordered)
		defer close(work)
		for off := int64(0); off < size; {
			n := int(min(streamChunk, size-off))
			pc := &piece{off: off, n: n, done: make(chan struct{})}
			select {
			case ordered <- pc:
			case <-ctx.Done():
				return
			}
			work <- pc
			off += int64(n)
		}
	}()

	var zeros []byte
	var err error
	var done int64
	for pc := range ordered {
		<-pc.done
		if err == nil {
			err = pc.err
		}
		if err == nil {
			err = ctx.Err()
		}
		if err == nil {
			switch {
			case pc.hole && sparse:
				st.holes += int64(pc.n)
			case pc.hole:
				if zeros == nil {
					zeros = make([]byte, streamChunk)
				}
				_, err = out.Write(zeros[:pc.n])
			case sparse:
				_, err = out.WriteAt(pc.buf[:pc.n], pc.off)
			default:
				_, err = out.Write(pc.buf[:pc.n])
			}
			if err == nil {
				prog.Add(int64(pc.n))
				st.written += int64(pc.n)
			}
		}
		if pc.buf != nil {
			bufs.put(pc.buf)
		}
		if err != nil {
			cancel()
		}
		done += int64(pc.n)
	}
	wg.Wait()
	bufs.zero()
	if err == nil && done != size {
		// The producer stopped early: the caller's context was cancelled.
		err = ctx.Err()
		if err == nil {
			err = fmt.Errorf("copied %d of %d bytes", done, size)
		}
	}
	if err == nil && sparse {
		err = out.Truncate(size)
	}
	st.elapsed = time.Since(start)
	return st, err
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

// fillPiece reads one chunk, or marks it a hole without reading.
func fillPiece(pc *piece, d blockdev.Device, mapper blockdev.Mapper, hint *holeHint, bufs *chunkBufs) {
	end := pc.off + int64(pc.n)
	if mapper != nil {
		if hint.covers(pc.off, end) {
			pc.hole = true
			return
		}
		next, err := mapper.NextData(pc.off)
		if errors.Is(err, io.EOF) {
			next = math.MaxInt64
		}
		if errors.Is(err, io.EOF) || (err == nil && next >= end) {
			hint.set(pc.off, next)
			pc.hole = true
			return
		}
	}
	pc.buf = bufs.get()
	if err := blockdev.ReadFull(d, pc.buf[:pc.n], pc.off); err != nil {
		pc.err = err
		return
	}
	pc.hole = allZero(pc.buf[:pc.n])
}

func allZero(b []byte) bool {
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
