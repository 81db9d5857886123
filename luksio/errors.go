package luksio

import (
	"errors"
	"fmt"

	"github.com/imgfs/imgfs/blockdev"
)

// Error kinds of this package. Callers test them with errors.Is; the
// returned errors wrap them with context. Header damage is reported as
// blockdev.ErrCorrupt, short images as blockdev.ErrTruncated and valid but
// unimplemented features as blockdev.ErrUnsupported.
var (
	// ErrNotLUKS means the data does not start with a LUKS magic.
	ErrNotLUKS = errors.New("not a LUKS volume")
	// ErrKeyRequired means an encrypted image (raw LUKS or qcow2+LUKS) was
	// opened or read without a key.
	ErrKeyRequired = errors.New("image is encrypted: a key is required")
	// ErrNotEncrypted means a key was given for an image that is not
	// encrypted: imgfs never guesses, and a damaged LUKS header must not
	// pass as plaintext.
	ErrNotEncrypted = errors.New("a key was given but the image is not encrypted (a damaged LUKS header is not plaintext)")
	// ErrWrongPassphrase means no keyslot could be unlocked with the passphrase.
	ErrWrongPassphrase = errors.New("no keyslot matches the passphrase")
	// ErrUnsupportedCipher means a cipher specification that luksio does not implement.
	// It also matches blockdev.ErrUnsupported.
	ErrUnsupportedCipher = fmt.Errorf("unsupported cipher (%w)", blockdev.ErrUnsupported)
	// ErrKDFTooExpensive means a keyslot's KDF parameters exceed the caller's
	// limits (UnlockOptions), so the slot was not tried.
	ErrKDFTooExpensive = errors.New("KDF parameters exceed the configured limits")
)

func corruptf(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, blockdev.ErrCorrupt)...)
}

func unsupportedf(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, blockdev.ErrUnsupported)...)
}
