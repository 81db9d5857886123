package sniff

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"strings"
	"unicode/utf16"
)

// MBR layout.
const (
	mbrSectorSize      = 512
	mbrTableOffset     = 446
	mbrEntrySize       = 16
	mbrSignatureOffset = 510
	mbrDiskIDOffset    = 440
	mbrTypeProtective  = 0xEE
)

// maxLogicalPartitions bounds the walk of an MBR extended partition's chain
// of boot records (Linux itself stops at a few dozen).
const maxLogicalPartitions = 128

// GPT layout (UEFI 2.10, section 5.3).
const (
	gptSignature     = "EFI PART"
	gptMinHeaderSize = 92
	gptMinEntrySize  = 128
	// maxGPTEntrySize and maxGPTEntryArray bound the partition entry array a
	// header may declare; the standard array is 128 entries of 128 bytes.
	maxGPTEntrySize  = 1024
	maxGPTEntryArray = 256 << 10
)

var mbrTypeNames = map[byte]string{
	0x01: "FAT12", 0x04: "FAT16 <32M", 0x05: "Extended", 0x06: "FAT16", 0x07: "HPFS/NTFS/exFAT",
	0x0b: "W95 FAT32", 0x0c: "W95 FAT32 (LBA)", 0x0e: "W95 FAT16 (LBA)", 0x0f: "W95 Ext'd (LBA)",
	0x82: "Linux swap / Solaris", 0x83: "Linux", 0x85: "Linux extended", 0x8e: "Linux LVM",
	0xa5: "FreeBSD", 0xa6: "OpenBSD", 0xee: "GPT", 0xef: "EFI (FAT-12/16/32)", 0xfd: "Linux raid autodetect",
}

var gptTypeNames = map[string]string{
	"C12A7328-F81F-11D2-BA4B-00A0C93EC93B": "EFI System",
	"21686148-6449-6E6F-744E-656564454649": "BIOS boot",
	"0FC63DAF-8483-4772-8E79-3D69D8477DE4": "Linux filesystem",
	"0657FD6D-A4AB-43C4-84E5-0933C84B4F4F": "Linux swap",
	"E6D6D379-F507-44C2-A23C-238F2A3DF928": "Linux LVM",
	"A19D880F-05FC-4D3B-A006-743F0F84911E": "Linux RAID",
	"CA7D7CCB-63ED-4C53-861C-1742536059CC": "Linux LUKS",
	"4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709": "Linux root (x86-64)",
	"44479540-F297-41B2-9AF7-D131D5F0458A": "Linux root (x86)",
	"B921B045-1DF0-41C3-AF44-4C6F280D3FAE": "Linux root (ARM-64)",
	"BC13C2FF-59E6-4262-A352-B275FD6F7172": "Linux extended boot",
	"933AC7E1-2EB4-4F13-B844-0E14E2AEF915": "Linux home",
	"EBD0A0A2-B9E5-4433-87C0-68B6B72699C7": "Microsoft basic data",
	"E3C9E316-0B5C-4DB8-817D-F92DF00215AE": "Microsoft reserved",
	"DE94BBA4-06D1-4D40-A16A-BFD50179D6AC": "Windows recovery environment",
}

// readPartitionTable fills rep.PartitionTable and rep.Partitions from a GPT
// (preferred) or an MBR at the start of v.
func readPartitionTable(v view, rep *Report) {
	s0 := v.at(0, mbrSectorSize)
	if s0 == nil {
		return
	}
	hasSig := s0[mbrSignatureOffset] == 0x55 && s0[mbrSignatureOffset+1] == 0xAA
	entries, mbrOK := parseMBREntries(s0)
	protective := false
	if hasSig && mbrOK {
		for _, e := range entries {
			protective = protective || e.typ == mbrTypeProtective
		}
	}
	// A GPT is looked for with 512- and 4096-byte logical sectors; the
	// 4096-byte case costs a read only when a protective MBR says a GPT exists.
	ok, problem := readGPT(v, rep, mbrSectorSize, protective)
	if ok {
		return
	}
	if protective {
		if ok, _ = readGPT(v, rep, 4096, true); ok {
			return
		}
		rep.Warnings = append(rep.Warnings, "protective MBR (type 0xEE) but no valid GPT: "+problem)
	}
	if !hasSig || !mbrOK {
		return
	}
	rep.PartitionTable = &PartitionTable{Scheme: FormatMBR, SectorSize: mbrSectorSize,
		DiskID: fmt.Sprintf("0x%08x", binary.LittleEndian.Uint32(s0[mbrDiskIDOffset:]))}
	for i, e := range entries {
		if e.typ == 0 || e.sectors == 0 {
			continue
		}
		p := mbrPartition(i+1, e, 0)
		if isExtended(e.typ) {
			p.Contents = ""
			rep.Partitions = append(rep.Partitions, p)
			readLogical(v, rep, int64(e.start), int64(e.sectors))
			continue
		}
		rep.Partitions = append(rep.Partitions, p)
	}
	checkBounds(v, rep)
}

type mbrEntry struct {
	status, typ    byte
	start, sectors uint32
}

