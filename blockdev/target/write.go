package target

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
	"time"

	"github.com/imgfs/imgfs/blockdev"
)

// Kind is how a path is written.
type Kind int

// Kinds of output.
const (
	// KindStdout is standard output, written in order.
	KindStdout Kind = iota
	// KindFile is a regular file or a new path: written sparsely under a
	// temporary name and renamed into place when complete.
	KindFile
	// KindBlockDevice is an existing block device, written in place.
	KindBlockDevice
	// KindStream is a pipe (FIFO) or /dev/null, written in order.
	KindStream
)

// Accepted says what an output path may be, for error messages.
const Accepted = "a regular file (written atomically), a block device (written in place), a pipe, /dev/null, or - for stdout"

// devNull is the device number of /dev/null (major 1, minor 3).
const devNull = 1<<8 | 3

// Classify says how path ("" or "-" is stdout) is written, or why it is
// refused (ErrNotTarget: a directory, a socket, a character device other
// than /dev/null).
func Classify(path string) (Kind, error) {
	if path == "" || path == "-" {
		return KindStdout, nil
	}
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return KindFile, nil
	}
	if err != nil {
		return 0, err
	}
	m := fi.Mode()
	switch {
	case m.IsRegular():
		return KindFile, nil
	case m&fs.ModeNamedPipe != 0:
		return KindStream, nil
	case m&fs.ModeDevice != 0 && m&fs.ModeCharDevice == 0:
		return KindBlockDevice, nil
	case m&fs.ModeCharDevice != 0 && isDevNull(fi):
		return KindStream, nil
	}
	what := "a " + kindName(m)
	return 0, fmt.Errorf("%s is %s; -o takes %s: %w", path, what, Accepted, ErrNotTarget)
}

func isDevNull(fi fs.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && uint64(st.Rdev) == devNull // Rdev is uint32 on some platforms
}

func kindName(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeSymlink != 0:
		return "symbolic link"
	}
	return "special file (" + m.Type().String() + ")"
}

// Write writes d to path as Classify says: stdout and streams in order, a
// regular file atomically (WriteFile, holes sparse), a block device in
// place (OpenBlockDevice, WriteVolume). opts.Check runs before a file is
// renamed into place; opts.Verify needs a file or a block device.
func Write(ctx context.Context, path string, d blockdev.Device, opts Options) (Stats, error) {
	kind, err := Classify(path)
	if err != nil {
		return Stats{}, err
	}
	if opts.Verify && (kind == KindStdout || kind == KindStream) {
		return Stats{}, fmt.Errorf("verify: %s cannot be read back; -o must be a file or a block device", nameOf(path))
	}
	if opts.TargetIsZero && kind != KindBlockDevice {
		return Stats{}, fmt.Errorf("--target-is-zero: %s is not a block device (files are written sparse anyway)", nameOf(path))
	}
	switch kind {
	case KindBlockDevice:
		b, err := OpenBlockDevice(path)
		if err != nil {
			return Stats{}, err
		}
		st, err := WriteVolume(ctx, path, b, d, opts)
		if cerr := b.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("%s: %w", path, cerr)
		}
		return st, err
	case KindFile:
		var st Stats
		err := WriteFile(path, func(f *os.File) error {
			var err error
			st, err = copyStream(ctx, f, d, true, opts)
			return err
		})
		return st, err
	}
	out := os.Stdout
	if kind == KindStream {
		if out, err = os.OpenFile(path, os.O_WRONLY, 0); err != nil {
			return Stats{}, err
		}
		defer out.Close()
	}
	st, err := copyStream(ctx, out, d, false, opts)
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("%s: %s: %w", nameOf(path), howFar(ctx, st.Written, d.Size(), "the output is incomplete"), err)
	}
	if err == nil && kind == KindStream {
		err = out.Close()
	}
	return st, err
}

func nameOf(path string) string {
	if path == "" || path == "-" {
		return "stdout"
	}
	return path
}

// copyStream is Stream with opts: it hashes what it writes and, for a
// sparse file, reads it back when opts.Verify is set, then runs opts.Check.
func copyStream(ctx context.Context, out *os.File, d blockdev.Device, sparse bool, opts Options) (Stats, error) {
	start := time.Now()
	c := newHashingCopy(opts.Verify)
	err := blockdev.ReadOrdered(ctx, d, blockdev.OrderedOptions{ChunkSize: Chunk, ZeroIsHole: sparse},
		func(off int64, n int, data []byte) error {
			var err error
			switch {
			case data == nil && sparse:
				c.st.Holes += int64(n)
			case data == nil:
				_, err = out.Write(c.zeroBuf(n))
			case sparse:
				_, err = out.WriteAt(data[:n], off)
			default:
				_, err = out.Write(data[:n])
			}
			if err != nil {
				return err
			}
			c.hashed(n, data)
			c.st.Written += int64(n)
			if opts.Progress != nil {
				opts.Progress(int64(n))
			}
			return nil
		})
	if err == nil && sparse {
		err = out.Truncate(d.Size())
	}
	if err == nil && c.h != nil {
		err = verifyReadBack(ctx, out, d.Size(), c.h.Sum(nil))
	}
	if err == nil && opts.Check != nil {
		err = opts.Check(ctx)
	}
	c.st.Elapsed = time.Since(start)
	return c.st, err
}
