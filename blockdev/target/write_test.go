package target

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/imgfs/imgfs/blockdev"
)

// exportMemDev is a Device over a byte slice.
type exportMemDev []byte

func (m exportMemDev) Size() int64 { return int64(len(m)) }
func (m exportMemDev) ReadAt(p []byte, off int64) (int, error) {
	n, eof := blockdev.Clip(p, off, int64(len(m)))
	if n == 0 {
		return 0, eof
	}
	copy(p[:n], m[off:])
	return n, eof
}

// Stream copies in order, counts every byte for the progress report
// and leaves zero chunks as holes in a file.
func TestStreamDeviceCopiesAndCounts(t *testing.T) {
	data := make([]byte, 3*Chunk+12345)
	for i := range data[:Chunk] {
		data[i] = byte(i * 7)
	}
	copy(data[2*Chunk+5:], "tail")
	for _, sparse := range []bool{false, true} {
		f, err := os.Create(filepath.Join(t.TempDir(), "out"))
		if err != nil {
			t.Fatal(err)
		}
		var done int64
		_, err = Stream(context.Background(), f, exportMemDev(data), sparse, func(n int64) { done += n })
		if err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(f.Name())
		f.Close()
		if !bytes.Equal(got, data) {
			t.Fatalf("sparse=%v: copy differs", sparse)
		}
		if done != int64(len(data)) {
			t.Fatalf("progress counted %d of %d bytes", done, len(data))
		}
	}
}

// A cancelled context is an error, never a short copy reported as success.
func TestStreamDeviceCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for range 20 {
		f, err := os.Create(filepath.Join(t.TempDir(), "out"))
		if err != nil {
			t.Fatal(err)
		}
		_, err = Stream(ctx, f, exportMemDev(make([]byte, 20*Chunk)), true, nil)
		f.Close()
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled copy: %v", err)
		}
	}
}

// A failing device fails the copy with its error, and WriteDevice leaves
// no file behind.
func TestWriteDeviceLeavesNothingOnError(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	short := exportShortDev{exportMemDev(make([]byte, Chunk)), 3 * Chunk}
	_, err := WriteDevice(context.Background(), out, short, nil)
	if !errors.Is(err, blockdev.ErrTruncated) {
		t.Fatalf("error %v, want truncated", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("left %v behind", entries)
	}
}

type exportShortDev struct {
	blockdev.Device
	size int64
}

func (d exportShortDev) Size() int64 { return d.size }
