// Package target writes a Device to where a command's output goes: a
// stream (stdout, a pipe) in order, or a regular file that is written
// sparsely under a temporary name and renamed into place only when
// complete, so a failed or interrupted run leaves nothing behind.
package target

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/imgfs/imgfs/blockdev"
)

// Chunk is the unit of the copy pipeline: large enough that the layers
// below decrypt in parallel and fetch in few requests, small enough to
// keep memory bounded (Chunk × queue depth).
const Chunk = 4 << 20

// Stats describe a finished copy.
type Stats struct {
	Written, Holes int64 // bytes of the device, and of them the holes skipped
	Elapsed        time.Duration
}

// Rate is bytes written per second.
func (s Stats) Rate() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Written) / s.Elapsed.Seconds()
}

// Stream copies d to out in order while several goroutines read ahead
// (fetch, decrypt and re-encrypt overlap; blockdev.ReadOrdered). When
// sparse is set, out is a fresh regular file: holes (from the device's data
// map, or all-zero chunks) are skipped and the file is truncated to d's
// size. progress, if not nil, is told of every byte done.
func Stream(ctx context.Context, out *os.File, d blockdev.Device, sparse bool, progress func(int64)) (Stats, error) {
	return copyStream(ctx, out, d, sparse, Options{Progress: progress})
}

// WriteFile creates a temporary file (mode 0600) beside path, lets fill
// write it, syncs it and renames it to path on success; on failure it
// removes it.
func WriteFile(path string, fill func(*os.File) error) (err error) {
	defer func() {
		if errors.Is(err, context.Canceled) {
			err = fmt.Errorf("interrupted, %s not written: %w", path, err)
		}
	}()
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".imgfs-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err = fill(tmp); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// WriteDevice writes d to the file path atomically (see WriteFile),
// leaving holes sparse.
func WriteDevice(ctx context.Context, path string, d blockdev.Device, progress func(int64)) (Stats, error) {
	var st Stats
	err := WriteFile(path, func(f *os.File) error {
		var err error
		st, err = Stream(ctx, f, d, true, progress)
		return err
	})
	return st, err
}
