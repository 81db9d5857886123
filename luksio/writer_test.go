package luksio

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/tests/testimg"
)

const writerPass = "writer passphrase"

// writeDevice streams d into a new file dir/name and returns its path.
func writeDevice(t testing.TB, d blockdev.Device, dir, name string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.Copy(f, io.NewSectionReader(d, 0, d.Size())); err != nil {
		t.Fatal(err)
	}
	return path
}

// checkRandomReads compares unaligned, aligned and large reads of d with
// want (d's whole content).
func checkRandomReads(t *testing.T, d blockdev.Device, want []byte, seed uint64) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 11))
	for i := range 150 {
		off := r.Int64N(int64(len(want)))
		n := 1 + r.IntN(min(4000, len(want)-int(off)))
		switch i % 5 {
		case 0: // large, spread over goroutines
			n = min(len(want)-int(off), 3<<20+r.IntN(1<<20))
		case 1: // sector aligned
			off -= off % 512
			n = min(len(want)-int(off), 512*(1+r.IntN(8)))
		}
		p := make([]byte, n)
		m, err := d.ReadAt(p, off)
		if m != n || (err != nil && !(errors.Is(err, io.EOF) && off+int64(n) == int64(len(want)))) {
			t.Fatalf("ReadAt(%d bytes at %d) = %d, %v", n, off, m, err)
		}
		if !bytes.Equal(p, want[off:off+int64(n)]) {
			t.Fatalf("ReadAt(%d bytes at %d) differs from a whole read at byte %d", n, off, firstDiff(p, want[off:]))
		}
	}
	if m, err := d.ReadAt(make([]byte, 10), int64(len(want))); m != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("read at the end = %d, %v; want io.EOF", m, err)
	}
}

// A fresh LUKS1 volume made by NewLUKS1View is read by cryptsetup (header,
// keyslot, volume key), by qemu-img (the whole plaintext) and by an
// independent encryptor (python3-cryptography), for several ciphers.
func TestNewLUKS1ViewOpensWithCryptsetupAndQemu(t *testing.T) {
	testimg.Need(t, "cryptsetup", "qemu-img", testimg.Python)
	cases := []struct {
		name     string
		opts     FormatOptions
		spec     string
		keyBits  int
		hash     string
		plainLen int
	}{
		{"defaults", FormatOptions{Iterations: 1000}, "aes-xts-plain64", 512, "sha256", 3<<20 + 1536},
		{"aes128-xts-sha1", FormatOptions{Cipher: "aes-xts-plain64", KeyBytes: 32, Hash: "sha1", Iterations: 1200, DigestIterations: 1100}, "aes-xts-plain64", 256, "sha1", 1 << 20},
		{"aes256-cbc-essiv-sha512", FormatOptions{Cipher: "aes-cbc-essiv:sha256", Hash: "SHA512", Iterations: 1000}, "aes-cbc-essiv:sha256", 256, "sha512", 2<<20 + 512},
		{"aes256-xts-plain-odd-size", FormatOptions{Cipher: "aes-xts-plain", Iterations: 1000}, "aes-xts-plain", 512, "sha256", 1<<20 + 700},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			plain := testimg.RandomBytes(tc.plainLen, uint64(100+i))
			v, err := NewLUKS1View(bytesDevice(plain), []byte(writerPass), tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			defer v.Close()
			padded := append(bytes.Clone(plain), make([]byte, roundUp(int64(len(plain)), 512)-int64(len(plain)))...)
			if v.Size() != 2<<20+int64(len(padded)) {
				t.Fatalf("size %d, want 2 MiB + %d", v.Size(), len(padded))
			}
			path := writeDevice(t, v, dir, "new.luks")

			testimg.Run(t, "cryptsetup", "isLuks", path)
			dump := string(testimg.Run(t, "cryptsetup", "luksDump", path))
			name, mode, _ := strings.Cut(tc.spec, "-")
			for _, want := range []string{"Version:       \t1", "Cipher name:   \t" + name, "Cipher mode:   \t" + mode,
				"Hash spec:     \t" + tc.hash, "Payload offset:\t4096", "MK bits:       \t" + strconv.Itoa(tc.keyBits),
				"Key Slot 0: ENABLED", "Key Slot 1: DISABLED", "Key Slot 7: DISABLED"} {
				if !strings.Contains(dump, want) {
					t.Errorf("luksDump lacks %q:\n%s", want, dump)
				}
			}
			key, payload := testimg.CryptsetupVolumeKey(t, path, writerPass)
			if payload != 2<<20 || len(key) != tc.keyBits/8 {
				t.Fatalf("cryptsetup: payload offset %d, %d-byte key", payload, len(key))
			}
			stored := readFile(t, path)
			if want := testimg.PyEncrypt(t, key, tc.spec, 512, 0, padded); !bytes.Equal(stored[payload:], want) {
				t.Fatalf("payload differs from python3-cryptography's encryption at byte %d", firstDiff(stored[payload:], want))
			}
			if got := testimg.QemuLUKSDecrypt(t, path, writerPass); !bytes.Equal(got, padded) {
				t.Fatalf("qemu-img plaintext differs at byte %d (got %d bytes, want %d)", firstDiff(got, padded), len(got), len(padded))
			}
			if _, err := exec.Command("cryptsetup", "luksDump", "--dump-master-key", "--batch-mode",
				"--key-file", testimg.PassFile(t, "wrong"), path).Output(); err == nil {
				t.Fatal("cryptsetup accepted a wrong passphrase")
			}
			checkRandomReads(t, v, stored, uint64(i))
		})
	}
}

