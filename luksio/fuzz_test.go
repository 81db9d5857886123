package luksio

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/tests/testimg"
)

// fuzzOpts keeps every KDF cheap so that fuzzing explores parsing and
// unlocking rather than waiting for PBKDF2.
var fuzzOpts = UnlockOptions{Slot: AnySlot, MaxKDFIterations: 2000, MaxKDFMemoryKiB: 64, MaxKDFTime: 4, MaxKDFThreads: 4}

const fuzzPass = "fuzz"

// fuzzTemplate formats a small image with cryptsetup and returns it whole.
// The fuzzers mutate only its header bytes (Go's fuzzer is slow on large
// inputs) and lay them over the template, whose key material and payload
// stay intact so that mutated headers still reach Unlock and ReadAt.
func fuzzTemplate(f *testing.F, typ string, args ...string) []byte {
	testimg.Need(f, "cryptsetup")
	p := filepath.Join(f.TempDir(), typ+".img")
	testimg.CryptsetupFormat(f, p, 3<<20, fuzzPass, append([]string{"--type", typ}, args...)...)
	b, err := os.ReadFile(p)
	if err != nil {
		f.Fatal(err)
	}
	return b
}

// fuzzOpen lays the mutated header over template, parses it, and if that
// works unlocks it and reads some plaintext. It must never panic.
func fuzzOpen(t *testing.T, templates [][]byte, sel byte, hdr []byte) {
	tpl := templates[int(sel)%len(templates)]
	img := make([]byte, max(len(tpl), len(hdr)))
	copy(img, tpl)
	copy(img, hdr)
	dev := memDevice(img)
	h, err := ReadHeader(dev, dev.Size())
	if err != nil {
		return
	}
	k, err := h.Unlock(dev, []byte(fuzzPass), fuzzOpts)
	if err != nil {
		return
	}
	defer k.Close()
	v, err := NewVolume(dev, h, k)
	if err != nil {
		return
	}
	p := make([]byte, 1000)
	_, _ = v.ReadAt(p, 100)
	v.Close()
}

type memDevice []byte

func (m memDevice) Size() int64 { return int64(len(m)) }
func (m memDevice) ReadAt(p []byte, off int64) (int, error) {
	n, eof := blockdev.Clip(p, off, int64(len(m)))
	copy(p[:n], m[off:])
	return n, eof
}

// FuzzLUKS1Header mutates LUKS1 phdrs (seeded from cryptsetup, XTS and
// CBC-ESSIV) and runs ReadHeader, Unlock and Volume reads on them.
func FuzzLUKS1Header(f *testing.F) {
	templates := [][]byte{
		fuzzTemplate(f, "luks1", "--pbkdf-force-iterations", "1000", "--hash", "sha256", "--key-size", "256"),
		fuzzTemplate(f, "luks1", "--pbkdf-force-iterations", "1000", "--cipher", "aes-cbc-essiv:sha256", "--key-size", "128", "--hash", "sha1"),
	}
	for i, tpl := range templates {
		f.Add(byte(i), bytes.Clone(tpl[:luks1PhdrSize]))
	}
	f.Fuzz(func(t *testing.T, sel byte, hdr []byte) { fuzzOpen(t, templates, sel, hdr) })
}

// FuzzLUKS2Header mutates both LUKS2 header copies (seeded from cryptsetup
// with pbkdf2 and argon2id keyslots) and runs ReadHeader, Unlock and
// Volume reads on them.
func FuzzLUKS2Header(f *testing.F) {
	small := []string{"--offset", "2048", "--luks2-keyslots-size", "512k", "--key-size", "256"}
	templates := [][]byte{
		fuzzTemplate(f, "luks2", append(small, kdfPBKDF2...)...),
		fuzzTemplate(f, "luks2", append(small, "--pbkdf", "argon2id", "--pbkdf-memory", "32", "--pbkdf-force-iterations", "4", "--sector-size", "4096")...),
	}
	for i, tpl := range templates {
		f.Add(byte(i), bytes.Clone(tpl[:2*luks2MinHdrSize]))
	}
	f.Fuzz(func(t *testing.T, sel byte, hdr []byte) { fuzzOpen(t, templates, sel, hdr) })
}
