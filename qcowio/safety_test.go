package qcowio

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/tests/testimg"
)

// patch overwrites bytes of a file.
func patch(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func be64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// fileU64 reads a big-endian u64 of a file.
func fileU64(t *testing.T, path string, off int64) uint64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return binary.BigEndian.Uint64(b[off:])
}

// copyBigLUKS copies the shared qcow2+LUKS image into dir for patching.
func copyBigLUKS(t *testing.T, dir string) string {
	t.Helper()
	src, _ := bigLUKS(t)
	p := filepath.Join(dir, "enc.qcow2")
	testimg.CopyFile(t, src, p)
	return p
}

// cryptoExtOffset returns the file offset of the data (u64 offset, u64
// length) of the crypto header extension 0x0537be77, parsed independently.
func cryptoExtOffset(t *testing.T, path string) int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for off := int64(binary.BigEndian.Uint32(b[100:])); off+8 <= 65536; {
		typ, n := binary.BigEndian.Uint32(b[off:]), int64(binary.BigEndian.Uint32(b[off+4:]))
		if typ == 0x0537be77 {
			return off + 8
		}
		if typ == 0 {
			break
		}
		off += 8 + (n+7)&^7
	}
	t.Fatal("no crypto header extension")
	return 0
}

// readFileAt returns n bytes of a file at off.
func readFileAt(t *testing.T, path string, off, n int64) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b[off : off+n]
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// l2EntryOffset returns the file offset of the standard L2 entry of guest
// cluster ci of a qcow2 image written by qemu (parsed here independently of
// the package: header byte 40 is l1_table_offset, byte 20 cluster_bits).
func l2EntryOffset(t *testing.T, path string, ci int64) int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cb := binary.BigEndian.Uint32(b[20:])
	perL2 := int64(1) << (cb - 3)
	l1 := int64(binary.BigEndian.Uint64(b[40:]))
	l1e := binary.BigEndian.Uint64(b[l1+8*(ci/perL2):]) & 0x00fffffffffffe00
	if l1e == 0 {
		t.Fatalf("cluster %d has no L2 table", ci)
	}
	return int64(l1e) + 8*(ci%perL2)
}

// baseImage makes a 64k-cluster v3 image with data in clusters 0 and 16.
func baseImage(t *testing.T, dir string, opts string) string {
	path, _ := testimg.MakeQcow2(t, dir, "img.qcow2", testimg.QcowImage{Size: 4 << 20, Options: opts,
		Passes: [][]W{{{Off: 0, Len: 64 << 10, Seed: 70}, {Off: 1 << 20, Len: 64 << 10, Seed: 71}}}})
	return path
}

