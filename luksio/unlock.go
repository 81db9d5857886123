package luksio

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/imgfs/imgfs/blockdev"
)

// Default KDF limits used when UnlockOptions leaves a field zero. They admit
// everything cryptsetup and qemu create by default while refusing headers
// crafted to make unlocking take hours or exhaust memory.
const (
	DefaultMaxKDFMemoryKiB  = 4 << 20   // 4 GiB: cryptsetup's argon2 maximum
	DefaultMaxKDFIterations = 1<<31 - 1 // PBKDF2 iterations
	DefaultMaxKDFTime       = 64        // argon2 passes
	DefaultMaxKDFThreads    = 64        // argon2 lanes
)

// AnySlot as UnlockOptions.Slot tries every active keyslot.
const AnySlot = -1

// UnlockOptions controls Header.Unlock.
type UnlockOptions struct {
	// Slot is the keyslot to try, or AnySlot (-1) to try all active ones
	// (high priority first, skipping priority "ignore"). Note that the zero
	// value means slot 0.
	Slot int
	// MaxKDFMemoryKiB limits argon2 memory (default DefaultMaxKDFMemoryKiB).
	MaxKDFMemoryKiB uint32
	// MaxKDFIterations limits PBKDF2 iterations of keyslots and digests
	// (default DefaultMaxKDFIterations).
	MaxKDFIterations uint32
	// MaxKDFTime limits argon2 passes (default DefaultMaxKDFTime).
	MaxKDFTime uint32
	// MaxKDFThreads limits argon2 parallelism (default DefaultMaxKDFThreads).
	MaxKDFThreads uint32
}

func (o UnlockOptions) withDefaults() UnlockOptions {
	if o.MaxKDFMemoryKiB == 0 {
		o.MaxKDFMemoryKiB = DefaultMaxKDFMemoryKiB
	}
	if o.MaxKDFIterations == 0 {
		o.MaxKDFIterations = DefaultMaxKDFIterations
	}
	if o.MaxKDFTime == 0 {
		o.MaxKDFTime = DefaultMaxKDFTime
	}
	if o.MaxKDFThreads == 0 {
		o.MaxKDFThreads = DefaultMaxKDFThreads
	}
	return o
}

// Key is an unlocked volume key. It never prints its bytes; Close zeroes them.
type Key struct {
	key        []byte
	slot       int
	spec       string
	sectorSize int
}

// Close zeroes the key. The Key is unusable afterwards.
func (k *Key) Close() {
	clear(k.key)
	k.key = nil
}

// Slot returns the keyslot that unlocked the key.
func (k *Key) Slot() int { return k.slot }

// String hides the key.
func (k *Key) String() string { return "luksio.Key(redacted)" }

// GoString hides the key from %#v.
func (k *Key) GoString() string { return "luksio.Key(redacted)" }

// Format prints "luksio.Key(redacted)" for every fmt verb.
func (k *Key) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, "luksio.Key(redacted)") }

// Cipher returns a sector cipher for the header's cipher spec and sector
// size keyed with this key.
func (k *Key) Cipher() (*SectorCipher, error) {
	if k.key == nil {
		return nil, errors.New("luksio: key is closed")
	}
	return NewSectorCipher(k.spec, k.key, k.sectorSize)
}

var errSlotInactive = errors.New("keyslot is not active")

// Unlock derives the volume key from passphrase through a keyslot and
// verifies it against the header digest. r is the device the header was
// read from (key material offsets are relative to its start). The
// passphrase is not retained. A passphrase that opens no slot gives
// ErrWrongPassphrase; slots whose KDF exceeds opts' limits are skipped and
// reported with ErrKDFTooExpensive.
func (h *Header) Unlock(r io.ReaderAt, passphrase []byte, opts UnlockOptions) (*Key, error) {
	opts = opts.withDefaults()
	var slots []Keyslot
	if opts.Slot == AnySlot {
		for _, prio := range []int{2, 1} {
			for _, ks := range h.Keyslots {
				if ks.Priority == prio {
					slots = append(slots, ks)
				}
			}
		}
		if len(slots) == 0 {
			return nil, fmt.Errorf("luks%d: no usable keyslot: %w", h.Version, ErrWrongPassphrase)
		}
	} else {
		i := slices.IndexFunc(h.Keyslots, func(ks Keyslot) bool { return ks.Index == opts.Slot })
		if i < 0 {
			return nil, fmt.Errorf("luks%d: keyslot %d: %w", h.Version, opts.Slot, errSlotInactive)
		}
		slots = []Keyslot{h.Keyslots[i]}
	}
	var tooExpensive []error
	for _, ks := range slots {
		key, err := h.tryKeyslot(r, ks, passphrase, opts)
		switch {
		case err == nil:
			return key, nil
		case errors.Is(err, ErrKDFTooExpensive):
			tooExpensive = append(tooExpensive, err)
		case errors.Is(err, ErrWrongPassphrase):
		default:
			return nil, err
		}
	}
	if len(tooExpensive) == len(slots) {
		return nil, fmt.Errorf("luks%d: no keyslot tried: %w", h.Version, errors.Join(tooExpensive...))
	}
	if len(tooExpensive) > 0 {
		return nil, fmt.Errorf("luks%d: %w (and skipped: %w)", h.Version, ErrWrongPassphrase, errors.Join(tooExpensive...))
	}
	return nil, fmt.Errorf("luks%d: %w", h.Version, ErrWrongPassphrase)
}