// parseMBREntries decodes the four entries of a boot record and reports
// whether they look like a partition table (status bytes 0x00 or 0x80).
func parseMBREntries(s []byte) ([4]mbrEntry, bool) {
	var es [4]mbrEntry
	ok := true
	for i := range es {
		b := s[mbrTableOffset+i*mbrEntrySize:]
		es[i] = mbrEntry{status: b[0], typ: b[4],
			start: binary.LittleEndian.Uint32(b[8:]), sectors: binary.LittleEndian.Uint32(b[12:])}
		if b[0] != 0 && b[0] != 0x80 {
			ok = false
		}
		if es[i].typ != 0 && es[i].sectors != 0 && es[i].start == 0 {
			ok = false // a partition over the table itself
		}
	}
	return es, ok
}

func isExtended(t byte) bool { return t == 0x05 || t == 0x0f || t == 0x85 }

func mbrPartition(index int, e mbrEntry, base int64) Partition {
	return Partition{Index: index, Type: fmt.Sprintf("0x%02x", e.typ), TypeName: mbrTypeNames[e.typ],
		Bootable: e.status == 0x80, Start: (base + int64(e.start)) * mbrSectorSize,
		Size: int64(e.sectors) * mbrSectorSize, Contents: FormatUnknown}
}

// readLogical walks the chain of extended boot records of the extended
// partition at sector ext, numbering logical partitions from 5.
func readLogical(v view, rep *Report, ext, extSectors int64) {
	cur := ext
	seen := map[int64]bool{}
	for n := 0; ; n++ {
		if n == maxLogicalPartitions {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("more than %d logical partitions: the rest were ignored", maxLogicalPartitions))
			return
		}
		if seen[cur] {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("extended boot record at sector %d loops back", cur))
			return
		}
		seen[cur] = true
		b := v.at(cur*mbrSectorSize, mbrSectorSize)
		if b == nil || b[mbrSignatureOffset] != 0x55 || b[mbrSignatureOffset+1] != 0xAA {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("extended boot record at sector %d is missing or invalid", cur))
			return
		}
		es, _ := parseMBREntries(b)
		if es[0].typ != 0 && es[0].sectors != 0 {
			rep.Partitions = append(rep.Partitions, mbrPartition(5+n, es[0], cur))
		}
		next := es[1]
		if next.typ == 0 || next.start == 0 || !isExtended(next.typ) {
			return
		}
		if int64(next.start) >= extSectors {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("extended boot record at sector %d points outside the extended partition", cur))
			return
		}
		cur = ext + int64(next.start)
	}
}

// checkBounds warns about partitions that do not lie inside the device.
func checkBounds(v view, rep *Report) {
	for _, p := range rep.Partitions {
		if p.Start+p.Size > v.size {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("partition %d (%d bytes at %d) extends past the end of the %d-byte disk",
				p.Index, p.Size, p.Start, v.size))
		}
	}
}

type gptHeader struct {
	myLBA, altLBA, firstUsable, lastUsable uint64
	diskGUID                               string
	entriesLBA                             uint64
	numEntries, entrySize, entriesCRC      uint32
}

// parseGPTHeader reads and checks the header at lba; the error says what is wrong.
func parseGPTHeader(v view, ss int64, lba uint64) (*gptHeader, error) {
	if lba > uint64(v.size/ss) {
		return nil, fmt.Errorf("LBA %d is past the end of the disk", lba)
	}
	b := v.at(int64(lba)*ss, int(ss))
	if b == nil {
		return nil, fmt.Errorf("LBA %d is unreadable or past the end", lba)
	}
	if string(b[:8]) != gptSignature {
		return nil, fmt.Errorf("no %q signature at LBA %d", gptSignature, lba)
	}
	hsize := binary.LittleEndian.Uint32(b[12:])
	if hsize < gptMinHeaderSize || int64(hsize) > ss {
		return nil, fmt.Errorf("header size %d at LBA %d", hsize, lba)
	}
	want := binary.LittleEndian.Uint32(b[16:])
	h := bytes.Clone(b[:hsize])
	clear(h[16:20])
	if got := crc32.ChecksumIEEE(h); got != want {
		return nil, fmt.Errorf("header CRC32 mismatch at LBA %d (stored %08x, computed %08x)", lba, want, got)
	}
	g := &gptHeader{
		myLBA: binary.LittleEndian.Uint64(b[24:]), altLBA: binary.LittleEndian.Uint64(b[32:]),
		firstUsable: binary.LittleEndian.Uint64(b[40:]), lastUsable: binary.LittleEndian.Uint64(b[48:]),
		diskGUID: guidString(b[56:72]), entriesLBA: binary.LittleEndian.Uint64(b[72:]),
		numEntries: binary.LittleEndian.Uint32(b[80:]), entrySize: binary.LittleEndian.Uint32(b[84:]),
		entriesCRC: binary.LittleEndian.Uint32(b[88:]),
	}
	if g.myLBA != lba {
		return nil, fmt.Errorf("header at LBA %d says it is at LBA %d", lba, g.myLBA)
	}
	if g.entrySize < gptMinEntrySize || g.entrySize > maxGPTEntrySize || g.entrySize%8 != 0 {
		return nil, fmt.Errorf("partition entry size %d", g.entrySize)
	}
	if uint64(g.numEntries)*uint64(g.entrySize) > maxGPTEntryArray {
		return nil, fmt.Errorf("%d partition entries of %d bytes exceed the %d-byte limit", g.numEntries, g.entrySize, maxGPTEntryArray)
	}
	return g, nil
}

