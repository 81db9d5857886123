package imgfs

import (
	"errors"
	"fmt"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/luksio"
	"github.com/imgfs/imgfs/qcowio"
)

// ErrNotEncryptedView explains why an unencrypted image has no raw-LUKS
// view or encrypted copy.
var ErrNotEncryptedView = errors.New("the image is not encrypted; use `imgfs encrypt --format luks` to make a new LUKS volume")

// RawLUKS returns the image as a raw LUKS volume that the same key opens:
// a raw LUKS image as stored, a qcow2+LUKS image re-encrypted in memory to
// the raw layout under a copy of its LUKS header and keyslots.
func (img *Image) RawLUKS() (blockdev.Device, error) {
	switch {
	case img.Info.Format == FormatLUKS:
		return img.Stored, nil
	case !img.Info.Encrypted:
		return nil, ErrNotEncryptedView
	}
	e := img.enc
	if e == nil || e.LUKSArea() == nil || e.SectorCipher() == nil {
		return nil, fmt.Errorf("no usable LUKS header: %w", blockdev.ErrCorrupt)
	}
	return luksio.NewRawView(img.Disk, e.LUKSArea(), e.SectorCipher())
}

// maxQcow2LUKSArea bounds the LUKS header area copied into a qcow2 image.
const maxQcow2LUKSArea = 64 << 20

// Qcow2Encryption returns the LUKS area and cipher that keep an encrypted
// image's keyslots in a qcow2+LUKS copy (none for an unencrypted image).
func (img *Image) Qcow2Encryption() (qcowio.WriteOptions, error) {
	if !img.Info.Encrypted {
		return qcowio.WriteOptions{}, nil
	}
	if h := img.Info.LUKS; h != nil && h.Version != 1 {
		return qcowio.WriteOptions{}, fmt.Errorf("a LUKS%d volume cannot be embedded in qcow2 (qemu reads LUKS1 only): %w", h.Version, blockdev.ErrUnsupported)
	}
	e := img.enc
	if e == nil || e.LUKSArea() == nil || e.SectorCipher() == nil {
		return qcowio.WriteOptions{}, fmt.Errorf("no usable LUKS header: %w", blockdev.ErrCorrupt)
	}
	area := e.LUKSArea()
	if area.Size() > maxQcow2LUKSArea {
		return qcowio.WriteOptions{}, fmt.Errorf("LUKS header area of %d bytes exceeds %d: %w", area.Size(), maxQcow2LUKSArea, blockdev.ErrUnsupported)
	}
	buf := make([]byte, area.Size())
	if err := blockdev.ReadFull(area, buf, 0); err != nil {
		return qcowio.WriteOptions{}, fmt.Errorf("LUKS header area: %w", err)
	}
	return qcowio.WriteOptions{LUKSArea: buf, Cipher: e.SectorCipher()}, nil
}
