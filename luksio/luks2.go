package luksio

import (
	"bytes"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/imgfs/imgfs/blockdev"
)

// LUKS2 binary header layout (cryptsetup docs/on-disk-format-luks2.pdf).
const (
	luks2BinSize        = 4096
	luks2MinHdrSize     = 16 << 10
	luks2MaxHdrSize     = 4 << 20
	luks2OffVersion     = 6
	luks2OffHdrSize     = 8
	luks2OffSeqID       = 16
	luks2OffLabel       = 24
	luks2LabelLen       = 48
	luks2OffCsumAlg     = 72
	luks2CsumAlgLen     = 32
	luks2OffUUID        = 168
	luks2UUIDLen        = 40
	luks2OffSubsystem   = 208
	luks2SubsystemLen   = 48
	luks2OffHdrOffset   = 256
	luks2OffCsum        = 448
	luks2CsumLen        = 64
	luks2SecondaryMagic = "SKUL\xba\xbe"
)

// luks2HdrSizes are the hdr_size values the specification allows; the
// secondary header sits at one of them.
var luks2HdrSizes = []int64{16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20, 2 << 20, 4 << 20}

func validHdrSize(n uint64) bool {
	for _, s := range luks2HdrSizes {
		if uint64(s) == n {
			return true
		}
	}
	return false
}

// luks2Copy is one verified copy of the LUKS2 header.
type luks2Copy struct {
	secondary bool
	hdrSize   int64
	seqID     uint64
	label     string
	subsystem string
	uuid      string
	json      *luks2JSON
}

// readLUKS2 reads both header copies and keeps the valid one with the
// higher seqid (the primary on a tie).
func readLUKS2(r io.ReaderAt, size int64) (*Header, error) {
	primary, perr := readLUKS2Copy(r, size, 0)
	var offsets []int64
	if primary != nil {
		offsets = []int64{primary.hdrSize}
	} else {
		offsets = luks2HdrSizes
	}
	var secondary *luks2Copy
	var serr error
	for _, off := range offsets {
		if off+luks2BinSize > size {
			if serr == nil {
				serr = fmt.Errorf("secondary header at %d: beyond the image end: %w", off, blockdev.ErrTruncated)
			}
			continue
		}
		secondary, serr = readLUKS2Copy(r, size, off)
		if secondary != nil {
			break
		}
	}
	if serr == nil && secondary == nil {
		serr = errors.New("secondary header not found")
	}
	var use *luks2Copy
	switch {
	case primary != nil && secondary != nil:
		if secondary.seqID > primary.seqID {
			use = secondary
		} else {
			use = primary
		}
	case primary != nil:
		use = primary
	case secondary != nil:
		use = secondary
	default:
		if errors.Is(perr, ErrNotLUKS) && errors.Is(serr, ErrNotLUKS) {
			return nil, fmt.Errorf("luks2: %w", ErrNotLUKS)
		}
		return nil, fmt.Errorf("luks2: no usable header: primary: %w; secondary: %w", perr, serr)
	}
	h, err := use.json.header(size, use.hdrSize)
	if err != nil {
		return nil, err
	}
	h.Version = 2
	h.UUID, h.Label, h.Subsystem = use.uuid, use.label, use.subsystem
	h.HeaderSize, h.SeqID = use.hdrSize, use.seqID
	h.UsedSecondary = use.secondary
	if use.secondary && perr != nil {
		h.PrimaryError = perr.Error()
	}
	return h, nil
}

// readLUKS2Copy reads and verifies the header copy at off: magic, version,
// hdr_size, hdr_offset, checksum, then the JSON metadata.
func readLUKS2Copy(r io.ReaderAt, size, off int64) (*luks2Copy, error) {
	where := "primary"
	magic := luksMagic
	if off != 0 {
		where = fmt.Sprintf("secondary at %d", off)
		magic = []byte(luks2SecondaryMagic)
	}
	bin := make([]byte, luks2BinSize)
	if err := blockdev.ReadFull(r, bin, off); err != nil {
		return nil, fmt.Errorf("%s header: %w", where, err)
	}
	if !bytes.Equal(bin[:6], magic) {
		return nil, fmt.Errorf("%s header: bad magic: %w", where, ErrNotLUKS)
	}
	be := binary.BigEndian
	if v := be.Uint16(bin[luks2OffVersion:]); v != 2 {
		return nil, corruptf("%s header: version %d", where, v)
	}
	hdrSize := be.Uint64(bin[luks2OffHdrSize:])
	if !validHdrSize(hdrSize) {
		return nil, corruptf("%s header: hdr_size %d is not a LUKS2 header size", where, hdrSize)
	}
	if off != 0 && int64(hdrSize) != off {
		return nil, corruptf("%s header: hdr_size %d does not match its position", where, hdrSize)
	}
	if ho := be.Uint64(bin[luks2OffHdrOffset:]); ho != uint64(off) {
		return nil, corruptf("%s header: hdr_offset %d", where, ho)
	}
	if off+int64(hdrSize) > size {
		return nil, fmt.Errorf("%s header: %d bytes at %d end past the image (%d bytes): %w", where, hdrSize, off, size, blockdev.ErrTruncated)
	}
	alg := cString(bin[luks2OffCsumAlg : luks2OffCsumAlg+luks2CsumAlgLen])
	newHash, err := hashByName(alg)
	if err != nil || newHash().Size() > luks2CsumLen {
		return nil, corruptf("%s header: checksum algorithm %q", where, alg)
	}
	area := make([]byte, int64(hdrSize)-luks2BinSize)
	if err := blockdev.ReadFull(r, area, off+luks2BinSize); err != nil {
		return nil, fmt.Errorf("%s header: JSON area: %w", where, err)
	}
	want := append([]byte(nil), bin[luks2OffCsum:luks2OffCsum+newHash().Size()]...)
	clear(bin[luks2OffCsum : luks2OffCsum+luks2CsumLen])
	hh := newHash()
	hh.Write(bin)
	hh.Write(area)
	if subtle.ConstantTimeCompare(hh.Sum(nil), want) != 1 {
		return nil, corruptf("%s header: %s checksum mismatch", where, alg)
	}
	j, err := parseLUKS2JSON(area)
	if err != nil {
		return nil, fmt.Errorf("%s header: %w", where, err)
	}
	if j.Config.JSONSize != 0 && j.Config.JSONSize != jsonU64(len(area)) {
		return nil, corruptf("%s header: config.json_size %d, JSON area is %d bytes", where, j.Config.JSONSize, len(area))
	}
	return &luks2Copy{
		secondary: off != 0,
		hdrSize:   int64(hdrSize),
		seqID:     be.Uint64(bin[luks2OffSeqID:]),
		label:     cString(bin[luks2OffLabel : luks2OffLabel+luks2LabelLen]),
		subsystem: cString(bin[luks2OffSubsystem : luks2OffSubsystem+luks2SubsystemLen]),
		uuid:      cString(bin[luks2OffUUID : luks2OffUUID+luks2UUIDLen]),
		json:      j,
	}, nil
}
