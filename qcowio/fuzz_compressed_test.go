package qcowio

import (
	"bytes"
	"compress/flate"
	"io"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/tests/testimg"
)

// compressedSeeds returns the raw bytes of every compressed cluster of a
// qemu-made image (as the descriptor delimits them) with its cluster bits.
func compressedSeeds(f *testing.F, opts string) (seeds [][]byte, clusterBits uint) {
	path, _ := testimg.MakeQcow2(f, f.TempDir(), "seed.qcow2", testimg.QcowImage{Size: 1 << 20, Options: opts,
		Passes: [][]testimg.QcowWrite{{{Off: 0, Len: 16384, Compressed: true, Seed: 9}}}})
	dev, err := blockdev.OpenFile(path)
	if err != nil {
		f.Fatal(err)
	}
	defer dev.Close()
	img, err := Open(dev, Policy{})
	if err != nil {
		f.Fatal(err)
	}
	for off := int64(0); off < 16384; off += img.clusterSize {
		e, err := img.lookup(off)
		if err != nil || e.kind != kindCompressed {
			f.Fatalf("cluster at %d: %v, kind %d: want compressed", off, err, e.kind)
		}
		raw := make([]byte, min(e.cSize, img.fileSize-e.cOffset))
		if err := blockdev.ReadFull(dev, raw, e.cOffset); err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, raw)
	}
	return seeds, img.clusterBits
}

// FuzzCompressedCluster feeds mutated compressed clusters (seeded from
// qemu-io's zlib and zstd clusters) to the decompressors with cluster sizes
// from 512 bytes to 64 KiB. Nothing may panic, and an accepted cluster must
// be exactly what an independent decoder reads as the stream's first
// cluster-size bytes: no short or overlong cluster is ever accepted, and
// nothing is inflated past one cluster.
func FuzzCompressedCluster(f *testing.F) {
	for _, c := range []struct {
		zstd bool
		opts string
	}{
		{false, "cluster_size=4096"},
		{true, "cluster_size=4096,compression_type=zstd"},
	} {
		seeds, cb := compressedSeeds(f, c.opts)
		for _, s := range seeds {
			f.Add(c.zstd, uint8(cb-minClusterBits), s)
		}
	}
	f.Fuzz(func(t *testing.T, useZstd bool, cb uint8, in []byte) {
		bits := minClusterBits + uint(cb)%8 // 512 B .. 64 KiB
		out := make([]byte, 1<<bits)
		var err error
		if useZstd {
			err = inflateZstd(out, in)
		} else {
			err = inflateZlib(out, in)
		}
		if err != nil {
			return
		}
		var ref io.Reader
		if useZstd {
			n, ferr := zstdFrameLen(in)
			if ferr != nil {
				t.Fatalf("accepted a zstd cluster whose frame length fails: %v", ferr)
			}
			d, derr := zstd.NewReader(bytes.NewReader(in[:n]), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(zstdMaxMemory))
			if derr != nil {
				return
			}
			defer d.Close()
			ref = d
		} else {
			ref = flate.NewReader(bytes.NewReader(in))
		}
		want := make([]byte, len(out)+1)
		n, _ := io.ReadFull(ref, want)
		if n > len(out) {
			t.Fatalf("accepted a cluster of %d bytes whose stream inflates further", len(out))
		}
		if n < len(out) {
			t.Fatalf("accepted a cluster of %d bytes; the reference decoder reads only %d", len(out), n)
		}
		if !bytes.Equal(want[:len(out)], out) {
			t.Fatal("accepted cluster differs from the reference decoding")
		}
	})
}
