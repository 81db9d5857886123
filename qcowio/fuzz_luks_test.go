package qcowio

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/imgfs/imgfs/luksio"
	"github.com/imgfs/imgfs/tests/testimg"
)

// The qcow2+LUKS fuzz template: a 1 MiB disk made by qemu-img (aes-128-xts,
// encrypt.iter-time=1, so the keyslot has a few thousand PBKDF2
// iterations and the digest 1000) with two writes by qemu-io. It is kept
// gzipped in testdata: fuzz workers re-run the fuzz function, and running
// qemu-img in each of them stalls the fuzzer. TestQcow2LUKSFuzzTemplate
// checks it against qemu-img and the known plaintext, and remakes it when
// IMGFS_REMAKE_FUZZ_TEMPLATE=1.
const (
	luksFuzzPass     = "fuzz-qcow2-luks"
	luksFuzzTemplate = "testdata/qcow2-luks-fuzz-template.qcow2.gz"
)

// luksFuzzWrites are the template's writes (RandomBytes seeds).
var luksFuzzWrites = []W{{Off: 0, Len: 8192, Seed: 61}, {Off: 512<<10 + 100, Len: 5000, Seed: 62}}

// luksFuzzOpts bounds the KDF work of one fuzzed unlock: the template needs
// about 8500 PBKDF2 iterations (keyslot and digest); a mutated header gets
// at most 20000 for all its slots together.
var luksFuzzOpts = luksio.UnlockOptions{Slot: luksio.AnySlot, MaxKDFIterations: 20000, MaxKDFMemoryKiB: 64, MaxKDFTime: 4, MaxKDFThreads: 4}

// luksFuzzMaxAlloc bounds what one fuzzed open, unlock and read allocates.
const luksFuzzMaxAlloc = 256 << 20

// makeLUKSFuzzTemplate makes the template with qemu-img and qemu-io and
// returns its bytes and plaintext.
func makeLUKSFuzzTemplate(t testing.TB) ([]byte, []byte) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tpl.qcow2")
	testimg.QemuImg(t, "create", "-q", "-f", "qcow2", "--object", "secret,id=s0,data="+luksFuzzPass,
		"-o", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=1,encrypt.cipher-alg=aes-128,cluster_size=4096", p, "1M")
	plain := make([]byte, 1<<20)
	testimg.WriteQcow2(t, p, luksFuzzPass, plain, [][]W{luksFuzzWrites})
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b, plain
}

// luksFuzzPlain is the template's plaintext.
func luksFuzzPlain() []byte {
	plain := make([]byte, 1<<20)
	for _, w := range luksFuzzWrites {
		copy(plain[w.Off:], testimg.RandomBytes(int(w.Len), w.Seed))
	}
	return plain
}

var (
	luksTplOnce sync.Once
	luksTpl     []byte
	luksTplErr  error
)

// loadLUKSFuzzTemplate returns the template from testdata.
func loadLUKSFuzzTemplate(t testing.TB) []byte {
	t.Helper()
	luksTplOnce.Do(func() {
		f, err := os.Open(luksFuzzTemplate)
		if err != nil {
			luksTplErr = err
			return
		}
		defer f.Close()
		z, err := gzip.NewReader(f)
		if err != nil {
			luksTplErr = err
			return
		}
		luksTpl, luksTplErr = io.ReadAll(z)
	})
	if luksTplErr != nil {
		t.Fatalf("fuzz template: %v", luksTplErr)
	}
	return luksTpl
}

// luksFuzzSplit returns where the fuzzed parts of the template are: head is
// the qcow2 header cluster and the LUKS phdr, metaOff the end of the LUKS
// area, after which qemu put the L1, refcount and L2 tables and the data.
func luksFuzzSplit(t testing.TB, tpl []byte) (head, metaOff int) {
	t.Helper()
	img, err := Open(bytes.NewReader(tpl), Policy{})
	if err != nil {
		t.Fatalf("fuzz template: %v", err)
	}
	defer img.Close()
	h := img.hdr
	return int(h.cryptoOffset) + 592, int(h.cryptoOffset + h.cryptoLength)
}

