package luksio

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/tests/testimg"
)

const (
	csPass1 = "first passphrase"
	csPass2 = "second passphrase"
	// csOffset is the payload offset given to cryptsetup (--offset, in
	// 512-byte sectors): 2 MiB keeps images small.
	csOffset     = 4096
	csPlainSize  = 1 << 20
	csImageBytes = csOffset*512 + csPlainSize
)

// Cheap KDF settings for cryptsetup.
var (
	kdfPBKDF2   = []string{"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"}
	kdfArgon2i  = []string{"--pbkdf", "argon2i", "--pbkdf-memory", "32", "--pbkdf-force-iterations", "4"}
	kdfArgon2id = []string{"--pbkdf", "argon2id", "--pbkdf-memory", "64", "--pbkdf-force-iterations", "4", "--pbkdf-parallel", "2"}
)

// csCase is a cryptsetup-made image whose payload is filled by the
// python3-cryptography encryptor with the key cryptsetup reports.
type csCase struct {
	name    string
	typ     string // luks1 or luks2
	cipher  string
	keyBits int
	sector  int
	kdf     string
	kdfArgs []string
	kdf2    []string // KDF of the second keyslot
	hash    string   // --hash
}

var csMatrix = []csCase{
	{"luks2-pbkdf2-sha256-xts512-sector512", "luks2", "aes-xts-plain64", 512, 512, "pbkdf2", kdfPBKDF2, kdfArgon2id, "sha256"},
	{"luks2-argon2i-xts256-sector4096", "luks2", "aes-xts-plain64", 256, 4096, "argon2i", kdfArgon2i, kdfPBKDF2, ""},
	{"luks2-argon2id-xts512-sector4096", "luks2", "aes-xts-plain64", 512, 4096, "argon2id", kdfArgon2id, kdfArgon2i, ""},
	{"luks2-argon2id-xts256-sector2048", "luks2", "aes-xts-plain64", 256, 2048, "argon2id", kdfArgon2id, kdfPBKDF2, ""},
	{"luks2-pbkdf2-sha512-cbc-essiv-sector4096", "luks2", "aes-cbc-essiv:sha256", 256, 4096, "pbkdf2", kdfPBKDF2, kdfArgon2i, "sha512"},
	{"luks2-metadata64k-argon2id-xts512", "luks2", "aes-xts-plain64", 512, 512, "argon2id", append([]string{"--luks2-metadata-size", "64k"}, kdfArgon2id...), kdfPBKDF2, ""},
	{"luks1-sha512-cbc-essiv", "luks1", "aes-cbc-essiv:sha256", 256, 512, "pbkdf2", kdfPBKDF2, kdfPBKDF2, "sha512"},
	{"luks1-sha256-xts512-essiv", "luks1", "aes-xts-essiv:sha256", 512, 512, "pbkdf2", kdfPBKDF2, kdfPBKDF2, "sha256"},
	{"luks1-sha1-xts512", "luks1", "aes-xts-plain64", 512, 512, "pbkdf2", kdfPBKDF2, kdfPBKDF2, "sha1"},
	{"luks1-ripemd160-xts256", "luks1", "aes-xts-plain64", 256, 512, "pbkdf2", kdfPBKDF2, kdfPBKDF2, "ripemd160"},
}

// makeCryptsetupImage formats dir/name with cryptsetup, adds a second
// keyslot and fills the payload; it returns the path, the plaintext, the
// volume key and the payload offset that cryptsetup reports.
func makeCryptsetupImage(t *testing.T, dir string, c csCase, seed uint64) (string, []byte, []byte, int64) {
	t.Helper()
	testimg.Need(t, "cryptsetup", testimg.Python)
	path := filepath.Join(dir, c.name+".img")
	args := []string{"--type", c.typ, "--cipher", c.cipher, "--key-size", strconv.Itoa(c.keyBits), "--offset", strconv.Itoa(csOffset)}
	if c.typ == "luks2" {
		args = append(args, "--sector-size", strconv.Itoa(c.sector), "--label", c.name)
	}
	if c.hash != "" {
		args = append(args, "--hash", c.hash)
	}
	args = append(args, c.kdfArgs...)
	if c.typ == "luks1" {
		args = []string{"--type", "luks1", "--cipher", c.cipher, "--key-size", strconv.Itoa(c.keyBits), "--hash", c.hash, "--pbkdf-force-iterations", "1000"}
	}
	testimg.CryptsetupFormat(t, path, csImageBytes, csPass1, args...)
	add := c.kdf2
	if c.typ == "luks1" {
		add = []string{"--pbkdf-force-iterations", "1000"}
	}
	testimg.CryptsetupAddKey(t, path, csPass1, csPass2, add...)
	key, off := testimg.CryptsetupVolumeKey(t, path, csPass1)
	plain := testimg.RandomBytes(csImageBytes-int(off), seed)
	testimg.FillPayload(t, path, off, key, c.cipher, c.sector, 0, plain)
	return path, plain, key, off
}

