package luksio

import (
	"errors"
	"io"
	"testing"
)

// FuzzRawView feeds arbitrary header areas to NewRawView and reads the
// views it accepts: no panic, reads stay inside Size, and the payload
// offset is aligned past the area.
func FuzzRawView(f *testing.F) {
	area, key, err := NewLUKS1([]byte("fuzz"), FormatOptions{Iterations: 1000, KeyBytes: 32})
	if err != nil {
		f.Fatal(err)
	}
	key.Close()
	f.Add(area, int64(0), uint16(600))
	f.Add(area[:luks1PhdrSize], int64(100), uint16(8))
	f.Add([]byte("LUKS\xba\xbe\x00\x01"), int64(2<<20-3), uint16(4096))
	c, err := NewSectorCipher("aes-xts-plain64", make([]byte, 32), 512)
	if err != nil {
		f.Fatal(err)
	}
	plain := bytesDevice(make([]byte, 70000))
	f.Fuzz(func(t *testing.T, area []byte, off int64, n uint16) {
		v, err := NewRawView(plain, bytesDevice(area), c)
		if err != nil {
			return
		}
		if v.PayloadOffset() < int64(len(area)) || v.PayloadOffset()%RawPayloadAlign != 0 || v.Size() != v.PayloadOffset()+70144 {
			t.Fatalf("payload at %d, size %d for a %d-byte area", v.PayloadOffset(), v.Size(), len(area))
		}
		if off < 0 {
			off = -off
		}
		off %= v.Size() + 10
		p := make([]byte, n)
		m, err := v.ReadAt(p, off)
		if m < 0 || m > len(p) || int64(m) > max(0, v.Size()-off) {
			t.Fatalf("ReadAt(%d at %d) = %d", n, off, m)
		}
		if m < len(p) && !errors.Is(err, io.EOF) {
			t.Fatalf("short read %d of %d without io.EOF: %v", m, n, err)
		}
	})
}
