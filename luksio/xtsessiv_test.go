package luksio

import (
	"bytes"
	"testing"

	"github.com/imgfs/imgfs/tests/testimg"
)

// TestXTSESSIVBothTools opens aes-xts-essiv:sha256 LUKS1 images made by
// both tools: qemu-img (cipher-mode=xts, ivgen-alg=essiv,
// ivgen-hash-alg=sha256, as in qemu's iotest 149) and cryptsetup luksFormat
// -c aes-xts-essiv:sha256 with its payload written by the python3-
// cryptography encryptor. luksio's plaintext must equal the known plaintext
// and qemu-img convert's decryption of the same image.
func TestXTSESSIVBothTools(t *testing.T) {
	testimg.Need(t, "qemu-img", "cryptsetup", testimg.Python)
	const qemuIndex = 4
	if qemuMatrix[qemuIndex].spec != "aes-xts-essiv:sha256" {
		t.Fatalf("qemu matrix entry %d is %s", qemuIndex, qemuMatrix[qemuIndex].spec)
	}
	qpath, qplain := qemuImage(t, qemuIndex)
	var cs csCase
	for _, c := range csMatrix {
		if c.cipher == "aes-xts-essiv:sha256" {
			cs = c
		}
	}
	cpath, cplain, _, _ := makeCryptsetupImage(t, t.TempDir(), cs, 777)
	for _, img := range []struct {
		tool, path, pass string
		plain            []byte
	}{{"qemu-img", qpath, luks1Pass, qplain}, {"cryptsetup", cpath, csPass1, cplain}} {
		t.Run(img.tool, func(t *testing.T) {
			f := openFile(t, img.path)
			v, err := Open(f, []byte(img.pass), UnlockOptions{Slot: AnySlot})
			if err != nil {
				t.Fatal(err)
			}
			defer v.Close()
			if v.h.CipherSpec != "aes-xts-essiv:sha256" || v.h.KeyBytes != 64 {
				t.Fatalf("cipher %s with %d-byte key, want aes-xts-essiv:sha256 with 64", v.h.CipherSpec, v.h.KeyBytes)
			}
			checkVolume(t, v, img.plain, 9)
			if qemu := testimg.QemuLUKSDecrypt(t, img.path, img.pass); !bytes.Equal(qemu, img.plain) {
				t.Fatalf("qemu-img's decryption differs from the plaintext at byte %d", firstDiff(qemu, img.plain))
			}
		})
	}
}
