package blockdev

import "fmt"

// Section is the byte range [off, off+size) of another Device.
type Section struct {
	d         Device
	off, size int64
}

// NewSection returns the range [off, off+size) of d. It fails with
// ErrTruncated when the range does not lie inside d.
func NewSection(d Device, off, size int64) (*Section, error) {
	if off < 0 || size < 0 || off > d.Size() || size > d.Size()-off {
		return nil, fmt.Errorf("range %d+%d outside a device of %d bytes: %w", off, size, d.Size(), ErrTruncated)
	}
	return &Section{d: d, off: off, size: size}, nil
}

// ReadAt implements io.ReaderAt.
func (s *Section) ReadAt(p []byte, off int64) (int, error) {
	n, eof := clip(p, off, s.size)
	if n == 0 {
		return 0, eof
	}
	m, err := s.d.ReadAt(p[:n], s.off+off)
	if m == n {
		return m, eof
	}
	return m, err
}

// Size returns the length of the section.
func (s *Section) Size() int64 { return s.size }
