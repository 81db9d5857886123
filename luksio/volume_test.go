package luksio

import (
	"bytes"
	"sync"
	"testing"
)

// TestVolumeConcurrentReads proves that one Volume serves overlapping
// unaligned reads from several goroutines (each large enough to take the
// parallel decryption path) with the right bytes; run with -race.
func TestVolumeConcurrentReads(t *testing.T) {
	path, plain, _, _ := makeCryptsetupImage(t, t.TempDir(), csMatrix[2], 800) // 4096-byte sectors
	v, err := Open(openFile(t, path), []byte(csPass1), UnlockOptions{Slot: AnySlot})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			p := make([]byte, parallelMin+12345)
			for i := range 8 {
				off := int64((g*8+i)*40999) % (v.Size() - int64(len(p)))
				n, err := v.ReadAt(p, off)
				if err != nil || n != len(p) || !bytes.Equal(p, plain[off:off+int64(len(p))]) {
					t.Errorf("goroutine %d read %d at %d: n=%d err=%v, equal=%v", g, len(p), off, n, err, bytes.Equal(p, plain[off:off+int64(len(p))]))
					return
				}
			}
		})
	}
	wg.Wait()
	v.Close()
	if n, err := v.ReadAt(make([]byte, 4096), 0); err == nil || n != 0 {
		t.Fatalf("read after Close = %d, %v; want an error", n, err)
	}
}
