// Package sniff identifies what a disk holds — partition tables,
// filesystems, volumes and disk-image formats — by reading only the few
// sectors where their signatures live, and judges it against a Policy.
//
// It exists because a raw or encrypted image may carry a qcow2, VMDK or VHD
// file as its payload: QEMU probing such a "raw" disk would parse it as a
// disk image (backing files, external extents) instead of passing the bytes
// to the guest. Identify looks at offset 0, at the start of every partition
// and at the end of the disk, and nowhere else: it never walks filesystems.
package sniff

import (
	"fmt"
	"io"
)

// Format names that Identify reports and that a Policy lists.
const (
	FormatUnknown   = "unknown" // no known signature
	FormatGPT       = "gpt"
	FormatMBR       = "mbr"
	FormatISO9660   = "iso9660"
	FormatExt2      = "ext2"
	FormatExt3      = "ext3"
	FormatExt4      = "ext4"
	FormatXFS       = "xfs"
	FormatBtrfs     = "btrfs"
	FormatNTFS      = "ntfs"
	FormatFAT12     = "fat12"
	FormatFAT16     = "fat16"
	FormatFAT32     = "fat32"
	FormatLVM2      = "lvm2"
	FormatSwap      = "swap"
	FormatLUKS      = "luks"
	FormatQcow      = "qcow" // qcow version 1
	FormatQcow2     = "qcow2"
	FormatQED       = "qed"
	FormatVMDK      = "vmdk"
	FormatVHD       = "vhd" // QEMU's "vpc"
	FormatVHDX      = "vhdx"
	FormatVDI       = "vdi"
	FormatParallels = "parallels"
	FormatBochs     = "bochs"
	FormatCloop     = "cloop"
	FormatDMG       = "dmg"
)

// DiskImageFormats are the formats that QEMU (or another hypervisor tool)
// parses as a virtual disk with its own metadata: never acceptable as the
// payload of a raw disk under the default policy.
var DiskImageFormats = []string{FormatQcow, FormatQcow2, FormatQED, FormatVMDK, FormatVHD, FormatVHDX,
	FormatVDI, FormatParallels, FormatBochs, FormatCloop, FormatDMG}

// KnownFormats is every name Identify can report; a Policy may name only these.
var KnownFormats = append([]string{FormatUnknown, FormatGPT, FormatMBR, FormatISO9660, FormatExt2, FormatExt3,
	FormatExt4, FormatXFS, FormatBtrfs, FormatNTFS, FormatFAT12, FormatFAT16, FormatFAT32, FormatLVM2,
	FormatSwap, FormatLUKS}, DiskImageFormats...)

// Kinds of Filesystem entries.
const (
	KindFilesystem = "filesystem"
	KindVolume     = "volume" // LVM2 PV, LUKS: holds other data
	KindSwap       = "swap"
	KindDiskImage  = "disk-image"
)

// Report is what Identify found. JSON field names are those of `imgfs inspect --json`.
type Report struct {
	// Format is the outermost thing at offset 0: a disk-image format if one
	// is there, else the partition table, else a filesystem, else "unknown".
	Format string `json:"format"`
	// Size is the size of the device examined.
	Size int64 `json:"size"`
	// PartitionTable describes the MBR or GPT, if any.
	PartitionTable *PartitionTable `json:"partition_table,omitempty"`
	// Partitions lists the partitions in table order.
	Partitions []Partition `json:"partitions,omitempty"`
	// Filesystems lists every signature found at offset 0, at each
	// partition's start and at the end of the disk.
	Filesystems []Filesystem `json:"filesystems,omitempty"`
	// Safe is the policy's verdict; Reasons say why not.
	Safe    bool     `json:"safe"`
	Reasons []string `json:"reasons,omitempty"`
	// Warnings are oddities that do not decide the verdict (a damaged
	// backup GPT header, a partition past the end of the disk).
	Warnings []string `json:"warnings,omitempty"`
	// BytesRead is how many bytes Identify read from the device.
	BytesRead int64 `json:"bytes_read"`
}

// PartitionTable describes an MBR or GPT.
type PartitionTable struct {
	Scheme     string `json:"scheme"` // "mbr" or "gpt"
	SectorSize int64  `json:"sector_size"`
	// DiskGUID is the GPT's disk GUID; DiskID the MBR's 32-bit signature.
	DiskGUID string `json:"disk_guid,omitempty"`
	DiskID   string `json:"disk_id,omitempty"`
	// Backup is the state of the GPT backup header: "ok", or what is wrong.
	Backup string `json:"backup,omitempty"`
}

