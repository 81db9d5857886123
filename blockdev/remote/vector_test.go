package remote

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync/atomic"
	"testing"
)

// One range request fills buffers of any sizes in order; a body cut short
// is retried; a range past the end is refused.
func TestHTTPReadVecAt(t *testing.T) {
	data := testData(3<<20+555, 21)
	srv, n := faultServer(t, data, func(i int64) fault {
		if i == 1 { // the first ReadVecAt request (0 is the probe)
			return shortBody
		}
		return nil
	})
	h, err := OpenHTTP(context.Background(), srv.URL, HTTPOptions{Retry: fastRetry})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	sizes := []int{0, 1, 1000, 64<<10 + 3, 1 << 20, 0, 7}
	bufs := make([][]byte, len(sizes))
	total := 0
	for i, s := range sizes {
		bufs[i] = make([]byte, s)
		total += s
	}
	const off = 12345
	before := n.Load()
	if err := h.ReadVecAt(bufs, off); err != nil {
		t.Fatal(err)
	}
	if got := bytes.Join(bufs, nil); !bytes.Equal(got, data[off:off+total]) {
		t.Fatal("vectored read differs from the object")
	}
	if req := n.Load() - before; req != 2 {
		t.Fatalf("%d requests, want 2 (one cut short, its retry)", req)
	}
	if err := h.ReadVecAt([][]byte{make([]byte, 10)}, int64(len(data))-5); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("read past the end: %v", err)
	}
}

// vecDev is an in-memory device that counts how it is read.
type vecDev struct {
	data       []byte
	vec, plain atomic.Int64
}

func (d *vecDev) Size() int64 { return int64(len(d.data)) }

func (d *vecDev) ReadAt(p []byte, off int64) (int, error) {
	d.plain.Add(1)
	return bytes.NewReader(d.data).ReadAt(p, off)
}

func (d *vecDev) ReadVecAt(bufs [][]byte, off int64) error {
	d.vec.Add(1)
	for _, b := range bufs {
		if _, err := d.ReadAt(b, off); err != nil {
			return err
		}
		off += int64(len(b))
	}
	return nil
}

// The cache fetches runs of blocks from a VectorReader with ReadVecAt,
// into the blocks' own buffers, and the bytes come out right.
func TestCacheUsesVectoredReads(t *testing.T) {
	d := &vecDev{data: testData(9<<20+99, 22)}
	c, err := NewCache(d, CacheOptions{BlockSize: 256 << 10, MaxBytes: 2 << 20, ReadAhead: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 300000)
	var got []byte
	for off := int64(0); off < d.Size(); off += int64(len(buf)) {
		k, err := c.ReadAt(buf, off)
		if err != nil && err != io.EOF {
			t.Fatal(err)
		}
		got = append(got, buf[:k]...)
	}
	if !bytes.Equal(got, d.data) {
		t.Fatal("sequential read through the cache differs")
	}
	if d.vec.Load() == 0 {
		t.Fatal("no run was fetched with ReadVecAt")
	}
	t.Logf("%d vectored reads, %d reads in all", d.vec.Load(), d.plain.Load())
}
