//go:build linux

package imgfs

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/keyring"
	"github.com/imgfs/imgfs/qcowio"
)

// secretBuf is memory outside the Go heap (an anonymous mapping) for the
// test's own copy of a volume key, so that a scan of the heap finds only
// the copies imgfs made.
type secretBuf []byte

func newSecretBuf(t *testing.T, n int) secretBuf {
	b, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { clear(b); unix.Munmap(b) })
	return b[:n]
}

// heapHolds reports whether any writable mapping of this process other
// than the secret buffers holds needle.
func heapHolds(t *testing.T, needle []byte, skip ...secretBuf) bool {
	maps, err := os.Open("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	mem, err := os.Open("/proc/self/mem")
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	chunk, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(chunk)
	skip = append(skip, chunk)
	sc := bufio.NewScanner(maps)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || !strings.HasPrefix(f[1], "rw") {
			continue
		}
		lo, hi, _ := strings.Cut(f[0], "-")
		start, _ := strconv.ParseUint(lo, 16, 64)
		end, _ := strconv.ParseUint(hi, 16, 64)
		if len(f) >= 6 && (strings.HasPrefix(f[5], "[v") || strings.HasPrefix(f[5], "[stack")) {
			continue // vvar, vsyscall, vdso
		}
		for off := start; off < end; off += uint64(len(chunk) - len(needle)) {
			n := min(uint64(len(chunk)), end-off)
			got, err := mem.ReadAt(chunk[:n], int64(off))
			if err != nil && got == 0 {
				break
			}
			if i := bytes.Index(chunk[:got], needle); i >= 0 {
				addr := uintptr(off) + uintptr(i)
				inSkip := false
				for _, s := range skip {
					base := uintptr(unsafePointer(s))
					if addr >= base && addr < base+uintptr(cap(s)) {
						inSkip = true
					}
				}
				if !inSkip {
					return true
				}
			}
			if n < uint64(len(chunk)) {
				break
			}
		}
	}
	return false
}

// The volume key is gone from the process's memory once an image opened
// through Open — the path every command takes — is closed: raw LUKS1,
// LUKS2 and qcow2+LUKS. (It used to survive for raw LUKS: the key was not
// closed after the volume took its key schedule.)
func TestOpenCloseLeavesNoVolumeKey(t *testing.T) {
	for _, tool := range []string{"cryptsetup", "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is missing", tool)
			}
			t.Skipf("SKIP: %s is missing", tool)
		}
	}
	dir := t.TempDir()
	pass := "key-zero-test-passphrase"
	pf := filepath.Join(dir, "pass")
	if err := os.WriteFile(pf, []byte(pass), 0o600); err != nil {
		t.Fatal(err)
	}
	type image struct{ name, path string }
	var imgs []image
	for _, typ := range []string{"luks1", "luks2"} {
		p := filepath.Join(dir, typ+".img")
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, 32<<20); err != nil {
			t.Fatal(err)
		}
		args := []string{"luksFormat", "--batch-mode", "--type", typ, "--key-file", pf, "--key-size", "512", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", p}
		if out, err := exec.Command("cryptsetup", args...).CombinedOutput(); err != nil {
			t.Fatalf("cryptsetup luksFormat: %v: %s", err, out)
		}
		imgs = append(imgs, image{typ, p})
	}
	q := filepath.Join(dir, "q.qcow2")
	for i := 0; ; i++ {
		out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "--object", "secret,id=s,data="+pass,
			"-o", "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10", q, "4M").CombinedOutput()
		if err == nil {
			break
		}
		if i > 40 || !strings.Contains(string(out), "accurate CPU usage") {
			t.Fatalf("qemu-img create: %v: %s", err, out)
		}
	}
	imgs = append(imgs, image{"qcow2+luks", q})

	for _, img := range imgs {
		t.Run(img.name, func(t *testing.T) {
			key := volumeKey(t, img.path, pf)
			// The scan sees the Go heap: a copy there is found.
			probe := append([]byte(nil), key...)
			if !heapHolds(t, key, key) {
				t.Fatal("the memory scan misses a copy of the key on the heap")
			}
			clear(probe)
			runtime.KeepAlive(probe)
			im, err := Open(context.Background(), img.path, Options{Key: keyring.PassphraseFile{Path: pf}})
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4096)
			if _, err := im.Disk.ReadAt(buf, 0); err != nil {
				t.Fatal(err)
			}
			im.Close()
			runtime.GC()
			if heapHolds(t, key, key) {
				t.Fatalf("the %d-byte volume key is still in memory after Close", len(key))
			}
		})
	}
}

// volumeKey returns a LUKS or qcow2+LUKS image's volume key, as cryptsetup
// dumps it, in a secretBuf: the key never passes through the Go heap.
func volumeKey(t *testing.T, path, pf string) secretBuf {
	hdr := path
	if strings.HasSuffix(path, ".qcow2") { // cryptsetup reads the LUKS area qemu embeds
		f, err := blockdev.OpenFile(path)
		if err != nil {
			t.Fatal(err)
		}
		q, err := qcowio.Open(f, qcowio.Policy{})
		if err != nil {
			t.Fatal(err)
		}
		area := make([]byte, q.LUKSArea().Size())
		if err := blockdev.ReadFull(q.LUKSArea(), area, 0); err != nil {
			t.Fatal(err)
		}
		q.Close()
		f.Close()
		hdr = path + ".luks"
		if err := os.WriteFile(hdr, area, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	dump := path + ".dump"
	cmd := fmt.Sprintf("cryptsetup luksDump --dump-volume-key --batch-mode --key-file %q %q > %q", pf, hdr, dump)
	if out, err := exec.Command("sh", "-c", cmd).CombinedOutput(); err != nil {
		t.Fatalf("cryptsetup luksDump --dump-volume-key: %v: %s", err, out)
	}
	defer os.Remove(dump)
	fd, err := unix.Open(dump, unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	text := newSecretBuf(t, 4096)
	n, err := unix.Read(fd, text)
	unix.Close(fd)
	if err != nil {
		t.Fatal(err)
	}
	// The hex digits follow "MK dump:" (LUKS1) or "Volume key:" / "MK dump:"
	// (LUKS2); collect them in place, then decode into a second buffer.
	text = text[:n]
	hexDigits := newSecretBuf(t, 1024)[:0]
	in := false
	for _, line := range bytes.Split(text, []byte("\n")) {
		switch {
		case bytes.HasPrefix(line, []byte("MK dump:")) || bytes.HasPrefix(line, []byte("Volume key:")):
			in = true
			_, line, _ = bytes.Cut(line, []byte(":"))
		case in && (bytes.HasPrefix(line, []byte("\t")) || bytes.HasPrefix(line, []byte(" "))):
		default:
			in = false
		}
		if in {
			for _, c := range line {
				if ('0' <= c && c <= '9') || ('a' <= c && c <= 'f') {
					hexDigits = append(hexDigits, c)
				}
			}
		}
	}
	key := newSecretBuf(t, len(hexDigits)/2)
	if _, err := hex.Decode(key, hexDigits); err != nil || len(key) < 32 {
		t.Fatalf("no volume key in cryptsetup's dump (%d hex digits): %v", len(hexDigits), err)
	}
	clear(text)
	clear(hexDigits)
	return key
}
