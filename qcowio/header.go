package qcowio

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/imgfs/imgfs/blockdev"
)

// Fixed header layout (qemu docs/interop/qcow2.txt).
const (
	qcow2Magic          = 0x514649fb // "QFI\xfb"
	qcow2V2HeaderLength = 72
	qcow2V3HeaderLength = 104 // minimum header_length of a version 3 image
	// qcow2HeaderReadSize covers every field this package knows, including
	// compression_type (byte 104) and its padding.
	qcow2HeaderReadSize = 112
)

// Limits on untrusted header fields, following qemu's own limits.
const (
	minClusterBits = 9
	maxClusterBits = 21
	// maxL1TableBytes is qemu's QCOW_MAX_L1_SIZE.
	maxL1TableBytes = 32 << 20
	// maxRefcountTableBytes is qemu's QCOW_MAX_REFTABLE_SIZE.
	maxRefcountTableBytes = 8 << 20
	// maxVirtualSize bounds the virtual disk size (1 PiB).
	maxVirtualSize = 1 << 50
	// maxSnapshots is qemu's QCOW_MAX_SNAPSHOTS.
	maxSnapshots = 65536
	// maxBackingFileNameSize is qemu's limit on the backing file name.
	maxBackingFileNameSize = 1023
	// maxRefcountOrder: refcounts are at most 64 bits wide.
	maxRefcountOrder = 6
	// maxHostOffset: host offsets are 56-bit fields.
	maxHostOffset = 1 << 56
)

// Crypt methods (header bytes 32-35).
const (
	cryptNone = 0
	cryptAES  = 1
	cryptLUKS = 2
)

// Incompatible, compatible and autoclear feature bits.
const (
	incompatDirty        = 1 << 0
	incompatCorrupt      = 1 << 1
	incompatDataFile     = 1 << 2
	incompatCompression  = 1 << 3
	incompatExtendedL2   = 1 << 4
	incompatKnown        = incompatDirty | incompatCorrupt | incompatDataFile | incompatCompression | incompatExtendedL2
	compatLazyRefcounts  = 1 << 0
	autoclearBitmaps     = 1 << 0
	autoclearDataFileRaw = 1 << 1
)

// Compression types (header byte 104).
const (
	compressionZlib = 0
	compressionZstd = 1
)

// Header extension types.
const (
	extEnd           = 0x00000000
	extBackingFormat = 0xe2792aca
	extFeatureTable  = 0x6803f857
	extBitmaps       = 0x23852875
	extCrypto        = 0x0537be77
	extDataFile      = 0x44415441
)

// featureTableEntrySize is the size of one feature name table entry.
const featureTableEntrySize = 48

// header is the parsed fixed header and its extensions.
type header struct {
	version               uint32
	backingFileOffset     uint64
	backingFileSize       uint32
	clusterBits           uint32
	size                  uint64
	cryptMethod           uint32
	l1Size                uint32
	l1TableOffset         uint64
	refcountTableOffset   uint64
	refcountTableClusters uint32
	nbSnapshots           uint32
	snapshotsOffset       uint64
	incompat              uint64
	compat                uint64
	autoclear             uint64
	refcountOrder         uint32
	headerLength          uint32
	compressionType       uint8

	backingFile   string
	backingFormat string
	dataFile      string
	hasDataFile   bool
	hasBitmaps    bool
	hasCrypto     bool
	cryptoOffset  uint64
	cryptoLength  uint64
	featureNames  map[featureKey]string
}

type featureKey struct {
	kind byte // 0 incompatible, 1 compatible, 2 autoclear
	bit  byte
}

// IsQcow2 reports whether the first bytes carry the qcow2 magic.
func IsQcow2(head []byte) bool {
	return len(head) >= 4 && binary.BigEndian.Uint32(head) == qcow2Magic
}

