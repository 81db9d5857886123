package blockdev

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"
)

// mappedMem is an in-memory device with a data map (extents of data, the
// rest holes that read as zeros) that counts reads and map queries.
type mappedMem struct {
	size    int64
	extents [][2]int64 // sorted [start, end) of data
	seed    uint64
	reads   atomic.Int64
	queries atomic.Int64
}

func (m *mappedMem) Size() int64 { return m.size }

func (m *mappedMem) byteAt(off int64) byte {
	for _, e := range m.extents {
		if off >= e[0] && off < e[1] {
			return byte(off*7+int64(m.seed)) | 1
		}
	}
	return 0
}

func (m *mappedMem) ReadAt(p []byte, off int64) (int, error) {
	m.reads.Add(1)
	n, eof := Clip(p, off, m.size)
	for i := range n {
		p[i] = m.byteAt(off + int64(i))
	}
	return n, eof
}

func (m *mappedMem) NextData(off int64) (int64, error) {
	m.queries.Add(1)
	if off >= m.size {
		return 0, io.EOF
	}
	for _, e := range m.extents {
		if off < e[1] {
			return max(off, e[0]), nil
		}
	}
	return 0, io.EOF
}

func (m *mappedMem) NextHole(off int64) (int64, error) {
	for _, e := range m.extents {
		if off >= e[0] && off < e[1] {
			return e[1], nil
		}
	}
	return off, nil
}

// Chunks come in order with the device's bytes; holes come as nil without
// being read; the buffers are reused and zeroed at the end.
func TestReadOrderedBytesHolesAndOrder(t *testing.T) {
	m := &mappedMem{size: 40<<20 + 1234, extents: [][2]int64{{1 << 20, 3 << 20}, {17 << 20, 17<<20 + 5}, {40 << 20, 40<<20 + 1234}}, seed: 3}
	var got []byte
	var next int64
	var kept [][]byte
	holes := 0
	err := ReadOrdered(context.Background(), m, OrderedOptions{ChunkSize: 1 << 20, Workers: 4}, func(off int64, n int, data []byte) error {
		if off != next {
			t.Fatalf("chunk at %d, want %d", off, next)
		}
		next += int64(n)
		if data == nil {
			holes++
			got = append(got, make([]byte, n)...)
			return nil
		}
		if len(data) != n || cap(data) < 1<<20 {
			t.Fatalf("chunk at %d: %d bytes (cap %d) for n %d", off, len(data), cap(data), n)
		}
		kept = append(kept, data[:cap(data)]) // against the contract, to see the zeroing
		got = append(got, data...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, m.size)
	for i := range want {
		want[i] = m.byteAt(int64(i))
	}
	if !bytes.Equal(got, want) {
		t.Fatal("bytes differ from the device")
	}
	if holes != 41-4 {
		t.Fatalf("%d holes, want 37 (41 chunks, 4 with data)", holes)
	}
	if r := m.reads.Load(); r != 4 {
		t.Fatalf("%d reads, want 4 (holes are not read)", r)
	}
	for _, b := range kept {
		if !AllZero(b) {
			t.Fatal("a chunk buffer was not zeroed when ReadOrdered returned")
		}
	}
}

// A 1 TiB disk with data only near its end is read in a blink: the data map
// is asked once per hole, not once per chunk of it.
func TestReadOrderedLongHoleAsksTheMapOnce(t *testing.T) {
	m := &mappedMem{size: 1 << 40, extents: [][2]int64{{0, 4096}, {1<<40 - 4096, 1 << 40}}}
	var data int64
	err := ReadOrdered(context.Background(), m, OrderedOptions{}, func(_ int64, n int, d []byte) error {
		if d != nil {
			data += int64(n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if data != 2*DefaultOrderedChunk {
		t.Fatalf("%d bytes of data chunks", data)
	}
	// workers may each ask before the first answer is remembered
	if q := m.queries.Load(); q > 64 {
		t.Fatalf("%d data map queries for one long hole", q)
	}
}

// ZeroIsHole turns chunks that read as zeros into holes.
func TestReadOrderedZeroIsHole(t *testing.T) {
	data := make([]byte, 5<<20)
	data[3<<20+7] = 1
	holes := 0
	err := ReadOrdered(context.Background(), bytes.NewReader(data), OrderedOptions{ChunkSize: 1 << 20, ZeroIsHole: true}, func(off int64, n int, d []byte) error {
		if d == nil {
			holes++
		} else if off != 3<<20 || d[7] != 1 {
			t.Fatalf("data chunk at %d", off)
		}
		return nil
	})
	if err != nil || holes != 4 {
		t.Fatalf("%v, %d holes (want 4)", err, holes)
	}
}

type failAt struct {
	*bytes.Reader
	off int64
}

func (f failAt) ReadAt(p []byte, off int64) (int, error) {
	if off <= f.off && f.off < off+int64(len(p)) {
		return 0, errors.New("bad sector")
	}
	return f.Reader.ReadAt(p, off)
}

// A read error stops the stream after the chunks before it, in order;
// an error from fn stops it too.
func TestReadOrderedStopsAtTheFirstError(t *testing.T) {
	d := failAt{bytes.NewReader(make([]byte, 20<<20)), 9<<20 + 5}
	var seen int64
	err := ReadOrdered(context.Background(), d, OrderedOptions{ChunkSize: 1 << 20, Workers: 4}, func(off int64, n int, _ []byte) error {
		seen = off + int64(n)
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "bad sector") || seen != 9<<20 {
		t.Fatalf("err %v after %d bytes, want bad sector after 9 MiB", err, seen)
	}
	stop := errors.New("stop")
	calls := 0
	err = ReadOrdered(context.Background(), bytes.NewReader(make([]byte, 20<<20)), OrderedOptions{ChunkSize: 1 << 20}, func(int64, int, []byte) error {
		calls++
		if calls == 3 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || calls != 3 {
		t.Fatalf("err %v after %d calls", err, calls)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := ReadOrdered(ctx, bytes.NewReader(make([]byte, 20<<20)), OrderedOptions{}, func(int64, int, []byte) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: %v", err)
	}
}

// badMap's data map cannot answer (as when a qcow2 L2 table further on is
// damaged), and reads fail only inside [badFrom, badTo).
type badMap struct {
	*mappedMem
	badFrom, badTo int64
}

func (b badMap) NextData(int64) (int64, error) { return 0, errors.New("L2 table damaged") }

func (b badMap) ReadAt(p []byte, off int64) (int, error) {
	if off < b.badTo && b.badFrom < off+int64(len(p)) {
		return 0, errors.New("L2 table damaged")
	}
	return b.mappedMem.ReadAt(p, off)
}

// A data map that fails does not fail the chunks before the damage: they
// are read (and come out right); the damaged chunk fails the stream.
func TestReadOrderedMapErrorReadsTheChunk(t *testing.T) {
	m := &mappedMem{size: 8 << 20, extents: [][2]int64{{0, 8 << 20}}, seed: 5}
	d := badMap{m, 3 << 20, 4 << 20}
	var seen int64
	err := ReadOrdered(context.Background(), d, OrderedOptions{ChunkSize: 1 << 20, Workers: 4}, func(off int64, n int, data []byte) error {
		for i := range data {
			if data[i] != m.byteAt(off+int64(i)) {
				t.Fatalf("byte %d differs", off+int64(i))
			}
		}
		if data == nil {
			t.Fatalf("chunk at %d reported as a hole", off)
		}
		seen = off + int64(n)
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "damaged") || seen != 3<<20 {
		t.Fatalf("err %v after %d bytes, want the damage after 3 MiB", err, seen)
	}
}
