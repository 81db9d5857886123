package qcowio

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/tests/testimg"
)

// countingDevice counts the bytes and requests read from the device below,
// and the requests at offset at.
type countingDevice struct {
	blockdev.Device
	bytes, reads atomic.Int64
	at           int64
	readsAt      atomic.Int64
}

func (c *countingDevice) ReadAt(p []byte, off int64) (int, error) {
	c.bytes.Add(int64(len(p)))
	c.reads.Add(1)
	if off == c.at {
		c.readsAt.Add(1)
	}
	return c.Device.ReadAt(p, off)
}

// TestLazyReadOfHugeSparseLUKS proves that opening a 1 TiB qcow2+LUKS disk
// and reading its first MiB touches only the header, the LUKS key slot, the
// L1 table, the allocated L2 tables and that MiB, and that the MiB of
// contiguous clusters is fetched in one request.
func TestLazyReadOfHugeSparseLUKS(t *testing.T) {
	t.Parallel()
	path, plain := bigLUKS(t)
	dev := &countingDevice{Device: openFile(t, path)}
	img, err := Open(dev, Policy{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if err := img.Unlock([]byte(testPass), anySlot); err != nil {
		t.Fatal(err)
	}
	headerBytes, headerReads := dev.bytes.Load(), dev.reads.Load()
	got := make([]byte, 1<<20)
	if _, err := img.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "first MiB", got, plain[:1<<20])
	dataBytes, dataReads := dev.bytes.Load()-headerBytes, dev.reads.Load()-headerReads
	t.Logf("1 TiB qcow2+LUKS, file %d bytes: open+unlock read %d bytes in %d requests; first MiB read %d bytes in %d requests",
		dev.Size(), headerBytes, headerReads, dataBytes, dataReads)
	luksArea := int64(img.hdr.cryptoLength)
	if limit := int64(1<<20) + luksArea + 256<<10; headerBytes+dataBytes > limit {
		t.Fatalf("read %d bytes in total, want < %d (1 MiB + LUKS area %d + 256 KiB)", headerBytes+dataBytes, limit, luksArea)
	}
	if dataBytes != 1<<20 || dataReads != 1 {
		t.Fatalf("first MiB took %d bytes in %d requests, want exactly 1 MiB in 1 request", dataBytes, dataReads)
	}
}

// TestConcurrentReads reads random ranges of an encrypted image from many
// goroutines at once (as FUSE does) with a cache small enough to churn.
func TestConcurrentReads(t *testing.T) {
	t.Parallel()
	path, plain := bigLUKS(t)
	img := openUnlocked(t, path, testPass)
	img.l2cache = newLRU[l2Table](0, 1, 1)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 1))
			buf := make([]byte, 200<<10)
			for range 50 {
				n := 1 + r.IntN(len(buf))
				off := r.IntN(2<<20 - n) // 1 MiB of data, then holes
				if _, err := img.ReadAt(buf[:n], int64(off)); err != nil {
					errs <- err
					return
				}
				for i := range n {
					if buf[i] != plain[off+i] {
						errs <- fmt.Errorf("goroutine %d: byte %d of %d at %d differs", g, i, n, off)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestConcurrentL2MissesShareOneRead proves that goroutines missing the same
// L2 table at once fetch it from the device below only once.
func TestConcurrentL2MissesShareOneRead(t *testing.T) {
	t.Parallel()
	path, plain := testimg.MakeQcow2(t, t.TempDir(), "img.qcow2", testimg.QcowImage{Size: 4 << 20,
		Passes: [][]W{{{Off: 0, Len: 4 << 20, Seed: 130}}}})
	dev := &countingDevice{Device: openFile(t, path)}
	dev.at = int64(fileU64(t, path, int64(fileU64(t, path, 40))) & 0x00fffffffffffe00) // L1[0]
	img, err := Open(dev, Policy{})
	if err != nil {
		t.Fatal(err)
	}
	img.l2cache = newLRU[l2Table](l2CacheBytes, img.clusterSize, 4) // forget what Open's walk cached
	dev.readsAt.Store(0)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			off := int64(g) << 18
			if _, err := img.ReadAt(buf, off); err != nil {
				errs <- err
			} else if string(buf) != string(plain[off:off+4096]) {
				errs <- fmt.Errorf("goroutine %d read wrong data", g)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := dev.readsAt.Load(); n != 1 {
		t.Fatalf("L2 table at %#x read %d times, want 1", dev.at, n)
	}
}
