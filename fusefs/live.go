package fusefs

import (
	"context"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// StatsName is the file whose content is made anew at every open: the
// source's counters (requests, bytes fetched, cache hits...) as JSON.
const StatsName = "stats"

// liveNode is a read-only file whose content is generated when it is
// opened. It is served with direct I/O and reports size 0 (as /proc files
// do), so the kernel neither caches it nor trims reads to a stale size.
type liveNode struct {
	fs.Inode
	content  func() []byte
	mode     uint32
	uid, gid uint32
	mtime    time.Time
}

// liveHandle holds one open's snapshot, so a reader sees one consistent text.
type liveHandle struct{ data []byte }

var (
	_ = (fs.NodeOpener)((*liveNode)(nil))
	_ = (fs.NodeReader)((*liveNode)(nil))
	_ = (fs.NodeGetattrer)((*liveNode)(nil))
	_ = (fs.NodeSetattrer)((*liveNode)(nil))
)

// Open takes the snapshot; writes are refused.
func (n *liveNode) Open(_ context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return nil, 0, syscall.EROFS
	}
	return &liveHandle{data: n.content()}, fuse.FOPEN_DIRECT_IO, 0
}

// Read serves the open's snapshot.
func (n *liveNode) Read(_ context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h, ok := fh.(*liveHandle)
	if !ok {
		return nil, syscall.EBADF
	}
	if off < 0 {
		return nil, syscall.EINVAL
	}
	if off >= int64(len(h.data)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData(h.data[off:min(int64(len(h.data)), off+int64(len(dest)))]), 0
}

// Getattr reports a read-only regular file of size 0.
func (n *liveNode) Getattr(_ context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | n.mode
	out.Nlink = 1
	out.Uid, out.Gid = n.uid, n.gid
	out.SetTimes(&n.mtime, &n.mtime, &n.mtime)
	return 0
}

// Setattr refuses every change.
func (n *liveNode) Setattr(context.Context, fs.FileHandle, *fuse.SetAttrIn, *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}
