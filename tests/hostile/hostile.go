// Package hostile generates malicious images for imgfs's hostile-input
// suite. Every image starts as a real one made by qemu-img/qemu-io or
// cryptsetup (through tests/testimg) and then has specific fields patched:
// table loops and overlaps, absurd sizes, zip bombs, KDF costs that would
// take hours or terabytes, oversized or deeply nested LUKS2 metadata.
//
// Each Case says what imgfs must answer: the words its error must contain
// (the problem named), and how `imgfs info` must treat the image.
package hostile

import (
	"bytes"
	"compress/flate"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"hash"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgfs/imgfs/tests/testimg"
)

// Pass is the passphrase of every generated encrypted image.
const Pass = "hostile-pass-7f3c91"

// InfoMode is how `imgfs info` must react to a case.
type InfoMode int

const (
	// InfoFails: info exits non-zero and its error contains Case.Want.
	InfoFails InfoMode = iota
	// InfoUnsafe: info exits 0, prints the verdict UNSAFE and a reason
	// containing Case.Want (info describes images, it does not refuse them).
	InfoUnsafe
	// InfoShows: the problem is only visible when reading data or unlocking
	// (info reads neither); info exits 0 and shows Case.InfoWant.
	InfoShows
)

// Case is one malicious image.
type Case struct {
	Name string
	Path string
	// Key is true when the image is encrypted: `cat` gets Pass.
	Key bool
	// Want must appear in the error of `imgfs cat` and of the Go API.
	Want string
	// Info says what `imgfs info` must do; InfoWant is what it must print
	// with InfoShows ("" = Want).
	Info     InfoMode
	InfoWant string
	// KDF marks a refusal for KDF cost: the CLI must name the flags that
	// raise the limits.
	KDF bool
}

var be = binary.BigEndian

