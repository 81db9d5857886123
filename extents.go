package imgfs

import (
	"context"
	"fmt"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/luksio"
	"github.com/imgfs/imgfs/qcowio"
)

// MapExtent is one line of `qemu-img map --output=json`: a run of the
// plaintext disk and where it comes from. Offset is the byte of the stored
// image that holds Start, when there is one (data clusters of a qcow2,
// the payload of a raw LUKS volume, the data of a raw image).
type MapExtent struct {
	Start      int64  `json:"start"`
	Length     int64  `json:"length"`
	Depth      int    `json:"depth"`
	Present    bool   `json:"present"`
	Zero       bool   `json:"zero"`
	Data       bool   `json:"data"`
	Compressed bool   `json:"compressed,omitempty"`
	Offset     *int64 `json:"offset,omitempty"`
}

// Map calls fn with the extents of the plaintext disk in order: data,
// zeros and holes, read from metadata only (qcow2 tables, the LUKS
// header, the file system's holes of a raw file), so an encrypted image
// needs no key. It works on an image opened with StoredOnly.
func (img *Image) Map(ctx context.Context, fn func(MapExtent) error) error {
	switch img.Info.Format {
	case FormatQcow2:
		q, err := qcowio.Open(img.Stored, img.opts.Policy)
		if err != nil {
			return err
		}
		defer q.Close()
		return q.Extents(func(e qcowio.Extent) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			m := MapExtent{Start: e.Start, Length: e.Length, Present: e.Present, Zero: e.Zero, Data: e.Data, Compressed: e.Compressed}
			if e.Offset >= 0 {
				off := e.Offset
				m.Offset = &off
			}
			return fn(m)
		})
	case FormatLUKS:
		h, err := luksio.ReadHeader(img.Stored, img.Stored.Size())
		if err != nil {
			return err
		}
		size := img.Info.VirtualSize
		if img.Disk != nil {
			size = img.Disk.Size()
		}
		off := h.PayloadOffset
		return fn(MapExtent{Start: 0, Length: size, Present: true, Data: true, Offset: &off})
	case FormatRaw:
		return mapRaw(ctx, img.Stored, fn)
	}
	return fmt.Errorf("map: format %q: %w", img.Info.Format, blockdev.ErrUnsupported)
}

// mapRaw maps a raw image by its device's data map (SEEK_DATA/SEEK_HOLE
// of a local file), as qemu-img map does; a device without one is data.
func mapRaw(ctx context.Context, d blockdev.Device, fn func(MapExtent) error) error {
	size := d.Size()
	m, ok := d.(blockdev.Mapper)
	if !ok {
		zero := int64(0)
		return fn(MapExtent{Start: 0, Length: size, Present: true, Data: true, Offset: &zero})
	}
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := m.NextData(off)
		if err != nil {
			return err
		}
		if data > off {
			o := off
			if err := fn(MapExtent{Start: off, Length: data - off, Present: true, Zero: true, Offset: &o}); err != nil {
				return err
			}
			off = data
			continue
		}
		hole, err := m.NextHole(off)
		if err != nil {
			return err
		}
		if hole <= off {
			return fmt.Errorf("map: the data map makes no progress at %d: %w", off, blockdev.ErrCorrupt)
		}
		o := off
		if err := fn(MapExtent{Start: off, Length: hole - off, Present: true, Data: true, Offset: &o}); err != nil {
			return err
		}
		off = hole
	}
	return nil
}