// readEntries reads the header's partition entry array and checks its CRC.
func (g *gptHeader) readEntries(v view, ss int64) ([]byte, error) {
	n := int(g.numEntries) * int(g.entrySize)
	if g.entriesLBA > uint64(v.size/ss) {
		return nil, fmt.Errorf("partition entries at LBA %d are past the end of the disk", g.entriesLBA)
	}
	b := v.at(int64(g.entriesLBA)*ss, n)
	if b == nil {
		return nil, fmt.Errorf("partition entries at LBA %d are unreadable or past the end", g.entriesLBA)
	}
	if got := crc32.ChecksumIEEE(b); got != g.entriesCRC {
		return nil, fmt.Errorf("partition entries CRC32 mismatch (stored %08x, computed %08x)", g.entriesCRC, got)
	}
	return b, nil
}

// readGPT looks for a GPT with logical sector size ss. The backup header is
// always read; it replaces a damaged primary only when a protective MBR
// says the disk is GPT. Without a GPT it says why not.
func readGPT(v view, rep *Report, ss int64, protective bool) (bool, string) {
	if v.size < 3*ss {
		return false, "the disk is too small"
	}
	lastLBA := uint64(v.size/ss) - 1
	prim, perr := parseGPTHeader(v, ss, 1)
	var entries []byte
	if perr == nil {
		entries, perr = prim.readEntries(v, ss)
	}
	if perr != nil && !protective {
		return false, perr.Error()
	}
	altLBA := lastLBA
	if perr == nil {
		altLBA = prim.altLBA
	}
	backup, berr := parseGPTHeader(v, ss, altLBA)
	if altLBA <= 1 {
		backup, berr = nil, fmt.Errorf("the primary header names LBA %d as its backup", altLBA)
	}
	backupState := "ok"
	var bEntries []byte
	if berr == nil {
		bEntries, berr = backup.readEntries(v, ss)
	}
	switch {
	case berr != nil:
		backupState = berr.Error()
	case perr == nil && backup.entriesCRC != prim.entriesCRC:
		backupState = "backup partition entries differ from the primary ones"
	case perr == nil && backup.altLBA != 1:
		backupState = fmt.Sprintf("backup header points to LBA %d, not 1, for the primary", backup.altLBA)
	}
	if perr != nil && berr != nil {
		return false, "primary header: " + perr.Error() + "; backup header: " + berr.Error()
	}
	if perr == nil && altLBA != lastLBA {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("GPT backup header is at LBA %d, not at the last LBA %d (was the disk resized?)", altLBA, lastLBA))
	}
	hdr := prim
	if perr != nil {
		rep.Warnings = append(rep.Warnings, "GPT primary header is damaged ("+perr.Error()+"): using the backup header")
		hdr, entries = backup, bEntries
		backupState = "ok (used instead of the damaged primary)"
	} else if backupState != "ok" {
		rep.Warnings = append(rep.Warnings, "GPT backup header: "+backupState)
	}
	rep.PartitionTable = &PartitionTable{Scheme: FormatGPT, SectorSize: ss, DiskGUID: hdr.diskGUID, Backup: backupState}
	for i := 0; i < int(hdr.numEntries); i++ {
		e := entries[i*int(hdr.entrySize):]
		typ := guidString(e[0:16])
		if typ == zeroGUID {
			continue
		}
		first, last := binary.LittleEndian.Uint64(e[32:]), binary.LittleEndian.Uint64(e[40:])
		if last < first || last > lastLBA {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("GPT partition %d: LBAs %d..%d do not lie inside the disk", i+1, first, last))
			continue
		}
		rep.Partitions = append(rep.Partitions, Partition{Index: i + 1, Type: typ, TypeName: gptTypeNames[typ],
			UUID: guidString(e[16:32]), Name: utf16Name(e[56:128]),
			Start: int64(first) * ss, Size: int64(last-first+1) * ss, Contents: FormatUnknown})
	}
	checkBounds(v, rep)
	return true, ""
}

const zeroGUID = "00000000-0000-0000-0000-000000000000"

// guidString formats a GPT GUID: the first three fields are little-endian.
func guidString(b []byte) string {
	return fmt.Sprintf("%08X-%04X-%04X-%X-%X", binary.LittleEndian.Uint32(b[0:]),
		binary.LittleEndian.Uint16(b[4:]), binary.LittleEndian.Uint16(b[6:]), b[8:10], b[10:16])
}

// utf16Name decodes a NUL-terminated UTF-16LE partition name.
func utf16Name(b []byte) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return strings.ToValidUTF8(string(utf16.Decode(u)), "\uFFFD")
}
