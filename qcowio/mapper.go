package qcowio

import "io"

// NextData returns the first offset >= off that holds data (allocated or
// compressed clusters), or Size() if there is none; io.EOF when off >= Size().
// Zero and unallocated clusters are holes. It implements blockdev.Mapper.
func (img *Image) NextData(off int64) (int64, error) {
	return img.next(off, true)
}

// NextHole returns the first offset >= off that is a hole (zero or
// unallocated), or Size() if there is none; io.EOF when off >= Size().
func (img *Image) NextHole(off int64) (int64, error) {
	return img.next(off, false)
}

func (img *Image) next(off int64, data bool) (int64, error) {
	if off < 0 {
		off = 0
	}
	if off >= img.size {
		return 0, io.EOF
	}
	img.mu.RLock()
	closed := img.closed
	img.mu.RUnlock()
	if closed {
		return 0, errClosed
	}
	for off < img.size {
		e, err := img.lookup(off)
		if err != nil {
			return 0, err
		}
		isData := e.kind == kindData || e.kind == kindCompressed
		if isData == data {
			return off, nil
		}
		off += e.length
	}
	return img.size, nil
}