func readFile(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// derive copies base to dir/name and applies patch to its bytes.
func derive(t testing.TB, dir, base, name string, patch func(b []byte) []byte) string {
	t.Helper()
	b := patch(bytes.Clone(readFile(t, base)))
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func put32(b []byte, off int, v uint32) { be.PutUint32(b[off:], v) }
func put64(b []byte, off int, v uint64) { be.PutUint64(b[off:], v) }

// qcowLayout is what the generator reads from a qemu-made qcow2 header,
// parsed here independently of qcowio.
type qcowLayout struct {
	clusterBits  uint32
	l1Off        int64
	rtOff        int64
	headerLength uint32
}

func layout(b []byte) qcowLayout {
	return qcowLayout{
		clusterBits:  be.Uint32(b[20:]),
		l1Off:        int64(be.Uint64(b[40:])),
		rtOff:        int64(be.Uint64(b[48:])),
		headerLength: be.Uint32(b[100:]),
	}
}

const (
	copiedFlag     = uint64(1) << 63
	compressedFlag = uint64(1) << 62
	offsetMask     = uint64(0x00fffffffffffe00)
)

// l2Of returns the offset of the L2 table of L1 entry i.
func l2Of(b []byte, l qcowLayout, i int) int64 {
	return int64(be.Uint64(b[l.l1Off+int64(8*i):]) & offsetMask)
}

// Qcow2Cases builds the malicious qcow2 images in dir.
func Qcow2Cases(t testing.TB, dir string) []Case {
	t.Helper()
	// 4 KiB clusters: one L2 table maps 2 MiB, so the 4 MiB disk has two
	// L1 entries, each with an L2 table holding a data cluster.
	base, _ := testimg.MakeQcow2(t, dir, "base.qcow2", testimg.QcowImage{Size: 4 << 20, Options: "cluster_size=4096",
		Passes: [][]testimg.QcowWrite{{{Off: 0, Len: 8192, Seed: 1}, {Off: 2 << 20, Len: 4096, Seed: 2}}}})
	bb := readFile(t, base)
	l := layout(bb)
	if l.clusterBits != 12 || l2Of(bb, l, 0) == 0 || l2Of(bb, l, 1) == 0 {
		t.Fatalf("unexpected base qcow2 layout %+v", l)
	}
	var cases []Case
	add := func(c Case, patch func(b []byte) []byte) {
		c.Path = derive(t, dir, base, fmt.Sprintf("q%02d.qcow2", len(cases)), patch)
		cases = append(cases, c)
	}
	add(Case{Name: "qcow2 L2 table is the L1 table (loop)", Want: "overlaps the L1 table", Info: InfoUnsafe}, func(b []byte) []byte {
		put64(b, int(l.l1Off), uint64(l.l1Off)|copiedFlag)
		return b
	})
	add(Case{Name: "qcow2 L2 table is the refcount table", Want: "overlaps the refcount table", Info: InfoUnsafe}, func(b []byte) []byte {
		put64(b, int(l.l1Off), uint64(l.rtOff)|copiedFlag)
		return b
	})
	add(Case{Name: "qcow2 two L1 entries share one L2 table", Want: "used twice", Info: InfoUnsafe}, func(b []byte) []byte {
		put64(b, int(l.l1Off)+8, be.Uint64(b[l.l1Off:]))
		return b
	})
	add(Case{Name: "qcow2 data cluster is its own L2 table", Want: "overlaps the L2 table", Info: InfoUnsafe}, func(b []byte) []byte {
		l2 := l2Of(b, l, 0)
		put64(b, int(l2), uint64(l2)|copiedFlag)
		return b
	})
	add(Case{Name: "qcow2 data cluster is the L1 table", Want: "overlaps the L1 table", Info: InfoUnsafe}, func(b []byte) []byte {
		put64(b, int(l2Of(b, l, 0)), uint64(l.l1Off)|copiedFlag)
		return b
	})
	add(Case{Name: "qcow2 compressed cluster inside the header", Want: "header cluster", Info: InfoUnsafe}, func(b []byte) []byte {
		// 4 KiB clusters: offset bits 0..53, sector count from bit 58.
		put64(b, int(l2Of(b, l, 0)), compressedFlag|512)
		return b
	})
	add(Case{Name: "qcow2 data cluster past EOF", Want: "past the end of the file", Info: InfoUnsafe}, func(b []byte) []byte {
		put64(b, int(l2Of(b, l, 0)), uint64(1<<40)|copiedFlag)
		return b
	})
	add(Case{Name: "qcow2 L2 table past EOF", Want: "outside the file", Info: InfoUnsafe}, func(b []byte) []byte {
		put64(b, int(l.l1Off), uint64(1<<45)|copiedFlag)
		return b
	})
	add(Case{Name: "qcow2 l1_size 2^32-1", Want: "l1_size 4294967295", Info: InfoUnsafe}, func(b []byte) []byte {
		put32(b, 36, 0xffffffff)
		return b
	})
	add(Case{Name: "qcow2 cluster_bits 63", Want: "cluster_bits 63", Info: InfoUnsafe}, func(b []byte) []byte {
		put32(b, 20, 63)
		return b
	})
	add(Case{Name: "qcow2 cluster_bits 0", Want: "cluster_bits 0", Info: InfoUnsafe}, func(b []byte) []byte {
		put32(b, 20, 0)
		return b
	})
	add(Case{Name: "qcow2 refcount_order 255", Want: "refcount_order 255", Info: InfoUnsafe}, func(b []byte) []byte {
		put32(b, 96, 255)
		return b
	})
	add(Case{Name: "qcow2 refcount table of 2^32-1 clusters", Want: "refcount table of 4294967295 clusters", Info: InfoUnsafe}, func(b []byte) []byte {
		put32(b, 56, 0xffffffff)
		return b
	})
	add(Case{Name: "qcow2 virtual size 2^63-1", Want: "virtual size 9223372036854775807", Info: InfoUnsafe}, func(b []byte) []byte {
		put64(b, 24, 1<<63-1)
		return b
	})
	// qemu-img writes a header extension when a dirty bitmap is added.
	withExt := filepath.Join(dir, "base-ext.qcow2")
	testimg.CopyFile(t, base, withExt)
	testimg.QemuImg(t, "bitmap", "-f", "qcow2", "--add", withExt, "b0")
	ext := derive(t, dir, withExt, fmt.Sprintf("q%02d.qcow2", len(cases)), func(b []byte) []byte {
		off := int(layout(b).headerLength)
		if be.Uint32(b[off:]) == 0 {
			t.Fatalf("qemu-img bitmap --add wrote no header extension at %d", off)
		}
		put32(b, off+4, 0xfffffff0)
		return b
	})
	cases = append(cases, Case{Name: "qcow2 header extension length past the header cluster", Path: ext, Want: "runs past the first cluster", Info: InfoUnsafe})
	cases = append(cases, zipBomb(t, dir))
	return cases
}

// cryptoExt returns the file offset of the data of the qcow2 crypto header
// extension (LUKS header offset and length), walking the extensions.
func cryptoExt(t testing.TB, b []byte) int {
	t.Helper()
	off := int(layout(b).headerLength)
	for off+8 <= len(b) && off < 1<<int(layout(b).clusterBits) {
		typ, n := be.Uint32(b[off:]), int(be.Uint32(b[off+4:]))
		if typ == 0 {
			break
		}
		if typ == 0x0537be77 {
			return off + 8
		}
		off += 8 + (n+7)&^7
	}
	t.Fatal("qcow2+LUKS image without a crypto header extension")
	return 0
}

// Qcow2LUKSCases builds malicious qcow2+LUKS images in dir from one image
// made by qemu-img (LUKS1 embedded in a 64 KiB-cluster qcow2).
func Qcow2LUKSCases(t testing.TB, dir string) []Case {
	t.Helper()
	base, _ := testimg.MakeQcow2(t, dir, "base-luks.qcow2", testimg.QcowImage{Size: 4 << 20, Passphrase: Pass,
		Passes: [][]testimg.QcowWrite{{{Off: 0, Len: 64 << 10, Seed: 4}}}})
	var cases []Case
	add := func(c Case, patch func(b []byte, luks int)) {
		c.Path = derive(t, dir, base, fmt.Sprintf("ql%02d.qcow2", len(cases)), func(b []byte) []byte {
			ext := cryptoExt(t, b)
			luks := int(be.Uint64(b[ext:]))
			if string(b[luks:luks+6]) != "LUKS\xba\xbe" {
				t.Fatalf("no LUKS header at %#x", luks)
			}
			patch(b, luks)
			return b
		})
		c.Key = true
		cases = append(cases, c)
	}
	add(Case{Name: "qcow2+LUKS embedded keyslot PBKDF2 iterations 2^32-1", Want: "4294967295 PBKDF2 iterations (limit 2147483647)", KDF: true,
		Info: InfoShows, InfoWant: "4294967295 iterations"}, func(b []byte, luks int) {
		put32(b, luks+l1Slot0+l1SlotIter, 0xffffffff)
	})
	add(Case{Name: "qcow2+LUKS embedded keyslot stripes 2^32-1", Want: "4294967295 stripes", Info: InfoUnsafe}, func(b []byte, luks int) {
		put32(b, luks+l1Slot0+l1SlotStripe, 0xffffffff)
	})
	add(Case{Name: "qcow2+LUKS crypto header extension points at the L1 table", Want: "LUKS header", Info: InfoUnsafe}, func(b []byte, luks int) {
		put64(b, cryptoExt(t, b), uint64(layout(b).l1Off))
	})
	add(Case{Name: "qcow2+LUKS crypto header area of 2^62 bytes", Want: "LUKS header area of 4611686018427387904 bytes", Info: InfoUnsafe}, func(b []byte, luks int) {
		put64(b, cryptoExt(t, b)+8, 1<<62)
	})
	return cases
}

// BombInflatedSize is how many bytes the zip bomb's deflate stream inflates
// to (checked by the suite with compress/flate).
const BombInflatedSize = 4000 << 20

// zipBomb makes a 2 MiB-cluster image with one compressed cluster (written
// by qemu-io) whose descriptor is patched to the largest compressed size the
// format allows (4 MiB) and whose data is replaced by a raw deflate stream
// that inflates to BombInflatedSize bytes of zeros.
func zipBomb(t testing.TB, dir string) Case {
	t.Helper()
	const cb = 21
	base, _ := testimg.MakeQcow2(t, dir, "bomb-base.qcow2", testimg.QcowImage{Size: 8 << 20, Options: "cluster_size=2097152",
		Passes: [][]testimg.QcowWrite{{{Off: 0, Len: 2 << 20, Compressed: true, Seed: 3}}}})
	if pct := testimg.CompressedClusters(t, base); pct == "0.00" {
		t.Fatalf("bomb base has no compressed cluster")
	}
	bomb := DeflateBomb(t, BombInflatedSize)
	p := derive(t, dir, base, "bomb.qcow2", func(b []byte) []byte {
		l := layout(b)
		e := int(l2Of(b, l, 0))
		desc := be.Uint64(b[e:])
		if desc&compressedFlag == 0 {
			t.Fatalf("bomb base: cluster 0 is not compressed (%#x)", desc)
		}
		sizeShift := 62 - (cb - 8)
		coff := int64(desc & (1<<sizeShift - 1))
		maxSectors := uint64(1<<(cb-8)) - 1 // field value: sectors - 1
		avail := int((maxSectors+1)*512 - uint64(coff&511))
		if len(bomb) > avail {
			t.Fatalf("bomb of %d bytes does not fit %d", len(bomb), avail)
		}
		put64(b, e, compressedFlag|maxSectors<<sizeShift|uint64(coff))
		if need := coff + int64(len(bomb)); need > int64(len(b)) {
			b = append(b, make([]byte, need-int64(len(b)))...)
		}
		copy(b[coff:], bomb)
		return b
	})
	return Case{Name: "qcow2 compressed cluster inflating to 4000 MiB (zip bomb)", Path: p,
		Want: "inflates past a cluster", Info: InfoShows, InfoWant: "verdict:"}
}

// DeflateBomb returns a raw deflate stream of at most 4 MiB that inflates
// to n bytes (a multiple of 1 MiB) of zeros: one sync-flushed MiB of zeros
// repeated (every back reference stays inside zeros).
func DeflateBomb(t testing.TB, n int64) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := flate.NewWriter(&buf, flate.BestCompression)
	if err != nil {
		t.Fatal(err)
	}
	zeros := make([]byte, 1<<20)
	w.Write(zeros)
	w.Flush()
	first := buf.Len()
	w.Write(zeros)
	w.Flush()
	chunk := bytes.Clone(buf.Bytes()[first:])
	head := bytes.Clone(buf.Bytes()[:first])
	buf.Reset()
	w.Close() // the final empty block
	tail := bytes.Clone(buf.Bytes())
	out := head
	for range n>>20 - 1 {
		out = append(out, chunk...)
	}
	return append(out, tail...)
}

// LUKS1 phdr offsets (LUKS1 On-Disk Format Specification 1.2.3).
const (
	l1KeyBytes   = 108
	l1DigestIter = 164
	l1Payload    = 104
	l1Slot0      = 208
	l1SlotIter   = 4
	l1SlotKM     = 40
	l1SlotStripe = 44
)

// LUKS1Base formats a 4 MiB LUKS1 image with cryptsetup (1000 PBKDF2
// iterations, only keyslot 0 active).
func LUKS1Base(t testing.TB, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "base.luks1")
	testimg.CryptsetupFormat(t, p, 4<<20, Pass, "--type", "luks1", "--pbkdf-force-iterations", "1000", "--key-size", "256", "--hash", "sha256")
	return p
}

