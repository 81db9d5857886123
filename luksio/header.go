package luksio

import (
	"bytes"
	"fmt"
	"io"

	"github.com/imgfs/imgfs/blockdev"
)

// luksMagic starts every LUKS1 and primary LUKS2 header.
var luksMagic = []byte("LUKS\xba\xbe")

// Header is a parsed LUKS1 or LUKS2 header. Its JSON form is what
// `imgfs info --json` prints; it holds no key material.
type Header struct {
	Version    int    `json:"version"`
	UUID       string `json:"uuid"`
	Label      string `json:"label,omitempty"`     // LUKS2
	Subsystem  string `json:"subsystem,omitempty"` // LUKS2
	CipherSpec string `json:"cipher"`              // e.g. "aes-xts-plain64"
	KeyBytes   int    `json:"key_bytes"`           // volume key length
	SectorSize int    `json:"sector_size"`         // encryption sector; 512 for LUKS1
	// PayloadOffset is where the encrypted payload starts, in bytes.
	PayloadOffset int64 `json:"payload_offset"`
	// PayloadSize is the payload length in bytes. For LUKS1 and LUKS2
	// "dynamic" segments it is the image size minus PayloadOffset, rounded
	// down to whole sectors (0 if the image ends before the payload).
	PayloadSize int64 `json:"payload_size"`
	// DynamicSize reports a payload that extends to the end of the image.
	DynamicSize bool `json:"dynamic_size"`
	// IVTweak is added to every IV sector number (LUKS2 segment iv_tweak).
	IVTweak uint64 `json:"iv_tweak"`
	// HashSpec is the LUKS1 header hash or the LUKS2 digest hash.
	HashSpec string `json:"hash"`
	// HeaderSize is the LUKS2 hdr_size (binary header plus JSON area); for
	// LUKS1 the size of the phdr.
	HeaderSize int64 `json:"header_size"`
	// SeqID is the LUKS2 header sequence number.
	SeqID uint64 `json:"seqid,omitempty"`
	// Keyslots lists the active keyslots in index order.
	Keyslots []Keyslot `json:"keyslots"`
	// UsedSecondary is set when the LUKS2 primary header was unusable (or
	// older) and the secondary copy was used.
	UsedSecondary bool `json:"used_secondary,omitempty"`
	// PrimaryError says why the LUKS2 primary header was not used, if it was not.
	PrimaryError string `json:"primary_error,omitempty"`

	digests []digest
}

// Keyslot describes one active keyslot.
type Keyslot struct {
	Index      int    `json:"index"`
	KDF        string `json:"kdf"` // "pbkdf2", "argon2i" or "argon2id"
	Hash       string `json:"hash,omitempty"`
	Iterations uint32 `json:"iterations"` // PBKDF2 iterations or argon2 time cost
	MemoryKiB  uint32 `json:"memory_kib,omitempty"`
	Parallel   uint32 `json:"parallel,omitempty"`
	Stripes    uint32 `json:"stripes"`
	KeyBytes   int    `json:"key_bytes"`
	AreaOffset int64  `json:"area_offset"`
	AreaSize   int64  `json:"area_size"`
	// Priority is the LUKS2 priority: 0 ignore, 1 normal, 2 high (1 for LUKS1).
	Priority int `json:"priority"`
	// AreaCipher is the cipher of the key material area.
	AreaCipher string `json:"area_cipher"`

	salt         []byte
	afHash       string
	areaKeyBytes int
}

// digest checks a candidate volume key: PBKDF2(hash, key, salt, iterations)
// must equal value. keyslots lists the slots it verifies.
type digest struct {
	hash       string
	iterations uint32
	salt       []byte
	value      []byte
	keyslots   []int
}

// ReadHeader parses a LUKS header at offset 0 of r; size is r's total size
// and bounds every offset found in the header. A LUKS2 header whose primary
// copy is damaged is read from its secondary copy (Header.UsedSecondary).
// When the data does not start with a LUKS magic at all, ReadHeader still
// looks for a LUKS2 secondary header at each offset the specification
// allows (4 KiB reads at 16 KiB .. 4 MiB) before it returns ErrNotLUKS, as
// cryptsetup does for a wiped primary header.
func ReadHeader(r io.ReaderAt, size int64) (*Header, error) {
	if size < luks1PhdrSize {
		return nil, fmt.Errorf("luks: image of %d bytes is too small for a header: %w", size, ErrNotLUKS)
	}
	var first [luks1PhdrSize]byte
	if err := blockdev.ReadFull(r, first[:], 0); err != nil {
		return nil, fmt.Errorf("luks: read header: %w", err)
	}
	if !bytes.Equal(first[:6], luksMagic) {
		// A LUKS2 image whose primary magic was destroyed may still
		// have a valid secondary header.
		if h, err := readLUKS2(r, size); err == nil {
			return h, nil
		}
		return nil, fmt.Errorf("luks: bad magic %q: %w", first[:6], ErrNotLUKS)
	}
	switch v := int(first[6])<<8 | int(first[7]); v {
	case 1:
		return parseLUKS1(r, size, first[:])
	case 2:
		return readLUKS2(r, size)
	default:
		return nil, unsupportedf("luks: version %d", v)
	}
}

// cString returns b up to its first NUL byte.
func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// validKeyBytes reports whether n is a volume key length LUKS can use.
func validKeyBytes(n int) bool {
	switch n {
	case 16, 24, 32, 48, 64:
		return true
	}
	return false
}
