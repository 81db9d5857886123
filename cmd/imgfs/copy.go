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

// copyChunk is the unit of the cat pipeline: large enough that the layers
// below decrypt in parallel and fetch in few requests, small enough to keep
// memory bounded (copyChunk × queue depth).
const copyChunk = 4 << 20

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

type chunk struct {
	off  int64 // offset in the device
	n    int
	buf  []byte
	hole bool
	err  error
	done chan struct{}
}

// copyRange writes [off, off+length) of d to out. Reads run ahead of the
// writer on several goroutines so that fetching, decryption and writing
// overlap; chunks are written strictly in order. When sparse is set, out is
// a regular file: holes (from the device's data map, or all-zero chunks) are
// skipped with WriteAt offsets and the file is truncated to its length.
func copyRange(ctx context.Context, out *os.File, d blockdev.Device, off, length int64, sparse bool) (copyStats, error) {
	start := time.Now()
	var st copyStats
	workers := max(2, runtime.GOMAXPROCS(0))
	depth := workers + 2
	mapper, _ := d.(blockdev.Mapper)

	pool := sync.Pool{New: func() any { return new([copyChunk]byte) }}
	var hint holeHint
	work := make(chan *chunk, depth)
	ordered := make(chan *chunk, depth)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ch := range work {
				fillChunk(ch, d, mapper, &hint, &pool)
				close(ch.done)
			}
		}()
	}
	go func() {
		defer close(ordered)
		defer close(work)
		for pos := int64(0); pos < length; {
			n := int(min(int64(copyChunk), length-pos))
			ch := &chunk{off: off + pos, n: n, done: make(chan struct{})}
			select {
			case ordered <- ch:
			case <-ctx.Done():
				return
			}
			work <- ch
			pos += int64(n)
		}
	}()

	var zeros []byte
	var err error
	pos := int64(0)
	for ch := range ordered {
		<-ch.done
		if err == nil {
			err = ch.err
		}
		if err == nil {
			switch {
			case ch.hole && sparse:
				st.holes += int64(ch.n)
			case ch.hole:
				if zeros == nil {
					zeros = make([]byte, copyChunk)
				}
				_, err = out.Write(zeros[:ch.n])
			case sparse:
				_, err = out.WriteAt(ch.buf[:ch.n], pos)
			default:
				_, err = out.Write(ch.buf[:ch.n])
			}
			if err == nil {
				st.written += int64(ch.n)
			}
		}
		if ch.buf != nil {
			pool.Put((*[copyChunk]byte)(ch.buf))
		}
		pos += int64(ch.n)
		if err != nil {
			cancel()
		}
	}
	wg.Wait()
	if err == nil && pos < length {
		// The producer stopped early: the caller's context was cancelled.
		err = fmt.Errorf("copy stopped at %d of %d bytes: %w", pos, length, context.Cause(ctx))
	}
	if err == nil && sparse {
		err = out.Truncate(length)
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

// fillChunk reads one chunk, or marks it a hole without reading.
func fillChunk(ch *chunk, d blockdev.Device, mapper blockdev.Mapper, hint *holeHint, pool *sync.Pool) {
	end := ch.off + int64(ch.n)
	if mapper != nil {
		if hint.covers(ch.off, end) {
			ch.hole = true
			return
		}
		next, err := mapper.NextData(ch.off)
		if errors.Is(err, io.EOF) {
			next = math.MaxInt64
		}
		if errors.Is(err, io.EOF) || (err == nil && next >= end) {
			hint.set(ch.off, next)
			ch.hole = true
			return
		}
	}
	ch.buf = pool.Get().(*[copyChunk]byte)[:]
	if err := blockdev.ReadFull(d, ch.buf[:ch.n], ch.off); err != nil {
		ch.err = err
		return
	}
	if allZero(ch.buf[:ch.n]) {
		ch.hole = true
	}
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