// TestCryptsetupImages opens cryptsetup-made LUKS1 and LUKS2 images (every
// KDF, sector sizes 512..4096, 256- and 512-bit keys, XTS and CBC-ESSIV)
// through both keyslots and compares every byte with the plaintext.
func TestCryptsetupImages(t *testing.T) {
	for i, c := range csMatrix {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			path, plain, key, off := makeCryptsetupImage(t, t.TempDir(), c, uint64(300+i))
			f := openFile(t, path)
			h, err := ReadHeader(f, f.Size())
			if err != nil {
				t.Fatal(err)
			}
			wantVersion := map[string]int{"luks1": 1, "luks2": 2}[c.typ]
			if h.Version != wantVersion || h.CipherSpec != c.cipher || h.KeyBytes != c.keyBits/8 || h.SectorSize != c.sector ||
				h.PayloadOffset != off || h.PayloadSize != int64(len(plain)) || h.UsedSecondary || len(h.Keyslots) != 2 {
				t.Fatalf("header %+v does not match %+v (payload offset %d)", h, c, off)
			}
			if h.Keyslots[0].KDF != c.kdf {
				t.Fatalf("keyslot 0 KDF %q, want %q", h.Keyslots[0].KDF, c.kdf)
			}
			uuid := strings.TrimSpace(string(testimg.Run(t, "cryptsetup", "luksUUID", path)))
			if h.UUID != uuid || (c.typ == "luks2" && h.Label != c.name) {
				t.Fatalf("UUID %q label %q; cryptsetup says %q, label %q", h.UUID, h.Label, uuid, c.name)
			}
			for slot, pass := range []string{csPass1, csPass2} {
				k, err := h.Unlock(f, []byte(pass), UnlockOptions{Slot: AnySlot})
				if err != nil {
					t.Fatalf("passphrase %d: %v", slot, err)
				}
				if k.Slot() != slot || !bytes.Equal(k.key, key) {
					t.Fatalf("passphrase %d unlocked slot %d with a key equal to cryptsetup's: %v", slot, k.Slot(), bytes.Equal(k.key, key))
				}
				k.Close()
			}
			_, err = h.Unlock(f, []byte(csPass2), UnlockOptions{Slot: 0})
			wantErr(t, err, ErrWrongPassphrase)
			_, err = h.Unlock(f, []byte("nope"), UnlockOptions{Slot: AnySlot})
			wantErr(t, err, ErrWrongPassphrase)

			v, err := Open(f, []byte(csPass2), UnlockOptions{Slot: 1})
			if err != nil {
				t.Fatal(err)
			}
			defer v.Close()
			checkVolume(t, v, plain, uint64(i))
		})
	}
}

// TestLUKS2HeaderRecovery proves that a damaged primary header is replaced
// by the secondary copy (UsedSecondary), and that damage to both copies is
// a clear ErrCorrupt error.
func TestLUKS2HeaderRecovery(t *testing.T) {
	for _, tc := range []struct {
		c       csCase
		hdrSize int
	}{{csMatrix[1], 16 << 10}, {csMatrix[5], 64 << 10}} {
		t.Run(tc.c.name, func(t *testing.T) { testHeaderRecovery(t, tc.c, tc.hdrSize) })
	}
}

func testHeaderRecovery(t *testing.T, c csCase, hdrSize int) {
	path, plain, _, _ := makeCryptsetupImage(t, t.TempDir(), c, 400)
	img, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	flip := func(offs ...int) []byte {
		b := bytes.Clone(img)
		for _, o := range offs {
			b[o] ^= 0x20
		}
		return b
	}
	cases := []struct {
		name          string
		img           []byte
		usedSecondary bool
		wantErr       error
	}{
		{"intact", img, false, nil},
		{"primary JSON byte flipped", flip(4096 + 10), true, nil},
		{"primary magic destroyed", flip(0), true, nil},
		{"primary binary header seqid changed", flip(luks2OffSeqID + 7), true, nil},
		{"secondary JSON byte flipped", flip(hdrSize + 4096 + 10), false, nil},
		{"both JSON areas flipped", flip(4096+10, hdrSize+4096+10), false, blockdev.ErrCorrupt},
		{"both magics destroyed", flip(0, hdrSize), false, ErrNotLUKS},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := testimg.WriteFile(t, t.TempDir(), "img", tc.img)
			f := openFile(t, p)
			h, err := ReadHeader(f, f.Size())
			if tc.wantErr != nil {
				wantErr(t, err, tc.wantErr)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.UsedSecondary != tc.usedSecondary || h.HeaderSize != int64(hdrSize) {
				t.Fatalf("UsedSecondary = %v, header size %d; want %v, %d", h.UsedSecondary, h.HeaderSize, tc.usedSecondary, hdrSize)
			}
			k, err := h.Unlock(f, []byte(csPass1), UnlockOptions{Slot: AnySlot})
			if err != nil {
				t.Fatal(err)
			}
			v, err := NewVolume(f, h, k)
			if err != nil {
				t.Fatal(err)
			}
			k.Close()
			got := make([]byte, 64<<10)
			if err := blockdev.ReadFull(v, got, 100<<10); err != nil || !bytes.Equal(got, plain[100<<10:164<<10]) {
				t.Fatalf("plaintext through the recovered header differs (%v)", err)
			}
		})
	}
}