// LUKS2Base formats a size-byte LUKS2 image with cryptsetup: one argon2id
// keyslot of 32 KiB and 4 passes, 16 KiB header copies, payload at 1 MiB.
func LUKS2Base(t testing.TB, dir, name string, size int64, extra ...string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	args := []string{"--type", "luks2", "--pbkdf", "argon2id", "--pbkdf-memory", "32", "--pbkdf-force-iterations", "4",
		"--luks2-keyslots-size", "512k", "--offset", "2048", "--key-size", "256"}
	testimg.CryptsetupFormat(t, p, size, Pass, append(args, extra...)...)
	return p
}

// LUKSCases builds the malicious LUKS1 and LUKS2 images in dir.
func LUKSCases(t testing.TB, dir string) []Case {
	t.Helper()
	var cases []Case
	l1 := LUKS1Base(t, dir)
	add1 := func(c Case, patch func(b []byte)) {
		c.Path = derive(t, dir, l1, fmt.Sprintf("l1-%02d.luks", len(cases)), func(b []byte) []byte { patch(b); return b })
		c.Key = true
		cases = append(cases, c)
	}
	add1(Case{Name: "LUKS1 keyslot stripes 2^32-1", Want: "4294967295 stripes", Info: InfoFails}, func(b []byte) {
		put32(b, l1Slot0+l1SlotStripe, 0xffffffff)
	})
	add1(Case{Name: "LUKS1 key_bytes 0", Want: "key_bytes 0", Info: InfoFails}, func(b []byte) {
		put32(b, l1KeyBytes, 0)
	})
	add1(Case{Name: "LUKS1 keyslot area overlaps the header", Want: "overlaps the header", Info: InfoFails}, func(b []byte) {
		put32(b, l1Slot0+l1SlotKM, 0)
	})
	add1(Case{Name: "LUKS1 keyslot area overlaps the payload", Want: "overlaps the payload", Info: InfoFails}, func(b []byte) {
		put32(b, l1Slot0+l1SlotKM, be.Uint32(b[l1Payload:])-8)
	})
	add1(Case{Name: "LUKS1 keyslot PBKDF2 iterations 2^32-1", Want: "4294967295 PBKDF2 iterations (limit 2147483647)", KDF: true,
		Info: InfoShows, InfoWant: "4294967295 iterations"}, func(b []byte) {
		put32(b, l1Slot0+l1SlotIter, 0xffffffff)
	})
	add1(Case{Name: "LUKS1 digest PBKDF2 iterations 2^32-1", Want: "digest has 4294967295 PBKDF2 iterations", KDF: true,
		Info: InfoShows, InfoWant: "keyslot 0"}, func(b []byte) {
		put32(b, l1DigestIter, 0xffffffff)
	})

	l2 := LUKS2Base(t, dir, "base.luks2", 4<<20)
	add2 := func(c Case, statement string) {
		p := filepath.Join(dir, fmt.Sprintf("l2-%02d.luks", len(cases)))
		testimg.CopyFile(t, l2, p)
		testimg.EditLUKS2JSON(t, p, statement)
		c.Path, c.Key = p, true
		cases = append(cases, c)
	}
	add2(Case{Name: "LUKS2 argon2 memory 4 TiB - 1 KiB", Want: "memory 4294967295 KiB (limit 4194304)", KDF: true,
		Info: InfoShows, InfoWant: "memory 4294967295 KiB"}, `j["keyslots"]["0"]["kdf"]["memory"] = 4294967295`)
	add2(Case{Name: "LUKS2 argon2 memory 4 TiB (2^32 KiB)", Want: "4294967296", Info: InfoFails},
		`j["keyslots"]["0"]["kdf"]["memory"] = 4294967296`)
	add2(Case{Name: "LUKS2 argon2 time 2^32-1", Want: "time 4294967295 (limit 64)", KDF: true,
		Info: InfoShows, InfoWant: "time 4294967295"}, `j["keyslots"]["0"]["kdf"]["time"] = 4294967295`)
	add2(Case{Name: "LUKS2 argon2 cpus 2^32-1", Want: "cpus 4294967295", Info: InfoFails},
		`j["keyslots"]["0"]["kdf"]["cpus"] = 4294967295`)
	add2(Case{Name: "LUKS2 digest PBKDF2 iterations 2^32-1", Want: "digest has 4294967295 PBKDF2 iterations", KDF: true,
		Info: InfoShows, InfoWant: "keyslot 0"}, `j["digests"]["0"]["iterations"] = 4294967295`)
	add2(Case{Name: "LUKS2 keyslot area overlaps the header", Want: "overlaps the headers", Info: InfoFails},
		`j["keyslots"]["0"]["area"]["offset"] = "4096"`)
	add2(Case{Name: "LUKS2 keyslot area overlaps the payload", Want: "overlaps the payload", Info: InfoFails},
		`j["keyslots"]["0"]["area"]["offset"] = str(int(j["segments"]["0"]["offset"]) - 4096)`)
	add2(Case{Name: "LUKS2 keyslot stripes 2^31-1", Want: "2147483647 stripes", Info: InfoFails},
		`j["keyslots"]["0"]["af"]["stripes"] = 2147483647`)

	// Oversized and deeply nested metadata need a 4 MiB header copy:
	// cryptsetup makes one with --luks2-metadata-size, the payload after
	// both copies and the keyslots area.
	big := LUKS2Base(t, dir, "base-4m.luks2", 12<<20, "--luks2-metadata-size", "4m", "--offset", "20480")
	addRaw := func(c Case, edit func(js []byte, area int) []byte) {
		p := filepath.Join(dir, fmt.Sprintf("l2-%02d.luks", len(cases)))
		testimg.CopyFile(t, big, p)
		EditLUKS2Raw(t, p, edit)
		c.Path, c.Key = p, true
		cases = append(cases, c)
	}
	addRaw(Case{Name: "LUKS2 JSON area of 4 MiB holding 7000+ keyslots", Want: "keyslots (limit 32)", Info: InfoFails}, func(js []byte, area int) []byte {
		return fillKeyslots(t, js, area)
	})
	addRaw(Case{Name: "LUKS2 JSON nested 2,000,000 levels deep", Want: "nests 2000002 levels (limit 16)", Info: InfoFails}, func(js []byte, area int) []byte {
		const depth = 2000000
		nest := strings.Repeat("[", depth) + strings.Repeat("]", depth)
		out := bytes.Replace(js, []byte(`"tokens":{}`), []byte(`"tokens":{"0":`+nest+`}`), 1)
		if len(out) == len(js) {
			t.Fatalf("LUKS2 JSON has no empty tokens object: %.200s", js)
		}
		return out
	})
	return cases
}

