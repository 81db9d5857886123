package luksio

// Hook for a fast AES-XTS implementation (xtsasm_amd64.go). The portable
// path in xts.go stays the reference and the fallback: SectorCipher uses a
// fastXTS only when newFastXTS is set and accepts the key.

// fastXTS en- or decrypts runs of whole AES-XTS sectors.
type fastXTS interface {
	// cryptSectors processes len(src)/sectorSize consecutive sectors from
	// src into dst (the same slice or not overlapping). The first sector's
	// IV is sector&ivMask, little-endian; each next sector adds step to
	// sector before masking.
	cryptSectors(dst, src []byte, sectorSize int, sector, step, ivMask uint64, encrypt bool)
	// close zeroes the expanded keys; the value must not be used again.
	close()
}

// newFastXTS returns a fastXTS for an AES-XTS key (data half, then tweak
// half), or nil if it cannot handle the key. It is nil when this CPU or
// architecture has no fast implementation.
var newFastXTS func(key []byte) fastXTS

// xtsIVMask returns the mask applied to sector numbers for an IV generator:
// "plain" keeps the low 32 bits, "plain64" all 64.
func xtsIVMask(iv int) uint64 {
	if iv == ivPlain {
		return 0xffffffff
	}
	return ^uint64(0)
}