// TestLUKS2Refused proves that LUKS2 features luksio cannot read correctly
// (here an offline reencryption started by cryptsetup, which adds a
// mandatory requirement, extra segments and a reencrypt keyslot) are
// refused with ErrUnsupported, not misread.
func TestLUKS2Refused(t *testing.T) {
	path, _, _, _ := makeCryptsetupImage(t, t.TempDir(), csMatrix[0], 500)
	testimg.Run(t, "cryptsetup", "reencrypt", "--init-only", "--batch-mode", "--key-slot", "0",
		"--key-file", testimg.PassFile(t, csPass1), "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", path)
	f := openFile(t, path)
	_, err := ReadHeader(f, f.Size())
	wantErr(t, err, blockdev.ErrUnsupported)
	if err != nil && !bytes.Contains([]byte(err.Error()), []byte("online-reencrypt")) {
		t.Errorf("error %q does not name the requirement", err)
	}
}

// TestLUKS2KDFLimits proves that argon2 keyslots beyond the caller's limits
// are skipped with ErrKDFTooExpensive while other slots still unlock.
func TestLUKS2KDFLimits(t *testing.T) {
	path, _, _, _ := makeCryptsetupImage(t, t.TempDir(), csMatrix[2], 600) // slot 0 argon2id 64 KiB 2 lanes, slot 1 argon2i 32 KiB
	f := openFile(t, path)
	h, err := ReadHeader(f, f.Size())
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		opts UnlockOptions
		pass string
		want error
		slot int
	}{
		{UnlockOptions{Slot: AnySlot, MaxKDFMemoryKiB: 48}, csPass1, ErrKDFTooExpensive, 0},
		{UnlockOptions{Slot: AnySlot, MaxKDFMemoryKiB: 48}, csPass2, nil, 1},
		{UnlockOptions{Slot: AnySlot, MaxKDFTime: 3}, csPass1, ErrKDFTooExpensive, 0},
		{UnlockOptions{Slot: AnySlot, MaxKDFThreads: 1}, csPass1, ErrKDFTooExpensive, 0},
		{UnlockOptions{Slot: AnySlot, MaxKDFMemoryKiB: 10}, csPass1, ErrKDFTooExpensive, 0},
	}
	for i, tc := range cases {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			k, err := h.Unlock(f, []byte(tc.pass), tc.opts)
			if tc.want != nil {
				wantErr(t, err, tc.want)
				return
			}
			if err != nil || k.Slot() != tc.slot {
				t.Fatalf("unlock: %v", err)
			}
		})
	}
}

// TestBinaryPassphrase proves that passphrase bytes reach the KDF as they
// are: cryptsetup takes a key file's bytes raw, newline, NUL and all.
func TestBinaryPassphrase(t *testing.T) {
	testimg.Need(t, "cryptsetup")
	pass := "line one\nline two\x00\xff\xfe tail\n"
	for _, typ := range []string{"luks1", "luks2"} {
		t.Run(typ, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "bin.img")
			testimg.CryptsetupFormat(t, path, csImageBytes, pass, append([]string{"--type", typ, "--key-size", "256"}, kdfPBKDF2...)...)
			f := openFile(t, path)
			h, err := ReadHeader(f, f.Size())
			if err != nil {
				t.Fatal(err)
			}
			k, err := h.Unlock(f, []byte(pass), UnlockOptions{Slot: AnySlot})
			if err != nil {
				t.Fatal(err)
			}
			k.Close()
			for _, near := range []string{pass[:len(pass)-1], "line one", strings.ReplaceAll(pass, "\x00", "")} {
				_, err := h.Unlock(f, []byte(near), UnlockOptions{Slot: AnySlot})
				wantErr(t, err, ErrWrongPassphrase)
			}
		})
	}
}
