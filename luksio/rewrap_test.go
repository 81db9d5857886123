package luksio

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/tests/testimg"
)

// Re-wrapping keeps the volume key, digest, UUID and layout; without
// KeepOld only the new keyslot is active and the old passphrase opens
// nothing (its key material is gone), with KeepOld both open it.
func TestRewrapLUKS1(t *testing.T) {
	fo := FormatOptions{Iterations: 1000, DigestIterations: 1000}
	area, key, err := NewLUKS1([]byte("old"), fo)
	if err != nil {
		t.Fatal(err)
	}
	defer key.Close()
	oldH, _ := ReadHeader(bytesDevice(area), int64(len(area)))
	for _, keep := range []bool{false, true} {
		out, slot, err := RewrapLUKS1(area, key, []byte("new"), RewrapOptions{KeepOld: keep, Iterations: 1000})
		if err != nil {
			t.Fatal(err)
		}
		if len(out) != len(area) || !bytes.Equal(out[:luks1KeyslotOffset], area[:luks1KeyslotOffset]) {
			t.Fatal("the phdr before the keyslots changed")
		}
		h, err := ReadHeader(bytesDevice(out), int64(len(out)))
		if err != nil {
			t.Fatal(err)
		}
		wantSlots := map[bool]int{false: 1, true: 2}[keep]
		if len(h.Keyslots) != wantSlots || slot != map[bool]int{false: 0, true: 1}[keep] {
			t.Fatalf("keep=%v: %d keyslots, new one %d", keep, len(h.Keyslots), slot)
		}
		nk, err := h.Unlock(bytesDevice(out), []byte("new"), UnlockOptions{Slot: AnySlot})
		if err != nil {
			t.Fatalf("keep=%v: new passphrase: %v", keep, err)
		}
		if !bytes.Equal(nk.key, key.key) {
			t.Fatal("the new keyslot holds another volume key")
		}
		nk.Close()
		_, err = h.Unlock(bytesDevice(out), []byte("old"), UnlockOptions{Slot: AnySlot})
		if keep != (err == nil) {
			t.Fatalf("keep=%v: old passphrase: %v", keep, err)
		}
		if !keep {
			// The old slot's material is overwritten: even the old header
			// fields no longer unlock it.
			if _, err := oldH.Unlock(bytesDevice(out), []byte("old"), UnlockOptions{Slot: AnySlot}); err == nil {
				t.Fatal("the old key material still opens the volume")
			}
		}
	}
}

// A key that is not the header's, and a LUKS2 header, are refused.
func TestRewrapLUKS1Refuses(t *testing.T) {
	fo := FormatOptions{Iterations: 1000, DigestIterations: 1000}
	area, key, err := NewLUKS1([]byte("a"), fo)
	if err != nil {
		t.Fatal(err)
	}
	defer key.Close()
	_, other, err := NewLUKS1([]byte("b"), fo)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, _, err := RewrapLUKS1(area, other, []byte("n"), RewrapOptions{Iterations: 1000}); !errors.Is(err, ErrWrongPassphrase) {
		t.Fatalf("foreign key: %v", err)
	}
	l2 := luks2Image(t)
	if _, _, err := RewrapLUKS1(l2, key, []byte("n"), RewrapOptions{Iterations: 1000}); !errors.Is(err, blockdev.ErrUnsupported) {
		t.Fatalf("LUKS2: %v", err)
	}
}

// luks2Image returns a small LUKS2 volume made by cryptsetup.
func luks2Image(t *testing.T) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "luks2.img")
	testimg.CryptsetupFormat(t, path, 4<<20, "p", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
