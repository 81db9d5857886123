package luksio

import (
	"fmt"

	"github.com/imgfs/imgfs/blockdev"
)

// Volume is the plaintext payload of a raw LUKS device. It implements
// blockdev.Device.
type Volume struct {
	dev   blockdev.Device
	h     *Header
	c     *SectorCipher
	off   int64 // payload offset in dev
	size  int64
	ss    int64
	tweak uint64
}

var _ blockdev.Device = (*Volume)(nil)

// Open reads the LUKS header of dev, unlocks it with passphrase and returns
// the plaintext volume.
func Open(dev blockdev.Device, passphrase []byte, opts UnlockOptions) (*Volume, error) {
	h, err := ReadHeader(dev, dev.Size())
	if err != nil {
		return nil, err
	}
	k, err := h.Unlock(dev, passphrase, opts)
	if err != nil {
		return nil, err
	}
	defer k.Close()
	return NewVolume(dev, h, k)
}

// NewVolume returns the plaintext payload of dev described by h and
// decrypted with k. It fails with blockdev.ErrTruncated when dev is shorter
// than the payload h describes. The Volume keeps its own copy of the key
// schedule: the caller may Close k afterwards.
func NewVolume(dev blockdev.Device, h *Header, k *Key) (*Volume, error) {
	size := h.PayloadSize
	if h.DynamicSize {
		size = dynamicSize(dev.Size(), h.PayloadOffset, h.SectorSize)
		// A payload that ends mid-sector was cut short: refuse it rather than
		// present a silently shorter disk.
		if rem := dev.Size() - h.PayloadOffset; rem > 0 && rem%int64(h.SectorSize) != 0 {
			return nil, fmt.Errorf("luks%d: payload of %d bytes ends mid-sector (sector size %d): %w", h.Version, rem, h.SectorSize, blockdev.ErrTruncated)
		}
	}
	if h.PayloadOffset > dev.Size() || size > dev.Size()-h.PayloadOffset {
		return nil, fmt.Errorf("luks%d: payload %d+%d ends past the image (%d bytes): %w", h.Version, h.PayloadOffset, size, dev.Size(), blockdev.ErrTruncated)
	}
	c, err := k.Cipher()
	if err != nil {
		return nil, fmt.Errorf("luks%d: %w", h.Version, err)
	}
	return &Volume{dev: dev, h: h, c: c, off: h.PayloadOffset, size: size, ss: int64(h.SectorSize), tweak: h.IVTweak}, nil
}

// Header returns the parsed header.
func (v *Volume) Header() *Header { return v.h }

// Size returns the payload size in bytes.
func (v *Volume) Size() int64 { return v.size }

// Close drops the key schedule; it does not close the underlying device.
// Reads after Close fail.
func (v *Volume) Close() error {
	v.c.Close()
	return nil
}

// ReadAt reads plaintext at off. Unaligned ranges are served by decrypting
// the covering sectors. A payload shorter than the header says fails with
// blockdev.ErrTruncated.
func (v *Volume) ReadAt(p []byte, off int64) (int, error) {
	n, eof := blockdev.Clip(p, off, v.size)
	if n == 0 {
		return 0, eof
	}
	start := off - off%v.ss
	end := roundUp(off+int64(n), v.ss)
	buf := p[:n]
	if start != off || end != off+int64(n) {
		buf = make([]byte, end-start)
	}
	if err := blockdev.ReadFull(v.dev, buf, v.off+start); err != nil {
		return 0, fmt.Errorf("luks%d: payload: %w", v.h.Version, err)
	}
	if err := v.c.DecryptSectors(buf, buf, uint64(start)/ivUnit+v.tweak); err != nil {
		return 0, err
	}
	if len(buf) != n {
		copy(p[:n], buf[off-start:])
	}
	return n, eof
}
