package sniff

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"regexp"
	"strings"
)

// Disk-image signatures, as QEMU's block drivers probe them.
const (
	qcowMagic = "QFI\xfb"
	// maxBackingNameLen is QEMU's limit on a qcow2 backing file name.
	maxBackingNameLen = 1023
	// qcow2 header extensions are looked for in the first qcowExtArea bytes,
	// at most maxQcowExtensions of them.
	qcowExtArea           = 4096
	maxQcowExtensions     = 64
	qcowExtDataFile       = 0x44415441
	qcowIncompatDataFile  = 1 << 2
	qcowV2HeaderLength    = 72
	qcowV3MinHeaderLength = 104
	qedMagic              = "QED\x00"
	qedFeatureBacking     = 1
	vmdk4Magic            = "KDMV" // sparse extent ("VMDK" little-endian)
	vmdk3Magic            = "COWD"
	// vmdkDescriptorProbe is how much text is searched for a VMDK
	// descriptor: QEMU's probe buffer is 2048 bytes.
	vmdkDescriptorProbe = 2048
	vhdCookie           = "conectix"
	vhdFooterSize       = 512
	vhdxSignature       = "vhdxfile"
	vdiSignatureOffset  = 64
	vdiSignature        = 0xbeda107f
	bochsMagic          = "Bochs Virtual HD Image"
	cloopMagic          = "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"
	dmgTrailerMagic     = "koly"
	dmgTrailerSize      = 512
)

func diskImage(format, detail string) *Filesystem {
	return &Filesystem{Format: format, Kind: KindDiskImage, Detail: detail}
}

// probeQcow recognises qcow (version 1) and qcow2 (versions 2 and 3), whose
// first header fields agree, and names the backing file if there is one.
func probeQcow(v view) *Filesystem {
	b := v.at(0, 32)
	if b == nil || string(b[:4]) != qcowMagic {
		return nil
	}
	ver := binary.BigEndian.Uint32(b[4:])
	format := FormatQcow2
	if ver == 1 {
		format = FormatQcow
	}
	f := diskImage(format, fmt.Sprintf("version %d", ver))
	f.Size = clampSize(binary.BigEndian.Uint64(b[24:]))
	if off, n := binary.BigEndian.Uint64(b[8:]), binary.BigEndian.Uint32(b[16:]); off != 0 {
		f.Detail += ", " + backingName(v, off, uint64(n))
	}
	if ver >= 2 {
		if d := qcowDataFile(v, ver); d != "" {
			f.Detail += ", " + d
		}
	}
	return f
}

// qcowDataFile describes a qcow2 v3 external data file, the other way a
// qcow2 header names a host file: "" when there is none.
func qcowDataFile(v view, ver uint32) string {
	h := v.at(0, int(min(v.size, qcowExtArea)))
	if len(h) < qcowV2HeaderLength {
		return ""
	}
	start, flagged := uint64(qcowV2HeaderLength), false
	if ver >= 3 {
		if len(h) < qcowV3MinHeaderLength {
			return ""
		}
		flagged = binary.BigEndian.Uint64(h[72:])&qcowIncompatDataFile != 0
		start = uint64(binary.BigEndian.Uint32(h[100:]))
	}
	for i, off := 0, start; i < maxQcowExtensions && off+8 <= uint64(len(h)); i++ {
		typ, n := binary.BigEndian.Uint32(h[off:]), uint64(binary.BigEndian.Uint32(h[off+4:]))
		if typ == 0 || off+8+n > uint64(len(h)) {
			break
		}
		if typ == qcowExtDataFile {
			return fmt.Sprintf("external data file %q", strings.ToValidUTF8(string(h[off+8:off+8+n]), "?"))
		}
		off += 8 + (n+7)&^7
	}
	if flagged {
		return "with an external data file"
	}
	return ""
}

// backingName describes a backing file name of n bytes at off.
func backingName(v view, off, n uint64) string {
	if n == 0 || n > maxBackingNameLen || off > uint64(v.size) {
		return "with a backing file"
	}
	name := v.at(int64(off), int(n))
	if name == nil {
		return "with a backing file"
	}
	return fmt.Sprintf("backing file %q", strings.ToValidUTF8(string(name), "?"))
}

func probeQED(v view) *Filesystem {
	b := v.at(0, 64)
	if b == nil || string(b[:4]) != qedMagic {
		return nil
	}
	f := diskImage(FormatQED, "")
	f.Size = clampSize(binary.LittleEndian.Uint64(b[48:]))
	if binary.LittleEndian.Uint64(b[16:])&qedFeatureBacking != 0 {
		f.Detail = backingName(v, uint64(binary.LittleEndian.Uint32(b[56:])), uint64(binary.LittleEndian.Uint32(b[60:])))
	}
	return f
}

