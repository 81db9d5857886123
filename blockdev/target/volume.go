package target

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"time"

	"github.com/imgfs/imgfs/blockdev"
)

// Errors of writing into a volume.
var (
	// ErrTooSmall means the image does not fit the target; nothing was
	// written.
	ErrTooSmall = errors.New("the image does not fit the target")
	// ErrBusy means a block device is mounted or held open exclusively
	// by another program; nothing was written.
	ErrBusy = errors.New("the device is in use (mounted, mapped or opened exclusively)")
	// ErrVerify means the target read back differs from what was written.
	ErrVerify = errors.New("verification failed: the target read back differs from the image")
	// ErrNotTarget means a path is of a kind imgfs does not write to.
	ErrNotTarget = errors.New("not a usable output")
)

// Volume is a target written in place at offsets: a block device or an
// RBD image. It is never truncated or renamed.
type Volume interface {
	io.ReaderAt
	io.WriterAt
	// Size is the volume's size in bytes.
	Size() int64
	// Zero makes [off, off+n) read as zeros.
	Zero(off, n int64) error
	// Flush makes every write durable (and, for a block device, drops
	// the page cache so a read-back comes from the device).
	Flush() error
}

// Options say how a device is written out.
type Options struct {
	// Progress, if not nil, is told of every byte done (holes included).
	Progress func(int64)
	// TargetIsZero says a Volume reads as zeros already: holes and zero
	// runs are skipped instead of written as zeros.
	TargetIsZero bool
	// Verify reads the target back once written and compares its SHA-256
	// with that of the bytes streamed into it.
	Verify bool
	// Check, if set, runs once the whole device is written and before a
	// file is renamed into place or a volume is flushed (Glance's checksum
	// of the source); its error fails the write.
	Check func(context.Context) error
}

// hashingCopy is the state of a copy that may hash what it writes.
type hashingCopy struct {
	h     hash.Hash
	zeros []byte
	st    Stats
}

func newHashingCopy(verify bool) *hashingCopy {
	c := &hashingCopy{}
	if verify {
		c.h = sha256.New()
	}
	return c
}

// zeroBuf returns n zero bytes (n <= Chunk), allocated once.
func (c *hashingCopy) zeroBuf(n int) []byte {
	if c.zeros == nil {
		c.zeros = make([]byte, Chunk)
	}
	return c.zeros[:n]
}

// hashed records n bytes (zeros if data is nil) in the running hash.
func (c *hashingCopy) hashed(n int, data []byte) {
	if c.h == nil {
		return
	}
	if data == nil {
		data = c.zeroBuf(n)
	}
	c.h.Write(data[:n])
}

// WriteVolume writes d into v in place from offset 0. It fails with
// ErrTooSmall before writing anything if d does not fit. Holes and zero
// chunks are zeroed with v.Zero, or skipped with opts.TargetIsZero; v is
// flushed before WriteVolume returns nil. The bytes of v past d's size are
// left alone. An interrupted or failed write says how far it got.
func WriteVolume(ctx context.Context, name string, v Volume, d blockdev.Device, opts Options) (Stats, error) {
	size := d.Size()
	if vs := v.Size(); size > vs {
		return Stats{}, fmt.Errorf("%s: the image is %d bytes, the target only %d: %w", name, size, vs, ErrTooSmall)
	}
	start := time.Now()
	c := newHashingCopy(opts.Verify)
	err := blockdev.ReadOrdered(ctx, d, blockdev.OrderedOptions{ChunkSize: Chunk, ZeroIsHole: true},
		func(off int64, n int, data []byte) error {
			var err error
			switch {
			case data != nil:
				_, err = v.WriteAt(data[:n], off)
			case opts.TargetIsZero:
				c.st.Holes += int64(n)
			default:
				err = v.Zero(off, int64(n))
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
	if err == nil && opts.Check != nil {
		err = opts.Check(ctx)
	}
	if err == nil {
		if err = v.Flush(); err != nil {
			err = fmt.Errorf("flush: %w", err)
		}
	}
	if err == nil && c.h != nil {
		err = verifyReadBack(ctx, v, size, c.h.Sum(nil))
	}
	c.st.Elapsed = time.Since(start)
	if err != nil {
		state := "the target holds a partial image"
		if c.st.Written == size {
			state = "the target holds every byte, but they are not to be trusted"
		}
		return c.st, fmt.Errorf("%s: %s: %w", name, howFar(ctx, c.st.Written, size, state), err)
	}
	return c.st, nil
}

// howFar says how much of a copy was done when it stopped.
func howFar(ctx context.Context, done, total int64, state string) string {
	verb := "failed"
	if ctx.Err() != nil {
		verb = "interrupted"
	}
	pct := 100.0
	if total > 0 {
		pct = 100 * float64(done) / float64(total)
	}
	return fmt.Sprintf("%s after %d of %d bytes (%.1f%%); %s", verb, done, total, pct, state)
}

// verifyReadBack reads the first size bytes of r and compares their
// SHA-256 with want.
func verifyReadBack(ctx context.Context, r io.ReaderAt, size int64, want []byte) error {
	h := sha256.New()
	buf := make([]byte, Chunk)
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := int(min(int64(len(buf)), size-off))
		if m, err := r.ReadAt(buf[:n], off); m < n {
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("verify: read back at %d: %w", off, err)
		}
		h.Write(buf[:n])
		off += int64(n)
	}
	clear(buf)
	if got := h.Sum(nil); !bytes.Equal(got, want) {
		return fmt.Errorf("sha256 %x read back, %x written: %w", got, want, ErrVerify)
	}
	return nil
}
