package sniff

import (
	"errors"
	"fmt"
	"io"

	"github.com/imgfs/imgfs/blockdev"
)

// sectorSize is the unit in which Identify reads and caches: every probe
// needs a few bytes of one or two sectors, so nothing larger is fetched.
const sectorSize = 512

// maxBytesRead bounds what Identify reads from one device, however many
// partitions a hostile table declares. A normal disk needs a few dozen KiB.
const maxBytesRead = 8 << 20

// ErrReadBudget means a device's tables asked Identify to read more than
// maxBytesRead bytes.
var ErrReadBudget = errors.New("sniff: read budget exhausted")

// reader reads a device in whole sectors, never twice, and counts what it
// fetched. Its first error sticks: every later read fails.
type reader struct {
	r     io.ReaderAt
	size  int64
	n     int64            // bytes fetched from r
	cache map[int64][]byte // sector index → contents (shorter at the end)
	err   error
}

func newReader(r io.ReaderAt, size int64) *reader {
	return &reader{r: r, size: size, cache: make(map[int64][]byte)}
}

// at returns the n bytes at off, or nil when they do not lie wholly inside
// the device or could not be read (rd.err then says why).
func (rd *reader) at(off int64, n int) []byte {
	if rd.err != nil || off < 0 || n < 0 || off > rd.size || int64(n) > rd.size-off {
		return nil
	}
	if n == 0 {
		return []byte{}
	}
	first, last := off/sectorSize, (off+int64(n)-1)/sectorSize
	for s := first; s <= last; {
		if _, ok := rd.cache[s]; ok {
			s++
			continue
		}
		e := s
		for e < last {
			if _, ok := rd.cache[e+1]; ok {
				break
			}
			e++
		}
		if !rd.fill(s, e) {
			return nil
		}
		s = e + 1
	}
	out := make([]byte, 0, n)
	for s := first; s <= last; s++ {
		b := rd.cache[s]
		lo, hi := int64(0), int64(len(b))
		if s == first {
			lo = off - s*sectorSize
		}
		if s == last {
			hi = off + int64(n) - s*sectorSize
		}
		out = append(out, b[lo:hi]...)
	}
	return out
}

// fill fetches sectors s..e (inclusive) in one read.
func (rd *reader) fill(s, e int64) bool {
	start := s * sectorSize
	end := min((e+1)*sectorSize, rd.size)
	if rd.n+(end-start) > maxBytesRead {
		rd.err = fmt.Errorf("reading %d bytes at %d after %d: %w", end-start, start, rd.n, ErrReadBudget)
		return false
	}
	buf := make([]byte, end-start)
	if err := blockdev.ReadFull(rd.r, buf, start); err != nil {
		rd.err = err
		return false
	}
	rd.n += end - start
	for i := s; i <= e; i++ {
		lo := (i - s) * sectorSize
		rd.cache[i] = buf[lo:min(lo+sectorSize, int64(len(buf)))]
	}
	return true
}

// view is the byte range [base, base+size) of a reader: the whole disk or
// one partition. Probes address it from 0.
type view struct {
	rd         *reader
	base, size int64
}

// at returns n bytes at off inside the view, or nil past its end.
func (v view) at(off int64, n int) []byte {
	if off < 0 || n < 0 || off > v.size || int64(n) > v.size-off {
		return nil
	}
	return v.rd.at(v.base+off, n)
}
