package luksio

import (
	"encoding/binary"
	"fmt"
	"io"

	"github.com/imgfs/imgfs/blockdev"
)

// LUKS1 on-disk layout (LUKS1 On-Disk Format Specification 1.2.3). All
// integers are big-endian.
const (
	luks1PhdrSize          = 592
	luks1NumKeys           = 8
	luks1KeyslotOffset     = 208
	luks1KeyslotSize       = 48
	luks1SectorSize        = 512
	luks1DigestSize        = 20
	luks1SaltSize          = 32
	luks1KeyEnabled        = 0x00AC71F3
	luks1KeyDisabled       = 0x0000DEAD
	luks1MaxStripes        = 4000 // cryptsetup and qemu always write 4000
	luks1CipherNameLen     = 32
	luks1CipherModeLen     = 32
	luks1HashSpecLen       = 32
	luks1UUIDLen           = 40
	luks1OffsetVersion     = 6
	luks1OffCipherName     = 8
	luks1OffCipherMode     = 40
	luks1OffHashSpec       = 72
	luks1OffPayload        = 104
	luks1OffKeyBytes       = 108
	luks1OffMKDigest       = 112
	luks1OffMKDigestSalt   = 132
	luks1OffMKDigestIter   = 164
	luks1OffUUID           = 168
	luks1SlotOffIterations = 4
	luks1SlotOffSalt       = 8
	luks1SlotOffKeyMat     = 40
	luks1SlotOffStripes    = 44
)

// parseLUKS1 parses the 592-byte phdr in b.
func parseLUKS1(_ io.ReaderAt, size int64, b []byte) (*Header, error) {
	be := binary.BigEndian
	name := cString(b[luks1OffCipherName : luks1OffCipherName+luks1CipherNameLen])
	mode := cString(b[luks1OffCipherMode : luks1OffCipherMode+luks1CipherModeLen])
	h := &Header{
		Version:       1,
		UUID:          cString(b[luks1OffUUID : luks1OffUUID+luks1UUIDLen]),
		CipherSpec:    name + "-" + mode,
		KeyBytes:      int(be.Uint32(b[luks1OffKeyBytes:])),
		SectorSize:    luks1SectorSize,
		PayloadOffset: int64(be.Uint32(b[luks1OffPayload:])) * luks1SectorSize,
		HashSpec:      cString(b[luks1OffHashSpec : luks1OffHashSpec+luks1HashSpecLen]),
		HeaderSize:    luks1PhdrSize,
		DynamicSize:   true,
	}
	if !validKeyBytes(h.KeyBytes) {
		return nil, corruptf("luks1: key_bytes %d", h.KeyBytes)
	}
	if _, err := hashByName(h.HashSpec); err != nil {
		return nil, fmt.Errorf("luks1: hash: %w", err)
	}
	if _, err := parseCipherSpec(h.CipherSpec); err != nil {
		return nil, fmt.Errorf("luks1: %w", err)
	}
	if h.PayloadOffset < luks1PhdrSize {
		return nil, corruptf("luks1: payload offset %d is inside the header (detached headers are not supported)", h.PayloadOffset)
	}
	iter := be.Uint32(b[luks1OffMKDigestIter:])
	if iter == 0 {
		return nil, corruptf("luks1: mk_digest_iter is 0")
	}
	h.digests = []digest{{
		hash:       h.HashSpec,
		iterations: iter,
		salt:       append([]byte(nil), b[luks1OffMKDigestSalt:luks1OffMKDigestSalt+luks1SaltSize]...),
		value:      append([]byte(nil), b[luks1OffMKDigest:luks1OffMKDigest+luks1DigestSize]...),
	}}
	for i := range luks1NumKeys {
		s := b[luks1KeyslotOffset+i*luks1KeyslotSize:][:luks1KeyslotSize]
		switch active := be.Uint32(s); active {
		case luks1KeyDisabled:
			continue
		case luks1KeyEnabled:
		default:
			return nil, corruptf("luks1: keyslot %d: state 0x%08x is neither enabled nor disabled", i, active)
		}
		ks := Keyslot{
			Index:        i,
			KDF:          "pbkdf2",
			Hash:         h.HashSpec,
			Iterations:   be.Uint32(s[luks1SlotOffIterations:]),
			Stripes:      be.Uint32(s[luks1SlotOffStripes:]),
			KeyBytes:     h.KeyBytes,
			AreaOffset:   int64(be.Uint32(s[luks1SlotOffKeyMat:])) * luks1SectorSize,
			Priority:     1,
			AreaCipher:   h.CipherSpec,
			salt:         append([]byte(nil), s[luks1SlotOffSalt:luks1SlotOffSalt+luks1SaltSize]...),
			afHash:       h.HashSpec,
			areaKeyBytes: h.KeyBytes,
		}
		if ks.Iterations == 0 {
			return nil, corruptf("luks1: keyslot %d: iterations is 0", i)
		}
		if ks.Stripes == 0 || ks.Stripes > luks1MaxStripes {
			return nil, corruptf("luks1: keyslot %d: %d stripes (limit %d)", i, ks.Stripes, luks1MaxStripes)
		}
		ks.AreaSize = roundUp(int64(ks.KeyBytes)*int64(ks.Stripes), luks1SectorSize)
		if ks.AreaOffset < luks1PhdrSize {
			return nil, corruptf("luks1: keyslot %d: key material at %d overlaps the header", i, ks.AreaOffset)
		}
		if ks.AreaOffset+ks.AreaSize > h.PayloadOffset {
			return nil, corruptf("luks1: keyslot %d: key material %d+%d overlaps the payload at %d", i, ks.AreaOffset, ks.AreaSize, h.PayloadOffset)
		}
		if ks.AreaOffset+ks.AreaSize > size {
			return nil, fmt.Errorf("luks1: keyslot %d: key material %d+%d ends past the image (%d bytes): %w", i, ks.AreaOffset, ks.AreaSize, size, blockdev.ErrTruncated)
		}
		h.digests[0].keyslots = append(h.digests[0].keyslots, i)
		h.Keyslots = append(h.Keyslots, ks)
	}
	h.PayloadSize = dynamicSize(size, h.PayloadOffset, h.SectorSize)
	return h, nil
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

// dynamicSize is the whole sectors between the payload offset and the end
// of an image of the given size.
func dynamicSize(size, off int64, sectorSize int) int64 {
	if size <= off {
		return 0
	}
	n := size - off
	return n - n%int64(sectorSize)
}
