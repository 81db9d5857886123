package sniff

import (
	"encoding/binary"
	"hash/crc32"
	"io"
	"testing"
)

// paddedReader is data followed by zeros up to size: a small input can
// describe a large disk with structures at both ends.
type paddedReader struct {
	data []byte
	size int64
	tail []byte // the last bytes of the disk
}

func (p paddedReader) ReadAt(b []byte, off int64) (int, error) {
	if off >= p.size {
		return 0, io.EOF
	}
	n := len(b)
	if int64(n) > p.size-off {
		n = int(p.size - off)
	}
	clear(b[:n])
	if off < int64(len(p.data)) {
		copy(b[:n], p.data[off:])
	}
	if tailStart := p.size - int64(len(p.tail)); off+int64(n) > tailStart {
		for i := max(off, tailStart); i < off+int64(n); i++ {
			b[i-off] = p.tail[i-tailStart]
		}
	}
	if n < len(b) {
		return n, io.EOF
	}
	return n, nil
}

// gptSeed is a protective MBR and a GPT header whose CRC is right and whose
// fields are what the fuzzer will mutate.
func gptSeed(numEntries, entrySize uint32) []byte {
	b := make([]byte, 2048)
	b[446+4] = 0xEE
	binary.LittleEndian.PutUint32(b[446+8:], 1)
	binary.LittleEndian.PutUint32(b[446+12:], 0xFFFFFFFF)
	b[510], b[511] = 0x55, 0xAA
	h := b[512:]
	copy(h, gptSignature)
	binary.LittleEndian.PutUint32(h[12:], 92)
	binary.LittleEndian.PutUint64(h[24:], 1)
	binary.LittleEndian.PutUint64(h[32:], 1<<40)
	binary.LittleEndian.PutUint64(h[72:], 2)
	binary.LittleEndian.PutUint32(h[80:], numEntries)
	binary.LittleEndian.PutUint32(h[84:], entrySize)
	e := b[1024:]
	e[0] = 1                                  // a non-zero type GUID
	binary.LittleEndian.PutUint64(e[32:], 2)  // first LBA
	binary.LittleEndian.PutUint64(e[40:], 10) // last LBA
	binary.LittleEndian.PutUint32(h[88:], crc32.ChecksumIEEE(b[1024:1024+min(1024, int(numEntries*entrySize))]))
	binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:92]))
	return b
}

// FuzzSniff feeds hostile disks to Identify: it must not panic, must stay
// within its read budget and must return a verdict or an error.
func FuzzSniff(f *testing.F) {
	magic := func(off int, s string) []byte {
		b := make([]byte, off+len(s))
		copy(b[off:], s)
		return b
	}
	f.Add(gptSeed(8, 128), uint32(0), []byte(nil))
	f.Add(gptSeed(2048, 128), uint32(1<<20), []byte("EFI PART"))
	mbr := make([]byte, 512)
	mbr[446+4], mbr[446+8], mbr[446+12] = 0x05, 1, 100
	mbr[510], mbr[511] = 0x55, 0xAA
	f.Add(mbr, uint32(4096), []byte(nil))
	f.Add(magic(0, "QFI\xfb\x00\x00\x00\x03\x00\x00\x00\x00\x00\x00\x00\x40\x00\x00\x00\x10"), uint32(0), []byte(nil))
	f.Add(magic(0, "# Disk DescriptorFile\nversion=1\ncreateType=\"x\"\nRW 1 SPARSE \"a\"\n"), uint32(0), []byte(nil))
	f.Add(magic(0, "KDMV"), uint32(0), []byte("conectix"))
	f.Add(magic(1024+0x38, "\x53\xef"), uint32(0), []byte(nil))
	f.Add(magic(0, "\xeb\x3c\x90mkfs.fat\x00\x02\x04\x01\x00\x02\x00\x02\x00\x10\xf8"), uint32(0), []byte(nil))
	f.Add(magic(512, "LABELONE\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x20\x00\x00\x00LVM2 001"), uint32(0), []byte(nil))
	f.Add(magic(32768, "\x01CD001\x01"), uint32(0), []byte(nil))
	f.Fuzz(func(t *testing.T, data []byte, extra uint32, tail []byte) {
		if len(data) > 1<<20 || len(tail) > 4096 {
			return
		}
		size := int64(len(data)) + int64(extra)
		if int64(len(tail)) > size {
			tail = tail[:size]
		}
		rep, err := Identify(paddedReader{data: data, size: size, tail: tail}, size)
		if err != nil {
			return
		}
		if rep.BytesRead > maxBytesRead || rep.BytesRead > size {
			t.Fatalf("read %d bytes of a %d-byte disk", rep.BytesRead, size)
		}
		if rep.Safe != (len(rep.Reasons) == 0) {
			t.Fatalf("safe %v with reasons %q", rep.Safe, rep.Reasons)
		}
	})
}
