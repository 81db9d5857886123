package luksio

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/tests/testimg"
)

const luks1Pass = "correct horse battery staple"

// TestLUKS1QemuImages opens qemu-img-made LUKS1 images over a matrix that
// covers every AES key size, mode, IV generator and header hash qemu
// offers, plus twofish and cast5. Each is compared byte for byte with the
// plaintext it was made from and with qemu-img's own decryption, and the
// unlocked key with the one cryptsetup reports.
func TestLUKS1QemuImages(t *testing.T) {
	testimg.Need(t, "qemu-img", "cryptsetup")
	for i, tc := range qemuMatrix {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path, plain := qemuImage(t, i)
			f := openFile(t, path)

			h, err := ReadHeader(f, f.Size())
			if err != nil {
				t.Fatal(err)
			}
			if h.Version != 1 || h.CipherSpec != tc.spec || h.KeyBytes != tc.keyBytes || h.HashSpec != tc.opts.Hash || h.SectorSize != 512 {
				t.Fatalf("header: version %d cipher %q key %d hash %q sector %d; want 1 %q %d %q 512",
					h.Version, h.CipherSpec, h.KeyBytes, h.HashSpec, h.SectorSize, tc.spec, tc.keyBytes, tc.opts.Hash)
			}
			if len(h.Keyslots) != 1 || h.Keyslots[0].Index != 0 || h.Keyslots[0].Stripes != 4000 {
				t.Fatalf("keyslots %+v, want slot 0 with 4000 stripes", h.Keyslots)
			}

			k, err := h.Unlock(f, []byte(luks1Pass), UnlockOptions{Slot: AnySlot})
			if err != nil {
				t.Fatal(err)
			}
			// cryptsetup needs device-mapper for ciphers the kernel's
			// userspace crypto API lacks: compare keys for AES only.
			if strings.HasPrefix(tc.spec, "aes-") {
				wantKey, wantOff := testimg.CryptsetupVolumeKey(t, path, luks1Pass)
				if !bytes.Equal(k.key, wantKey) || h.PayloadOffset != wantOff {
					t.Fatalf("unlocked key or payload offset %d differ from cryptsetup's (offset %d)", h.PayloadOffset, wantOff)
				}
			}
			v, err := NewVolume(f, h, k)
			if err != nil {
				t.Fatal(err)
			}
			k.Close()
			defer v.Close()
			checkVolume(t, v, plain, uint64(i))
			if qemu := testimg.QemuLUKSDecrypt(t, path, luks1Pass); !bytes.Equal(qemu, plain) {
				t.Fatalf("qemu-img's decryption differs from the plaintext: the vector is broken")
			}

			_, err = Open(f, []byte(luks1Pass+"x"), UnlockOptions{Slot: AnySlot})
			wantErr(t, err, ErrWrongPassphrase)
		})
	}
}

// TestPythonEncryptorMatchesQemu validates the independent encryptor used
// to fill cryptsetup-made images: re-encrypting the plaintext with the key
// qemu-img chose must give exactly qemu-img's payload.
func TestPythonEncryptorMatchesQemu(t *testing.T) {
	testimg.Need(t, "qemu-img", "cryptsetup", testimg.Python)
	for _, i := range []int{0, 3, 4} { // xts-plain64, cbc-essiv, xts-essiv
		path, plain := qemuImage(t, i)
		key, off := testimg.CryptsetupVolumeKey(t, path, luks1Pass)
		img, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		spec := qemuMatrix[i].spec
		ct := testimg.PyEncrypt(t, key, spec, 512, 0, plain)
		if !bytes.Equal(ct, img[off:off+int64(len(plain))]) {
			t.Fatalf("%s: python ciphertext differs from qemu-img's payload", spec)
		}
	}
}

