package blockdev

import (
	"fmt"
	"os"
)

// File is a Device over a local file or block device.
type File struct {
	f    *os.File
	size int64
}

// OpenFile opens path read-only. The size is taken once: images are immutable
// while imgfs reads them.
func OpenFile(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	size, err := f.Seek(0, 2)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: size: %w", path, err)
	}
	return &File{f: f, size: size}, nil
}

// ReadAt implements io.ReaderAt.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	n, eof := Clip(p, off, f.size)
	if n == 0 {
		return 0, eof
	}
	m, err := f.f.ReadAt(p[:n], off)
	if err != nil {
		return m, err
	}
	return m, eof
}

// Size returns the file size in bytes.
func (f *File) Size() int64 { return f.size }

// Close closes the file.
func (f *File) Close() error { return f.f.Close() }
