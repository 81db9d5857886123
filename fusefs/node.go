package fusefs

import (
	"context"
	"errors"
	"io"
	"log"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/imgfs/imgfs/blockdev"
)

// Whence values of lseek(2) that the kernel forwards to FUSE.
const (
	seekData = 3 // SEEK_DATA
	seekHole = 4 // SEEK_HOLE
)

// fileNode is a read-only regular file whose bytes are a blockdev.Device.
// It serves the plaintext disk, the stored ciphertext and image.json.
type fileNode struct {
	fs.Inode
	name string
	dev  blockdev.Device
	// mapper is dev's data map, nil if dev has none (then it is all data).
	mapper blockdev.Mapper
	// blocks is st_blocks: allocated 512-byte units.
	blocks uint64
	mode   uint32
	uid    uint32
	gid    uint32
	mtime  time.Time
	// errs reports device errors; it logs only the first of each node.
	errs *errorLog
}

var (
	_ = (fs.NodeOpener)((*fileNode)(nil))
	_ = (fs.NodeReader)((*fileNode)(nil))
	_ = (fs.NodeGetattrer)((*fileNode)(nil))
	_ = (fs.NodeLseeker)((*fileNode)(nil))
	_ = (fs.NodeSetattrer)((*fileNode)(nil))
)

// Open refuses every write access and asks the kernel to keep its page
// cache across opens: the image never changes while it is mounted.
func (n *fileNode) Open(_ context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return nil, 0, syscall.EROFS
	}
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

// Read fills dest from the device. A read that ends past the end is short
// and one that starts past the end is empty; a device error becomes EIO.
func (n *fileNode) Read(_ context.Context, _ fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return readDevice(n.dev, n.name, n.errs, dest, off)
}

// readDevice serves a read of file name from dev.
func readDevice(dev blockdev.Device, name string, errs *errorLog, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	size := dev.Size()
	if off < 0 {
		return nil, syscall.EINVAL
	}
	if off >= size || len(dest) == 0 {
		return fuse.ReadResultData(nil), 0
	}
	want := int(min(int64(len(dest)), size-off))
	got, err := dev.ReadAt(dest[:want], off)
	if got < want {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		errs.report(name, off, want, err)
		return nil, syscall.EIO
	}
	return fuse.ReadResultData(dest[:want]), 0
}

// Getattr reports a read-only regular file of the device's size.
func (n *fileNode) Getattr(_ context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | n.mode
	out.Size = uint64(n.dev.Size())
	out.Blocks = n.blocks
	out.Blksize = preferredBlockSize
	out.Nlink = 1
	out.Uid, out.Gid = n.uid, n.gid
	out.SetTimes(&n.mtime, &n.mtime, &n.mtime)
	return 0
}

// Setattr refuses every change (chmod, truncate, utimes): the view is read-only.
func (n *fileNode) Setattr(context.Context, fs.FileHandle, *fuse.SetAttrIn, *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}

// Lseek answers SEEK_DATA and SEEK_HOLE from the device's data map, so that
// cp --sparse and qemu-img skip holes without reading them. A device
// without a map is one data extent.
func (n *fileNode) Lseek(_ context.Context, _ fs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	return seekDevice(n.dev, n.mapper, n.name, n.errs, off, whence)
}

// seekDevice answers SEEK_DATA and SEEK_HOLE on file name from dev's data
// map (mapper, nil for a device that is all data).
func seekDevice(dev blockdev.Device, mapper blockdev.Mapper, name string, errs *errorLog, off uint64, whence uint32) (uint64, syscall.Errno) {
	size := uint64(dev.Size())
	if whence != seekData && whence != seekHole {
		return 0, syscall.EINVAL
	}
	if off >= size {
		return 0, syscall.ENXIO
	}
	if mapper == nil {
		if whence == seekData {
			return off, 0
		}
		return size, 0
	}
	var next int64
	var err error
	if whence == seekData {
		next, err = mapper.NextData(int64(off))
	} else {
		next, err = mapper.NextHole(int64(off))
	}
	switch {
	case errors.Is(err, io.EOF):
		if whence == seekHole {
			return size, 0
		}
		return 0, syscall.ENXIO
	case err != nil:
		errs.report(name, int64(off), 0, err)
		return 0, syscall.EIO
	case next < int64(off) || uint64(next) > size:
		errs.report(name, int64(off), 0, errors.New("data map answered an offset outside the file"))
		return 0, syscall.EIO
	case whence == seekData && uint64(next) == size:
		return 0, syscall.ENXIO // only a hole up to the end
	}
	return uint64(next), 0
}

// errorLog logs the first device error of a mount and counts the rest, so a
// failing source does not flood stderr with one line per kernel read.
type errorLog struct {
	logger *log.Logger
	count  atomic.Int64
}

func (l *errorLog) report(name string, off int64, n int, err error) {
	if l.count.Add(1) != 1 || l.logger == nil {
		return
	}
	if n > 0 {
		l.logger.Printf("imgfs: %s: read %d bytes at %d: %v (answered EIO; further errors are not logged)", name, n, off, err)
	} else {
		l.logger.Printf("imgfs: %s: data map at %d: %v (answered EIO; further errors are not logged)", name, off, err)
	}
}

// Errors returns how many device errors were answered with EIO.
func (l *errorLog) Errors() int64 { return l.count.Load() }