// Partition is one entry of a partition table. Start and Size are in bytes.
type Partition struct {
	// Index is the number Linux gives the partition (sda1...; MBR logical
	// partitions start at 5).
	Index int `json:"index"`
	// Type is the GPT type GUID or the MBR type byte ("0x83").
	Type     string `json:"type"`
	TypeName string `json:"type_name,omitempty"`
	UUID     string `json:"uuid,omitempty"` // GPT unique partition GUID
	Name     string `json:"name,omitempty"` // GPT partition name
	Bootable bool   `json:"bootable,omitempty"`
	Start    int64  `json:"start"`
	Size     int64  `json:"size"`
	// Contents is the format found at the partition's start ("unknown" if
	// none, "" for an MBR extended partition, which holds only a chain of tables).
	Contents string `json:"contents"`
}

// Filesystem is a filesystem, volume or disk-image signature found at an offset.
type Filesystem struct {
	Format string `json:"format"`
	Kind   string `json:"kind"`
	// Offset is where the signature's structure starts on the examined device.
	Offset int64 `json:"offset"`
	// Partition is the partition Index it starts, 0 for the whole device.
	Partition int `json:"partition,omitempty"`
	// Size is the size the structure states, when it states one.
	Size   int64  `json:"size,omitempty"`
	Label  string `json:"label,omitempty"`
	UUID   string `json:"uuid,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// maxProbedPartitions bounds how many partitions Identify looks inside.
const maxProbedPartitions = 128

// Identify examines the device r of the given size and judges it with the
// default policy. It fails only when a read fails: hostile or damaged
// structures are reported as unknown content or warnings.
func Identify(r io.ReaderAt, size int64) (*Report, error) {
	if size < 0 {
		return nil, fmt.Errorf("sniff: negative device size %d", size)
	}
	rd := newReader(r, size)
	rep := &Report{Format: FormatUnknown, Size: size}
	whole := view{rd: rd, size: size}

	atZero := probeContents(whole)
	atZero = append(atZero, probeTail(whole)...)
	vbr := false
	for _, f := range atZero {
		vbr = vbr || f.Format == FormatNTFS || f.Format == FormatFAT12 || f.Format == FormatFAT16 || f.Format == FormatFAT32
	}
	if !vbr { // a FAT or NTFS boot sector also ends in 55 AA
		readPartitionTable(whole, rep)
	}
	rep.Filesystems = append(rep.Filesystems, atZero...)
	rep.Format = primary(atZero, rep.PartitionTable)

	probed := 0
	for i := range rep.Partitions {
		p := &rep.Partitions[i]
		if p.Contents == "" {
			continue
		}
		p.Contents = FormatUnknown
		if p.Size <= 0 || p.Start >= size {
			continue
		}
		if probed == maxProbedPartitions {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("more than %d partitions: the rest were not examined", maxProbedPartitions))
			break
		}
		probed++
		found := probeContents(view{rd: rd, base: p.Start, size: min(p.Size, size-p.Start)})
		for j := range found {
			found[j].Offset += p.Start
			found[j].Partition = p.Index
		}
		if len(found) > 0 {
			p.Contents = found[0].Format
		}
		rep.Filesystems = append(rep.Filesystems, found...)
	}
	if rd.err != nil {
		return nil, fmt.Errorf("sniff: %w", rd.err)
	}
	rep.BytesRead = rd.n
	Policy{}.Apply(rep)
	return rep, nil
}

// primary picks Report.Format from what lies at offset 0.
func primary(atZero []Filesystem, pt *PartitionTable) string {
	for _, f := range atZero {
		if f.Kind == KindDiskImage {
			return f.Format
		}
	}
	if pt != nil {
		return pt.Scheme
	}
	if len(atZero) > 0 {
		return atZero[0].Format
	}
	return FormatUnknown
}

// probe recognises one format at the start of a view, or returns nil.
type probe func(v view) *Filesystem

// contentProbes run at offset 0 and at every partition start, in order of
// precedence: the first match names a partition's contents.
var contentProbes = []probe{
	probeQcow, probeQED, probeVMDK, probeVHDHead, probeVHDX, probeVDI, probeParallels, probeBochs, probeCloop,
	probeLUKS, probeLVM2, probeSwap, probeExt, probeXFS, probeBtrfs, probeNTFS, probeFAT, probeISO9660,
}

// probeContents returns every signature found at the start of v.
func probeContents(v view) []Filesystem {
	var found []Filesystem
	for _, p := range contentProbes {
		if f := p(v); f != nil {
			found = append(found, *f)
		}
	}
	return found
}

// probeTail returns the disk-image footers found at the end of v.
func probeTail(v view) []Filesystem {
	var found []Filesystem
	for _, p := range []probe{probeVHDFoot, probeDMG} {
		if f := p(v); f != nil {
			found = append(found, *f)
		}
	}
	return found
}
