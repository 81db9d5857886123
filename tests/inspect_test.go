package tests

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/imgfs/imgfs/tests/testimg"
)

// inspectJSON is the part of `imgfs inspect --json` the tests check.
type inspectJSON struct {
	Outer struct {
		Format    string   `json:"format"`
		Encrypted bool     `json:"encrypted"`
		Safe      bool     `json:"safe"`
		Reasons   []string `json:"reasons"`
	} `json:"outer"`
	Inner *struct {
		Format     string `json:"format"`
		Size       int64  `json:"size"`
		Partitions []struct {
			Index    int    `json:"index"`
			Type     string `json:"type"`
			Name     string `json:"name"`
			Start    int64  `json:"start"`
			Size     int64  `json:"size"`
			Contents string `json:"contents"`
		} `json:"partitions"`
		Filesystems []struct {
			Format    string `json:"format"`
			Offset    int64  `json:"offset"`
			Partition int    `json:"partition"`
			Label     string `json:"label"`
		} `json:"filesystems"`
		Safe      bool     `json:"safe"`
		Reasons   []string `json:"reasons"`
		BytesRead int64    `json:"bytes_read"`
	} `json:"inner"`
	InnerExamined          bool     `json:"inner_examined"`
	InnerNote              string   `json:"inner_note"`
	SourceBytesRead        int64    `json:"source_bytes_read"`
	PlaintextBytesExamined int64    `json:"plaintext_bytes_examined"`
	Safe                   bool     `json:"safe"`
	Reasons                []string `json:"reasons"`
}

func inspect(t *testing.T, wantCode int, args ...string) (inspectJSON, result) {
	t.Helper()
	r := runImgfs(t, nil, append([]string{"inspect", "--json"}, args...)...)
	if r.code != wantCode {
		t.Fatalf("imgfs inspect %v: exit %d, want %d\nstdout: %s\nstderr: %s", args, r.code, wantCode, r.stdout, r.stderr)
	}
	var out inspectJSON
	if err := json.Unmarshal(r.stdout, &out); err != nil {
		t.Fatalf("inspect --json output: %v\n%s", err, r.stdout)
	}
	return out, r
}

const (
	linuxFSType = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
	partStart   = int64(1 << 20)
	partSectors = int64(30720)
)

// gptExt4Disk writes a raw disk of the given size with sfdisk: one GPT
// partition at 1 MiB holding an ext4 filesystem made by mkfs.ext4.
func gptExt4Disk(t *testing.T, dir string, size int64) string {
	t.Helper()
	testimg.Need(t, "sfdisk", "mkfs.ext4")
	disk := filepath.Join(dir, "disk.raw")
	fs := filepath.Join(dir, "part.ext4")
	for _, p := range []struct {
		path string
		size int64
	}{{disk, size}, {fs, partSectors * 512}} {
		if err := os.WriteFile(p.path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p.path, p.size); err != nil {
			t.Fatal(err)
		}
	}
	script := "label: gpt\nstart=2048, size=30720, type=" + linuxFSType + ", name=\"rootfs\"\n"
	testimg.Run(t, "sh", "-c", "sfdisk --no-reread --no-tell-kernel -q \"$1\" <<'EOF'\n"+script+"EOF\n", "sh", disk)
	testimg.Run(t, "mkfs.ext4", "-q", "-F", "-L", "guestroot", fs)
	b, err := os.ReadFile(fs)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(disk, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, partStart); err != nil {
		t.Fatal(err)
	}
	return disk
}

// fixtures holds LUKS images shared by the inspect tests: qemu-img takes
// seconds to make each one. They live in TestMain's directory.
var (
	fixturesMu sync.Mutex
	fixtures   = map[string]string{}
)

// sharedLUKS returns the LUKS1 image (passphrase testPass) whose plaintext
// make writes into a fresh directory, making it on first use.
func sharedLUKS(t *testing.T, name string, make func(t *testing.T, dir string) string) string {
	t.Helper()
	fixturesMu.Lock()
	defer fixturesMu.Unlock()
	if p, ok := fixtures[name]; ok {
		return p
	}
	dir, err := os.MkdirTemp(filepath.Dir(imgfsBin), "inspect-"+name+"-")
	if err != nil {
		t.Fatal(err)
	}
	plain := make(t, dir)
	img := luksOf(t, plain, filepath.Join(dir, "image.luks"))
	if err := os.Remove(plain); err != nil {
		t.Fatal(err)
	}
	fixtures[name] = img
	return img
}

