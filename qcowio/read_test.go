package qcowio

import (
	"io"
	"testing"

	"github.com/imgfs/imgfs/tests/testimg"
)

type W = testimg.QcowWrite

// scattered writes a few clusters far apart, then lower ones in a second
// pass and overwrites part of the first in a third, so that host order
// differs from guest order.
func scattered(cs int64) [][]W {
	return [][]W{
		{{Off: 3 << 20, Len: 64 << 10, Seed: 1}, {Off: 1 << 20, Len: 64 << 10, Seed: 2}},
		{{Off: 0, Len: 4096, Seed: 3}, {Off: 2<<20 + 12345, Len: 1000, Seed: 4}, {Off: 4<<20 - cs, Len: cs, Seed: 5}},
		{{Off: 1<<20 + 4096, Len: 8192, Seed: 6}, {Off: 3<<20 + 512, Len: 100, Seed: 7}},
	}
}

func TestReadMatchesPlaintextAndQemu(t *testing.T) {
	cases := []struct {
		name           string
		spec           testimg.QcowImage
		wantCompressed bool
	}{
		{"v3 4k clusters scattered", testimg.QcowImage{Size: 4 << 20, Options: "cluster_size=4096", Passes: scattered(4096)}, false},
		{"v3 64k clusters scattered", testimg.QcowImage{Size: 4 << 20, Options: "cluster_size=65536", Passes: scattered(65536)}, false},
		{"v3 2M clusters scattered", testimg.QcowImage{Size: 6 << 20, Options: "cluster_size=2097152", Passes: scattered(2 << 20)}, false},
		{"v2 4k clusters scattered", testimg.QcowImage{Size: 4 << 20, Options: "compat=0.10,cluster_size=4096", Passes: scattered(4096)}, false},
		{"v2 64k clusters scattered", testimg.QcowImage{Size: 4 << 20, Options: "compat=0.10", Passes: scattered(65536)}, false},
		{"v2 2M clusters scattered", testimg.QcowImage{Size: 6 << 20, Options: "compat=0.10,cluster_size=2097152", Passes: scattered(2 << 20)}, false},
		{"v3 virtual size not a multiple of the cluster size", testimg.QcowImage{Size: 3<<20 + 2560, Options: "cluster_size=65536", Passes: [][]W{
			{{Off: 3<<20 - 1000, Len: 3560, Seed: 22}, {Off: 0, Len: 4096, Seed: 23}},
		}}, false},
		{"v3 4k clusters, 20 L2 tables", testimg.QcowImage{Size: 40 << 20, Options: "cluster_size=4096", Passes: [][]W{everyL2(20)}}, false},
		{"512-byte clusters with compressed clusters", testimg.QcowImage{Size: 1 << 20, Options: "cluster_size=512", Passes: [][]W{
			{{Off: 4096, Len: 8192, Compressed: true, Seed: 25}, {Off: 700 << 10, Len: 3000, Seed: 26}},
			{{Off: 0, Len: 1024, Seed: 27}, {Off: 6144, Len: 512, Zero: true}},
		}}, true},
		{"v3 zero clusters over data", testimg.QcowImage{Size: 2 << 20, Options: "cluster_size=4096", Passes: [][]W{
			{{Off: 0, Len: 1 << 20, Seed: 8}},
			{{Off: 64 << 10, Len: 64 << 10, Zero: true}, {Off: 512 << 10, Len: 4096, Zero: true}},
		}}, false},
		{"v2 zero writes over data", testimg.QcowImage{Size: 2 << 20, Options: "compat=0.10,cluster_size=4096", Passes: [][]W{
			{{Off: 0, Len: 1 << 20, Seed: 9}},
			{{Off: 64 << 10, Len: 64 << 10, Zero: true}},
		}}, false},
		{"zlib compressed clusters among data", testimg.QcowImage{Size: 2 << 20, Options: "cluster_size=65536", Passes: [][]W{
			{{Off: 0, Len: 256 << 10, Compressed: true, Seed: 10}, {Off: 1 << 20, Len: 64 << 10, Seed: 11}},
			{{Off: 1<<20 + 64<<10, Len: 128 << 10, Compressed: true, Seed: 12}},
		}}, true},
		{"zstd compressed clusters among data", testimg.QcowImage{Size: 2 << 20, Options: "cluster_size=65536,compression_type=zstd", Passes: [][]W{
			{{Off: 0, Len: 256 << 10, Compressed: true, Seed: 13}, {Off: 1 << 20, Len: 64 << 10, Seed: 14}},
			{{Off: 1<<20 + 64<<10, Len: 128 << 10, Compressed: true, Seed: 15}},
		}}, true},
		{"zstd compressed 2M clusters", testimg.QcowImage{Size: 4 << 20, Options: "cluster_size=2097152,compression_type=zstd", Passes: [][]W{
			{{Off: 2 << 20, Len: 2 << 20, Compressed: true, Seed: 16}},
		}}, true},
		{"extended L2 subclusters", testimg.QcowImage{Size: 4 << 20, Options: "cluster_size=65536,extended_l2=on", Passes: [][]W{
			{{Off: 1 << 20, Len: 2048, Seed: 17}, {Off: 1<<20 + 8192, Len: 4096, Seed: 18}, {Off: 3<<20 + 100, Len: 5000, Seed: 19}},
			{{Off: 1<<20 + 4096, Len: 2048, Zero: true}, {Off: 0, Len: 128 << 10, Seed: 20}, {Off: 32 << 10, Len: 4096, Zero: true}},
		}}, false},
		{"extended L2 compressed", testimg.QcowImage{Size: 1 << 20, Options: "cluster_size=65536,extended_l2=on", Passes: [][]W{
			{{Off: 64 << 10, Len: 128 << 10, Compressed: true, Seed: 21}},
		}}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path, plain := testimg.MakeQcow2(t, t.TempDir(), "img.qcow2", tc.spec)
			img := openImage(t, path)
			if img.Size() != tc.spec.Size {
				t.Fatalf("Size = %d, want %d", img.Size(), tc.spec.Size)
			}
			if pct := testimg.CompressedClusters(t, path); tc.wantCompressed == (pct == "0.00") {
				t.Fatalf("qemu-img check: %s%% compressed clusters, want compressed clusters: %v", pct, tc.wantCompressed)
			}
			mustEqual(t, "qemu-img convert vs plaintext", testimg.QemuRaw(t, path, ""), plain)
			checkAllReads(t, img, plain)
		})
	}
}

