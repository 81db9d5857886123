package qcowio

import (
	"fmt"
	"strings"

	"github.com/imgfs/imgfs/blockdev"
)

// Policy relaxes the safety checks. The zero Policy is the strict one.
type Policy struct {
	// AllowDirty accepts images whose dirty bit is set (an image that was not
	// closed cleanly: its refcounts may be stale, its mapping is still valid).
	AllowDirty bool
}

// reason is one cause of an unsafe verdict, with the error kind it maps to.
type reason struct {
	kind error
	msg  string
}

// verdict collects every reason an image is unsafe.
type verdict struct {
	reasons []reason
}

// maxReasons bounds the verdict of a crafted image with many bad tables.
const maxReasons = 32

func (v *verdict) add(kind error, format string, args ...any) {
	if len(v.reasons) == maxReasons {
		v.reasons = append(v.reasons, reason{blockdev.ErrCorrupt, "more problems not listed"})
	}
	if len(v.reasons) > maxReasons {
		return
	}
	v.reasons = append(v.reasons, reason{kind, fmt.Sprintf(format, args...)})
}

func (v *verdict) messages() []string {
	out := make([]string, len(v.reasons))
	for i, r := range v.reasons {
		out[i] = r.msg
	}
	return out
}

// err returns nil for a safe image, else an error that wraps ErrUnsafe and
// the kind of every reason, listing all of them.
func (v *verdict) err() error {
	if len(v.reasons) == 0 {
		return nil
	}
	errs := []error{ErrUnsafe}
	seen := map[error]bool{}
	for _, r := range v.reasons {
		if r.kind != nil && !seen[r.kind] {
			seen[r.kind] = true
			errs = append(errs, r.kind)
		}
	}
	return &unsafeError{msg: "qcow2: unsafe image: " + strings.Join(v.messages(), "; "), errs: errs}
}

type unsafeError struct {
	msg  string
	errs []error
}

func (e *unsafeError) Error() string   { return e.msg }
func (e *unsafeError) Unwrap() []error { return e.errs }

var _ interface{ Unwrap() []error } = (*unsafeError)(nil)

// checkPolicy records the policy reasons of a parsed header: features that
// would make imgfs read something other than the image itself, or that it
// cannot read correctly.
func (h *header) checkPolicy(pol Policy, v *verdict) {
	if h.backingFileOffset != 0 {
		v.add(blockdev.ErrUnsupported, "image has a backing file %q", h.backingFile)
	}
	if h.hasDataFile || h.incompat&incompatDataFile != 0 {
		v.add(blockdev.ErrUnsupported, "image has an external data file %q", h.dataFile)
	}
	if h.autoclear&autoclearDataFileRaw != 0 {
		v.add(blockdev.ErrUnsupported, "image has the raw external data bit set")
	}
	if unknown := h.incompat &^ incompatKnown; unknown != 0 {
		v.add(blockdev.ErrUnsupported, "unknown incompatible features: %s", strings.Join(h.featureList(0, unknown), ", "))
	}
	if h.incompat&incompatDirty != 0 && !pol.AllowDirty {
		v.add(blockdev.ErrCorrupt, "image is marked dirty (not closed cleanly)")
	}
	if h.incompat&incompatCorrupt != 0 {
		v.add(blockdev.ErrCorrupt, "image is marked corrupt")
	}
	ext := h.incompat&incompatExtendedL2 != 0
	if ext && h.version < 3 {
		v.add(blockdev.ErrCorrupt, "extended L2 entries in a version %d image", h.version)
	}
	if ext && h.clusterBits < 14 {
		v.add(blockdev.ErrCorrupt, "extended L2 entries with %d-byte clusters (need at least 16 KiB)", h.clusterSize())
	}
	switch {
	case h.compressionType > compressionZstd:
		v.add(blockdev.ErrUnsupported, "unknown compression type %d", h.compressionType)
	case h.compressionType != compressionZlib && h.incompat&incompatCompression == 0:
		v.add(blockdev.ErrCorrupt, "compression type %d without the compression type feature bit", h.compressionType)
	case h.compressionType == compressionZlib && h.incompat&incompatCompression != 0:
		v.add(blockdev.ErrCorrupt, "compression type feature bit set for zlib compression")
	}
	switch h.cryptMethod {
	case cryptNone:
		if h.hasCrypto {
			v.add(blockdev.ErrCorrupt, "crypto header extension in an unencrypted image")
		}
	case cryptAES:
		v.add(ErrInsecureEncryption, "legacy qcow2 AES encryption is insecure and unsupported")
	case cryptLUKS:
		switch {
		case !h.hasCrypto:
			v.add(blockdev.ErrCorrupt, "LUKS encryption without a crypto header extension")
		case h.clusterBits < minClusterBits || h.clusterBits > maxClusterBits:
			// Reported by checkFields; the offset cannot be checked.
		case h.cryptoOffset%uint64(h.clusterSize()) != 0 || h.cryptoOffset == 0:
			v.add(blockdev.ErrCorrupt, "LUKS header offset %#x not a cluster-aligned offset after the header", h.cryptoOffset)
		}
	default:
		v.add(blockdev.ErrUnsupported, "unknown crypt method %d", h.cryptMethod)
	}
}
