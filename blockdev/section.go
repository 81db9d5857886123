package blockdev

import (
	"errors"
	"fmt"
	"io"
)

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
	n, eof := Clip(p, off, s.size)
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

// NextData implements Mapper through the device below when it is a Mapper
// (otherwise the whole section is data).
func (s *Section) NextData(off int64) (int64, error) {
	if off < 0 || off >= s.size {
		return 0, io.EOF
	}
	m, ok := s.d.(Mapper)
	if !ok {
		return off, nil
	}
	next, err := m.NextData(s.off + off)
	if errors.Is(err, io.EOF) || (err == nil && next >= s.off+s.size) {
		return 0, io.EOF
	}
	if err != nil {
		return 0, err
	}
	return next - s.off, nil
}

// NextHole implements Mapper through the device below; the end of the
// section counts as a hole.
func (s *Section) NextHole(off int64) (int64, error) {
	if off < 0 || off >= s.size {
		return 0, io.EOF
	}
	m, ok := s.d.(Mapper)
	if !ok {
		return s.size, nil
	}
	next, err := m.NextHole(s.off + off)
	if errors.Is(err, io.EOF) {
		return s.size, nil
	}
	if err != nil {
		return 0, err
	}
	return min(next, s.off+s.size) - s.off, nil
}
