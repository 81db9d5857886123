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
	// Compressed writes compressed clusters (`write -c`); Off and Len must
	// cover whole clusters. The data is made compressible (random bytes of
	// a four-letter alphabet): qemu stores incompressible data uncompressed.
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
// MaxPlaintext the plaintext covers only the first MaxPlaintext bytes.
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
	plain := make([]byte, min(spec.Size, MaxPlaintext))
	WriteQcow2(t, path, spec.Passphrase, plain, spec.Passes)
	return path, plain
}

// MaxPlaintext is the largest disk whose whole plaintext MakeQcow2 returns.
const MaxPlaintext = 64 << 20

// WriteQcow2 applies passes of writes to an existing qcow2 image with
// qemu-io (one run per pass, so later passes allocate host clusters after
// earlier ones) and applies the same writes to plain, which may be shorter
// than the disk: the parts of writes past its end are not tracked.
func WriteQcow2(t testing.TB, path, passphrase string, plain []byte, passes [][]QcowWrite) {
	t.Helper()
	Need(t, "qemu-io")
	for pi, pass := range passes {
		if len(pass) == 0 {
			continue
		}
		io := qemuIOArgs(path, passphrase)
		for wi, w := range pass {
			switch {
			case w.Zero:
				io = append(io, "-c", fmt.Sprintf("write -q -z %d %d", w.Off, w.Len))
				clear(plain[min(w.Off, int64(len(plain))):min(w.Off+w.Len, int64(len(plain)))])
			default:
				data := RandomBytes(int(w.Len), w.Seed)
				if w.Compressed {
					for i := range data {
						data[i] &= 3
					}
				}
				src := fmt.Sprintf("%s.pass%d.w%d", path, pi, wi)
				if err := os.WriteFile(src, data, 0o600); err != nil {
					t.Fatal(err)
				}
				defer os.Remove(src)
				flag := ""
				if w.Compressed {
					flag = "-c "
				}
				io = append(io, "-c", fmt.Sprintf("write -q %s-s %s %d %d", flag, src, w.Off, w.Len))
				copy(plain[min(w.Off, int64(len(plain))):], data)
			}
		}
		QemuIO(t, io...)
	}
}

// CopyFile copies src to dst (to derive several vectors from one costly
// qcow2+LUKS creation).
func CopyFile(t testing.TB, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

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

// CompressedClusters returns the percentage of compressed clusters that
// `qemu-img check` reports ("50.00"), to prove a vector has them.
func CompressedClusters(t testing.TB, path string) string {
	t.Helper()
	out, _ := RunErr("qemu-img", "check", "-f", "qcow2", path)
	for _, line := range strings.Split(string(out), "\n") {
		if i := strings.Index(line, "% compressed clusters"); i >= 0 {
			f := strings.Fields(line[:i])
			return f[len(f)-1]
		}
	}
	t.Fatalf("qemu-img check %s: no compressed cluster statistics in %q", path, out)
	return ""
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
	return QemuMapLUKS(t, path, "")
}

// QemuMapLUKS is QemuMap for a qcow2 image encrypted with passphrase (""
// for none).
func QemuMapLUKS(t testing.TB, path, passphrase string) []MapEntry {
	t.Helper()
	args := []string{"map", "--output=json"}
	if passphrase != "" {
		args = append(args, "--object", "secret,id=sec0,data="+passphrase,
			"--image-opts", "driver=qcow2,encrypt.key-secret=sec0,file.filename="+path)
	} else {
		args = append(args, "-f", "qcow2", path)
	}
	out := QemuImg(t, args...)
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