// readHeader parses the fixed header. Problems that still leave the header
// readable are recorded in v; only a missing magic or an unreadable header is
// an error.
func readHeader(dev blockdev.Device, v *verdict) (*header, error) {
	var b [qcow2HeaderReadSize]byte
	n, err := dev.ReadAt(b[:], 0)
	if n < 4 {
		if err != nil && n == 0 && dev.Size() >= 4 {
			return nil, fmt.Errorf("qcow2: read header: %w", err)
		}
		return nil, fmt.Errorf("qcow2: %d-byte device: %w", dev.Size(), ErrNotQcow2)
	}
	if !IsQcow2(b[:n]) {
		return nil, ErrNotQcow2
	}
	if n < qcow2V2HeaderLength {
		return nil, fmt.Errorf("qcow2: header: %d bytes, need %d: %w", n, qcow2V2HeaderLength, blockdev.ErrTruncated)
	}
	be := binary.BigEndian
	h := &header{
		version:               be.Uint32(b[4:]),
		backingFileOffset:     be.Uint64(b[8:]),
		backingFileSize:       be.Uint32(b[16:]),
		clusterBits:           be.Uint32(b[20:]),
		size:                  be.Uint64(b[24:]),
		cryptMethod:           be.Uint32(b[32:]),
		l1Size:                be.Uint32(b[36:]),
		l1TableOffset:         be.Uint64(b[40:]),
		refcountTableOffset:   be.Uint64(b[48:]),
		refcountTableClusters: be.Uint32(b[56:]),
		nbSnapshots:           be.Uint32(b[60:]),
		snapshotsOffset:       be.Uint64(b[64:]),
		refcountOrder:         4,
		headerLength:          qcow2V2HeaderLength,
	}
	switch h.version {
	case 2:
	case 3:
		if n < qcow2V3HeaderLength {
			return nil, fmt.Errorf("qcow2: version 3 header: %d bytes, need %d: %w", n, qcow2V3HeaderLength, blockdev.ErrTruncated)
		}
		h.incompat = be.Uint64(b[72:])
		h.compat = be.Uint64(b[80:])
		h.autoclear = be.Uint64(b[88:])
		h.refcountOrder = be.Uint32(b[96:])
		h.headerLength = be.Uint32(b[100:])
		if h.headerLength > qcow2V3HeaderLength {
			if n <= qcow2V3HeaderLength {
				return nil, fmt.Errorf("qcow2: header_length %d past the end of the file: %w", h.headerLength, blockdev.ErrTruncated)
			}
			h.compressionType = b[104]
		}
	default:
		v.add(blockdev.ErrUnsupported, "unsupported qcow2 version %d", h.version)
	}
	return h, nil
}

func (h *header) clusterSize() int64 { return 1 << h.clusterBits }

// checkFields records every header field that is out of range. It reports
// whether the geometry (cluster size, virtual size, L1 table) is sane enough
// to walk the tables.
func (h *header) checkFields(fileSize int64, v *verdict) bool {
	geometryOK := h.version == 2 || h.version == 3
	if h.clusterBits < minClusterBits || h.clusterBits > maxClusterBits {
		v.add(blockdev.ErrCorrupt, "cluster_bits %d out of range %d..%d", h.clusterBits, minClusterBits, maxClusterBits)
		return false
	}
	cs := uint64(h.clusterSize())
	if h.version == 3 {
		switch {
		case h.headerLength < qcow2V3HeaderLength:
			v.add(blockdev.ErrCorrupt, "header_length %d shorter than %d", h.headerLength, qcow2V3HeaderLength)
		case h.headerLength%8 != 0:
			v.add(blockdev.ErrCorrupt, "header_length %d not a multiple of 8", h.headerLength)
		case uint64(h.headerLength) > cs:
			v.add(blockdev.ErrCorrupt, "header_length %d larger than a cluster (%d)", h.headerLength, cs)
		}
		if h.refcountOrder > maxRefcountOrder {
			v.add(blockdev.ErrCorrupt, "refcount_order %d larger than %d", h.refcountOrder, maxRefcountOrder)
		}
	}
	if h.size > maxVirtualSize {
		v.add(blockdev.ErrUnsupported, "virtual size %d larger than the limit %d", h.size, uint64(maxVirtualSize))
		geometryOK = false
	}
	// L1 table.
	needL1 := h.l1Needed()
	switch {
	case uint64(h.l1Size)*8 > maxL1TableBytes:
		v.add(blockdev.ErrUnsupported, "l1_size %d: table of %d bytes exceeds the limit %d", h.l1Size, uint64(h.l1Size)*8, maxL1TableBytes)
		geometryOK = false
	case uint64(h.l1Size) < needL1:
		v.add(blockdev.ErrCorrupt, "l1_size %d too small for virtual size %d (need %d entries)", h.l1Size, h.size, needL1)
		geometryOK = false
	case h.l1Size > 0 && h.l1TableOffset%cs != 0:
		v.add(blockdev.ErrCorrupt, "L1 table offset %#x not cluster aligned", h.l1TableOffset)
		geometryOK = false
	case h.l1Size > 0 && !inFile(h.l1TableOffset, uint64(h.l1Size)*8, fileSize):
		v.add(blockdev.ErrTruncated, "L1 table at %#x (%d bytes) outside the file (%d bytes)", h.l1TableOffset, uint64(h.l1Size)*8, fileSize)
		geometryOK = false
	}
	// Refcount table: never read, but a table outside the file means a
	// damaged or crafted image.
	rtBytes := uint64(h.refcountTableClusters) * cs
	switch {
	case rtBytes > maxRefcountTableBytes:
		v.add(blockdev.ErrUnsupported, "refcount table of %d clusters exceeds the limit %d bytes", h.refcountTableClusters, maxRefcountTableBytes)
	case h.refcountTableOffset%cs != 0:
		v.add(blockdev.ErrCorrupt, "refcount table offset %#x not cluster aligned", h.refcountTableOffset)
	case !inFile(h.refcountTableOffset, rtBytes, fileSize):
		v.add(blockdev.ErrTruncated, "refcount table at %#x (%d bytes) outside the file (%d bytes)", h.refcountTableOffset, rtBytes, fileSize)
	}
	if h.nbSnapshots > maxSnapshots {
		v.add(blockdev.ErrUnsupported, "%d snapshots exceed the limit %d", h.nbSnapshots, maxSnapshots)
	} else if h.nbSnapshots > 0 && (h.snapshotsOffset%cs != 0 || h.snapshotsOffset >= uint64(fileSize)) {
		v.add(blockdev.ErrTruncated, "snapshot table at %#x outside the file", h.snapshotsOffset)
	}
	return geometryOK
}

