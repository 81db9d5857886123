package luksio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/imgfs/imgfs/blockdev"
)

// RawPayloadAlign is where a RawView puts its payload: the end of the LUKS1
// header area rounded up to 2 MiB (4096 sectors), cryptsetup's default LUKS1
// alignment.
const RawPayloadAlign = 2 << 20

// rawSplit is the piece size in which a large RawView read is spread over
// goroutines (each reads its plaintext and encrypts it).
const rawSplit = 1 << 20

// maxRawAreaBytes bounds the header area a RawView copies (a LUKS1 header
// with eight 4000-stripe keyslots of a 512-bit key takes about 2 MiB).
const maxRawAreaBytes = 64 << 20

var rawSectorPool = sync.Pool{New: func() any { return new([luks1SectorSize]byte) }}

// RawView presents a plaintext disk as a raw LUKS1 volume: a copy of a LUKS1
// header area (phdr and key material, so the same passphrase opens it)
// followed by the disk encrypted with IV = guest offset / 512. It
// implements blockdev.Device with random access and is safe for concurrent
// use; every read encrypts in memory, nothing is cached.
//
// The payload is the plaintext disk rounded up to whole 512-byte sectors
// (a partial last sector is padded with zeros).
type RawView struct {
	plain      blockdev.Device
	area       blockdev.Device
	areaLen    int64 // bytes of area copied (the rest up to payloadOff is zeros)
	payloadOff int64
	plainSize  int64
	size       int64
	c          *SectorCipher
	ownCipher  bool
	field      [4]byte // the phdr payload-offset field, patched
}

var _ blockdev.Device = (*RawView)(nil)

// NewRawView returns a raw LUKS1 volume whose header is a copy of area (a
// LUKS1 phdr at offset 0 followed by its key material at the same offsets,
// such as the header area of a qcow2+LUKS image) with the payload offset
// set to the end of area rounded up to RawPayloadAlign, and whose payload is
// plain encrypted with c. c must be the cipher of area's volume key (from
// Header.Unlock and Key.Cipher, or the image the plaintext comes from): it
// is not checked here. The caller keeps ownership of c; reads fail once it
// is closed.
func NewRawView(plain, area blockdev.Device, c *SectorCipher) (*RawView, error) {
	h, err := ReadHeader(area, area.Size())
	if err != nil {
		return nil, fmt.Errorf("raw LUKS view: %w", err)
	}
	if h.Version != 1 {
		return nil, unsupportedf("raw LUKS view: LUKS%d header (only LUKS1 is copied)", h.Version)
	}
	if c.Spec() != h.CipherSpec || c.SectorSize() != luks1SectorSize {
		return nil, fmt.Errorf("raw LUKS view: cipher %s/%d does not match the header's %s/%d", c.Spec(), c.SectorSize(), h.CipherSpec, luks1SectorSize)
	}
	areaLen := area.Size()
	if areaLen > maxRawAreaBytes {
		return nil, unsupportedf("raw LUKS view: header area of %d bytes exceeds the limit %d", areaLen, maxRawAreaBytes)
	}
	for _, ks := range h.Keyslots {
		if end := ks.AreaOffset + ks.AreaSize; end > areaLen {
			return nil, fmt.Errorf("raw LUKS view: keyslot %d ends at %d, past the %d-byte area: %w", ks.Index, end, areaLen, blockdev.ErrTruncated)
		}
	}
	return newRawView(plain, area, c, false)
}

func newRawView(plain, area blockdev.Device, c *SectorCipher, own bool) (*RawView, error) {
	v := &RawView{
		plain:      plain,
		area:       area,
		areaLen:    area.Size(),
		payloadOff: roundUp(area.Size(), RawPayloadAlign),
		plainSize:  plain.Size(),
		c:          c,
		ownCipher:  own,
	}
	if v.payloadOff/luks1SectorSize > 1<<32-1 {
		return nil, unsupportedf("raw LUKS view: payload offset %d does not fit LUKS1", v.payloadOff)
	}
	binary.BigEndian.PutUint32(v.field[:], uint32(v.payloadOff/luks1SectorSize))
	v.size = v.payloadOff + roundUp(v.plainSize, luks1SectorSize)
	return v, nil
}

// Size returns the size of the whole LUKS1 volume (header and payload).
func (v *RawView) Size() int64 { return v.size }

// PayloadOffset returns where the encrypted payload starts, in bytes.
func (v *RawView) PayloadOffset() int64 { return v.payloadOff }

