package qcowio

import "errors"

// Error kinds of this package. They are wrapped with context; test them with
// errors.Is. Key errors are luksio.ErrKeyRequired and luksio.ErrNotEncrypted.
// Structural problems also wrap blockdev.ErrCorrupt,
// blockdev.ErrTruncated or blockdev.ErrUnsupported.
var (
	// ErrNotQcow2 means the device does not start with the qcow2 magic.
	ErrNotQcow2 = errors.New("not a qcow2 image")
	// ErrUnsafe means the image fails the safety policy; the error text lists
	// every reason.
	ErrUnsafe = errors.New("unsafe qcow2 image")
	// ErrInsecureEncryption means the image uses legacy qcow2 AES encryption.
	ErrInsecureEncryption = errors.New("legacy qcow2 AES encryption is insecure and unsupported")
)
