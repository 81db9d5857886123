package qcowio

import (
	"testing"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/tests/testimg"
)

// benchRead measures sequential reads of a fully allocated 32 MiB image in
// 1 MiB requests (the page cache holds the file: this is qcowio's own cost).
func benchRead(b *testing.B, options, pass string) {
	raw := testimg.RandomBytes(32<<20, 120)
	path := testimg.ConvertQcow2(b, b.TempDir(), "img.qcow2", raw, options, pass, false)
	f, err := blockdev.OpenFile(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	img, err := Open(f, Policy{})
	if err != nil {
		b.Fatal(err)
	}
	defer img.Close()
	if pass != "" {
		if err := img.Unlock([]byte(pass), anySlot); err != nil {
			b.Fatal(err)
		}
	}
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		for off := int64(0); off < int64(len(raw)); off += int64(len(buf)) {
			if _, err := img.ReadAt(buf, off); err != nil {
				b.Fatal(err)
			}
		}
	}
}

func BenchmarkReadPlain64k(b *testing.B) { benchRead(b, "", "") }
func BenchmarkReadPlain4k(b *testing.B)  { benchRead(b, "cluster_size=4096", "") }
func BenchmarkReadLUKS64k(b *testing.B)  { benchRead(b, "", testPass) }
func BenchmarkReadLUKS2M(b *testing.B)   { benchRead(b, "cluster_size=2097152", testPass) }