// TestUnsafeImagesRefused builds each unsafe image from a real one and
// proves that Open refuses it with a specific reason and error kind, and
// that Inspect reports the same reason without failing.
func TestUnsafeImagesRefused(t *testing.T) {
	cases := []struct {
		name   string
		make   func(t *testing.T, dir string) string
		kind   error
		reason string
	}{
		{"backing file", func(t *testing.T, dir string) string {
			base := testimg.WriteFile(t, dir, "base.raw", make([]byte, 1<<20))
			p := filepath.Join(dir, "overlay.qcow2")
			testimg.QemuImg(t, "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", p)
			return p
		}, blockdev.ErrUnsupported, `backing file "` + "/"},
		{"external data file", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "img.qcow2")
			testimg.QemuImg(t, "create", "-q", "-f", "qcow2", "-o", "data_file="+filepath.Join(dir, "data.raw"), p, "1M")
			return p
		}, blockdev.ErrUnsupported, "external data file"},
		{"raw external data file", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "img.qcow2")
			testimg.QemuImg(t, "create", "-q", "-f", "qcow2", "-o", "data_file="+filepath.Join(dir, "data.raw")+",data_file_raw=on", p, "1M")
			return p
		}, blockdev.ErrUnsupported, "raw external data bit"},
		{"legacy AES encryption", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "aes.qcow2")
			testimg.QemuImg(t, "create", "-q", "-f", "qcow2", "--object", "secret,id=sec0,data=x",
				"-o", "encrypt.format=aes,encrypt.key-secret=sec0", p, "1M")
			return p
		}, ErrInsecureEncryption, "legacy qcow2 AES encryption is insecure"},
		{"L1 table past EOF", func(t *testing.T, dir string) string {
			p := baseImage(t, dir, "")
			patch(t, p, 40, be64(uint64(fileSize(t, p))+1<<20))
			return p
		}, blockdev.ErrTruncated, "L1 table at"},
		{"cluster_bits too small", func(t *testing.T, dir string) string {
			p := baseImage(t, dir, "")
			patch(t, p, 20, be32(8))
			return p
		}, blockdev.ErrCorrupt, "cluster_bits 8 out of range"},
		{"cluster_bits too large", func(t *testing.T, dir string) string {
			p := baseImage(t, dir, "")
			patch(t, p, 20, be32(22))
			return p
		}, blockdev.ErrCorrupt, "cluster_bits 22 out of range"},
		{"huge l1_size", func(t *testing.T, dir string) string {
			p := baseImage(t, dir, "")
			patch(t, p, 36, be32(0x10000000))
			return p
		}, blockdev.ErrUnsupported, "l1_size 268435456"},
		{"l1_size too small for the disk", func(t *testing.T, dir string) string {
			p := baseImage(t, dir, "")
			patch(t, p, 24, be64(1<<40)) // 1 TiB virtual size, one L1 entry
			return p
		}, blockdev.ErrCorrupt, "too small for virtual size"},
		{"absurd virtual size", func(t *testing.T, dir string) string {
			p := baseImage(t, dir, "")
			patch(t, p, 24, be64(1<<62))
			return p
		}, blockdev.ErrUnsupported, "virtual size 4611686018427387904"},
		{"refcount table past EOF", func(t *testing.T, dir string) string {
			p := baseImage(t, dir, "")
			patch(t, p, 48, be64(1<<30))
			return p
		}, blockdev.ErrTruncated, "refcount table at 0x40000000"},
		{"truncated file loses data clusters", func(t *testing.T, dir string) string {
			p := baseImage(t, dir, "")
			if err := os.Truncate(p, fileSize(t, p)-32<<10); err != nil {
				t.Fatal(err)
			}
			return p
		}, blockdev.ErrTruncated, "data cluster at"},
		{"L2 table past EOF", func(t *testing.T, dir string) string {
			p := baseImage(t, dir, "")
			l1 := int64(fileU64(t, p, 40))
			patch(t, p, l1, be64(1<<63|1<<40))
			return p
		}, blockdev.ErrTruncated, "L2 table at 0x10000000000 outside the file"},
		{"data cluster past EOF", func(t *testing.T, dir string) string {
			p := baseImage(t, dir, "")
			patch(t, p, l2EntryOffset(t, p, 16), be64(1<<63|1<<40))
			return p
		}, blockdev.ErrTruncated, "data cluster at 0x10000000000 past the end of the file"},
		{"compressed cluster past EOF", func(t *testing.T, dir string) string {
			p, _ := testimg.MakeQcow2(t, dir, "img.qcow2", testimg.QcowImage{Size: 1 << 20,
				Passes: [][]W{{{Off: 0, Len: 64 << 10, Compressed: true, Seed: 72}}}})
			// 64k clusters: offset in bits 0..53, sector count above.
			patch(t, p, l2EntryOffset(t, p, 0), be64(1<<62|1<<40))
			return p
		}, blockdev.ErrTruncated, "compressed cluster at 0x10000000000 past the end of the file"},
		{"compressed cluster in an encrypted image", func(t *testing.T, dir string) string {
			p := copyBigLUKS(t, dir)
			// A compressed descriptor pointing at sector 8 of the file.
			patch(t, p, l2EntryOffset(t, p, 0), be64(1<<62|0x10000))
			return p
		}, blockdev.ErrCorrupt, "compressed cluster in an encrypted image"},
		{"damaged embedded LUKS header", func(t *testing.T, dir string) string {
			p := copyBigLUKS(t, dir)
			patch(t, p, int64(fileU64(t, p, cryptoExtOffset(t, p))), []byte("XXXX"))
			return p
		}, blockdev.ErrCorrupt, "LUKS header:"},
		{"LUKS header area past EOF", func(t *testing.T, dir string) string {
			p := copyBigLUKS(t, dir)
			patch(t, p, cryptoExtOffset(t, p), be64(1<<40))
			return p
		}, blockdev.ErrTruncated, "LUKS header area at 0x10000000000"},
		{"header extension longer than the first cluster", func(t *testing.T, dir string) string {
			p := baseImage(t, dir, "")
			hl := int64(binary.BigEndian.Uint32(readFileAt(t, p, 100, 4)))
			patch(t, p, hl+4, be32(0x7fffffff))
			return p
		}, blockdev.ErrCorrupt, "runs past the first cluster"},
		{"dirty bit", func(t *testing.T, dir string) string {
			p := baseImage(t, dir, "")
			patch(t, p, 72, be64(1))
			return p
		}, blockdev.ErrCorrupt, "marked dirty"},
		{"corrupt bit", func(t *testing.T, dir string) string {
			p := baseImage(t, dir, "")
			patch(t, p, 72, be64(2))
			return p
		}, blockdev.ErrCorrupt, "marked corrupt"},
		{"unknown incompatible bit", func(t *testing.T, dir string) string {
			p := baseImage(t, dir, "")
			patch(t, p, 72, be64(1<<20))
			return p
		}, blockdev.ErrUnsupported, "unknown incompatible features: bit 20"},
		{"header_length too short", func(t *testing.T, dir string) string {
			p := baseImage(t, dir, "")
			patch(t, p, 100, be32(96))
			return p
		}, blockdev.ErrCorrupt, "header_length 96 shorter than 104"},
		{"header_length not a multiple of 8", func(t *testing.T, dir string) string {
			p := baseImage(t, dir, "")
			patch(t, p, 100, be32(109))
			return p
		}, blockdev.ErrCorrupt, "header_length 109 not a multiple of 8"},
		{"unsupported version", func(t *testing.T, dir string) string {
			p := baseImage(t, dir, "")
			patch(t, p, 4, be32(4))
			return p
		}, blockdev.ErrUnsupported, "unsupported qcow2 version 4"},
		{"unknown crypt method", func(t *testing.T, dir string) string {
			p := baseImage(t, dir, "")
			patch(t, p, 32, be32(7))
			return p
		}, blockdev.ErrUnsupported, "unknown crypt method 7"},
		{"LUKS without its header extension", func(t *testing.T, dir string) string {
			p := baseImage(t, dir, "")
			patch(t, p, 32, be32(2))
			return p
		}, blockdev.ErrCorrupt, "LUKS encryption without a crypto header extension"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := tc.make(t, t.TempDir())
			_, err := Open(openFile(t, path), Policy{})
			if !errors.Is(err, ErrUnsafe) || !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("Open error = %v\nwant ErrUnsafe and %v mentioning %q", err, tc.kind, tc.reason)
			}
			info, err := Inspect(openFile(t, path), Policy{})
			if err != nil {
				t.Fatalf("Inspect: %v", err)
			}
			if info.Safe || !strings.Contains(strings.Join(info.Reasons, "\n"), tc.reason) {
				t.Fatalf("Inspect: Safe=%v Reasons=%q, want a reason mentioning %q", info.Safe, info.Reasons, tc.reason)
			}
		})
	}
}

