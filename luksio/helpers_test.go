package luksio

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/imgfs/imgfs/blockdev"
)

func openFile(t testing.TB, path string) *blockdev.File {
	t.Helper()
	f, err := blockdev.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// checkVolume reads v whole and at random unaligned ranges and compares
// every byte with want.
func checkVolume(t *testing.T, v *Volume, want []byte, seed uint64) {
	t.Helper()
	if v.Size() != int64(len(want)) {
		t.Fatalf("volume size %d, want %d", v.Size(), len(want))
	}
	got := make([]byte, len(want))
	if err := blockdev.ReadFull(v, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("full read differs from the plaintext at byte %d", firstDiff(got, want))
	}
	r := rand.New(rand.NewPCG(seed, 7))
	for range 200 {
		off := r.Int64N(int64(len(want)))
		n := 1 + r.IntN(min(3*v.c.SectorSize()+1, len(want)-int(off)))
		if r.IntN(4) == 0 { // sector-aligned reads take the in-place path
			off -= off % int64(v.c.SectorSize())
			n = v.c.SectorSize() * (1 + r.IntN(3))
			n = min(n, len(want)-int(off))
		}
		p := make([]byte, n)
		m, err := v.ReadAt(p, off)
		if m != n || err != nil {
			t.Fatalf("ReadAt(%d bytes at %d) = %d, %v", n, off, m, err)
		}
		if !bytes.Equal(p, want[off:off+int64(n)]) {
			t.Fatalf("ReadAt(%d bytes at %d) differs at byte %d", n, off, firstDiff(p, want[off:]))
		}
	}
	// A read across the end returns the rest and io.EOF.
	p := make([]byte, 1000)
	m, err := v.ReadAt(p, int64(len(want))-10)
	if m != 10 || err == nil || !bytes.Equal(p[:10], want[len(want)-10:]) {
		t.Fatalf("read across the end = %d, %v; want 10 bytes and io.EOF", m, err)
	}
}

// shortDevice claims a size larger than its data, like a truncated download.
type shortDevice struct {
	blockdev.Device
	size int64
}

func (d shortDevice) Size() int64 { return d.size }

func wantErr(t *testing.T, err, kind error) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("got error %v, want %v", err, kind)
	}
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