// TestQcow2LUKSFuzzTemplate proves that the committed fuzz template is a
// real qcow2+LUKS image: qemu-img decrypts it to the known plaintext, and so
// does qcowio with the cheap KDF limits the fuzz target uses.
func TestQcow2LUKSFuzzTemplate(t *testing.T) {
	plain := luksFuzzPlain()
	if os.Getenv("IMGFS_REMAKE_FUZZ_TEMPLATE") == "1" {
		b, p := makeLUKSFuzzTemplate(t)
		if !bytes.Equal(p, plain) {
			t.Fatal("remade template: plaintext differs")
		}
		var z bytes.Buffer
		w, _ := gzip.NewWriterLevel(&z, gzip.BestCompression)
		w.Write(b)
		w.Close()
		if err := os.WriteFile(luksFuzzTemplate, z.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tpl := loadLUKSFuzzTemplate(t)
	p := filepath.Join(t.TempDir(), "tpl.qcow2")
	if err := os.WriteFile(p, tpl, 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out.raw")
	testimg.QemuImg(t, "convert", "--object", "secret,id=s0,data="+luksFuzzPass, "--image-opts",
		"driver=qcow2,encrypt.key-secret=s0,file.filename="+p, "-O", "raw", out)
	qemu, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(qemu, plain) {
		t.Fatal("qemu-img's decryption of the template differs from the known plaintext")
	}
	img, err := Open(bytes.NewReader(tpl), Policy{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if err := img.Unlock([]byte(luksFuzzPass), luksFuzzOpts); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(plain))
	if _, err := img.ReadAt(got, 0); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("qcowio read of the template: %v (equal %v)", err, bytes.Equal(got, plain))
	}
}

// FuzzQcow2LUKSRead mutates a real qcow2+LUKS image (the template): head
// replaces its first bytes (the qcow2 header cluster and the LUKS phdr),
// meta the bytes after the LUKS area (L1, refcount and L2 tables, data),
// and size truncates it. Each input is opened, unlocked with the passphrase
// under cheap KDF limits, and read: the first 4 MiB of the disk and 64 KiB
// at up to 64 data offsets beyond. Nothing may panic, and one input may not
// allocate more than luksFuzzMaxAlloc.
func FuzzQcow2LUKSRead(f *testing.F) {
	tpl := loadLUKSFuzzTemplate(f)
	headLen, metaOff := luksFuzzSplit(f, tpl)
	f.Add(bytes.Clone(tpl[:headLen]), bytes.Clone(tpl[metaOff:]), uint32(len(tpl)))
	f.Add(bytes.Clone(tpl[:headLen]), bytes.Clone(tpl[metaOff:]), uint32(len(tpl)-4096))
	f.Fuzz(func(t *testing.T, head, meta []byte, size uint32) {
		if len(head) > metaOff || len(meta) > 1<<20 {
			return
		}
		data := bytes.Clone(tpl)
		copy(data, head)
		data = append(data[:metaOff], meta...)
		if size > 0 && int(size) < len(data) {
			data = data[:size]
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		fuzzQcow2LUKSRead(data)
		runtime.ReadMemStats(&after)
		if a := after.TotalAlloc - before.TotalAlloc; a > luksFuzzMaxAlloc {
			t.Fatalf("open, unlock and read allocated %d MiB (limit %d MiB)", a>>20, luksFuzzMaxAlloc>>20)
		}
	})
}

// fuzzQcow2LUKSRead opens, unlocks and reads one fuzzed image; errors are
// expected, panics are not.
func fuzzQcow2LUKSRead(data []byte) {
	img, err := Open(bytes.NewReader(data), Policy{AllowDirty: true})
	if err != nil {
		return
	}
	defer img.Close()
	if !img.Encrypted() {
		return // FuzzQcow2 covers unencrypted images
	}
	if err := img.Unlock([]byte(luksFuzzPass), luksFuzzOpts); err != nil {
		return
	}
	buf := make([]byte, 64<<10)
	for off := int64(0); off < min(img.Size(), 4<<20); off += int64(len(buf)) {
		_, _ = img.ReadAt(buf, off)
	}
	off := int64(4 << 20)
	for range 64 {
		d, err := img.NextData(off)
		if err != nil || d >= img.Size() {
			return
		}
		_, _ = img.ReadAt(buf, d)
		off = d + int64(len(buf))
	}
}
