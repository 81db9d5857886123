package qcowio

// Extent is a run of the virtual disk that maps uniformly, in the terms of
// `qemu-img map`: Present (allocated in this image, data or an explicit
// zero), Zero (reads as zeros), Data (read from the file) and, for data
// clusters (and zeros or unallocated subclusters inside an allocated
// cluster), Offset, the host offset of Start; -1 for none (compressed
// clusters, holes). Unlike qemu-img, offsets of encrypted images are
// given too: where the ciphertext of each extent lies.
type Extent struct {
	Start, Length int64
	Present       bool
	Zero          bool
	Data          bool
	Compressed    bool
	Offset        int64
}

// Extents calls fn with the extents of the whole virtual disk in order,
// merged as qemu-img map merges them (same kind, and contiguous host
// offsets for data). It reads only metadata: an encrypted image needs no
// key.
func (img *Image) Extents(fn func(Extent) error) error {
	var cur Extent
	have := false
	for off := int64(0); off < img.size; {
		e, err := img.lookup(off)
		if err != nil {
			return err
		}
		n := min(e.length, img.size-off)
		next := Extent{Start: off, Length: n, Offset: -1}
		if e.host > 0 {
			next.Offset = e.host
		}
		switch e.kind {
		case kindUnallocated:
			next.Zero = true
		case kindZero:
			next.Present, next.Zero = true, true
		case kindData:
			next.Present, next.Data = true, true
		case kindCompressed:
			next.Present, next.Data, next.Compressed = true, true, true
		}
		if have && mergeable(cur, next) {
			cur.Length += n
		} else {
			if have {
				if err := fn(cur); err != nil {
					return err
				}
			}
			cur, have = next, true
		}
		off += n
	}
	if have {
		return fn(cur)
	}
	return nil
}

func mergeable(a, b Extent) bool {
	if a.Present != b.Present || a.Zero != b.Zero || a.Data != b.Data || a.Compressed != b.Compressed {
		return false
	}
	if (a.Offset < 0) != (b.Offset < 0) {
		return false
	}
	return a.Offset < 0 || a.Offset+a.Length == b.Offset
}
