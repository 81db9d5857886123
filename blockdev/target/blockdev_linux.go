package target

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Block device ioctls (linux/fs.h).
const (
	ioctlBLKGETSIZE64 = 0x80081272
	ioctlBLKZEROOUT   = 0x127f
)

// zeroAlign is the alignment of the ranges given to BLKZEROOUT: a page,
// so that it never shares a page-cache page with a buffered write.
const zeroAlign = 4096

// BlockDevice is a block device opened for writing in place (Volume).
type BlockDevice struct {
	f        *os.File
	size     int64
	noZeroIO bool // BLKZEROOUT is not supported: write zeros
	zeros    []byte
}

// OpenBlockDevice opens the block device path for reading and writing
// with O_EXCL, which Linux refuses (EBUSY, ErrBusy) while the device is
// mounted, mapped or held exclusively by another program, and reads its
// size (BLKGETSIZE64). It never truncates or renames.
func OpenBlockDevice(path string) (*BlockDevice, error) {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if errors.Is(err, syscall.EBUSY) {
		return nil, fmt.Errorf("%s: %w", path, ErrBusy)
	}
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if fi.Mode()&os.ModeDevice == 0 || fi.Mode()&os.ModeCharDevice != 0 {
		f.Close()
		return nil, fmt.Errorf("%s: not a block device: %w", path, ErrNotTarget)
	}
	var size uint64
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), ioctlBLKGETSIZE64, uintptr(unsafe.Pointer(&size))); e != 0 {
		f.Close()
		return nil, fmt.Errorf("%s: BLKGETSIZE64: %w", path, e)
	}
	if size > 1<<62 {
		f.Close()
		return nil, fmt.Errorf("%s: implausible size %d", path, size)
	}
	return &BlockDevice{f: f, size: int64(size)}, nil
}

// Size returns the device's size in bytes.
func (b *BlockDevice) Size() int64 { return b.size }

// ReadAt reads the device.
func (b *BlockDevice) ReadAt(p []byte, off int64) (int, error) { return b.f.ReadAt(p, off) }

// WriteAt writes the device.
func (b *BlockDevice) WriteAt(p []byte, off int64) (int, error) { return b.f.WriteAt(p, off) }

// Zero makes [off, off+n) read as zeros: BLKZEROOUT for the page-aligned
// middle where the device supports it, written zeros elsewhere.
func (b *BlockDevice) Zero(off, n int64) error {
	end := off + n
	lo := min(roundUp(off, zeroAlign), end)
	hi := max(end-end%zeroAlign, lo)
	if !b.noZeroIO && hi > lo {
		r := [2]uint64{uint64(lo), uint64(hi - lo)}
		_, _, e := unix.Syscall(unix.SYS_IOCTL, b.f.Fd(), ioctlBLKZEROOUT, uintptr(unsafe.Pointer(&r)))
		switch e {
		case 0:
			if err := b.writeZeros(off, lo-off); err != nil {
				return err
			}
			return b.writeZeros(hi, end-hi)
		case unix.ENOTTY, unix.EOPNOTSUPP, unix.EINVAL:
			b.noZeroIO = true
		default:
			return fmt.Errorf("BLKZEROOUT %d+%d: %w", lo, hi-lo, e)
		}
	}
	return b.writeZeros(off, n)
}

// writeZeros writes n zero bytes at off.
func (b *BlockDevice) writeZeros(off, n int64) error {
	if n > 0 && b.zeros == nil {
		b.zeros = make([]byte, Chunk)
	}
	for n > 0 {
		k := min(n, int64(len(b.zeros)))
		if _, err := b.f.WriteAt(b.zeros[:k], off); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}

// Flush syncs the device and drops its page cache, so that a read-back
// comes from the device.
func (b *BlockDevice) Flush() error {
	if err := b.f.Sync(); err != nil {
		return err
	}
	_ = unix.Fadvise(int(b.f.Fd()), 0, 0, unix.FADV_DONTNEED)
	return nil
}

// Close closes the device.
func (b *BlockDevice) Close() error { return b.f.Close() }

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }
