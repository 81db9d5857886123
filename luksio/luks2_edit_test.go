package luksio

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/tests/testimg"
)

// TestLUKS2EditedMetadata covers LUKS2 metadata that cryptsetup writes only
// in situations these machines cannot produce (iv_tweak, fixed segment
// sizes, integrity, other types): a cryptsetup-made image is edited by a
// python script that re-checksums both header copies, and the payload is
// re-encrypted by python where the IVs change.
func TestLUKS2EditedMetadata(t *testing.T) {
	base, basePlain, key, off := makeCryptsetupImage(t, t.TempDir(), csMatrix[1], 700) // argon2i, 4096-byte sectors
	c := csMatrix[1]
	edits := map[string]string{
		"tweak":       `j["segments"]["0"]["iv_tweak"] = "4294979641"`,
		"fixed":       `j["segments"]["0"]["size"] = "524288"`,
		"fixed-large": `j["segments"]["0"]["size"] = "2097152"`,
		"ignore":      `j["keyslots"]["0"]["priority"] = 0`,
		// Only one copy loses keyslot 1 and gets the higher seqid.
		"newer-secondary": "if secondary:\n    meta['seqid'] += 1\n    del j['keyslots']['1']\n    j['digests']['0']['keyslots'].remove('1')",
		"newer-primary":   "if not secondary:\n    meta['seqid'] += 1\n    del j['keyslots']['1']\n    j['digests']['0']['keyslots'].remove('1')",
		"older-primary":   "if not secondary:\n    meta['seqid'] -= 1\n    del j['keyslots']['1']\n    j['digests']['0']['keyslots'].remove('1')",
	}
	for _, tc := range luks2Refusals {
		edits[tc.name] = tc.stmt
	}
	dir := t.TempDir()
	paths := map[string]string{}
	for name, stmt := range edits {
		paths[filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))] = stmt
	}
	testimg.EditLUKS2JSONCopies(t, base, paths)
	edited := func(t *testing.T, name string) string {
		t.Parallel()
		return filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
	}

	t.Run("iv_tweak shifts every IV", func(t *testing.T) {
		const tweak = 1<<32 + 12345
		p := edited(t, "tweak")
		plain := testimg.RandomBytes(csImageBytes-int(off), 701)
		testimg.FillPayload(t, p, off, key, c.cipher, c.sector, tweak, plain)
		f := openFile(t, p)
		v, err := Open(f, []byte(csPass1), UnlockOptions{Slot: AnySlot})
		if err != nil {
			t.Fatal(err)
		}
		if v.Header().IVTweak != tweak {
			t.Fatalf("IVTweak %d, want %d", v.Header().IVTweak, tweak)
		}
		checkVolume(t, v, plain, 1)
	})

	t.Run("fixed segment size limits the volume", func(t *testing.T) {
		p := edited(t, "fixed")
		f := openFile(t, p)
		v, err := Open(f, []byte(csPass1), UnlockOptions{Slot: AnySlot})
		if err != nil {
			t.Fatal(err)
		}
		if v.Size() != 524288 || v.Header().DynamicSize {
			t.Fatalf("size %d dynamic %v, want 524288 fixed", v.Size(), v.Header().DynamicSize)
		}
		checkVolume(t, v, basePlain[:524288], 2)
	})

	t.Run("fixed segment size past the image end is truncation", func(t *testing.T) {
		p := edited(t, "fixed-large")
		_, err := Open(openFile(t, p), []byte(csPass1), UnlockOptions{Slot: AnySlot})
		wantErr(t, err, blockdev.ErrTruncated)
	})

	t.Run("priority ignore is skipped unless asked for", func(t *testing.T) {
		p := edited(t, "ignore")
		f := openFile(t, p)
		h, err := ReadHeader(f, f.Size())
		if err != nil {
			t.Fatal(err)
		}
		_, err = h.Unlock(f, []byte(csPass1), UnlockOptions{Slot: AnySlot})
		wantErr(t, err, ErrWrongPassphrase)
		k, err := h.Unlock(f, []byte(csPass1), UnlockOptions{Slot: 0})
		if err != nil || !bytes.Equal(k.key, key) {
			t.Fatalf("explicit slot 0: %v", err)
		}
	})

	for _, tc := range []struct {
		name          string
		usedSecondary bool
		slots         int
	}{{"newer-secondary", true, 1}, {"newer-primary", false, 1}, {"older-primary", true, 2}} {
		t.Run("the valid copy with the higher seqid wins: "+tc.name, func(t *testing.T) {
			f := openFile(t, edited(t, tc.name))
			h, err := ReadHeader(f, f.Size())
			if err != nil {
				t.Fatal(err)
			}
			if h.UsedSecondary != tc.usedSecondary || len(h.Keyslots) != tc.slots {
				t.Fatalf("UsedSecondary %v with %d keyslots; want %v with %d", h.UsedSecondary, len(h.Keyslots), tc.usedSecondary, tc.slots)
			}
			if _, err := h.Unlock(f, []byte(csPass1), UnlockOptions{Slot: AnySlot}); err != nil {
				t.Fatal(err)
			}
		})
	}

	for _, tc := range luks2Refusals {
		t.Run("refuses "+tc.name, func(t *testing.T) {
			p := edited(t, tc.name)
			f := openFile(t, p)
			_, err := ReadHeader(f, f.Size())
			wantErr(t, err, tc.want)
		})
	}
}

