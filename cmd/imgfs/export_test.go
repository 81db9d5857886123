package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
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

// streamDevice copies in order, counts every byte for the progress report
// and leaves zero chunks as holes in a file.
func TestStreamDeviceCopiesAndCounts(t *testing.T) {
	data := make([]byte, 3*streamChunk+12345)
	for i := range data[:streamChunk] {
		data[i] = byte(i * 7)
	}
	copy(data[2*streamChunk+5:], "tail")
	var log bytes.Buffer
	for _, sparse := range []bool{false, true} {
		f, err := os.Create(filepath.Join(t.TempDir(), "out"))
		if err != nil {
			t.Fatal(err)
		}
		prog := startProgress(progressJSON, "test", int64(len(data)), &log)
		_, err = streamDevice(context.Background(), f, exportMemDev(data), sparse, prog)
		prog.Finish(err)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(f.Name())
		f.Close()
		if !bytes.Equal(got, data) {
			t.Fatalf("sparse=%v: copy differs", sparse)
		}
		if prog.done.Load() != int64(len(data)) {
			t.Fatalf("progress counted %d of %d bytes", prog.done.Load(), len(data))
		}
	}
	if !strings.Contains(log.String(), `"event":"done"`) {
		t.Fatalf("no done event: %s", log.String())
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
		prog := startProgress(progressOff, "test", 0, nil)
		_, err = streamDevice(ctx, f, exportMemDev(make([]byte, 20*streamChunk)), true, prog)
		f.Close()
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled copy: %v", err)
		}
	}
}

// A failing device fails the copy with its error, and writeDevice leaves
// no file behind.
func TestWriteDeviceLeavesNothingOnError(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	short := exportShortDev{exportMemDev(make([]byte, streamChunk)), 3 * streamChunk}
	err := writeDevice(context.Background(), short, out, progressOff, "test")
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