// TestDirtyAllowedByPolicy makes a really dirty image (qemu-io aborts
// after a write to a lazy-refcounts image) and proves that AllowDirty is the
// only relaxation and that the dirty image still reads correctly with it.
func TestDirtyAllowedByPolicy(t *testing.T) {
	dir := t.TempDir()
	path, plain := testimg.MakeQcow2(t, dir, "img.qcow2", testimg.QcowImage{Size: 2 << 20, Options: "lazy_refcounts=on"})
	data := testimg.RandomBytes(100<<10, 80)
	src := testimg.WriteFile(t, dir, "data", data)
	copy(plain[4096:], data)
	// qemu-io exits with SIGABRT by design here.
	_, _ = testimg.RunErr("qemu-io", "-f", "qcow2", "-c", "write -q -s "+src+" 4096 102400", "-c", "abort", path)
	if readFileAt(t, path, 79, 1)[0]&1 == 0 {
		t.Fatal("qemu-io abort left no dirty bit: the vector is not dirty")
	}
	if _, err := Open(openFile(t, path), Policy{}); !errors.Is(err, ErrUnsafe) || !strings.Contains(err.Error(), "marked dirty") {
		t.Fatalf("dirty image with the strict policy: %v", err)
	}
	img, err := Open(openFile(t, path), Policy{AllowDirty: true})
	if err != nil {
		t.Fatalf("Open with AllowDirty: %v", err)
	}
	if got := img.Info().IncompatibleFeatures; len(got) != 1 || got[0] != "dirty" {
		t.Fatalf("IncompatibleFeatures = %q, want [dirty]", got)
	}
	mustEqual(t, "dirty image", readAll(t, img, 0), plain)

	// AllowDirty does not relax the corrupt bit.
	patch(t, path, 72, be64(3))
	if _, err := Open(openFile(t, path), Policy{AllowDirty: true}); !errors.Is(err, ErrUnsafe) || !strings.Contains(err.Error(), "marked corrupt") {
		t.Fatalf("corrupt+dirty image with AllowDirty: %v", err)
	}
}

