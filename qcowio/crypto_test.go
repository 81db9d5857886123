package qcowio

import (
	"errors"
	"testing"

	"github.com/imgfs/imgfs/luksio"
	"github.com/imgfs/imgfs/tests/testimg"
)

const testPass = "correct horse battery"

var anySlot = luksio.UnlockOptions{Slot: luksio.AnySlot}

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

// TestReadLUKSMatchesPlaintextAndQemu proves the host-offset IV: data
// written by qemu-io through qcow2+LUKS at scattered, out-of-order and
// unaligned offsets decrypts to the plaintext and to qemu's own reading.
func TestReadLUKSMatchesPlaintextAndQemu(t *testing.T) {
	cases := []struct {
		name string
		spec testimg.QcowImage
	}{
		{"4k clusters", testimg.QcowImage{Size: 4 << 20, Options: "cluster_size=4096", Passes: scattered(4096)}},
		{"64k clusters", testimg.QcowImage{Size: 4 << 20, Passes: scattered(65536)}},
		{"2M clusters", testimg.QcowImage{Size: 6 << 20, Options: "cluster_size=2097152", Passes: scattered(2 << 20)}},
		{"extended L2 with zero subclusters", testimg.QcowImage{Size: 2 << 20, Options: "extended_l2=on", Passes: [][]W{
			{{Off: 1 << 20, Len: 6000, Seed: 40}, {Off: 0, Len: 128 << 10, Seed: 41}},
			{{Off: 8192, Len: 4096, Zero: true}},
		}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.spec.Passphrase = testPass
			path, plain := testimg.MakeQcow2(t, t.TempDir(), "img.qcow2", tc.spec)
			mustEqual(t, "qemu-img convert vs plaintext", testimg.QemuRaw(t, path, testPass), plain)
			checkAllReads(t, openUnlocked(t, path, testPass), plain)
		})
	}
}

// TestReadLUKSConverted reads qcow2+LUKS images made by qemu-img convert.
func TestReadLUKSConverted(t *testing.T) {
	raw := make([]byte, 5<<20)
	copy(raw[4096:], testimg.RandomBytes(700<<10, 50))
	copy(raw[3<<20+777:], testimg.RandomBytes(1<<20, 51))
	for _, cs := range []string{"4096", "65536", "2097152"} {
		t.Run("cluster_size="+cs, func(t *testing.T) {
			t.Parallel()
			path := testimg.ConvertQcow2(t, t.TempDir(), "img.qcow2", raw, "cluster_size="+cs, testPass, false)
			mustEqual(t, "qemu-img convert -O raw vs source", testimg.QemuRaw(t, path, testPass), raw)
			checkAllReads(t, openUnlocked(t, path, testPass), raw)
		})
	}
}

// TestLUKSKeyHandling proves that no ciphertext is ever read as plaintext:
// reads before Unlock fail, a wrong passphrase fails and leaves the image
// locked, a key for an unencrypted image is refused, Close forgets the key.
func TestLUKSKeyHandling(t *testing.T) {
	dir := t.TempDir()
	path, plain := testimg.MakeQcow2(t, dir, "enc.qcow2", testimg.QcowImage{Size: 1 << 20, Passphrase: testPass,
		Passes: [][]W{{{Off: 0, Len: 64 << 10, Seed: 60}}}})
	img := openImage(t, path)
	buf := make([]byte, 4096)
	if n, err := img.ReadAt(buf, 0); !errors.Is(err, ErrKeyRequired) || n != 0 {
		t.Fatalf("read before Unlock = %d, %v; want ErrKeyRequired", n, err)
	}
	if err := img.Unlock([]byte("wrong passphrase"), anySlot); !errors.Is(err, luksio.ErrWrongPassphrase) {
		t.Fatalf("Unlock with a wrong passphrase: %v, want ErrWrongPassphrase", err)
	}
	if _, err := img.ReadAt(buf, 0); !errors.Is(err, ErrKeyRequired) {
		t.Fatalf("read after a failed Unlock: %v, want ErrKeyRequired", err)
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

	plainPath, _ := testimg.MakeQcow2(t, dir, "plain.qcow2", testimg.QcowImage{Size: 1 << 20})
	if err := openImage(t, plainPath).Unlock([]byte(testPass), anySlot); !errors.Is(err, ErrNotEncrypted) {
		t.Fatalf("Unlock of an unencrypted image: %v, want ErrNotEncrypted", err)
	}
}
