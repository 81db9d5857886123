package blockdev

import (
	"errors"
	"io"
	"testing"
)

// mapped is a device of 100 bytes with data in [10,20) and [50,60).
type mapped struct{}

func (mapped) ReadAt(p []byte, off int64) (int, error) { return Clip(p, off, 100) }
func (mapped) Size() int64                             { return 100 }
func (mapped) NextData(off int64) (int64, error) {
	switch {
	case off >= 100:
		return 0, io.EOF
	case off < 20:
		return max(off, 10), nil
	case off < 60:
		return max(off, 50), nil
	}
	return 0, io.EOF
}
func (mapped) NextHole(off int64) (int64, error) {
	switch {
	case off >= 100:
		return 0, io.EOF
	case off >= 10 && off < 20:
		return 20, nil
	case off >= 50 && off < 60:
		return 60, nil
	}
	return off, nil
}

func TestSectionTranslatesTheDataMap(t *testing.T) {
	s, err := NewSection(mapped{}, 15, 40) // [15,55): data [0,5) and [35,40)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		off, data, hole int64
		dataEOF         bool
	}{
		{0, 0, 5, false},
		{5, 35, 5, false},
		{36, 36, 40, false},
	}
	for _, c := range cases {
		d, err := s.NextData(c.off)
		if err != nil || d != c.data {
			t.Errorf("NextData(%d) = %d, %v; want %d", c.off, d, err, c.data)
		}
		h, err := s.NextHole(c.off)
		if err != nil || h != c.hole {
			t.Errorf("NextHole(%d) = %d, %v; want %d", c.off, h, err, c.hole)
		}
	}
	s2, _ := NewSection(mapped{}, 60, 30) // all hole
	if _, err := s2.NextData(0); !errors.Is(err, io.EOF) {
		t.Errorf("NextData in a hole-only section: %v, want io.EOF", err)
	}
	if _, err := s.NextData(40); !errors.Is(err, io.EOF) {
		t.Errorf("NextData past the end: %v, want io.EOF", err)
	}
}