// TestNotQcow2AndUnreadableHeaders proves that Inspect fails only for
// non-qcow2 input and headers that cannot be read.
func TestNotQcow2AndUnreadableHeaders(t *testing.T) {
	dir := t.TempDir()
	path := baseImage(t, dir, "")
	head, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		data []byte
		want error
	}{
		{"empty", nil, ErrNotQcow2},
		{"raw zeros", make([]byte, 4096), ErrNotQcow2},
		{"LUKS magic", []byte("LUKS\xba\xbe\x00\x01"), ErrNotQcow2},
		{"magic only", head[:4], blockdev.ErrTruncated},
		{"v3 header cut at 80 bytes", head[:80], blockdev.ErrTruncated},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := testimg.WriteFile(t, dir, "x", tc.data)
			if _, err := Inspect(openFile(t, p), Policy{}); !errors.Is(err, tc.want) {
				t.Fatalf("Inspect = %v, want %v", err, tc.want)
			}
			if _, err := Open(openFile(t, p), Policy{}); !errors.Is(err, tc.want) {
				t.Fatalf("Open = %v, want %v", err, tc.want)
			}
		})
	}
	if IsQcow2(head[:3]) || !IsQcow2(head[:4]) || IsQcow2([]byte("QFI\xfa")) {
		t.Fatal("IsQcow2 disagrees with the magic QFI\\xfb")
	}
}

// TestUnknownHeaderExtensionSkipped renames qemu's feature table extension
// to an unknown type: the image stays safe and reads the same.
func TestUnknownHeaderExtensionSkipped(t *testing.T) {
	dir := t.TempDir()
	path, plain := testimg.MakeQcow2(t, dir, "img.qcow2", testimg.QcowImage{Size: 2 << 20,
		Passes: [][]W{{{Off: 4096, Len: 100 << 10, Seed: 81}}}})
	hl := int64(binary.BigEndian.Uint32(readFileAt(t, path, 100, 4)))
	if typ := binary.BigEndian.Uint32(readFileAt(t, path, hl, 4)); typ != extFeatureTable {
		t.Fatalf("first header extension is %#x, want the feature table", typ)
	}
	patch(t, path, hl, be32(0x12345678))
	mustEqual(t, "image with an unknown extension", readAll(t, openImage(t, path), 0), plain)
}
