package luksio

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/tests/testimg"
)

// jsonFuzzPass opens the templates of FuzzLUKS2Unlock.
const jsonFuzzPass = "fuzz-json"

// jsonFuzzOpts keeps every KDF cheap (the templates use 1000 PBKDF2
// iterations or argon2id with 32 KiB and 4 passes).
var jsonFuzzOpts = UnlockOptions{Slot: AnySlot, MaxKDFIterations: 2000, MaxKDFMemoryKiB: 64, MaxKDFTime: 4, MaxKDFThreads: 4}

// jsonFuzzImage is a LUKS2 image whose first 2*hdr bytes (both header
// copies) come from head and the rest from a cryptsetup-made template.
type jsonFuzzImage struct {
	head, tpl []byte
}

func (d jsonFuzzImage) Size() int64 { return int64(len(d.tpl)) }

func (d jsonFuzzImage) ReadAt(p []byte, off int64) (int, error) {
	n, eof := blockdev.Clip(p, off, int64(len(d.tpl)))
	for i := 0; i < n; {
		pos := off + int64(i)
		src := d.tpl
		if pos < int64(len(d.head)) {
			src = d.head
		}
		i += copy(p[i:n], src[pos:])
	}
	return n, eof
}

// withJSON returns both header copies of tpl (hdr bytes each) carrying js
// as their JSON metadata, with valid sha256 checksums: the mutated JSON
// reaches the parser instead of failing the checksum.
func withJSON(tpl []byte, hdr int, js []byte) []byte {
	head := bytes.Clone(tpl[:2*hdr])
	for _, off := range []int{0, hdr} {
		area := head[off+4096 : off+hdr]
		clear(area)
		copy(area, js)
		clear(head[off+448 : off+512])
		sum := sha256.Sum256(head[off : off+hdr])
		copy(head[off+448:], sum[:])
	}
	return head
}

// FuzzLUKS2Unlock mutates the JSON metadata of cryptsetup-made LUKS2 images
// (pbkdf2 and argon2id keyslots), re-checksums both header copies, and runs
// ReadHeader, Unlock (cheap KDF limits) and Volume reads. Nothing may panic;
// a header that parses must describe keyslots inside the image and a
// payload after the headers.
func FuzzLUKS2Unlock(f *testing.F) {
	testimg.Need(f, "cryptsetup")
	common := []string{"--type", "luks2", "--offset", "2048", "--luks2-keyslots-size", "512k", "--key-size", "256"}
	var templates [][]byte
	for i, kdf := range [][]string{
		{"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--hash", "sha256"},
		{"--pbkdf", "argon2id", "--pbkdf-memory", "32", "--pbkdf-force-iterations", "4", "--sector-size", "4096"},
	} {
		p := filepath.Join(f.TempDir(), "tpl.luks2")
		testimg.CryptsetupFormat(f, p, 2<<20, jsonFuzzPass, append(common, kdf...)...)
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		if binary.BigEndian.Uint64(b[8:]) != luks2MinHdrSize || string(bytes.TrimRight(b[72:104], "\x00")) != "sha256" {
			f.Fatalf("template %d: unexpected header size or checksum", i)
		}
		templates = append(templates, b)
		js := b[4096:luks2MinHdrSize]
		f.Add(byte(i), bytes.Clone(js[:bytes.IndexByte(js, 0)]))
	}
	f.Fuzz(func(t *testing.T, sel byte, js []byte) {
		if len(js) > luks2MinHdrSize-4096 {
			return
		}
		tpl := templates[int(sel)%len(templates)]
		dev := jsonFuzzImage{head: withJSON(tpl, luks2MinHdrSize, js), tpl: tpl}
		h, err := ReadHeader(dev, dev.Size())
		if err != nil {
			return
		}
		if h.PayloadOffset < 2*luks2MinHdrSize {
			t.Fatalf("payload offset %d inside the headers", h.PayloadOffset)
		}
		for _, ks := range h.Keyslots {
			if ks.AreaOffset < 2*luks2MinHdrSize || ks.AreaOffset+ks.AreaSize > h.PayloadOffset || ks.AreaOffset+int64(ks.Stripes)*int64(ks.KeyBytes) > dev.Size() {
				t.Fatalf("keyslot %d area %d+%d accepted (payload %d, image %d)", ks.Index, ks.AreaOffset, ks.AreaSize, h.PayloadOffset, dev.Size())
			}
		}
		k, err := h.Unlock(dev, []byte(jsonFuzzPass), jsonFuzzOpts)
		if err != nil {
			return
		}
		defer k.Close()
		v, err := NewVolume(dev, h, k)
		if err != nil {
			return
		}
		defer v.Close()
		p := make([]byte, 8192)
		_, _ = v.ReadAt(p, 0)
		_, _ = v.ReadAt(p[:100], v.Size()-50)
	})
}
