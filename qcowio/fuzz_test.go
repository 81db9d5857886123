package qcowio

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"os"
	"testing"

	"github.com/imgfs/imgfs/tests/testimg"
)

// fuzzSeeds are small real images: 4k clusters keep them a few clusters long.
var fuzzSeeds = []testimg.QcowImage{
	{Size: 1 << 20, Options: "cluster_size=4096", Passes: [][]W{{{Off: 8192, Len: 4096, Seed: 1}, {Off: 512 << 10, Len: 100, Seed: 2}}, {{Off: 4096, Len: 4096, Zero: true}}}},
	{Size: 1 << 20, Options: "cluster_size=4096,compat=0.10", Passes: [][]W{{{Off: 0, Len: 4096, Seed: 3}}}},
	{Size: 1 << 20, Options: "cluster_size=4096,compression_type=zstd", Passes: [][]W{{{Off: 0, Len: 8192, Compressed: true, Seed: 4}}}},
	{Size: 1 << 20, Options: "cluster_size=4096", Passes: [][]W{{{Off: 4096, Len: 8192, Compressed: true, Seed: 5}}}},
	{Size: 1 << 20, Options: "cluster_size=16384,extended_l2=on", Passes: [][]W{{{Off: 1024, Len: 2048, Seed: 6}}}},
}

// FuzzQcow2 feeds arbitrary bytes through Inspect, Open, reads and the data
// map: nothing may panic, Inspect's verdict must agree with Open, and reads
// of an encrypted image without a key must fail with ErrKeyRequired.
func FuzzQcow2(f *testing.F) {
	// testdata/fuzz/FuzzQcow2 holds images made by qemu-img; more are made
	// here for plain test runs (fuzz workers re-run this function, and
	// running qemu-img in each of them stalls the fuzzer).
	if fl := flag.Lookup("test.fuzz"); fl == nil || fl.Value.String() == "" {
		dir := f.TempDir()
		for _, spec := range fuzzSeeds {
			path, _ := testimg.MakeQcow2(f, dir, "seed.qcow2", spec)
			b, err := os.ReadFile(path)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		dev := bytes.NewReader(data)
		info, err := Inspect(dev, Policy{AllowDirty: true})
		if err != nil {
			if _, err2 := Open(dev, Policy{AllowDirty: true}); err2 == nil {
				t.Fatalf("Inspect failed (%v) but Open succeeded", err)
			}
			return
		}
		img, err := Open(dev, Policy{AllowDirty: true})
		if (err == nil) != info.Safe {
			t.Fatalf("Inspect Safe=%v (%q) but Open error %v", info.Safe, info.Reasons, err)
		}
		if err != nil {
			return
		}
		defer img.Close()
		buf := make([]byte, 64<<10)
		for off := int64(0); off < min(img.Size(), 1<<20); off += int64(len(buf)) - 1000 {
			_, err := img.ReadAt(buf, off)
			if img.Encrypted() && !errors.Is(err, ErrKeyRequired) {
				t.Fatalf("read of an encrypted image without a key: %v", err)
			}
		}
		off := int64(0)
		for range 1000 {
			d, err := img.NextData(off)
			if err != nil || d >= img.Size() {
				if err != nil && !errors.Is(err, io.EOF) && d != 0 {
					t.Fatalf("NextData error %v with offset %d", err, d)
				}
				break
			}
			if d < off {
				t.Fatalf("NextData(%d) = %d went backwards", off, d)
			}
			h, err := img.NextHole(d)
			if err != nil {
				break
			}
			if h <= d {
				t.Fatalf("NextHole(%d) = %d, want > %d", d, h, d)
			}
			off = h
		}
	})
}
