package qcowio

import (
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/imgfs/imgfs/tests/testimg"
)

// dataRanges lists the data ranges of img through NextData/NextHole.
func dataRanges(t *testing.T, img *Image) [][2]int64 {
	t.Helper()
	var out [][2]int64
	for off := int64(0); off < img.Size(); {
		d, err := img.NextData(off)
		if errors.Is(err, io.EOF) || (err == nil && d >= img.Size()) {
			break
		}
		if err != nil {
			t.Fatalf("NextData(%d): %v", off, err)
		}
		h, err := img.NextHole(d)
		if err != nil || h <= d {
			t.Fatalf("NextHole(%d) = %d, %v", d, h, err)
		}
		out = append(out, [2]int64{d, h})
		off = h
	}
	return out
}

// qemuDataRanges merges the data extents of `qemu-img map`.
func qemuDataRanges(m []testimg.MapEntry) [][2]int64 {
	var out [][2]int64
	for _, e := range m {
		if !e.Data {
			continue
		}
		if n := len(out); n > 0 && out[n-1][1] == e.Start {
			out[n-1][1] += e.Length
			continue
		}
		out = append(out, [2]int64{e.Start, e.Start + e.Length})
	}
	return out
}

// TestDataMapMatchesQemuMap proves NextData/NextHole agree with `qemu-img
// map`: allocated and compressed clusters are data, zero clusters, zero
// subclusters and unallocated clusters are holes.
func TestDataMapMatchesQemuMap(t *testing.T) {
	cases := []struct {
		name string
		spec testimg.QcowImage
	}{
		{"scattered 64k clusters", testimg.QcowImage{Size: 4 << 20, Passes: scattered(65536)}},
		{"scattered 4k clusters v2", testimg.QcowImage{Size: 4 << 20, Options: "compat=0.10,cluster_size=4096", Passes: scattered(4096)}},
		{"zero clusters and compressed clusters", testimg.QcowImage{Size: 4 << 20, Options: "cluster_size=4096", Passes: [][]W{
			{{Off: 0, Len: 1 << 20, Seed: 100}, {Off: 2 << 20, Len: 64 << 10, Compressed: true, Seed: 101}},
			{{Off: 64 << 10, Len: 16 << 10, Zero: true}, {Off: 1<<20 - 4096, Len: 4096, Zero: true}},
		}}},
		{"extended L2 subclusters", testimg.QcowImage{Size: 4 << 20, Options: "extended_l2=on", Passes: [][]W{
			{{Off: 1 << 20, Len: 2048, Seed: 102}, {Off: 1<<20 + 8192, Len: 4096, Seed: 103}, {Off: 0, Len: 128 << 10, Seed: 104}},
			{{Off: 32 << 10, Len: 4096, Zero: true}},
		}}},
		{"empty 1 TiB disk", testimg.QcowImage{Size: 1 << 40}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path, _ := testimg.MakeQcow2(t, t.TempDir(), "img.qcow2", tc.spec)
			img := openImage(t, path)
			got, want := dataRanges(t, img), qemuDataRanges(testimg.QemuMap(t, path))
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("data ranges\n got %v\nwant %v (qemu-img map)", got, want)
			}
			if _, err := img.NextData(img.Size()); !errors.Is(err, io.EOF) {
				t.Fatalf("NextData(Size) = %v, want io.EOF", err)
			}
		})
	}
}

// TestDataMapOfHugeLUKSImage proves the map of a 1 TiB qcow2+LUKS disk
// matches qemu's, without a key (the map is not secret).
func TestDataMapOfHugeLUKSImage(t *testing.T) {
	t.Parallel()
	path, _ := bigLUKS(t)
	img := openImage(t, path)
	got, want := dataRanges(t, img), qemuDataRanges(testimg.QemuMapLUKS(t, path, testPass))
	if fmt.Sprint(got) != fmt.Sprint(want) || len(got) != 2 {
		t.Fatalf("data ranges\n got %v\nwant %v (qemu-img map)", got, want)
	}
}
