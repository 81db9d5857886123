package luksio

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"io"
	"time"
)

// RewrapOptions say how RewrapLUKS1 makes the new keyslot.
type RewrapOptions struct {
	// KeepOld keeps the existing keyslots and puts the new passphrase in
	// the first disabled one; otherwise every keyslot is disabled, its key
	// material overwritten with random bytes, and the new passphrase goes
	// into keyslot 0.
	KeepOld bool
	// Iterations fixes the PBKDF2 iterations of the new keyslot; 0
	// calibrates them to IterTime (default DefaultIterTime) on this machine.
	Iterations uint32
	// IterTime is the calibration target.
	IterTime time.Duration
	// Rand is the source of salts and AF stripes (default crypto/rand).
	Rand io.Reader
}

// RewrapLUKS1 returns a copy of area, a LUKS1 header area as stored (the
// phdr followed by the key material of its keyslots), with the volume key
// key wrapped under newPass in a fresh keyslot. The layout (key material
// offsets, stripes, payload offset), the cipher, the UUID and the volume
// key digest are unchanged, so the payload needs no re-encryption. It
// returns the index of the new keyslot. key must be the volume key the
// header's digest matches (from Header.Unlock); a LUKS2 header is refused
// with ErrUnsupported.
func RewrapLUKS1(area []byte, key *Key, newPass []byte, opts RewrapOptions) ([]byte, int, error) {
	h, err := ReadHeader(bytesDevice(area), int64(len(area)))
	if err != nil {
		return nil, 0, fmt.Errorf("new keyslot: %w", err)
	}
	if h.Version != 1 {
		return nil, 0, unsupportedf("new keyslot: a LUKS%d header cannot be re-wrapped (only LUKS1)", h.Version)
	}
	if key == nil || key.key == nil || len(key.key) != h.KeyBytes || key.spec != h.CipherSpec {
		return nil, 0, fmt.Errorf("new keyslot: the volume key is not one of this %s/%d-byte header", h.CipherSpec, h.KeyBytes)
	}
	d := h.digests[0]
	newHash, err := hashByName(d.hash)
	if err != nil {
		return nil, 0, err
	}
	sum := pbkdf2Key(newHash, key.key, d.salt, int(d.iterations), len(d.value))
	ok := subtle.ConstantTimeCompare(sum, d.value) == 1
	clear(sum)
	if !ok {
		return nil, 0, fmt.Errorf("new keyslot: the volume key does not match the header's digest: %w", ErrWrongPassphrase)
	}
	rnd := opts.Rand
	if rnd == nil {
		rnd = rand.Reader
	}
	iter := opts.Iterations
	if iter == 0 {
		t := opts.IterTime
		if t <= 0 {
			t = DefaultIterTime
		}
		iter = clampIter(pbkdf2Rate(newHash, h.KeyBytes) * t.Seconds())
	} else if iter < MinPBKDF2Iterations {
		return nil, 0, fmt.Errorf("new keyslot: %d PBKDF2 iterations is below the minimum %d", iter, MinPBKDF2Iterations)
	}

	out := append([]byte(nil), area...)
	be := binary.BigEndian
	slot := -1
	for i := range luks1NumKeys {
		s := out[luks1KeyslotOffset+i*luks1KeyslotSize:][:luks1KeyslotSize]
		if opts.KeepOld {
			if slot < 0 && be.Uint32(s) == luks1KeyDisabled {
				slot = i
			}
			continue
		}
		// Disable the slot and overwrite its key material, as
		// cryptsetup luksKillSlot does.
		be.PutUint32(s, luks1KeyDisabled)
		be.PutUint32(s[luks1SlotOffIterations:], 0)
		clear(s[luks1SlotOffSalt : luks1SlotOffSalt+luks1SaltSize])
		off := int64(be.Uint32(s[luks1SlotOffKeyMat:])) * luks1SectorSize
		n := roundUp(int64(h.KeyBytes)*int64(be.Uint32(s[luks1SlotOffStripes:])), luks1SectorSize)
		if off >= luks1PhdrSize && n > 0 && off+n <= int64(len(out)) {
			if _, err := io.ReadFull(rnd, out[off:off+n]); err != nil {
				return nil, 0, fmt.Errorf("new keyslot: random bytes: %w", err)
			}
		}
		slot = 0
	}
	if slot < 0 {
		return nil, 0, fmt.Errorf("new keyslot: all %d keyslots are in use; drop --keep-old-keyslots", luks1NumKeys)
	}
	if err := fillLUKS1Keyslot(out, slot, key.key, newPass, h.HashSpec, h.CipherSpec, iter, rnd); err != nil {
		clear(out)
		return nil, 0, fmt.Errorf("new keyslot %d: %w", slot, err)
	}
	return out, slot, nil
}