// TestLUKS1Damage proves that truncated and corrupted LUKS1 images give
// clean, typed errors and never wrong plaintext or padding.
func TestLUKS1Damage(t *testing.T) {
	testimg.Need(t, "qemu-img")
	path, plain := qemuImage(t, 0)
	img, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f := openFile(t, path)
	h, err := ReadHeader(f, f.Size())
	if err != nil {
		t.Fatal(err)
	}
	ks := h.Keyslots[0]

	open := func(t *testing.T, b []byte) (*Volume, error) {
		p := filepath.Join(t.TempDir(), "damaged")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return Open(openFile(t, p), []byte(luks1Pass), UnlockOptions{Slot: AnySlot})
	}
	mutate := func(off int, fn func([]byte)) []byte {
		b := bytes.Clone(img)
		fn(b[off:])
		return b
	}
	cases := []struct {
		name string
		img  []byte
		want error
	}{
		{"truncated inside the phdr", img[:300], ErrNotLUKS},
		{"truncated inside the key material", img[:ks.AreaOffset+1000], blockdev.ErrTruncated},
		{"bad magic", mutate(0, func(b []byte) { b[0] = 'X' }), ErrNotLUKS},
		{"version 3", mutate(luks1OffsetVersion, func(b []byte) { b[1] = 3 }), blockdev.ErrUnsupported},
		{"key_bytes 17", mutate(luks1OffKeyBytes, func(b []byte) { b[3] = 17 }), blockdev.ErrCorrupt},
		{"keyslot state garbage", mutate(luks1KeyslotOffset, func(b []byte) { b[0] = 0x42 }), blockdev.ErrCorrupt},
		{"stripes 4001", mutate(luks1KeyslotOffset+luks1SlotOffStripes, func(b []byte) { b[2], b[3] = 0x0f, 0xa1 }), blockdev.ErrCorrupt},
		{"key material past the payload", mutate(luks1KeyslotOffset+luks1SlotOffKeyMat, func(b []byte) { b[0] = 0x7f }), blockdev.ErrCorrupt},
		{"payload offset inside the header", mutate(luks1OffPayload, func(b []byte) { clear(b[:4]) }), blockdev.ErrCorrupt},
		{"unknown cipher", mutate(luks1OffCipherName, func(b []byte) { copy(b, "serpent\x00") }), ErrUnsupportedCipher},
		{"unknown hash", mutate(luks1OffHashSpec, func(b []byte) { copy(b, "md5\x00") }), blockdev.ErrUnsupported},
		{"flipped key material bit", mutate(int(ks.AreaOffset)+5000, func(b []byte) { b[0] ^= 1 }), ErrWrongPassphrase},
		{"flipped digest bit", mutate(luks1OffMKDigest, func(b []byte) { b[0] ^= 1 }), ErrWrongPassphrase},
		{"disabled keyslot", mutate(luks1KeyslotOffset, func(b []byte) { copy(b, []byte{0, 0, 0xde, 0xad}) }), ErrWrongPassphrase},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v, err := open(t, tc.img)
			if err == nil {
				v.Close()
			}
			wantErr(t, err, tc.want)
		})
	}

	t.Run("payload shorter than the device claims", func(t *testing.T) {
		short := openFile(t, testimg.WriteFile(t, t.TempDir(), "short", img[:len(img)-4096]))
		v, err := Open(shortDevice{short, int64(len(img))}, []byte(luks1Pass), UnlockOptions{Slot: AnySlot})
		if err != nil {
			t.Fatal(err)
		}
		p := make([]byte, 8192)
		_, err = v.ReadAt(p, v.Size()-8192)
		wantErr(t, err, blockdev.ErrTruncated)
		// The part that is there still decrypts correctly.
		if _, err := v.ReadAt(p, 0); err != nil || !bytes.Equal(p, plain[:8192]) {
			t.Fatalf("read of the intact start: %v", err)
		}
	})

	t.Run("payload truncated mid-sector is refused", func(t *testing.T) {
		_, err := open(t, img[:len(img)-700])
		wantErr(t, err, blockdev.ErrTruncated)
	})

	t.Run("payload truncated at a sector boundary is a shorter volume", func(t *testing.T) {
		v, err := open(t, img[:len(img)-1024])
		if err != nil {
			t.Fatal(err)
		}
		checkVolume(t, v, plain[:len(plain)-1024], 3)
	})

	t.Run("wrong slot number", func(t *testing.T) {
		_, err := h.Unlock(f, []byte(luks1Pass), UnlockOptions{Slot: 3})
		if err == nil || errors.Is(err, ErrWrongPassphrase) {
			t.Fatalf("unlock of an inactive slot: %v", err)
		}
	})

	t.Run("KDF limit", func(t *testing.T) {
		_, err := h.Unlock(f, []byte(luks1Pass), UnlockOptions{Slot: AnySlot, MaxKDFIterations: 1})
		wantErr(t, err, ErrKDFTooExpensive)
	})
}
