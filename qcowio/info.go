package qcowio

import (
	"math"
	"strconv"

	"github.com/imgfs/imgfs/luksio"
)

// Info describes an image for `imgfs info`. It never holds key material.
type Info struct {
	Version     int   `json:"version"`
	ClusterSize int64 `json:"cluster_size"`
	VirtualSize int64 `json:"virtual_size"`
	FileSize    int64 `json:"file_size"`
	// Encryption is "none", "luks", "aes (legacy)" or "unknown (N)".
	Encryption string `json:"encryption"`
	// LUKS is the embedded LUKS header of an encrypted image, when readable.
	LUKS *luksio.Header `json:"luks,omitempty"`
	// CompressionType is "zlib", "zstd" or "unknown (N)".
	CompressionType      string   `json:"compression_type"`
	ExtendedL2           bool     `json:"extended_l2"`
	IncompatibleFeatures []string `json:"incompatible_features"`
	CompatibleFeatures   []string `json:"compatible_features"`
	AutoclearFeatures    []string `json:"autoclear_features"`
	BackingFile          string   `json:"backing_file,omitempty"`
	BackingFormat        string   `json:"backing_format,omitempty"`
	DataFile             string   `json:"data_file,omitempty"`
	// AllocatedBytes counts the host bytes of allocated data clusters
	// (compressed clusters by their compressed size). It is 0 when the
	// tables could not be walked, and -1 (unknown) when DeferredL2Checks is
	// set.
	AllocatedBytes int64 `json:"allocated_bytes"`
	// DeferredL2Checks is set by Open for an image whose L2 tables exceed
	// what Open walks up front (see Open): Safe then covers the header, the
	// L1 table and the LUKS header, and each L2 table is checked when a read
	// first loads it. Inspect walks every table and never sets it.
	DeferredL2Checks bool `json:"deferred_l2_checks,omitempty"`
	// Safe is the safety verdict; Reasons lists every reason it is false.
	Safe    bool     `json:"safe"`
	Reasons []string `json:"reasons,omitempty"`
}

// newInfo fills the header part of an Info.
func newInfo(h *header, fileSize int64) *Info {
	info := &Info{
		Version:              int(h.version),
		VirtualSize:          int64(min(h.size, math.MaxInt64)),
		FileSize:             fileSize,
		ExtendedL2:           h.incompat&incompatExtendedL2 != 0,
		IncompatibleFeatures: nonNil(h.featureList(0, h.incompat)),
		CompatibleFeatures:   nonNil(h.featureList(1, h.compat)),
		AutoclearFeatures:    nonNil(h.featureList(2, h.autoclear)),
		BackingFile:          h.backingFile,
		BackingFormat:        h.backingFormat,
		DataFile:             h.dataFile,
	}
	if h.clusterBits < 63 {
		info.ClusterSize = 1 << h.clusterBits
	}
	switch h.cryptMethod {
	case cryptNone:
		info.Encryption = "none"
	case cryptAES:
		info.Encryption = "aes (legacy)"
	case cryptLUKS:
		info.Encryption = "luks"
	default:
		info.Encryption = "unknown (" + itoa(uint64(h.cryptMethod)) + ")"
	}
	switch h.compressionType {
	case compressionZlib:
		info.CompressionType = "zlib"
	case compressionZstd:
		info.CompressionType = "zstd"
	default:
		info.CompressionType = "unknown (" + itoa(uint64(h.compressionType)) + ")"
	}
	return info
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func itoa(v uint64) string { return strconv.FormatUint(v, 10) }
