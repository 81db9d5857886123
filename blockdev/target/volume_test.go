package target

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// memVolume is a Volume over a byte slice; lie flips a bit of every read
// so that a read-back differs.
type memVolume struct {
	b      []byte
	zeroed int64
	lie    bool
	synced bool
}

func (m *memVolume) Size() int64 { return int64(len(m.b)) }
func (m *memVolume) ReadAt(p []byte, off int64) (int, error) {
	n := copy(p, m.b[off:])
	if m.lie && n > 0 {
		p[0] ^= 1
	}
	return n, nil
}
func (m *memVolume) WriteAt(p []byte, off int64) (int, error) { return copy(m.b[off:], p), nil }
func (m *memVolume) Zero(off, n int64) error {
	clear(m.b[off : off+n])
	m.zeroed += n
	return nil
}
func (m *memVolume) Flush() error { m.synced = true; return nil }

func ffVolume(n int) *memVolume {
	return &memVolume{b: bytes.Repeat([]byte{0xff}, n)}
}

// Holes are zeroed on the volume (or skipped with TargetIsZero), data
// lands in place, the tail past the image is untouched, and the volume is
// flushed.
func TestWriteVolumeZeroesHolesInPlace(t *testing.T) {
	img := make(memDevice, 3*Chunk+100)
	copy(img[Chunk+5:], "data")
	for _, skip := range []bool{false, true} {
		v := ffVolume(len(img) + 4096)
		st, err := WriteVolume(context.Background(), "mem", v, img, Options{TargetIsZero: skip, Verify: !skip})
		if err != nil {
			t.Fatal(err)
		}
		if !v.synced {
			t.Fatal("not flushed")
		}
		if !bytes.Equal(v.b[len(img):], bytes.Repeat([]byte{0xff}, 4096)) {
			t.Fatal("bytes past the image changed")
		}
		if skip {
			if st.Holes != 2*Chunk+100 || v.zeroed != 0 || v.b[0] != 0xff {
				t.Fatalf("TargetIsZero: holes %d, zeroed %d", st.Holes, v.zeroed)
			}
			continue
		}
		if !bytes.Equal(v.b[:len(img)], img) || v.zeroed != 2*Chunk+100 {
			t.Fatalf("volume differs from the image (zeroed %d)", v.zeroed)
		}
	}
}

// A volume too small is refused before a byte is written.
func TestWriteVolumeTooSmall(t *testing.T) {
	img := make(memDevice, Chunk)
	img[0] = 1
	v := ffVolume(Chunk - 512)
	_, err := WriteVolume(context.Background(), "mem", v, img, Options{})
	if !errors.Is(err, ErrTooSmall) {
		t.Fatalf("error %v, want ErrTooSmall", err)
	}
	if !bytes.Equal(v.b, bytes.Repeat([]byte{0xff}, len(v.b))) {
		t.Fatal("wrote into a volume that is too small")
	}
}

// A read-back that differs is ErrVerify; an interrupted write says how far
// it got.
func TestWriteVolumeVerifyAndInterrupt(t *testing.T) {
	img := make(memDevice, 2*Chunk)
	img[7] = 7
	v := ffVolume(len(img))
	v.lie = true
	if _, err := WriteVolume(context.Background(), "mem", v, img, Options{Verify: true}); !errors.Is(err, ErrVerify) {
		t.Fatalf("error %v, want ErrVerify", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := WriteVolume(ctx, "mem", ffVolume(len(img)), img, Options{})
	if !errors.Is(err, context.Canceled) || !bytes.Contains([]byte(err.Error()), []byte("interrupted after 0 of 8388608 bytes")) {
		t.Fatalf("error %v", err)
	}
}

// Classify accepts files, new paths, pipes, /dev/null and stdout, and
// refuses directories and other character devices naming what it takes.
func TestClassify(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "f")
	os.WriteFile(file, nil, 0o600)
	for path, want := range map[string]Kind{"-": KindStdout, "": KindStdout, file: KindFile, filepath.Join(dir, "new"): KindFile, fifo: KindStream, "/dev/null": KindStream} {
		if k, err := Classify(path); err != nil || k != want {
			t.Errorf("%s: %v %v, want %v", path, k, err, want)
		}
	}
	for _, path := range []string{dir, "/dev/zero"} {
		_, err := Classify(path)
		if !errors.Is(err, ErrNotTarget) || !bytes.Contains([]byte(err.Error()), []byte("a block device (written in place)")) {
			t.Errorf("%s: %v", path, err)
		}
	}
}