// fillKeyslots copies keyslot "0" under new ids until the JSON fills the
// area (within a keyslot's length).
func fillKeyslots(t testing.TB, js []byte, area int) []byte {
	t.Helper()
	start := bytes.Index(js, []byte(`"keyslots":{"0":`))
	if start < 0 {
		t.Fatalf("LUKS2 JSON: no keyslot 0: %.200s", js)
	}
	objStart := start + len(`"keyslots":{"0":`)
	depth, end := 0, -1
	for i := objStart; i < len(js); i++ {
		switch js[i] {
		case '{':
			depth++
		case '}':
			depth--
		}
		if depth == 0 {
			end = i + 1
			break
		}
	}
	slot := js[objStart:end]
	var extra bytes.Buffer
	for i := 1; len(js)+extra.Len()+len(slot)+16 < area; i++ {
		fmt.Fprintf(&extra, `,"%d":%s`, i, slot)
	}
	out := append(bytes.Clone(js[:end]), extra.Bytes()...)
	return append(out, js[end:]...)
}

// EditLUKS2Raw rewrites the JSON text of both LUKS2 header copies with edit
// (given the JSON without its NUL padding and the area size) and recomputes
// each copy's checksum, as the LUKS2 format defines it: the hash of the
// whole header copy with the checksum field zeroed.
func EditLUKS2Raw(t testing.TB, path string, edit func(js []byte, area int) []byte) {
	t.Helper()
	b := readFile(t, path)
	hdr := int(be.Uint64(b[8:]))
	for _, off := range []int{0, hdr} {
		area := b[off+4096 : off+hdr]
		js := area
		if i := bytes.IndexByte(js, 0); i >= 0 {
			js = js[:i]
		}
		out := edit(bytes.Clone(js), len(area))
		if len(out) > len(area) {
			t.Fatalf("edited JSON of %d bytes does not fit the %d-byte area", len(out), len(area))
		}
		clear(area)
		copy(area, out)
		var h hash.Hash
		switch alg := string(bytes.TrimRight(b[off+72:off+104], "\x00")); alg {
		case "sha256":
			h = sha256.New()
		case "sha512":
			h = sha512.New()
		case "sha1":
			h = sha1.New()
		default:
			t.Fatalf("LUKS2 checksum algorithm %q", alg)
		}
		clear(b[off+448 : off+512])
		h.Write(b[off : off+hdr])
		copy(b[off+448:], h.Sum(nil))
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// MaxL1Entries is the L1 table of MaxL1Table: 4Mi entries, the 32 MiB cap.
const MaxL1Entries = 4 << 20

// MaxL1Table makes a qcow2 image (qemu-img create, 512-byte clusters, a
// 128 GiB disk) whose L1 table has MaxL1Entries entries, the 32 MiB that
// imgfs accepts, each pointing to an L2 table of its own. The L2 tables are
// zeroed clusters appended after qemu's metadata, so the file is sparse:
// about 2 GiB apparent, 32 MiB written. The image is valid (it reads as
// zeros); it is hostile by its size: opening it must not build structures
// over 4Mi table references that cost hundreds of MiB.
func MaxL1Table(t testing.TB, dir string) string {
	t.Helper()
	const cluster = 512
	const size = MaxL1Entries * (cluster / 8) * cluster // 64 entries per L2 table
	p := filepath.Join(dir, "max-l1.qcow2")
	testimg.QemuImg(t, "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", p, fmt.Sprint(size))
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	hdr := make([]byte, 104)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		t.Fatal(err)
	}
	l := layout(hdr)
	if n := be.Uint32(hdr[36:]); l.clusterBits != 9 || n != MaxL1Entries {
		t.Fatalf("qemu-img made cluster_bits %d, l1_size %d; want 9, %d", l.clusterBits, n, MaxL1Entries)
	}
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	first := (st.Size() + cluster - 1) / cluster * cluster
	l1 := make([]byte, 8*MaxL1Entries)
	for i := range int64(MaxL1Entries) {
		be.PutUint64(l1[8*i:], uint64(first+i*cluster)|copiedFlag)
	}
	if _, err := f.WriteAt(l1, l.l1Off); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(first + MaxL1Entries*cluster); err != nil {
		t.Fatal(err)
	}
	return p
}