// luks2Refusals are metadata edits that ReadHeader must refuse.
var luks2Refusals = []struct {
	name, stmt string
	want       error
}{
	{"integrity", `j["segments"]["0"]["integrity"] = {"type": "hmac(sha256)", "journal_encryption": "none", "journal_integrity": "none"}`, blockdev.ErrUnsupported},
	{"segment type linear", `j["segments"]["0"]["type"] = "linear"`, blockdev.ErrUnsupported},
	{"two segments", `j["segments"]["1"] = dict(j["segments"]["0"])`, blockdev.ErrUnsupported},
	{"mandatory requirement", `j["config"]["requirements"] = {"mandatory": ["online-reencrypt-v2"]}`, blockdev.ErrUnsupported},
	{"unknown keyslot type", `j["keyslots"]["0"]["type"] = "luks3"`, blockdev.ErrUnsupported},
	{"unknown KDF", `j["keyslots"]["0"]["kdf"]["type"] = "scrypt"`, blockdev.ErrUnsupported},
	{"unknown digest type", `j["digests"]["0"]["type"] = "hmac"`, blockdev.ErrUnsupported},
	{"unknown segment cipher", `j["segments"]["0"]["encryption"] = "serpent-xts-plain64"`, ErrUnsupportedCipher},
	{"sector size 8192", `j["segments"]["0"]["sector_size"] = 8192`, blockdev.ErrCorrupt},
	{"stripes 4001", `j["keyslots"]["0"]["af"]["stripes"] = 4001`, blockdev.ErrCorrupt},
	{"keyslot area in the header", `j["keyslots"]["0"]["area"]["offset"] = "4096"`, blockdev.ErrCorrupt},
	{"keyslot area past the image", `j["keyslots"]["0"]["area"]["offset"] = "1000000000"`, blockdev.ErrCorrupt},
	{"segment offset 0 (detached header)", `j["segments"]["0"]["offset"] = "0"`, blockdev.ErrCorrupt},
	{"offset as a JSON number", `j["segments"]["0"]["offset"] = 2097152`, blockdev.ErrCorrupt},
	{"digest names a missing keyslot", `j["digests"]["0"]["keyslots"].append("7")`, blockdev.ErrCorrupt},
	{"no digest for the segment", `j["digests"]["0"]["segments"] = []`, blockdev.ErrCorrupt},
	{"deep nesting", `j["tokens"]["0"] = eval("[" * 20 + "1" + "]" * 20)`, blockdev.ErrCorrupt},
	{"priority 3", `j["keyslots"]["0"]["priority"] = 3`, blockdev.ErrCorrupt},
	{"keyslot key_size 17", `j["keyslots"]["0"]["key_size"] = 17`, blockdev.ErrCorrupt},
	{"area key_size 17", `j["keyslots"]["0"]["area"]["key_size"] = 17`, blockdev.ErrCorrupt},
	{"unknown AF type", `j["keyslots"]["0"]["af"]["type"] = "luks2"`, blockdev.ErrUnsupported},
	{"unknown AF hash", `j["keyslots"]["0"]["af"]["hash"] = "md5"`, blockdev.ErrUnsupported},
	{"unknown area type", `j["keyslots"]["0"]["area"]["type"] = "datashift"`, blockdev.ErrUnsupported},
	{"unknown area cipher", `j["keyslots"]["0"]["area"]["encryption"] = "aes-gcm-random"`, ErrUnsupportedCipher},
	{"area too small for the stripes", `j["keyslots"]["0"]["area"]["size"] = "4096"`, blockdev.ErrCorrupt},
	{"pbkdf2 iterations 0", `j["keyslots"]["1"]["kdf"]["iterations"] = 0`, blockdev.ErrCorrupt},
	{"pbkdf2 unknown hash", `j["keyslots"]["1"]["kdf"]["hash"] = "whirlpool"`, blockdev.ErrUnsupported},
	{"argon2 time 0", `j["keyslots"]["0"]["kdf"]["time"] = 0`, blockdev.ErrCorrupt},
	{"argon2 300 cpus", `j["keyslots"]["0"]["kdf"]["cpus"] = 300`, blockdev.ErrCorrupt},
	{"KDF salt not base64", `j["keyslots"]["0"]["kdf"]["salt"] = "*"`, blockdev.ErrCorrupt},
	{"KDF salt too long", `j["keyslots"]["0"]["kdf"]["salt"] = "QUFB" * 100`, blockdev.ErrCorrupt},
	{"digest salt not base64", `j["digests"]["0"]["salt"] = "!!"`, blockdev.ErrCorrupt},
	{"digest value too long", `j["digests"]["0"]["digest"] = "QUFB" * 30`, blockdev.ErrCorrupt},
	{"digest iterations 0", `j["digests"]["0"]["iterations"] = 0`, blockdev.ErrCorrupt},
	{"digest unknown hash", `j["digests"]["0"]["hash"] = "md5"`, blockdev.ErrUnsupported},
	{"keyslot id with a leading zero", `j["keyslots"]["07"] = j["keyslots"].pop("1"); j["digests"]["0"]["keyslots"] = ["0"]`, blockdev.ErrCorrupt},
	{"keyslot id 32", `j["keyslots"]["32"] = j["keyslots"].pop("1"); j["digests"]["0"]["keyslots"] = ["0"]`, blockdev.ErrCorrupt},
	{"segment size not a number", `j["segments"]["0"]["size"] = "lots"`, blockdev.ErrCorrupt},
	{"segment size not whole sectors", `j["segments"]["0"]["size"] = "4097"`, blockdev.ErrCorrupt},
	{"negative iv_tweak", `j["segments"]["0"]["iv_tweak"] = "-1"`, blockdev.ErrCorrupt},
	{"segment flags", `j["segments"]["0"]["flags"] = ["backup-previous"]`, blockdev.ErrUnsupported},
	{"json_size mismatch", `j["config"]["json_size"] = "4096"`, blockdev.ErrCorrupt},
	{"no digests object", `del j["digests"]`, blockdev.ErrCorrupt},
	{"not an object", `j.clear(); j["keyslots"] = []`, blockdev.ErrCorrupt},
}
