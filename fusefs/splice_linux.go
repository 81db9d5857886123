package fusefs

import (
	"os"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/hanwen/go-fuse/v2/splice"
	"golang.org/x/sys/unix"
)

// spliceMin is the smallest reply handed to the kernel through a pipe.
// Below it the three extra system calls of the pipe path cost more than
// the page pinning they save.
const spliceMin = 64 << 10

// spliceReply hands data to the kernel through a pipe: vmsplice(2) puts
// the pages of data into the pipe without copying them, go-fuse splices the
// pipe into /dev/fuse, and the kernel copies each page once into the page
// cache. A writev(2) of the reply to /dev/fuse instead pins the caller's
// memory one 4 KiB page at a time (one get_user_pages and one request lock
// round trip per page), which on the test VM costs more than the copy
// itself. data must not change until the reply is written: go-fuse writes
// it before it reuses the request's output buffer that data lives in.
//
// ok is false when data is small or no pipe can hold it (pipe-max-size or
// the user's pipe-user-pages limits); the caller then replies with the bytes.
func spliceReply(data []byte) (r fuse.ReadResult, ok bool) {
	if len(data) < spliceMin || !spliceEnabled {
		return nil, false
	}
	pair, err := splice.Get()
	if err != nil {
		return nil, false
	}
	// go-fuse grows its own pipe to header + data + one page; ours needs
	// data + one page.
	if err := pair.Grow(len(data) + os.Getpagesize()); err != nil {
		splice.Drop(pair)
		return nil, false
	}
	iov := []unix.Iovec{{Base: &data[0]}}
	iov[0].SetLen(len(data))
	n, err := unix.Vmsplice(int(pair.WriteFd()), iov, 0)
	if err != nil || n != len(data) {
		// A partial vmsplice left pages in the pipe: do not reuse it.
		splice.Drop(pair)
		return nil, false
	}
	splicedReplies.Add(1)
	return fuse.ReadResultPipe(pair, n), true
}
