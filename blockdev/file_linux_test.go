package blockdev

import (
	"os"
	"path/filepath"
	"testing"
)

// A sparse file's data map comes from SEEK_DATA/SEEK_HOLE: the hole the
// test punches (by never writing it) is found, the data around it too.
func TestFileMapsHoles(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sparse")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = 1
	}
	f.WriteAt(data, 0)
	f.WriteAt(data, 8<<20)
	f.Close()
	d, err := OpenFile(p)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var m Mapper = d
	if h, err := m.NextHole(0); err != nil || h != 1<<20 {
		if err == nil && h == d.Size() {
			t.Skip("SKIP: this file system does not report holes")
		}
		t.Fatalf("NextHole(0) = %d, %v; want %d", h, err, 1<<20)
	}
	if n, err := m.NextData(1 << 20); err != nil || n != 8<<20 {
		t.Fatalf("NextData(1MiB) = %d, %v; want %d", n, err, 8<<20)
	}
	if h, err := m.NextHole(8 << 20); err != nil || h != d.Size() {
		t.Fatalf("NextHole(8MiB) = %d, %v; want the end", h, err)
	}
	if _, err := m.NextData(d.Size()); err == nil {
		t.Fatal("NextData at the end: want io.EOF")
	}
}
