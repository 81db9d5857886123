package sniff

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"strings"
)

// ext2/3/4 superblock (Documentation/filesystems/ext4/super.rst).
const (
	extSuperblockOffset   = 1024
	extMagic              = 0xEF53
	extMaxLogBlockSize    = 6 // 64 KiB blocks
	extCompatHasJournal   = 0x4
	extIncompat64Bit      = 0x80
	extIncompatJournalDev = 0x8
	// ext3 knows these incompat and ro_compat features; any other makes ext4
	// (the rule blkid uses).
	ext3IncompatSupported = 0x2 | 0x4 | 0x10
	ext3ROCompatSupported = 0x1 | 0x2 | 0x4
)

func probeExt(v view) *Filesystem {
	sb := v.at(extSuperblockOffset, 0x158)
	if sb == nil || binary.LittleEndian.Uint16(sb[0x38:]) != extMagic {
		return nil
	}
	logBlock := binary.LittleEndian.Uint32(sb[0x18:])
	if logBlock > extMaxLogBlockSize {
		return nil
	}
	compat := binary.LittleEndian.Uint32(sb[0x5C:])
	incompat := binary.LittleEndian.Uint32(sb[0x60:])
	roCompat := binary.LittleEndian.Uint32(sb[0x64:])
	if incompat&extIncompatJournalDev != 0 {
		return nil // an external journal, not a filesystem
	}
	blocks := uint64(binary.LittleEndian.Uint32(sb[0x4:]))
	if incompat&extIncompat64Bit != 0 {
		blocks |= uint64(binary.LittleEndian.Uint32(sb[0x150:])) << 32
	}
	format := FormatExt2
	if compat&extCompatHasJournal != 0 {
		format = FormatExt3
	}
	if incompat&^ext3IncompatSupported != 0 || roCompat&^ext3ROCompatSupported != 0 {
		format = FormatExt4
	}
	return &Filesystem{Format: format, Kind: KindFilesystem, Size: mulSize(blocks, 1024<<logBlock),
		UUID: uuidString(sb[0x68:0x78]), Label: cString(sb[0x78:0x88]),
		Detail: fmt.Sprintf("block size %d", 1024<<logBlock)}
}

// XFS superblock (xfs_format.h).
const (
	xfsMagic        = "XFSB"
	xfsMinBlockSize = 512
	xfsMaxBlockSize = 65536
)

func probeXFS(v view) *Filesystem {
	sb := v.at(0, 120)
	if sb == nil || string(sb[:4]) != xfsMagic {
		return nil
	}
	bs := binary.BigEndian.Uint32(sb[4:])
	if bs < xfsMinBlockSize || bs > xfsMaxBlockSize || bits.OnesCount32(bs) != 1 {
		return nil
	}
	return &Filesystem{Format: FormatXFS, Kind: KindFilesystem, Size: mulSize(binary.BigEndian.Uint64(sb[8:]), uint64(bs)),
		UUID: uuidString(sb[32:48]), Label: cString(sb[108:120]), Detail: fmt.Sprintf("block size %d", bs)}
}

// Btrfs superblock (btrfs/ctree.h): at 64 KiB, magic at 0x40.
const (
	btrfsSuperblockOffset = 64 << 10
	btrfsMagic            = "_BHRfS_M"
	btrfsLabelOffset      = 0x12B
	btrfsLabelSize        = 256
)

func probeBtrfs(v view) *Filesystem {
	sb := v.at(btrfsSuperblockOffset, btrfsLabelOffset+btrfsLabelSize)
	if sb == nil || string(sb[0x40:0x48]) != btrfsMagic {
		return nil
	}
	return &Filesystem{Format: FormatBtrfs, Kind: KindFilesystem, Size: clampSize(binary.LittleEndian.Uint64(sb[0x70:])),
		UUID: uuidString(sb[0x20:0x30]), Label: cString(sb[btrfsLabelOffset : btrfsLabelOffset+btrfsLabelSize])}
}

// NTFS boot sector: OEM id "NTFS    " at 3.
func probeNTFS(v view) *Filesystem {
	b := v.at(0, 512)
	if b == nil || string(b[3:11]) != "NTFS    " {
		return nil
	}
	bps := binary.LittleEndian.Uint16(b[0x0B:])
	if bps < 256 || bps > 4096 || bits.OnesCount16(bps) != 1 || b[0x0D] == 0 {
		return nil
	}
	return &Filesystem{Format: FormatNTFS, Kind: KindFilesystem,
		Size: mulSize(binary.LittleEndian.Uint64(b[0x28:]), uint64(bps)),
		UUID: fmt.Sprintf("%016X", binary.LittleEndian.Uint64(b[0x48:]))}
}

// FAT boot sector (Microsoft's FAT specification): the FAT type follows
// from the number of data clusters, never from the label strings.
const (
	fat12MaxClusters = 4085
	fat16MaxClusters = 65525
)

