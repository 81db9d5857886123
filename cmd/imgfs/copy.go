package main

import (
	"context"
	"os"
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

// streamDevice copies d to out in order while several goroutines read
// ahead (fetch, decrypt and re-encrypt overlap; blockdev.ReadOrdered). When
// sparse is set, out is a fresh regular file: holes (from the device's data
// map, or all-zero chunks) are skipped and the file is truncated to d's
// size.
func streamDevice(ctx context.Context, out *os.File, d blockdev.Device, sparse bool, prog *progress) (copyStats, error) {
	start := time.Now()
	var st copyStats
	var zeros []byte
	err := blockdev.ReadOrdered(ctx, d, blockdev.OrderedOptions{ChunkSize: streamChunk, ZeroIsHole: sparse},
		func(off int64, n int, data []byte) error {
			var err error
			switch {
			case data == nil && sparse:
				st.holes += int64(n)
			case data == nil:
				if zeros == nil {
					zeros = make([]byte, streamChunk)
				}
				_, err = out.Write(zeros[:n])
			case sparse:
				_, err = out.WriteAt(data, off)
			default:
				_, err = out.Write(data)
			}
			if err != nil {
				return err
			}
			prog.Add(int64(n))
			st.written += int64(n)
			return nil
		})
	if err == nil && sparse {
		err = out.Truncate(d.Size())
	}
	st.elapsed = time.Since(start)
	return st, err
}
