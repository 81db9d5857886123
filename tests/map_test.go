package tests

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/imgfs/imgfs/tests/testimg"
)

// qemuMapJSON is `qemu-img map --output=json` with args, parsed.
func mapJSON(t *testing.T, out []byte) []map[string]any {
	t.Helper()
	var m []map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("map output %q: %v", out, err)
	}
	return m
}

// sameMap compares imgfs's map with qemu-img's entry by entry and field by
// field (for the fields in keys; nil = every field qemu prints). imgfs may
// add "compressed": true, which qemu 7.2 does not print.
func sameMap(t *testing.T, ours, qemu []map[string]any, keys []string) {
	t.Helper()
	if len(ours) != len(qemu) {
		t.Fatalf("imgfs map has %d extents, qemu-img %d:\nimgfs %v\nqemu  %v", len(ours), len(qemu), ours, qemu)
	}
	for i := range qemu {
		ks := keys
		if ks == nil {
			for k := range qemu[i] {
				ks = append(ks, k)
			}
			for k := range ours[i] {
				if _, ok := qemu[i][k]; !ok && k != "compressed" {
					t.Fatalf("extent %d: imgfs prints %q, qemu-img does not: %v / %v", i, k, ours[i], qemu[i])
				}
			}
		}
		for _, k := range ks {
			if !reflect.DeepEqual(ours[i][k], qemu[i][k]) {
				t.Fatalf("extent %d field %q: imgfs %v, qemu-img %v\nimgfs %v\nqemu  %v", i, k, ours[i][k], qemu[i][k], ours, qemu)
			}
		}
	}
}

// `imgfs map --json` equals `qemu-img map --output=json` field by field on
// plain qcow2 images with data, zero, unallocated and compressed clusters,
// with extended L2 (subclusters), and on a sparse raw file; for qcow2+LUKS
// the data/zero layout is qemu's (imgfs needs no key for it).
func TestMapEqualsQemuImgMap(t *testing.T) {
	testimg.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	writes := []string{"write -P 1 0 128k", "write -z 256k 64k", "write -c -P 2 1M 64k", "write -c -P 4 1088k 64k",
		"write -P 3 1152k 64k", "write -P 5 3M 4k", "write -P 6 3076k 60k", "write -z 7M 12k"}
	for _, c := range []struct{ name, opts string }{
		{"qcow2", "cluster_size=65536"},
		{"qcow2 4k clusters", "cluster_size=4096"},
		{"qcow2 extended L2", "cluster_size=131072,extended_l2=on"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(dir, fmt.Sprintf("%d.qcow2", len(c.opts)))
			testimg.QemuImg(t, "create", "-q", "-f", "qcow2", "-o", c.opts, p, "8M")
			args := []string{"-f", "qcow2", p}
			for _, w := range writes {
				if c.opts == "cluster_size=131072,extended_l2=on" && w[7] == 'c' {
					continue // qemu cannot compress subclusters
				}
				args = append([]string{"-c", w}, args...)
			}
			testimg.QemuIO(t, args...)
			sameMap(t, mapJSON(t, mustImgfs(t, nil, "map", "--json", p)), mapJSON(t, testimg.QemuImg(t, "map", "--output=json", "-f", "qcow2", p)), nil)
		})
	}
	t.Run("raw", func(t *testing.T) {
		p := testimg.WriteFile(t, dir, "r.raw", testimg.RandomBytes(3<<20, 9))
		testimg.Run(t, "truncate", "-s", "16M", p)
		testimg.QemuIO(t, "-c", "write -P 7 12M 1M", "-f", "raw", p)
		sameMap(t, mapJSON(t, mustImgfs(t, nil, "map", "--json", p)), mapJSON(t, testimg.QemuImg(t, "map", "--output=json", "-f", "raw", p)), nil)
	})
	t.Run("qcow2+LUKS", func(t *testing.T) {
		plain := testimg.RandomBytes(4<<20, 10)
		clear(plain[1<<20 : 3<<20])
		p := testimg.ConvertQcow2(t, dir, "e.qcow2", plain, "", testPassphrase, false)
		ours := mapJSON(t, mustImgfs(t, nil, "map", "--json", p)) // no key
		sameMap(t, ours, mapJSON(t, testimg.QemuImg(t, "map", "--output=json", "--object", "secret,id=s,data="+testPassphrase,
			"--image-opts", "driver=qcow2,encrypt.key-secret=s,file.filename="+p)), []string{"start", "length", "present", "zero", "data"})
	})
}
