package imgfs

import (
	"bytes"
	"context"
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

// maxRewrapArea bounds the LUKS header area re-wrapped in memory.
const maxRewrapArea = 64 << 20

// RawLUKSNewKey is RawLUKS with the volume key wrapped under newPass in a
// fresh keyslot (luksio.RewrapLUKS1: the other keyslots are removed unless
// opts.KeepOld), for a volume that gets a key of its own. The payload is
// not re-encrypted: a raw LUKS image is its stored bytes under the new
// header area, a qcow2+LUKS image is re-encrypted in memory as RawLUKS
// does. The image's own key (Options.Key or Barbican) unlocks the header
// once more to recover the volume key, which is zeroed before this
// returns. Only LUKS1 headers are re-wrapped; LUKS2 is refused with
// blockdev.ErrUnsupported. It returns the new keyslot's index.
func (img *Image) RawLUKSNewKey(ctx context.Context, newPass []byte, opts luksio.RewrapOptions) (blockdev.Device, int, error) {
	if !img.Info.Encrypted {
		return nil, 0, ErrNotEncryptedView
	}
	if !img.HasKey() {
		return nil, 0, fmt.Errorf("a new key needs the image's current key: %w", luksio.ErrKeyRequired)
	}
	if h := img.Info.LUKS; h != nil && h.Version != 1 {
		return nil, 0, fmt.Errorf("a new key for a LUKS%d volume: only LUKS1 headers are re-wrapped (export without a new key, then use cryptsetup luksAddKey/luksKillSlot): %w", h.Version, blockdev.ErrUnsupported)
	}
	var area blockdev.Device
	switch {
	case img.Info.Format == FormatLUKS && img.Info.LUKS != nil:
		var err error
		if area, err = blockdev.NewSection(img.Stored, 0, img.Info.LUKS.PayloadOffset); err != nil {
			return nil, 0, fmt.Errorf("LUKS header area: %w", err)
		}
	case img.enc != nil && img.enc.LUKSArea() != nil && img.enc.SectorCipher() != nil:
		area = img.enc.LUKSArea()
	default:
		return nil, 0, fmt.Errorf("no usable LUKS header (is the image unlocked?): %w", blockdev.ErrCorrupt)
	}
	if area.Size() > maxRewrapArea {
		return nil, 0, fmt.Errorf("LUKS header area of %d bytes exceeds %d: %w", area.Size(), maxRewrapArea, blockdev.ErrUnsupported)
	}
	buf := make([]byte, area.Size())
	if err := blockdev.ReadFull(area, buf, 0); err != nil {
		return nil, 0, fmt.Errorf("LUKS header area: %w", err)
	}
	// The header and keyslots are in buf: parse and unlock from memory,
	// not with a second read of a (maybe remote) device.
	mem := bytes.NewReader(buf)
	h, err := luksio.ReadHeader(mem, mem.Size())
	if err != nil {
		return nil, 0, err
	}
	key, err := unlockLUKS(ctx, mem, h, img.opts)
	if err != nil {
		return nil, 0, err
	}
	newArea, slot, err := luksio.RewrapLUKS1(buf, key, newPass, opts)
	key.Close()
	if err != nil {
		return nil, 0, err
	}
	if img.Info.Format == FormatLUKS {
		return &headOverlay{head: newArea, dev: img.Stored}, slot, nil
	}
	v, err := luksio.NewRawView(img.Disk, bytes.NewReader(newArea), img.enc.SectorCipher())
	return v, slot, err
}

// headOverlay is dev with its first len(head) bytes replaced by head.
type headOverlay struct {
	head []byte
	dev  blockdev.Device
}

// Size returns the size of dev.
func (o *headOverlay) Size() int64 { return o.dev.Size() }

// ReadAt reads head where it covers p and dev elsewhere.
func (o *headOverlay) ReadAt(p []byte, off int64) (int, error) {
	n, eof := blockdev.Clip(p, off, o.dev.Size())
	if n == 0 {
		return 0, eof
	}
	p = p[:n]
	done := 0
	if off < int64(len(o.head)) {
		done = copy(p, o.head[off:])
	}
	if done < n {
		if err := blockdev.ReadFull(o.dev, p[done:], off+int64(done)); err != nil {
			return 0, err
		}
	}
	return n, eof
}
