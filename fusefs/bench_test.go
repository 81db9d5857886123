package fusefs

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/imgfs/imgfs/tests/testimg"
)

// BenchmarkMountSequentialRead reads a 256 MiB in-memory disk through a
// fresh mount (empty page cache) with 1 MiB reads, as `dd bs=1M` does. The
// device costs only a memmove, so this is the floor of the FUSE path on the
// machine: what any imgfs mount pays on top of producing the plaintext.
// "cold" is a fresh mount; "cached" re-reads from the page cache that
// keep-cache keeps.
func BenchmarkMountSequentialRead(b *testing.B) {
	testimg.Need(b, "fusermount3")
	data := testimg.RandomBytes(256<<20, 77)
	for _, bc := range []struct {
		name   string
		cached bool
	}{{"cold", false}, {"cached", true}} {
		b.Run(bc.name, func(b *testing.B) {
			buf := make([]byte, 1<<20)
			b.SetBytes(int64(len(data)))
			var cpu time.Duration
			for b.Loop() {
				b.StopTimer()
				dir := b.TempDir()
				s, err := Mount(dir, Options{Disk: bytes.NewReader(data)})
				if err != nil {
					b.Fatal(err)
				}
				if bc.cached {
					readAll(b, filepath.Join(dir, DiskName), buf)
				}
				b.StartTimer()
				c0 := processCPU()
				if n := readAll(b, filepath.Join(dir, DiskName), buf); n != int64(len(data)) {
					b.Fatalf("read %d of %d bytes", n, len(data))
				}
				cpu += processCPU() - c0
				b.StopTimer()
				if err := s.Unmount(); err != nil {
					b.Fatal(err)
				}
				s.Wait()
				b.StartTimer()
			}
			// CPU of this process: the reader and the FUSE server (the
			// kernel's copies run in their threads), steadier than wall
			// time on a shared machine.
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N)/float64(len(data)>>20), "cpu-ns/MiB")
		})
	}
}

// processCPU returns the user+system CPU time of this process so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// readAll reads name to the end with len(buf)-byte reads (both sides are
// wrapped so that io.CopyBuffer cannot pick a ReaderFrom with its own small
// buffer).
func readAll(b *testing.B, name string, buf []byte) int64 {
	f, err := os.Open(name)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{f}, buf)
	if err != nil {
		b.Fatal(err)
	}
	return n
}
