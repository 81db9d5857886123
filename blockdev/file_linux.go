package blockdev

import (
	"errors"
	"fmt"
	"io"
	"syscall"
)

// lseek whence values of Linux for sparse files.
const (
	seekData = 3
	seekHole = 4
)

// NextData returns the first offset >= off that holds data, from the file
// system's SEEK_DATA; a block device, or a file system without it, is all
// data. It implements Mapper.
func (f *File) NextData(off int64) (int64, error) { return f.seek(off, seekData) }

// NextHole returns the first offset >= off in a hole (Size() if none).
func (f *File) NextHole(off int64) (int64, error) { return f.seek(off, seekHole) }

func (f *File) seek(off int64, whence int) (int64, error) {
	if off < 0 {
		return 0, fmt.Errorf("negative offset %d", off)
	}
	if off >= f.size {
		return 0, io.EOF
	}
	rc, err := f.f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var pos int64
	var serr error
	if err := rc.Control(func(fd uintptr) { pos, serr = syscall.Seek(int(fd), off, whence) }); err != nil {
		return 0, err
	}
	switch {
	case serr == nil:
		return min(pos, f.size), nil
	case errors.Is(serr, syscall.ENXIO): // no data (or no hole) after off
		return f.size, nil
	case errors.Is(serr, syscall.EINVAL), errors.Is(serr, syscall.EOPNOTSUPP):
		// No sparse-file support (a block device): all data.
		if whence == seekData {
			return off, nil
		}
		return f.size, nil
	}
	return 0, fmt.Errorf("lseek: %w", serr)
}