// gptExt4LUKS is a LUKS1 image of a 32 MiB GPT disk with ext4 in partition 1.
func gptExt4LUKS(t *testing.T) string {
	return sharedLUKS(t, "gpt-ext4", func(t *testing.T, dir string) string { return gptExt4Disk(t, dir, 32<<20) })
}

// diskImageLUKS is a LUKS1 image whose plaintext is a disk image of format.
func diskImageLUKS(t *testing.T, format string) string {
	return sharedLUKS(t, format, func(t *testing.T, dir string) string { return diskImageFile(t, dir, format) })
}

// luksOf encrypts the raw file plain into a LUKS1 image with qemu-img.
func luksOf(t *testing.T, plain, out string) string {
	t.Helper()
	testimg.QemuImg(t, "convert", "-f", "raw", "-O", "luks", "--object", "secret,id=sec0,data="+testPass,
		"-o", "key-secret=sec0,iter-time=10", plain, out)
	return out
}

// diskImageFile makes a disk image of another format with qemu-img,
// padded to 1 MiB so that it is a whole number of sectors.
func diskImageFile(t *testing.T, dir, format string) string {
	t.Helper()
	p := filepath.Join(dir, "inner."+format)
	testimg.QemuImg(t, "create", "-q", "-f", format, p, "1G")
	if err := os.Truncate(p, 1<<20); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestInspectLUKSWithGPTExt4IsSafe(t *testing.T) {
	dir := t.TempDir()
	img := gptExt4LUKS(t)
	pf := passFile(t, dir, testPass)
	out, _ := inspect(t, 0, "--passphrase-file", pf, img)
	if out.Outer.Format != "luks" || !out.Outer.Encrypted || !out.InnerExamined || out.Inner == nil {
		t.Fatalf("outer %+v, inner examined %v: want a LUKS image whose plaintext was examined", out.Outer, out.InnerExamined)
	}
	in := out.Inner
	if in.Format != "gpt" || in.Size != 32<<20 || len(in.Partitions) != 1 {
		t.Fatalf("inner %+v: want a 32 MiB GPT disk with one partition", in)
	}
	p := in.Partitions[0]
	if p.Index != 1 || p.Type != linuxFSType || p.Name != "rootfs" || p.Start != partStart || p.Size != partSectors*512 || p.Contents != "ext4" {
		t.Errorf("partition %+v: want 1 %s \"rootfs\" at %d of %d bytes holding ext4", p, linuxFSType, partStart, partSectors*512)
	}
	if len(in.Filesystems) != 1 || in.Filesystems[0].Label != "guestroot" || in.Filesystems[0].Offset != partStart {
		t.Errorf("filesystems %+v: want the ext4 labelled guestroot at %d", in.Filesystems, partStart)
	}
	if !out.Safe || !in.Safe || len(out.Reasons) != 0 {
		t.Errorf("safe %v (inner %v), reasons %q: want safe", out.Safe, in.Safe, out.Reasons)
	}
	// The sniffer read a few sectors of the 32 MiB plaintext, and the source
	// was read for the header, one keyslot and those sectors only.
	if out.PlaintextBytesExamined != in.BytesRead || in.BytesRead == 0 || in.BytesRead > 128<<10 {
		t.Errorf("plaintext examined %d, inner bytes read %d: want equal, non-zero, < 128 KiB", out.PlaintextBytesExamined, in.BytesRead)
	}
	if out.SourceBytesRead < in.BytesRead || out.SourceBytesRead > 1<<20 {
		t.Errorf("source bytes read %d: want between %d and 1 MiB", out.SourceBytesRead, in.BytesRead)
	}

	human := mustImgfs(t, nil, "inspect", "--passphrase-file", pf, img)
	for _, want := range []string{"format:                gpt", "Linux filesystem \"rootfs\", contains ext4", "label \"guestroot\"", "bytes read from source:", "verdict:                   safe"} {
		if !strings.Contains(string(human), want) {
			t.Errorf("human output lacks %q:\n%s", want, human)
		}
	}
}

func TestInspectLUKSHidingADiskImageIsUnsafe(t *testing.T) {
	for _, format := range []string{"qcow2", "vmdk"} {
		t.Run(format, func(t *testing.T) {
			dir := t.TempDir()
			img := diskImageLUKS(t, format)
			pf := passFile(t, dir, testPass)
			out, r := inspect(t, 3, "--passphrase-file", pf, img)
			if out.Safe || out.Inner == nil || out.Inner.Safe || out.Inner.Format != format {
				t.Fatalf("safe %v inner %+v: want an unsafe %s plaintext", out.Safe, out.Inner, format)
			}
			if !out.Outer.Safe {
				t.Errorf("the LUKS layer itself is fine, but the outer verdict is unsafe: %q", out.Outer.Reasons)
			}
			if len(out.Reasons) != 1 || !strings.Contains(out.Reasons[0], format+" inside the image") {
				t.Errorf("reasons %q: want one naming %s", out.Reasons, format)
			}
			if !strings.Contains(string(r.stderr), "unsafe") || !strings.Contains(string(r.stderr), format) {
				t.Errorf("stderr %q does not say why", r.stderr)
			}
			// Without a key only the outer layer is judged: it is safe.
			out, _ = inspect(t, 0, img)
			if out.InnerExamined || out.Inner != nil || !strings.Contains(out.InnerNote, "not examined") || !out.Safe {
				t.Errorf("without a key: examined %v note %q safe %v; want only the outer verdict", out.InnerExamined, out.InnerNote, out.Safe)
			}
		})
	}
}

func TestInspectWithoutKeySaysInnerNotExamined(t *testing.T) {
	img := gptExt4LUKS(t)
	out, _ := inspect(t, 0, img)
	if out.Outer.Format != "luks" || !out.Outer.Safe || out.InnerExamined || out.Inner != nil || out.PlaintextBytesExamined != 0 {
		t.Fatalf("%+v: want the outer LUKS verdict only", out)
	}
	if !strings.Contains(out.InnerNote, "no key was given") {
		t.Errorf("inner note %q does not say a key is missing", out.InnerNote)
	}
	if out.SourceBytesRead > 64<<10 {
		t.Errorf("read %d bytes without a key: more than the header", out.SourceBytesRead)
	}
	human := mustImgfs(t, nil, "inspect", img)
	if !strings.Contains(string(human), "inner layer: not examined") {
		t.Errorf("human output does not say the inner layer was not examined:\n%s", human)
	}
}

func TestInspectUnencryptedImageIsSniffedWithoutKey(t *testing.T) {
	dir := t.TempDir()
	vhd := filepath.Join(dir, "disk.vhd")
	testimg.QemuImg(t, "create", "-q", "-f", "vpc", vhd, "16M")
	out, _ := inspect(t, 3, vhd)
	if out.Outer.Format != "raw" || !out.InnerExamined || out.Inner.Format != "vhd" {
		t.Fatalf("outer %q inner %+v: want a raw image examined as vhd", out.Outer.Format, out.Inner)
	}
}

func TestInspectPolicyFile(t *testing.T) {
	dir := t.TempDir()
	img := gptExt4LUKS(t)
	pf := passFile(t, dir, testPass)
	strict := testimg.WriteFile(t, dir, "strict.json", []byte(`{"allow": ["gpt", "xfs"]}`))
	out, _ := inspect(t, 3, "--passphrase-file", pf, "--policy", strict, img)
	if len(out.Reasons) != 1 || !strings.Contains(out.Reasons[0], "ext4 at the start of partition 1") || !strings.Contains(out.Reasons[0], "allow list") {
		t.Errorf("reasons %q: want ext4 outside the allow list", out.Reasons)
	}
	ok := testimg.WriteFile(t, dir, "ok.json", []byte(`{"allow": ["gpt", "ext4"], "forbid": ["ntfs"]}`))
	inspect(t, 0, "--passphrase-file", pf, "--policy", ok, img)

	qimg := diskImageLUKS(t, "qcow2")
	allowQcow := testimg.WriteFile(t, dir, "qcow.json", []byte(`{"allow": ["qcow2"]}`))
	inspect(t, 0, "--passphrase-file", pf, "--policy", allowQcow, qimg)

	typo := testimg.WriteFile(t, dir, "typo.json", []byte(`{"forbid": ["qcow3"]}`))
	r := runImgfs(t, nil, "inspect", "--passphrase-file", pf, "--policy", typo, img)
	if r.code != 1 || !strings.Contains(string(r.stderr), "qcow3") {
		t.Errorf("a policy naming an unknown format: exit %d, stderr %q; want exit 1 naming it", r.code, r.stderr)
	}
}

func TestInspectWrongPassphraseIsAnError(t *testing.T) {
	dir := t.TempDir()
	img := gptExt4LUKS(t)
	r := runImgfs(t, nil, "inspect", "--passphrase-file", passFile(t, dir, "not the passphrase"), img)
	if r.code != 1 {
		t.Fatalf("wrong passphrase: exit %d, want 1; stderr %s", r.code, r.stderr)
	}
}

// A 64 GiB qcow2+LUKS disk is judged from less than 1 MiB of its file.
func TestInspectLargeQcow2LUKSReadsLittle(t *testing.T) {
	dir := t.TempDir()
	const virt = int64(64) << 30
	// A sparse raw disk with a GPT spanning 64 GiB and ext4 in partition 1,
	// converted by qemu-img into qcow2 with native LUKS encryption.
	testimg.Need(t, "sfdisk", "mkfs.ext4")
	raw := gptExt4Disk(t, dir, virt)
	img := filepath.Join(dir, "image.qcow2")
	testimg.QemuImg(t, "convert", "-f", "raw", "-O", "qcow2", "--object", "secret,id=sec0,data="+testPass,
		"-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", raw, img)
	if err := os.Remove(raw); err != nil {
		t.Fatal(err)
	}
	out, _ := inspect(t, 0, "--passphrase-file", passFile(t, dir, testPass), img)
	if out.Outer.Format != "qcow2" || !out.Outer.Encrypted || out.Inner == nil {
		t.Fatalf("outer %+v: want an encrypted qcow2 whose plaintext was examined", out.Outer)
	}
	in := out.Inner
	if in.Size != virt || in.Format != "gpt" || len(in.Partitions) != 1 || in.Partitions[0].Contents != "ext4" || in.Partitions[0].Start != partStart {
		t.Fatalf("inner %+v: want a 64 GiB GPT disk with ext4 at 1 MiB", in)
	}
	if out.SourceBytesRead >= 1<<20 || out.SourceBytesRead == 0 {
		t.Errorf("read %d bytes of the source for a 64 GiB image: want (0, 1 MiB)", out.SourceBytesRead)
	}
	t.Logf("64 GiB qcow2+LUKS: %d bytes read from the source, %d plaintext bytes examined", out.SourceBytesRead, out.PlaintextBytesExamined)
}

// An unsafe outer layer (a qcow2 with a backing file) is judged without
// opening it: the plaintext is never read.
func TestInspectUnsafeOuterLayerIsNotOpened(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "overlay.qcow2")
	testimg.QemuImg(t, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/passwd", "-u", img, "1M")
	out, r := inspect(t, 3, img)
	if out.Outer.Safe || out.InnerExamined || !strings.Contains(out.InnerNote, "outer layer is unsafe") {
		t.Fatalf("outer safe %v, inner examined %v, note %q: want an unsafe outer layer only", out.Outer.Safe, out.InnerExamined, out.InnerNote)
	}
	if len(out.Reasons) == 0 || !strings.HasPrefix(out.Reasons[0], "outer layer: ") || !strings.Contains(out.Reasons[0], "/etc/passwd") {
		t.Errorf("reasons %q: want the backing file named as an outer-layer problem", out.Reasons)
	}
	if !strings.Contains(string(r.stderr), "/etc/passwd") {
		t.Errorf("stderr %q does not say why", r.stderr)
	}
}