func probeFAT(v view) *Filesystem {
	b := v.at(0, 512)
	if b == nil || (b[0] != 0xEB && b[0] != 0xE9) {
		return nil
	}
	bps := uint64(binary.LittleEndian.Uint16(b[11:]))
	spc := uint64(b[13])
	reserved := uint64(binary.LittleEndian.Uint16(b[14:]))
	fats := uint64(b[16])
	rootEntries := uint64(binary.LittleEndian.Uint16(b[17:]))
	total := uint64(binary.LittleEndian.Uint16(b[19:]))
	media := b[21]
	fatSize := uint64(binary.LittleEndian.Uint16(b[22:]))
	if bps < 512 || bps > 4096 || bits.OnesCount64(bps) != 1 || spc == 0 || bits.OnesCount64(spc) != 1 ||
		reserved == 0 || fats == 0 || (media != 0xF0 && media < 0xF8) {
		return nil
	}
	if total == 0 {
		total = uint64(binary.LittleEndian.Uint32(b[32:]))
	}
	fat32 := fatSize == 0
	if fat32 {
		fatSize = uint64(binary.LittleEndian.Uint32(b[36:]))
	}
	rootSectors := (rootEntries*32 + bps - 1) / bps
	meta := reserved + fats*fatSize + rootSectors
	if fatSize == 0 || total <= meta {
		return nil
	}
	clusters := (total - meta) / spc
	f := &Filesystem{Kind: KindFilesystem, Size: mulSize(total, bps)}
	ext := 0x24 // extended BPB of FAT12/16
	switch {
	case clusters < fat12MaxClusters:
		f.Format = FormatFAT12
	case clusters < fat16MaxClusters:
		f.Format = FormatFAT16
	default:
		f.Format = FormatFAT32
		ext = 0x40
	}
	if fat32 != (f.Format == FormatFAT32) {
		return nil // a FAT32 BPB with too few clusters, or the reverse
	}
	if b[ext+2] == 0x29 { // extended boot signature: serial and label follow
		id := binary.LittleEndian.Uint32(b[ext+3:])
		f.UUID = fmt.Sprintf("%04X-%04X", id>>16, id&0xFFFF)
		if l := strings.TrimRight(string(b[ext+7:ext+18]), " \x00"); l != "NO NAME" {
			f.Label = strings.ToValidUTF8(l, "?")
		}
	}
	f.Detail = fmt.Sprintf("%d clusters of %d bytes", clusters, spc*bps)
	return f
}

// LVM2 physical volume label: "LABELONE" in one of the first four sectors.
const lvmLabelSectors = 4

func probeLVM2(v view) *Filesystem {
	for i := int64(0); i < lvmLabelSectors; i++ {
		b := v.at(i*512, 512)
		if b == nil {
			return nil
		}
		if string(b[:8]) != "LABELONE" || string(b[24:32]) != "LVM2 001" {
			continue
		}
		off := binary.LittleEndian.Uint32(b[20:]) // pv_header offset in the sector
		f := &Filesystem{Format: FormatLVM2, Kind: KindVolume, Detail: fmt.Sprintf("label in sector %d", i)}
		if off <= 512-40 {
			id := b[off : off+32]
			f.UUID = fmt.Sprintf("%s-%s-%s-%s-%s-%s-%s", id[0:6], id[6:10], id[10:14], id[14:18], id[18:22], id[22:26], id[26:32])
			f.UUID = strings.ToValidUTF8(f.UUID, "?")
			f.Size = clampSize(binary.LittleEndian.Uint64(b[off+32:]))
		}
		return f
	}
	return nil
}

// Linux swap: the signature ends the first page; pages of 4 and 64 KiB are
// looked at (x86 and the 64 KiB-page arm64/ppc64 kernels).
var swapPageSizes = []int64{4096, 65536}

func probeSwap(v view) *Filesystem {
	for _, ps := range swapPageSizes {
		sig := v.at(ps-10, 10)
		if sig == nil {
			return nil
		}
		if s := string(sig); s != "SWAPSPACE2" && s != "SWAP-SPACE" {
			continue
		}
		f := &Filesystem{Format: FormatSwap, Kind: KindSwap, Detail: fmt.Sprintf("page size %d", ps)}
		if h := v.at(1024, 44); h != nil && string(sig) == "SWAPSPACE2" {
			lastPage := uint64(binary.LittleEndian.Uint32(h[4:]))
			f.Size = mulSize(lastPage+1, uint64(ps))
			f.UUID = uuidString(h[12:28])
			f.Label = cString(h[28:44])
		}
		return f
	}
	return nil
}

// LUKS1 and LUKS2 share the first 208 bytes' layout for magic, version and UUID.
func probeLUKS(v view) *Filesystem {
	b := v.at(0, 208)
	if b == nil || string(b[:6]) != "LUKS\xba\xbe" {
		return nil
	}
	ver := binary.BigEndian.Uint16(b[6:])
	f := &Filesystem{Format: FormatLUKS, Kind: KindVolume, UUID: cString(b[168:208]), Detail: fmt.Sprintf("LUKS%d", ver)}
	if ver == 2 {
		f.Label = cString(b[24:72])
	}
	return f
}

// ISO 9660: volume descriptors from sector 16 (2048-byte sectors).
const isoDescriptorOffset = 16 * 2048

func probeISO9660(v view) *Filesystem {
	b := v.at(isoDescriptorOffset, 190)
	if b == nil || string(b[1:6]) != "CD001" || b[6] != 1 {
		return nil
	}
	f := &Filesystem{Format: FormatISO9660, Kind: KindFilesystem}
	if b[0] == 1 { // primary volume descriptor
		f.Label = strings.TrimRight(cString(b[40:72]), " ")
		f.Size = mulSize(uint64(binary.LittleEndian.Uint32(b[80:])), uint64(binary.LittleEndian.Uint16(b[128:])))
	}
	return f
}

// cString returns b up to its first NUL, as valid UTF-8.
func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return strings.ToValidUTF8(string(b), "?")
}

// uuidString formats 16 bytes in RFC 4122 order.
func uuidString(b []byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// mulSize returns a*b as a size, or -1 when it does not fit in an int64.
func mulSize(a, b uint64) int64 {
	hi, lo := bits.Mul64(a, b)
	if hi != 0 || lo > math.MaxInt64 {
		return -1
	}
	return int64(lo)
}

// clampSize returns n as a size, or -1 when it does not fit in an int64.
func clampSize(n uint64) int64 {
	if n > math.MaxInt64 {
		return -1
	}
	return int64(n)
}
