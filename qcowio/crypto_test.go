package qcowio

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/imgfs/imgfs/luksio"
	"github.com/imgfs/imgfs/tests/testimg"
)

const testPass = "correct horse battery"

var anySlot = luksio.UnlockOptions{Slot: luksio.AnySlot}

// Creating a qcow2+LUKS image costs qemu-img seconds of PBKDF2 calibration,
// so tests derive several vectors from each creation.
var shared struct {
	once  sync.Once
	dir   string
	path  string
	plain []byte
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
	os.Exit(code)
}

// bigLUKS is a 1 TiB qcow2+LUKS disk (64k clusters) with 1 MiB of data at 0
// and 64 KiB at 700 GiB, made once per test run.
func bigLUKS(t *testing.T) (string, []byte) {
	t.Helper()
	shared.once.Do(func() {
		dir, err := os.MkdirTemp("", "qcowio-test")
		if err != nil {
			t.Fatal(err)
		}
		shared.dir = dir
		path, plain := testimg.MakeQcow2(t, dir, "big.qcow2", testimg.QcowImage{Size: 1 << 40, Passphrase: testPass,
			Passes: [][]W{{{Off: 700 << 30, Len: 64 << 10, Seed: 90}}, {{Off: 0, Len: 1 << 20, Seed: 91}}}})
		shared.path, shared.plain = path, plain
	})
	if shared.path == "" {
		t.Fatal("making the shared 1 TiB qcow2+LUKS image failed")
	}
	return shared.path, shared.plain
}

func openUnlocked(t *testing.T, path, pass string) *Image {
	t.Helper()
	img := openImage(t, path)
	if !img.Encrypted() || img.Info().Encryption != "luks" || img.Info().LUKS == nil {
		t.Fatalf("Encrypted() = %v, Info.Encryption = %q, LUKS header %v", img.Encrypted(), img.Info().Encryption, img.Info().LUKS != nil)
	}
	if err := img.Unlock([]byte(pass), anySlot); err != nil {
		t.Fatalf("Unlock: %v", err)
	}
	return img
}

// TestReadLUKSMatchesPlaintextAndQemu proves the host-offset IV at each
// cluster size: an image made by `qemu-img convert` from a sparse raw disk,
// then the same image after scattered, out-of-order and unaligned writes
// through qemu-io, both decrypt to the plaintext and to qemu's own reading.
func TestReadLUKSMatchesPlaintextAndQemu(t *testing.T) {
	raw := make([]byte, 6<<20)
	copy(raw[4096:], testimg.RandomBytes(700<<10, 50))
	copy(raw[5<<20+777:], testimg.RandomBytes(300<<10, 51))
	cases := []struct {
		name    string
		options string
		passes  [][]W
	}{
		{"4k clusters", "cluster_size=4096", scattered(4096)},
		{"64k clusters", "cluster_size=65536", scattered(65536)},
		{"2M clusters", "cluster_size=2097152", scattered(2 << 20)},
		{"extended L2 with zero subclusters", "extended_l2=on", [][]W{
			{{Off: 1 << 20, Len: 6000, Seed: 40}, {Off: 3 << 20, Len: 128 << 10, Seed: 41}},
			{{Off: 8192, Len: 4096, Zero: true}, {Off: 1<<20 + 2048, Len: 1024, Zero: true}},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := testimg.ConvertQcow2(t, dir, "conv.qcow2", raw, tc.options, testPass, false)
			mustEqual(t, "converted: qemu-img convert -O raw vs source", testimg.QemuRaw(t, path, testPass), raw)
			checkAllReads(t, openUnlocked(t, path, testPass), raw)

			written := filepath.Join(dir, "written.qcow2")
			testimg.CopyFile(t, path, written)
			plain := append([]byte(nil), raw...)
			testimg.WriteQcow2(t, written, testPass, plain, tc.passes)
			mustEqual(t, "written: qemu-img convert -O raw vs plaintext", testimg.QemuRaw(t, written, testPass), plain)
			checkAllReads(t, openUnlocked(t, written, testPass), plain)
		})
	}
}

// TestLUKSKeyHandling proves that no ciphertext is ever read as plaintext:
// reads before Unlock fail, a wrong passphrase fails and leaves the image
// locked, a key for an unencrypted image is refused, Close forgets the key.
func TestLUKSKeyHandling(t *testing.T) {
	t.Parallel()
	path, plain := bigLUKS(t)
	img := openImage(t, path)
	buf := make([]byte, 4096)
	if n, err := img.ReadAt(buf, 0); !errors.Is(err, luksio.ErrKeyRequired) || n != 0 {
		t.Fatalf("read before Unlock = %d, %v; want luksio.ErrKeyRequired", n, err)
	}
	if _, err := img.NextData(0); err != nil {
		t.Fatalf("NextData needs no key: %v", err)
	}
	if err := img.Unlock([]byte("wrong passphrase"), anySlot); !errors.Is(err, luksio.ErrWrongPassphrase) {
		t.Fatalf("Unlock with a wrong passphrase: %v, want ErrWrongPassphrase", err)
	}
	if _, err := img.ReadAt(buf, 0); !errors.Is(err, luksio.ErrKeyRequired) {
		t.Fatalf("read after a failed Unlock: %v, want luksio.ErrKeyRequired", err)
	}
	if err := img.Unlock([]byte(testPass), anySlot); err != nil {
		t.Fatal(err)
	}
	if _, err := img.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "first 4 KiB", buf, plain[:4096])
	img.Close()
	if _, err := img.ReadAt(buf, 0); err == nil {
		t.Fatal("read after Close succeeded")
	}

	plainPath, _ := testimg.MakeQcow2(t, t.TempDir(), "plain.qcow2", testimg.QcowImage{Size: 1 << 20})
	if err := openImage(t, plainPath).Unlock([]byte(testPass), anySlot); !errors.Is(err, luksio.ErrNotEncrypted) {
		t.Fatalf("Unlock of an unencrypted image: %v, want luksio.ErrNotEncrypted", err)
	}
}
