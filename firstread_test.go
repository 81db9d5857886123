package imgfs

import (
	"bytes"
	"context"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/tests/testimg"
)

// prefetchRecorder is a device that records Prefetch calls.
type prefetchRecorder struct {
	blockdev.Device
	mu    sync.Mutex
	calls [][2]int64
	asked chan struct{} // closed at the first call
}

func (p *prefetchRecorder) Prefetch(off, n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.calls) == 0 {
		close(p.asked)
	}
	p.calls = append(p.calls, [2]int64{off, n})
}

// The range a caller reads first is prefetched from the stored image while
// the key is awaited (a Barbican secret, then PBKDF2), not after: the key
// here answers only once the prefetch was asked for. Without FirstRead
// nothing is prefetched.
func TestFirstReadPrefetchedDuringUnlock(t *testing.T) {
	dir := t.TempDir()
	plain := bytes.Repeat([]byte("imgfs#14"), 512<<10) // 4 MiB
	path := testimg.QemuLUKS1(t, dir, "f", plain, "first", testimg.QemuLUKSOpts{})
	f, err := blockdev.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, first := range []ByteRange{{Offset: 1 << 20, Length: 4 << 20}, {}} {
		dev := &prefetchRecorder{Device: f, asked: make(chan struct{})}
		key := &gatedKey{pass: "first", asked: make(chan struct{}), allowed: make(chan struct{})}
		go func() {
			select {
			case <-dev.asked:
			case <-time.After(2 * time.Second):
			}
			close(key.allowed)
		}()
		img, err := OpenDevice(context.Background(), dev, Options{Key: key, FirstRead: first})
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 1<<20)
		if _, err := img.Disk.ReadAt(got, first.Offset); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		if !bytes.Equal(got, plain[first.Offset:first.Offset+1<<20]) {
			t.Fatal("plaintext differs")
		}
		payload := img.Info.LUKS.PayloadOffset
		img.Close()
		dev.mu.Lock()
		calls := dev.calls
		dev.mu.Unlock()
		switch {
		case first.Length == 0 && len(calls) != 0:
			t.Fatalf("no FirstRead, but prefetched %v", calls)
		case first.Length > 0 && (len(calls) != 1 || calls[0] != [2]int64{payload + 1<<20, 3 << 20}):
			// the range is cut at the end of the 4 MiB payload
			t.Fatalf("prefetched %v, want [[%d %d]]", calls, payload+1<<20, 3<<20)
		}
	}
}