// Calibration gives at least cryptsetup's minimum and roughly the requested
// unlock time; the header it writes unlocks with the passphrase.
func TestNewLUKS1CalibratesIterations(t *testing.T) {
	area, key, err := NewLUKS1([]byte(writerPass), FormatOptions{IterTime: 150 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	key.Close()
	h, err := ReadHeader(bytesDevice(area), int64(len(area)))
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Keyslots) != 1 || h.Keyslots[0].Iterations < MinPBKDF2Iterations || h.digests[0].iterations < MinPBKDF2Iterations {
		t.Fatalf("keyslots %+v digest iterations %d", h.Keyslots, h.digests[0].iterations)
	}
	start := time.Now()
	k, err := h.Unlock(bytesDevice(area), []byte(writerPass), UnlockOptions{Slot: AnySlot})
	if err != nil {
		t.Fatal(err)
	}
	k.Close()
	if d := time.Since(start); d < 30*time.Millisecond || d > 3*time.Second {
		t.Errorf("unlock took %v for a 150 ms calibration", d)
	}
	if _, err := h.Unlock(bytesDevice(area), []byte("wrong"), UnlockOptions{Slot: AnySlot}); !errors.Is(err, ErrWrongPassphrase) {
		t.Fatalf("wrong passphrase: %v", err)
	}
}

// Every volume gets its own key, salts and UUID.
func TestNewLUKS1IsRandom(t *testing.T) {
	a1, k1, err := NewLUKS1([]byte(writerPass), FormatOptions{Iterations: 1000})
	if err != nil {
		t.Fatal(err)
	}
	a2, k2, err := NewLUKS1([]byte(writerPass), FormatOptions{Iterations: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(k1.key, k2.key) || bytes.Equal(a1[:luks1PhdrSize], a2[:luks1PhdrSize]) {
		t.Fatal("two volumes share a key or a header")
	}
	k1.Close()
	if k1.key != nil {
		t.Fatal("Close kept the key")
	}
	k2.Close()
}

func TestNewLUKS1RejectsBadOptions(t *testing.T) {
	for name, o := range map[string]FormatOptions{
		"few iterations":        {Iterations: 10},
		"few digest iterations": {Iterations: 1000, DigestIterations: 5},
		"ecb":                   {Cipher: "aes-ecb", Iterations: 1000},
		"unknown cipher":        {Cipher: "serpent-xts-plain64", Iterations: 1000},
		"bad key size":          {KeyBytes: 20, Iterations: 1000},
		"xts with 128 bits":     {KeyBytes: 16, Iterations: 1000},
		"unknown hash":          {Hash: "md5", Iterations: 1000},
		"long uuid":             {UUID: strings.Repeat("x", 40), Iterations: 1000},
	} {
		if _, _, err := NewLUKS1([]byte(writerPass), o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, _, err := NewLUKS1([]byte(writerPass), FormatOptions{Iterations: 1000, Rand: bytes.NewReader(nil)}); err == nil {
		t.Error("an exhausted random source was accepted")
	}
}

// The raw view of an existing LUKS1 header (made by qemu-img) keeps its
// keyslots: the same passphrase opens the new volume in qemu-img and
// cryptsetup, and it holds the new plaintext.
func TestRawViewReusesExistingKeyslots(t *testing.T) {
	testimg.Need(t, "cryptsetup", "qemu-img")
	dir := t.TempDir()
	orig := testimg.QemuLUKS1(t, dir, "orig", testimg.RandomBytes(64<<10, 1), writerPass, testimg.QemuLUKSOpts{})
	src := openFile(t, orig)
	h, err := ReadHeader(src, src.Size())
	if err != nil {
		t.Fatal(err)
	}
	area, err := blockdev.NewSection(src, 0, h.PayloadOffset)
	if err != nil {
		t.Fatal(err)
	}
	k, err := h.Unlock(area, []byte(writerPass), UnlockOptions{Slot: AnySlot})
	if err != nil {
		t.Fatal(err)
	}
	c, err := k.Cipher()
	k.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	plain := testimg.RandomBytes(5<<20+512, 2)
	v, err := NewRawView(bytesDevice(plain), area, c)
	if err != nil {
		t.Fatal(err)
	}
	if v.PayloadOffset() != roundUp(h.PayloadOffset, 2<<20) {
		t.Fatalf("payload offset %d for an area of %d", v.PayloadOffset(), h.PayloadOffset)
	}
	path := writeDevice(t, v, dir, "view.luks")
	testimg.Run(t, "cryptsetup", "isLuks", path)
	if got := testimg.QemuLUKSDecrypt(t, path, writerPass); !bytes.Equal(got, plain) {
		t.Fatalf("qemu-img plaintext differs at byte %d", firstDiff(got, plain))
	}
	key, payload := testimg.CryptsetupVolumeKey(t, path, writerPass)
	origKey, _ := testimg.CryptsetupVolumeKey(t, orig, writerPass)
	if !bytes.Equal(key, origKey) || payload != v.PayloadOffset() {
		t.Fatalf("cryptsetup: volume key differs from the original's or payload at %d", payload)
	}
	// The header area is a byte copy but for the payload offset field.
	stored, origBytes := readFile(t, path), readFile(t, orig)
	hdr := bytes.Clone(origBytes[:h.PayloadOffset])
	copy(hdr[luks1OffPayload:], stored[luks1OffPayload:luks1OffPayload+4])
	if !bytes.Equal(stored[:h.PayloadOffset], hdr) || !allZeroBytes(stored[h.PayloadOffset:payload]) {
		t.Fatal("header area is not a copy of the original")
	}
	checkRandomReads(t, v, stored, 3)
	// Once the caller closes the cipher, reads fail and return nothing.
	c.Close()
	p := make([]byte, 4096)
	if n, err := v.ReadAt(p, payload); err == nil || n != 0 || !allZeroBytes(p) {
		t.Fatalf("read after Close = %d, %v", n, err)
	}
}

func allZeroBytes(b []byte) bool { return len(bytes.Trim(b, "\x00")) == 0 }

// A plaintext device that fails mid-read fails the view's read without
// handing out any byte.
func TestRawViewPropagatesReadErrors(t *testing.T) {
	area, key, err := NewLUKS1([]byte(writerPass), FormatOptions{Iterations: 1000})
	if err != nil {
		t.Fatal(err)
	}
	c, _ := key.Cipher()
	key.Close()
	defer c.Close()
	plain := shortDevice{bytesDevice(testimg.RandomBytes(1<<20, 5)), 8 << 20}
	v, err := NewRawView(plain, bytesDevice(area), c)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{4096, 5 << 20} {
		p := make([]byte, n)
		m, err := v.ReadAt(p, v.PayloadOffset()+(1<<20)-2048)
		if m != 0 || !errors.Is(err, blockdev.ErrTruncated) || !allZeroBytes(p) {
			t.Fatalf("%d-byte read past the data = %d, %v", n, m, err)
		}
	}
}

func TestNewRawViewRefusesMismatches(t *testing.T) {
	area, key, err := NewLUKS1([]byte(writerPass), FormatOptions{Iterations: 1000})
	if err != nil {
		t.Fatal(err)
	}
	key.Close()
	other, err := NewSectorCipher("aes-cbc-essiv:sha256", make([]byte, 32), 512)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewRawView(bytesDevice(nil), bytesDevice(area), other); err == nil {
		t.Error("a cipher of another spec was accepted")
	}
	xts, _ := NewSectorCipher("aes-xts-plain64", make([]byte, 64), 512)
	if _, err := NewRawView(bytesDevice(nil), bytesDevice(area[:100<<10]), xts); !errors.Is(err, blockdev.ErrTruncated) {
		t.Errorf("an area that cuts the key material: %v", err)
	}
	if _, err := NewRawView(bytesDevice(nil), bytesDevice(make([]byte, 4096)), xts); !errors.Is(err, ErrNotLUKS) {
		t.Errorf("an area without a header: %v", err)
	}
}