// Close drops the cipher if the view owns it (NewLUKS1View); a view from
// NewRawView leaves the caller's cipher alone. Reads after Close of an
// owning view fail.
func (v *RawView) Close() error {
	if v.ownCipher {
		v.c.Close()
	}
	return nil
}

// ReadAt reads the LUKS1 volume at off with io.ReaderAt semantics. On an
// error p holds nothing of the plaintext.
func (v *RawView) ReadAt(p []byte, off int64) (int, error) {
	n, eof := blockdev.Clip(p, off, v.size)
	if n == 0 {
		return 0, eof
	}
	p = p[:n]
	whole, start := p, off
	var err error
	if off < v.payloadOff {
		k := int(min(int64(n), v.payloadOff-off))
		err = v.readHeader(p[:k], off)
		p, off = p[k:], off+int64(k)
	}
	if err == nil && len(p) > 0 {
		err = v.readPayload(p, off-v.payloadOff)
	}
	if err != nil {
		clear(whole)
		return 0, fmt.Errorf("raw LUKS view at %d: %w", start, err)
	}
	return n, eof
}

// readHeader fills p from the header region [0, payloadOff): the area copy
// with the payload offset field patched, zeros after the area.
func (v *RawView) readHeader(p []byte, off int64) error {
	if off < v.areaLen {
		k := int(min(int64(len(p)), v.areaLen-off))
		if err := blockdev.ReadFull(v.area, p[:k], off); err != nil {
			return fmt.Errorf("header area: %w", err)
		}
		clear(p[k:])
	} else {
		clear(p)
	}
	// Patch the bytes of the payload offset field that p covers.
	for i := range v.field {
		if pos := luks1OffPayload + int64(i) - off; pos >= 0 && pos < int64(len(p)) {
			p[pos] = v.field[i]
		}
	}
	return nil
}

// readPayload fills p with the ciphertext of payload bytes [off, off+len(p)).
// Large reads are split over goroutines.
func (v *RawView) readPayload(p []byte, off int64) error {
	if len(p) < 2*rawSplit {
		return v.encryptRange(p, off)
	}
	workers := runtime.GOMAXPROCS(0)
	// Piece boundaries fall on rawSplit multiples of the payload, so every
	// piece but the first and last is whole sectors.
	type piece struct {
		p   []byte
		off int64
	}
	pieces := make(chan piece)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			var first error
			for pc := range pieces {
				if first == nil {
					first = v.encryptRange(pc.p, pc.off)
				}
			}
			errs <- first
		})
	}
	for pos := 0; pos < len(p); {
		end := int(min(int64(len(p)), roundUp(off+int64(pos)+1, rawSplit)-off))
		pieces <- piece{p[pos:end], off + int64(pos)}
		pos = end
	}
	close(pieces)
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}

// encryptRange produces the ciphertext of payload bytes [off, off+len(p)):
// whole sectors are read into p and encrypted in place; a partial sector at
// either end goes through a pooled sector buffer that is zeroed after use.
func (v *RawView) encryptRange(p []byte, off int64) error {
	for len(p) > 0 {
		if off%luks1SectorSize != 0 || len(p) < luks1SectorSize {
			sec := off &^ (luks1SectorSize - 1)
			buf := rawSectorPool.Get().(*[luks1SectorSize]byte)
			err := v.readPlain(buf[:], sec)
			if err == nil {
				err = v.c.EncryptSectors(buf[:], buf[:], uint64(sec/luks1SectorSize))
			}
			k := copy(p, buf[off-sec:])
			clear(buf[:])
			rawSectorPool.Put(buf)
			if err != nil {
				return err
			}
			p, off = p[k:], off+int64(k)
			continue
		}
		m := len(p) &^ (luks1SectorSize - 1)
		if err := v.readPlain(p[:m], off); err != nil {
			return err
		}
		if err := v.c.EncryptSectors(p[:m], p[:m], uint64(off/luks1SectorSize)); err != nil {
			return err
		}
		p, off = p[m:], off+int64(m)
	}
	return nil
}

// readPlain reads plaintext at off; bytes past the disk's end (the padding
// of a partial last sector) are zeros.
func (v *RawView) readPlain(p []byte, off int64) error {
	k := int(max(0, min(int64(len(p)), v.plainSize-off)))
	if k > 0 {
		if err := blockdev.ReadFull(v.plain, p[:k], off); err != nil {
			return fmt.Errorf("plaintext: %w", err)
		}
	}
	clear(p[k:])
	return nil
}