// checkKDF enforces opts' limits on a keyslot.
func checkKDF(ks Keyslot, opts UnlockOptions) error {
	switch {
	case ks.KDF == "pbkdf2" && ks.Iterations > opts.MaxKDFIterations:
		return fmt.Errorf("keyslot %d: %d PBKDF2 iterations (limit %d): %w", ks.Index, ks.Iterations, opts.MaxKDFIterations, ErrKDFTooExpensive)
	case ks.KDF != "pbkdf2" && ks.MemoryKiB > opts.MaxKDFMemoryKiB:
		return fmt.Errorf("keyslot %d: %s memory %d KiB (limit %d): %w", ks.Index, ks.KDF, ks.MemoryKiB, opts.MaxKDFMemoryKiB, ErrKDFTooExpensive)
	case ks.KDF != "pbkdf2" && ks.Iterations > opts.MaxKDFTime:
		return fmt.Errorf("keyslot %d: %s time %d (limit %d): %w", ks.Index, ks.KDF, ks.Iterations, opts.MaxKDFTime, ErrKDFTooExpensive)
	case ks.KDF != "pbkdf2" && ks.Parallel > opts.MaxKDFThreads:
		return fmt.Errorf("keyslot %d: %s parallelism %d (limit %d): %w", ks.Index, ks.KDF, ks.Parallel, opts.MaxKDFThreads, ErrKDFTooExpensive)
	}
	return nil
}

// tryKeyslot derives a candidate key through one keyslot and checks it.
func (h *Header) tryKeyslot(r io.ReaderAt, ks Keyslot, passphrase []byte, opts UnlockOptions) (*Key, error) {
	if err := checkKDF(ks, opts); err != nil {
		return nil, err
	}
	var digests []digest
	for _, d := range h.digests {
		if slices.Contains(d.keyslots, ks.Index) {
			if d.iterations > opts.MaxKDFIterations {
				return nil, fmt.Errorf("keyslot %d: digest has %d PBKDF2 iterations (limit %d): %w", ks.Index, d.iterations, opts.MaxKDFIterations, ErrKDFTooExpensive)
			}
			digests = append(digests, d)
		}
	}
	if len(digests) == 0 {
		return nil, corruptf("luks%d: keyslot %d has no digest", h.Version, ks.Index)
	}
	var slotKey []byte
	switch ks.KDF {
	case "pbkdf2":
		newHash, err := hashByName(ks.Hash)
		if err != nil {
			return nil, err
		}
		slotKey = pbkdf2Key(newHash, passphrase, ks.salt, int(ks.Iterations), ks.areaKeyBytes)
	case "argon2i", "argon2id":
		slotKey = argon2Key(ks.KDF == "argon2id", passphrase, ks.salt, ks.Iterations, ks.MemoryKiB, uint8(ks.Parallel), uint32(ks.areaKeyBytes))
	default:
		return nil, unsupportedf("keyslot %d: kdf %q", ks.Index, ks.KDF)
	}
	defer clear(slotKey)

	split := make([]byte, roundUp(int64(ks.KeyBytes)*int64(ks.Stripes), luks1SectorSize))
	defer clear(split)
	if err := blockdev.ReadFull(r, split, ks.AreaOffset); err != nil {
		return nil, fmt.Errorf("luks%d: keyslot %d: key material: %w", h.Version, ks.Index, err)
	}
	c, err := NewSectorCipher(ks.AreaCipher, slotKey, luks1SectorSize)
	if err != nil {
		return nil, fmt.Errorf("luks%d: keyslot %d: %w", h.Version, ks.Index, err)
	}
	err = c.DecryptSectors(split, split, 0)
	c.Close()
	if err != nil {
		return nil, err
	}
	afHash, err := hashByName(ks.afHash)
	if err != nil {
		return nil, err
	}
	key := make([]byte, ks.KeyBytes)
	afMerge(key, split, int(ks.Stripes), afHash)
	for _, d := range digests {
		newHash, err := hashByName(d.hash)
		if err != nil {
			clear(key)
			return nil, err
		}
		sum := pbkdf2Key(newHash, key, d.salt, int(d.iterations), len(d.value))
		ok := subtle.ConstantTimeCompare(sum, d.value) == 1
		clear(sum)
		if ok {
			return &Key{key: key, slot: ks.Index, spec: h.CipherSpec, sectorSize: h.SectorSize}, nil
		}
	}
	clear(key)
	return nil, fmt.Errorf("keyslot %d: %w", ks.Index, ErrWrongPassphrase)
}
