//go:build !linux

package target

import (
	"errors"
	"fmt"
)

// BlockDevice is a block device opened for writing in place; only Linux
// supports it.
type BlockDevice struct{ Volume }

// OpenBlockDevice fails: block device targets need Linux.
func OpenBlockDevice(path string) (*BlockDevice, error) {
	return nil, fmt.Errorf("%s: block device targets need Linux: %w", path, errors.ErrUnsupported)
}

// Close does nothing.
func (b *BlockDevice) Close() error { return nil }
