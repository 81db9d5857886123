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

// UnlockOptions controls Header.Unlock. The KDF limits bound one Unlock
// call as a whole, not each keyslot: a header with 32 keyslots cannot make
// Unlock spend 32 times the budget. Each slot must also fit the per-slot
// limits (memory, passes, threads, iterations).
type UnlockOptions struct {
	// Slot is the keyslot to try, or AnySlot (-1) to try all active ones
	// (high priority first, skipping priority "ignore"). Note that the zero
	// value means slot 0.
	Slot int
	// MaxKDFMemoryKiB limits the memory of one argon2 run (default
	// DefaultMaxKDFMemoryKiB). With MaxKDFTime it also makes the argon2
	// budget of the unlock: the sum over the slots tried of memory × passes
	// is at most MaxKDFMemoryKiB × MaxKDFTime KiB-passes.
	MaxKDFMemoryKiB uint32
	// MaxKDFIterations limits the PBKDF2 iterations of the whole unlock
	// (default DefaultMaxKDFIterations): those of the PBKDF2 keyslots
	// tried plus those of the digest checked after each slot.
	MaxKDFIterations uint32
	// MaxKDFTime limits the passes of one argon2 run (default
	// DefaultMaxKDFTime); see MaxKDFMemoryKiB for the budget.
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
// A key that Unlock derives lives on pages of its own, locked in RAM when
// the system allows it (lockedAlloc).
type Key struct {
	key        []byte
	buf        lockedBuf // the locked memory holding key, if any
	slot       int
	spec       string
	sectorSize int
}

// Close zeroes the key, then unlocks and unmaps its pages. The Key is
// unusable afterwards.
func (k *Key) Close() {
	clear(k.key)
	k.buf.free()
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
// ErrWrongPassphrase. The KDF limits of opts are one budget for the whole
// call (see UnlockOptions): a slot whose KDF exceeds a per-slot limit, or
// whose cost would exceed what is left of the budget, is not tried and is
// reported with ErrKDFTooExpensive, before any of its work is spent.
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
	b := newKDFBudget(opts)
	var tooExpensive []error
	for _, ks := range slots {
		key, err := h.tryKeyslot(r, ks, passphrase, opts, b)
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
		return nil, fmt.Errorf("luks%d: no keyslot tried: %w", h.Version, joinSkipped(tooExpensive))
	}
	if len(tooExpensive) > 0 {
		return nil, fmt.Errorf("luks%d: %w (and skipped: %w)", h.Version, ErrWrongPassphrase, joinSkipped(tooExpensive))
	}
	return nil, fmt.Errorf("luks%d: %w", h.Version, ErrWrongPassphrase)
}

// joinSkipped joins the refusals of the keyslots not tried, listing at
// most two: a header with 32 slots that exhaust the budget would otherwise
// give a 30-line error.
func joinSkipped(errs []error) error {
	if len(errs) <= 2 {
		return errors.Join(errs...)
	}
	return fmt.Errorf("%w (and %d more keyslots not tried)", errs[0], len(errs)-1)
}

// kdfBudget is the KDF work one Unlock may still spend: PBKDF2 iterations
// (keyslots and digests) and argon2 KiB × passes.
type kdfBudget struct {
	iterLimit, iterLeft     uint64
	argon2Limit, argon2Left uint64
	tried                   []int // keyslots whose KDF was run
}

func newKDFBudget(opts UnlockOptions) *kdfBudget {
	argon2 := uint64(opts.MaxKDFMemoryKiB) * uint64(opts.MaxKDFTime)
	return &kdfBudget{
		iterLimit: uint64(opts.MaxKDFIterations), iterLeft: uint64(opts.MaxKDFIterations),
		argon2Limit: argon2, argon2Left: argon2,
	}
}

// spend takes the cost of keyslot ks (iterations: its PBKDF2 iterations
// plus its digests'; argon2: memory × passes) from the budget, or refuses
// it, leaving the budget untouched, when it does not fit what is left.
func (b *kdfBudget) spend(ks Keyslot, iterations, argon2 uint64) error {
	spent := ""
	if len(b.tried) > 0 {
		spent = fmt.Sprintf(" after keyslots %v", b.tried)
	}
	switch {
	case iterations > b.iterLeft:
		return fmt.Errorf("keyslot %d: %d PBKDF2 iterations (keyslot and digest) exceed what is left of the unlock's budget of %d iterations (%d left%s): %w",
			ks.Index, iterations, b.iterLimit, b.iterLeft, spent, ErrKDFTooExpensive)
	case argon2 > b.argon2Left:
		return fmt.Errorf("keyslot %d: %s memory %d KiB × time %d exceeds what is left of the unlock's argon2 budget of %d KiB-passes (memory limit × time limit; %d left%s): %w",
			ks.Index, ks.KDF, ks.MemoryKiB, ks.Iterations, b.argon2Limit, b.argon2Left, spent, ErrKDFTooExpensive)
	}
	b.iterLeft -= iterations
	b.argon2Left -= argon2
	b.tried = append(b.tried, ks.Index)
	return nil
}

// pbkdf2Work is the cost of a PBKDF2 derivation in iterations of one
// output block: PBKDF2 runs its iterations once per hash-sized block of the
// key, so a 64-byte key from sha1 (20 bytes) costs 4 times the stated
// iterations. The unlock budget counts this, not the header's number.
func pbkdf2Work(hashName string, iterations uint32, keyLen int) uint64 {
	blocks := uint64(1)
	if newHash, err := hashByName(hashName); err == nil && keyLen > 0 {
		size := newHash().Size()
		blocks = uint64((keyLen + size - 1) / size)
	}
	return uint64(iterations) * blocks
}

// kdfWork, when set (by tests), is told the work of every KDF run: PBKDF2
// iterations or argon2 KiB × passes.
var kdfWork func(kdf string, work uint64)

// checkKDF enforces opts' per-slot limits on a keyslot.
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
// It spends the slot's KDF cost from b first, or refuses the slot.
func (h *Header) tryKeyslot(r io.ReaderAt, ks Keyslot, passphrase []byte, opts UnlockOptions, b *kdfBudget) (*Key, error) {
	if err := checkKDF(ks, opts); err != nil {
		return nil, err
	}
	var digests []digest
	var iterations, argon2 uint64
	for _, d := range h.digests {
		if slices.Contains(d.keyslots, ks.Index) {
			if d.iterations > opts.MaxKDFIterations {
				return nil, fmt.Errorf("keyslot %d: digest has %d PBKDF2 iterations (limit %d): %w", ks.Index, d.iterations, opts.MaxKDFIterations, ErrKDFTooExpensive)
			}
			digests = append(digests, d)
			iterations += pbkdf2Work(d.hash, d.iterations, len(d.value))
		}
	}
	if len(digests) == 0 {
		return nil, corruptf("luks%d: keyslot %d has no digest", h.Version, ks.Index)
	}
	if ks.KDF == "pbkdf2" {
		iterations += pbkdf2Work(ks.Hash, ks.Iterations, ks.areaKeyBytes)
	} else {
		argon2 = uint64(ks.MemoryKiB) * uint64(ks.Iterations)
	}
	if err := b.spend(ks, iterations, argon2); err != nil {
		return nil, err
	}
	var slotKey []byte
	switch ks.KDF {
	case "pbkdf2":
		newHash, err := hashByName(ks.Hash)
		if err != nil {
			return nil, err
		}
		if kdfWork != nil {
			kdfWork("pbkdf2", pbkdf2Work(ks.Hash, ks.Iterations, ks.areaKeyBytes))
		}
		slotKey = pbkdf2Key(newHash, passphrase, ks.salt, int(ks.Iterations), ks.areaKeyBytes)
	case "argon2i", "argon2id":
		if kdfWork != nil {
			kdfWork(ks.KDF, uint64(ks.MemoryKiB)*uint64(ks.Iterations))
		}
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
	k := &Key{slot: ks.Index, spec: h.CipherSpec, sectorSize: h.SectorSize}
	k.buf = newLockedBuf(k, ks.KeyBytes)
	key := k.buf.b
	afMerge(key, split, int(ks.Stripes), afHash)
	for _, d := range digests {
		newHash, err := hashByName(d.hash)
		if err != nil {
			k.Close()
			return nil, err
		}
		if kdfWork != nil {
			kdfWork("pbkdf2", pbkdf2Work(d.hash, d.iterations, len(d.value)))
		}
		sum := pbkdf2Key(newHash, key, d.salt, int(d.iterations), len(d.value))
		ok := subtle.ConstantTimeCompare(sum, d.value) == 1
		clear(sum)
		if ok {
			k.key = key
			return k, nil
		}
	}
	k.Close()
	return nil, fmt.Errorf("keyslot %d: %w", ks.Index, ErrWrongPassphrase)
}