// l2Entries is the number of entries of one L2 table.
func (h *header) l2Entries() uint64 {
	if h.incompat&incompatExtendedL2 != 0 {
		return uint64(h.clusterSize()) / 16
	}
	return uint64(h.clusterSize()) / 8
}

// l1Needed is the number of L1 entries that cover the virtual size.
func (h *header) l1Needed() uint64 {
	per := uint64(h.clusterSize()) * h.l2Entries()
	n := h.size / per
	if h.size%per != 0 {
		n++
	}
	return n
}

// inFile reports whether [off, off+n) lies inside a file of size fileSize.
func inFile(off, n uint64, fileSize int64) bool {
	return off <= uint64(fileSize) && n <= uint64(fileSize)-off
}

// readExtensions parses the header extensions and the backing file name
// from the first cluster of the image, recording problems in v.
func (h *header) readExtensions(dev blockdev.Device, v *verdict) error {
	cs := uint64(h.clusterSize())
	start := uint64(h.headerLength)
	end := cs
	if h.backingFileOffset != 0 && h.backingFileOffset < end {
		end = h.backingFileOffset
	}
	if end > uint64(dev.Size()) {
		end = uint64(dev.Size())
	}
	if start >= end {
		return nil
	}
	buf := make([]byte, end) // end <= one cluster <= 2 MiB
	if err := blockdev.ReadFull(dev, buf, 0); err != nil {
		return fmt.Errorf("qcow2: header extensions: %w", err)
	}
	be := binary.BigEndian
	off := start
	for {
		if end-off < 8 {
			if end < cs && off < end {
				v.add(blockdev.ErrTruncated, "header extensions run past the end of the file")
			}
			break
		}
		typ := be.Uint32(buf[off:])
		length := uint64(be.Uint32(buf[off+4:]))
		off += 8
		if typ == extEnd {
			break
		}
		if length > end-off {
			v.add(blockdev.ErrCorrupt, "header extension %#08x: length %d runs past the first cluster", typ, length)
			break
		}
		data := buf[off : off+length]
		switch typ {
		case extBackingFormat:
			h.backingFormat = cString(data)
		case extFeatureTable:
			h.parseFeatureTable(data)
		case extBitmaps:
			h.hasBitmaps = true
		case extCrypto:
			if length != 16 {
				v.add(blockdev.ErrCorrupt, "crypto header extension: length %d, want 16", length)
				break
			}
			h.hasCrypto = true
			h.cryptoOffset = be.Uint64(data)
			h.cryptoLength = be.Uint64(data[8:])
		case extDataFile:
			h.hasDataFile = true
			h.dataFile = cString(data)
		}
		off += (length + 7) &^ 7
		if off > end {
			break
		}
	}
	if h.backingFileOffset != 0 {
		switch {
		case h.backingFileSize > maxBackingFileNameSize:
			v.add(blockdev.ErrCorrupt, "backing file name of %d bytes exceeds %d", h.backingFileSize, maxBackingFileNameSize)
		case !inFile(h.backingFileOffset, uint64(h.backingFileSize), dev.Size()) || h.backingFileOffset+uint64(h.backingFileSize) > cs:
			v.add(blockdev.ErrCorrupt, "backing file name at %#x (%d bytes) outside the first cluster", h.backingFileOffset, h.backingFileSize)
		default:
			name := make([]byte, h.backingFileSize)
			if err := blockdev.ReadFull(dev, name, int64(h.backingFileOffset)); err != nil {
				return fmt.Errorf("qcow2: backing file name: %w", err)
			}
			h.backingFile = string(name)
		}
	}
	return nil
}

func (h *header) parseFeatureTable(data []byte) {
	for len(data) >= featureTableEntrySize {
		kind, bit := data[0], data[1]
		if kind <= 2 && bit < 64 {
			if h.featureNames == nil {
				h.featureNames = make(map[featureKey]string)
			}
			h.featureNames[featureKey{kind, bit}] = cString(data[2:featureTableEntrySize])
		}
		data = data[featureTableEntrySize:]
	}
}

// cString returns data up to its first NUL byte.
func cString(data []byte) string {
	if i := bytes.IndexByte(data, 0); i >= 0 {
		data = data[:i]
	}
	return string(data)
}
