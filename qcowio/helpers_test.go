package qcowio

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/imgfs/imgfs/blockdev"
)

// openFile opens path as a blockdev.File closed at the end of the test.
func openFile(t *testing.T, path string) *blockdev.File {
	t.Helper()
	f, err := blockdev.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// openImage opens path with the strict policy.
func openImage(t *testing.T, path string) *Image {
	t.Helper()
	img, err := Open(openFile(t, path), Policy{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { img.Close() })
	return img
}

// mustEqual fails with the first differing offset.
func mustEqual(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d bytes, want %d", what, len(got), len(want))
	}
	if bytes.Equal(got, want) {
		return
	}
	for i := range got {
		if got[i] != want[i] {
			end := min(i+16, len(got))
			t.Fatalf("%s: first difference at byte %d: got % x, want % x", what, i, got[i:end], want[i:end])
		}
	}
}

// readAll reads the whole virtual disk in chunks of the given size (0: one
// read).
func readAll(t *testing.T, img *Image, chunk int) []byte {
	t.Helper()
	out := make([]byte, img.Size())
	if chunk == 0 {
		chunk = len(out)
	}
	for off := 0; off < len(out); off += chunk {
		end := min(off+chunk, len(out))
		n, err := img.ReadAt(out[off:end], int64(off))
		if n != end-off || (err != nil && end != len(out)) {
			t.Fatalf("ReadAt(%d bytes at %d) = %d, %v", end-off, off, n, err)
		}
	}
	return out
}

// checkAllReads compares the image with want through one whole-disk read,
// unaligned odd-sized chunks and a few reads straddling clusters.
func checkAllReads(t *testing.T, img *Image, want []byte) {
	t.Helper()
	for _, chunk := range []int{0, 7777, 128 << 10} {
		mustEqual(t, fmt.Sprintf("chunk %d", chunk), readAll(t, img, chunk), want)
	}
	cs := img.Info().ClusterSize
	for _, r := range [][2]int64{{cs - 3, 10}, {1, 511}, {511, 2}, {cs + 100, 3 * cs}, {img.Size() - 5, 5}} {
		off, n := r[0], min(r[1], img.Size()-r[0])
		if off < 0 || n <= 0 {
			continue
		}
		got := make([]byte, n)
		if _, err := img.ReadAt(got, off); err != nil {
			t.Fatalf("ReadAt(%d at %d): %v", n, off, err)
		}
		mustEqual(t, fmt.Sprintf("%d bytes at %d", n, off), got, want[off:off+n])
	}
}