var (
	vmdkCreateType = regexp.MustCompile(`(?m)^\s*createType\s*=\s*"([^"\n]{0,64})"`)
	vmdkExtent     = regexp.MustCompile(`(?m)^\s*(RW|RDONLY|NOACCESS)\s+\d+\s+\w+\s+"([^"\n]{0,256})"`)
)

// probeVMDK recognises sparse extents and descriptor files. A descriptor is
// text whose first line that is not a comment or blank is "version=N",
// which is the test QEMU applies.
func probeVMDK(v view) *Filesystem {
	b := v.at(0, 12+8)
	if b == nil {
		return nil
	}
	switch string(b[:4]) {
	case vmdk4Magic:
		f := diskImage(FormatVMDK, "sparse extent")
		f.Size = mulSize(binary.LittleEndian.Uint64(b[12:]), 512)
		return f
	case vmdk3Magic:
		return diskImage(FormatVMDK, "VMDK3 (COWD) sparse extent")
	}
	text := v.at(0, int(min(v.size, vmdkDescriptorProbe)))
	if !isVMDKDescriptor(text) {
		return nil
	}
	detail := "descriptor"
	if m := vmdkCreateType.FindSubmatch(text); m != nil {
		detail += fmt.Sprintf(", createType %q", m[1])
	}
	if ms := vmdkExtent.FindAllSubmatch(text, 4); len(ms) > 0 {
		names := make([]string, len(ms))
		for i, m := range ms {
			names[i] = fmt.Sprintf("%q", m[2])
		}
		detail += ", extents in files " + strings.Join(names, ", ")
	}
	return diskImage(FormatVMDK, strings.ToValidUTF8(detail, "?"))
}

func isVMDKDescriptor(p []byte) bool {
	if bytes.HasPrefix(p, []byte("# Disk DescriptorFile")) {
		return true
	}
	for len(p) > 0 {
		switch p[0] {
		case '#':
			i := bytes.IndexByte(p, '\n')
			if i < 0 {
				return false
			}
			p = p[i+1:]
		case ' ', '\t', '\r', '\n':
			p = p[1:]
		default:
			for _, ver := range []string{"version=1", "version=2", "version=3"} {
				if bytes.HasPrefix(p, []byte(ver+"\n")) || bytes.HasPrefix(p, []byte(ver+"\r\n")) {
					return true
				}
			}
			return false
		}
	}
	return false
}

// vhdTypes names the VHD footer's disk type field.
var vhdTypes = map[uint32]string{2: "fixed", 3: "dynamic", 4: "differencing (has a parent image)"}

// vhdFooter describes a VHD footer (or its copy at offset 0 of dynamic disks).
func vhdFooter(b []byte) *Filesystem {
	if b == nil || string(b[:8]) != vhdCookie {
		return nil
	}
	t := binary.BigEndian.Uint32(b[60:])
	name, ok := vhdTypes[t]
	if !ok {
		name = fmt.Sprintf("disk type %d", t)
	}
	f := diskImage(FormatVHD, name)
	f.Size = clampSize(binary.BigEndian.Uint64(b[48:]))
	return f
}

func probeVHDHead(v view) *Filesystem { return vhdFooter(v.at(0, vhdFooterSize)) }

// probeVHDFoot looks for the footer that ends every VHD (fixed VHDs have no other).
func probeVHDFoot(v view) *Filesystem {
	f := vhdFooter(v.at(v.size-vhdFooterSize, vhdFooterSize))
	if f != nil {
		f.Offset = v.size - vhdFooterSize
		f.Detail += ", footer at the end"
	}
	return f
}

func probeVHDX(v view) *Filesystem {
	if b := v.at(0, 8); b != nil && string(b) == vhdxSignature {
		return diskImage(FormatVHDX, "")
	}
	return nil
}

func probeVDI(v view) *Filesystem {
	if b := v.at(vdiSignatureOffset, 4); b != nil && binary.LittleEndian.Uint32(b) == vdiSignature {
		return diskImage(FormatVDI, "")
	}
	return nil
}

func probeParallels(v view) *Filesystem {
	if b := v.at(0, 16); b != nil && (string(b) == "WithoutFreeSpace" || string(b) == "WithouFreSpacExt") {
		return diskImage(FormatParallels, "")
	}
	return nil
}

func probeBochs(v view) *Filesystem {
	if b := v.at(0, len(bochsMagic)); b != nil && string(b) == bochsMagic {
		return diskImage(FormatBochs, "")
	}
	return nil
}

func probeCloop(v view) *Filesystem {
	if b := v.at(0, len(cloopMagic)); b != nil && string(b) == cloopMagic {
		return diskImage(FormatCloop, "")
	}
	return nil
}

// probeDMG looks for the "koly" trailer that ends an Apple disk image.
func probeDMG(v view) *Filesystem {
	if b := v.at(v.size-dmgTrailerSize, 4); b != nil && string(b) == dmgTrailerMagic {
		f := diskImage(FormatDMG, "trailer at the end")
		f.Offset = v.size - dmgTrailerSize
		return f
	}
	return nil
}
