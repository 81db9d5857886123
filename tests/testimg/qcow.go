package testimg

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// QcowWrite is one write into a qcow2 image through qemu-io.
type QcowWrite struct {
	Off, Len int64
	// Zero writes zeroes (`write -z`) instead of data.
	Zero bool
	// Compressed writes a compressed cluster (`write -c`); Off and Len must
	// cover whole clusters.
	Compressed bool
	// Seed selects the pseudo-random data written (RandomBytes).
	Seed uint64
}

// QcowImage describes a qcow2 image for MakeQcow2.
type QcowImage struct {
	Size int64
	// Options are extra `qemu-img create -o` options, e.g.
	// "cluster_size=4096,compat=0.10".
	Options string
	// Passphrase, when set, makes a qcow2+LUKS image (encrypt.format=luks,
	// encrypt.iter-time=10).
	Passphrase string
	// Passes are applied in order, one qemu-io run each: later passes
	// allocate host clusters after earlier ones.
	Passes [][]QcowWrite
}

// MakeQcow2 creates a qcow2 image in dir with qemu-img and writes the passes
// with qemu-io. It returns the image path and the plaintext virtual disk the
// writes describe (zeros where nothing was written). For disks larger than
// MaxPlaintext the plaintext stops at the end of the last write: the rest of
// the disk is zeros.
func MakeQcow2(t testing.TB, dir, name string, spec QcowImage) (string, []byte) {
	t.Helper()
	Need(t, "qemu-img", "qemu-io")
	path := filepath.Join(dir, name)
	args := []string{"create", "-q", "-f", "qcow2"}
	opts := spec.Options
	if spec.Passphrase != "" {
		args = append(args, "--object", "secret,id=sec0,data="+spec.Passphrase)
		opts = joinOpts(opts, "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10")
	}
	if opts != "" {
		args = append(args, "-o", opts)
	}
	args = append(args, path, fmt.Sprint(spec.Size))
	QemuImg(t, args...)
	plainLen := spec.Size
	if plainLen > MaxPlaintext {
		plainLen = 0
		for _, pass := range spec.Passes {
			for _, w := range pass {
				plainLen = max(plainLen, w.Off+w.Len)
			}
		}
	}
	plain := make([]byte, plainLen)
	for pi, pass := range spec.Passes {
		if len(pass) == 0 {
			continue
		}
		io := qemuIOArgs(path, spec.Passphrase)
		for wi, w := range pass {
			switch {
			case w.Zero:
				io = append(io, "-c", fmt.Sprintf("write -q -z %d %d", w.Off, w.Len))
				clear(plain[w.Off : w.Off+w.Len])
			default:
				data := RandomBytes(int(w.Len), w.Seed)
				src := WriteFile(t, dir, fmt.Sprintf("%s.pass%d.w%d", name, pi, wi), data)
				flag := ""
				if w.Compressed {
					flag = "-c "
				}
				io = append(io, "-c", fmt.Sprintf("write -q %s-s %s %d %d", flag, src, w.Off, w.Len))
				copy(plain[w.Off:], data)
			}
		}
		QemuIO(t, io...)
	}
	return path, plain
}

// MaxPlaintext is the largest disk whose whole plaintext MakeQcow2 returns.
const MaxPlaintext = 1 << 30

// ConvertQcow2 writes raw to a file and converts it with `qemu-img convert
// -O qcow2` (zero clusters stay unallocated). With a passphrase the result is
// qcow2+LUKS; options are extra -o options ("compression_type=zstd", ...);
// compress adds -c.
func ConvertQcow2(t testing.TB, dir, name string, raw []byte, options, passphrase string, compress bool) string {
	t.Helper()
	src := WriteFile(t, dir, name+".src.raw", raw)
	path := filepath.Join(dir, name)
	args := []string{"convert", "-q", "-f", "raw", "-O", "qcow2"}
	if compress {
		args = append(args, "-c")
	}
	if passphrase != "" {
		args = append(args, "--object", "secret,id=sec0,data="+passphrase)
		options = joinOpts(options, "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10")
	}
	if options != "" {
		args = append(args, "-o", options)
	}
	QemuImg(t, append(args, src, path)...)
	return path
}

// QemuRaw returns `qemu-img convert -O raw` of a qcow2 image: qemu's own
// reading of it, the second reference for every byte imgfs reads.
func QemuRaw(t testing.TB, path, passphrase string) []byte {
	t.Helper()
	out := path + ".qemu.raw"
	args := []string{"convert", "-q"}
	if passphrase != "" {
		args = append(args, "--object", "secret,id=sec0,data="+passphrase,
			"--image-opts", "driver=qcow2,encrypt.key-secret=sec0,file.filename="+path)
	} else {
		args = append(args, "-f", "qcow2", path)
	}
	QemuImg(t, append(args, "-O", "raw", out)...)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(out)
	return b
}

// MapEntry is one extent of `qemu-img map --output=json`.
type MapEntry struct {
	Start  int64 `json:"start"`
	Length int64 `json:"length"`
	Data   bool  `json:"data"`
	Zero   bool  `json:"zero"`
}

// QemuMap returns `qemu-img map --output=json` of an unencrypted qcow2 image.
func QemuMap(t testing.TB, path string) []MapEntry {
	t.Helper()
	out := QemuImg(t, "map", "--output=json", "-f", "qcow2", path)
	var m []MapEntry
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("qemu-img map output: %v", err)
	}
	return m
}

func qemuIOArgs(path, passphrase string) []string {
	if passphrase == "" {
		return []string{"-f", "qcow2", path}
	}
	return []string{"--object", "secret,id=sec0,data=" + passphrase,
		"--image-opts", "driver=qcow2,encrypt.key-secret=sec0,file.filename=" + path}
}

func joinOpts(a, b string) string {
	return strings.Trim(a+","+b, ",")
}