// TestReadConvertedImages reads images made by `qemu-img convert`, with and
// without -c, with zlib and zstd: qemu-img allocates clusters in order and
// leaves zero ranges unallocated.
func TestReadConvertedImages(t *testing.T) {
	raw := make([]byte, 3<<20)
	copy(raw[100<<10:], testimg.RandomBytes(300<<10, 30))
	copy(raw[2<<20:], testimg.RandomBytes(70<<10, 31))
	for i := 1<<20 + 4096; i < 1<<20+200<<10; i++ {
		raw[i] = byte(i % 7) // compressible
	}
	cases := []struct {
		name     string
		options  string
		compress bool
	}{
		{"plain 64k", "", false},
		{"zlib 64k", "", true},
		{"zlib 4k", "cluster_size=4096", true},
		{"zstd 64k", "compression_type=zstd", true},
		{"zstd 2M", "compression_type=zstd,cluster_size=2097152", true},
		{"v2 zlib", "compat=0.10", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := testimg.ConvertQcow2(t, t.TempDir(), "img.qcow2", raw, tc.options, "", tc.compress)
			if pct := testimg.CompressedClusters(t, path); tc.compress == (pct == "0.00") {
				t.Fatalf("qemu-img check: %s%% compressed clusters, want compressed clusters: %v", pct, tc.compress)
			}
			img := openImage(t, path)
			mustEqual(t, "qemu-img convert -O raw vs source", testimg.QemuRaw(t, path, ""), raw)
			checkAllReads(t, img, raw)
		})
	}
}

// TestReadAtEndOfDisk proves io.ReaderAt semantics at the end of the disk:
// a read crossing the end returns the bytes before it and io.EOF, a read at
// or past the end returns 0 and io.EOF, a negative offset is an error.
func TestReadAtEndOfDisk(t *testing.T) {
	path, plain := testimg.MakeQcow2(t, t.TempDir(), "img.qcow2", testimg.QcowImage{Size: 1<<20 + 512,
		Passes: [][]W{{{Off: 1<<20 - 100, Len: 612, Seed: 24}}}})
	img := openImage(t, path)
	buf := make([]byte, 1000)
	n, err := img.ReadAt(buf, img.Size()-300)
	if n != 300 || err != io.EOF {
		t.Fatalf("read across the end = %d, %v; want 300, io.EOF", n, err)
	}
	mustEqual(t, "tail", buf[:n], plain[len(plain)-300:])
	for _, off := range []int64{img.Size(), img.Size() + 1<<40} {
		if n, err := img.ReadAt(buf, off); n != 0 || err != io.EOF {
			t.Fatalf("read at %d = %d, %v; want 0, io.EOF", off, n, err)
		}
	}
	if _, err := img.ReadAt(buf, -1); err == nil {
		t.Fatal("read at -1 succeeded")
	}
}
