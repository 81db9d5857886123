package qcowio

import (
	"encoding/json"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/imgfs/imgfs/tests/testimg"
)

// qemuAllocatedClusters parses "N/M = x% allocated" from `qemu-img check`.
func qemuAllocatedClusters(t *testing.T, path string) int64 {
	t.Helper()
	out, _ := testimg.RunErr("qemu-img", "check", "-f", "qcow2", path)
	m := regexp.MustCompile(`(\d+)/\d+ = [\d.]+% allocated`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("qemu-img check: no allocation statistics in %q", out)
	}
	n, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return n
}

// everyL2 writes n small pieces, one into each 2 MiB range (the reach of
// one L2 table with 4k clusters).
func everyL2(n int) []W {
	var w []W
	for i := range n {
		w = append(w, W{Off: int64(i)<<21 + int64(i)*4096, Len: 4096 + int64(i), Seed: uint64(200 + i)})
	}
	return w
}

// TestInfoDescribesImage checks Info against what qemu-img made: version,
// geometry, features by name, compression type and the allocated bytes that
// `qemu-img check` counts.
func TestInfoDescribesImage(t *testing.T) {
	cases := []struct {
		name        string
		spec        testimg.QcowImage
		version     int
		cluster     int64
		compression string
		extL2       bool
		incompat    []string
		compat      []string
	}{
		{"v3 defaults", testimg.QcowImage{Size: 4 << 20, Passes: scattered(65536)}, 3, 65536, "zlib", false, []string{}, []string{}},
		{"v2 4k", testimg.QcowImage{Size: 4 << 20, Options: "compat=0.10,cluster_size=4096", Passes: scattered(4096)}, 2, 4096, "zlib", false, []string{}, []string{}},
		{"4k clusters, 20 L2 tables walked in batches", testimg.QcowImage{Size: 40 << 20, Options: "cluster_size=4096", Passes: [][]W{everyL2(20)}},
			3, 4096, "zlib", false, []string{}, []string{}},
		{"zstd extended L2 lazy refcounts", testimg.QcowImage{Size: 4 << 20, Options: "compression_type=zstd,extended_l2=on,lazy_refcounts=on", Passes: scattered(65536)},
			3, 65536, "zstd", true, []string{"compression type", "extended L2 entries"}, []string{"lazy refcounts"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path, _ := testimg.MakeQcow2(t, t.TempDir(), "img.qcow2", tc.spec)
			info, err := Inspect(openFile(t, path), Policy{})
			if err != nil {
				t.Fatal(err)
			}
			if info.Version != tc.version || info.ClusterSize != tc.cluster || info.VirtualSize != tc.spec.Size ||
				info.FileSize != fileSize(t, path) || info.Encryption != "none" || info.CompressionType != tc.compression ||
				info.ExtendedL2 != tc.extL2 || !info.Safe || len(info.Reasons) != 0 {
				t.Fatalf("Info = %+v", info)
			}
			if !slices.Equal(info.IncompatibleFeatures, tc.incompat) || !slices.Equal(info.CompatibleFeatures, tc.compat) {
				t.Fatalf("features: incompatible %q compatible %q, want %q %q", info.IncompatibleFeatures, info.CompatibleFeatures, tc.incompat, tc.compat)
			}
			if want := qemuAllocatedClusters(t, path) * tc.cluster; info.AllocatedBytes != want {
				t.Fatalf("AllocatedBytes = %d, want %d (qemu-img check)", info.AllocatedBytes, want)
			}
			js, err := json.Marshal(info)
			if err != nil {
				t.Fatal(err)
			}
			for _, key := range []string{`"cluster_size":`, `"virtual_size":`, `"allocated_bytes":`, `"compression_type":`, `"safe":true`} {
				if !strings.Contains(string(js), key) {
					t.Fatalf("JSON %s lacks %s", js, key)
				}
			}
		})
	}
}

// TestInfoNamesBackingAndDataFiles proves Inspect reports what an unsafe
// image refers to, so `imgfs info` can say why it refuses.
func TestInfoNamesBackingAndDataFiles(t *testing.T) {
	dir := t.TempDir()
	base := testimg.WriteFile(t, dir, "base.raw", make([]byte, 1<<20))
	overlay := filepath.Join(dir, "overlay.qcow2")
	testimg.QemuImg(t, "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", overlay)
	info, err := Inspect(openFile(t, overlay), Policy{})
	if err != nil {
		t.Fatal(err)
	}
	if info.BackingFile != base || info.BackingFormat != "raw" || info.Safe {
		t.Fatalf("backing file %q format %q safe %v, want %q raw false", info.BackingFile, info.BackingFormat, info.Safe, base)
	}
	data := filepath.Join(dir, "data.raw")
	withData := filepath.Join(dir, "data.qcow2")
	testimg.QemuImg(t, "create", "-q", "-f", "qcow2", "-o", "data_file="+data, withData, "1M")
	info, err = Inspect(openFile(t, withData), Policy{})
	if err != nil {
		t.Fatal(err)
	}
	if info.DataFile != data || info.Safe || !slices.Contains(info.IncompatibleFeatures, "external data file") {
		t.Fatalf("data file %q safe %v incompatible %q", info.DataFile, info.Safe, info.IncompatibleFeatures)
	}
}

// TestInfoOfLUKSImage proves the LUKS header is reported without a key and
// that the JSON holds no passphrase.
func TestInfoOfLUKSImage(t *testing.T) {
	t.Parallel()
	path, _ := bigLUKS(t)
	info, err := Inspect(openFile(t, path), Policy{})
	if err != nil {
		t.Fatal(err)
	}
	if info.Encryption != "luks" || info.LUKS == nil || !info.Safe || info.VirtualSize != 1<<40 {
		t.Fatalf("Info = %+v", info)
	}
	js, err := json.Marshal(info)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(js), `"luks":`) || strings.Contains(string(js), testPass) {
		t.Fatalf("JSON: %s", js)
	}
}
