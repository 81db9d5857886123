package sniff

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/imgfs/imgfs/tests/testimg"
)

// countingFile counts what Identify reads, independently of BytesRead.
type countingFile struct {
	f     *os.File
	n     atomic.Int64
	calls atomic.Int64
}

func (c *countingFile) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.f.ReadAt(p, off)
	c.n.Add(int64(n))
	c.calls.Add(1)
	return n, err
}

// identifyFile runs Identify on a file and checks that BytesRead is what
// was really read from it.
func identifyFile(t *testing.T, path string) *Report {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	cf := &countingFile{f: f}
	rep, err := Identify(cf, st.Size())
	if err != nil {
		t.Fatalf("Identify(%s): %v", filepath.Base(path), err)
	}
	if rep.BytesRead != cf.n.Load() {
		t.Errorf("BytesRead = %d, but %d bytes were read", rep.BytesRead, cf.n.Load())
	}
	if rep.Size != st.Size() {
		t.Errorf("Size = %d, want %d", rep.Size, st.Size())
	}
	js, _ := json.MarshalIndent(rep, "", "  ")
	t.Logf("%s: %s", filepath.Base(path), js)
	return rep
}

// sparseFile makes an empty sparse file of the given size.
func sparseFile(t *testing.T, dir, name string, size int64) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	return p
}

// sfdisk applies a partitioning script to a file.
func sfdisk(t *testing.T, path, script string) {
	t.Helper()
	testimg.Need(t, "sfdisk")
	cmd := fmt.Sprintf("sfdisk --no-reread --no-tell-kernel -q %q <<'EOF'\n%sEOF\n", path, script)
	testimg.Run(t, "sh", "-c", cmd)
}

// sfdiskDump returns the partitions (in sectors) as sfdisk --json reads them.
func sfdiskDump(t *testing.T, path string) []struct{ Start, Size int64 } {
	t.Helper()
	var dump struct {
		PartitionTable struct {
			Partitions []struct{ Start, Size int64 } `json:"partitions"`
		} `json:"partitiontable"`
	}
	if err := json.Unmarshal(testimg.Run(t, "sfdisk", "--json", path), &dump); err != nil {
		t.Fatal(err)
	}
	return dump.PartitionTable.Partitions
}

// findFS returns the entry for format at offset, or fails.
func findFS(t *testing.T, rep *Report, format string, offset int64) Filesystem {
	t.Helper()
	for _, f := range rep.Filesystems {
		if f.Format == format && f.Offset == offset {
			return f
		}
	}
	t.Fatalf("no %s at offset %d in %+v", format, offset, rep.Filesystems)
	return Filesystem{}
}

func wantSafe(t *testing.T, rep *Report, safe bool) {
	t.Helper()
	if rep.Safe != safe {
		t.Fatalf("Safe = %v, want %v (reasons %q)", rep.Safe, safe, rep.Reasons)
	}
	if safe != (len(rep.Reasons) == 0) {
		t.Fatalf("Safe = %v but reasons %q", rep.Safe, rep.Reasons)
	}
}

const (
	mib      = int64(1) << 20
	sector   = int64(512)
	linuxFS  = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
	linuxSw  = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"
	efiSys   = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
	diskGUID = "6A1C1B2E-6A55-4C3B-9D8E-0F1E2D3C4B5A"
)

func TestMBRPartitionsAreWhatSfdiskWasTold(t *testing.T) {
	dir := t.TempDir()
	img := sparseFile(t, dir, "mbr.img", 64*mib)
	// Two primaries, an extended partition with two logical ones.
	sfdisk(t, img, "label: dos\nlabel-id: 0x1234abcd\n"+
		"start=2048, size=20480, type=83, bootable\n"+
		"start=22528, size=8192, type=82\n"+
		"start=30720, size=90112, type=5\n"+
		"start=32768, size=10240, type=83\n"+
		"start=45056, size=20480, type=8e\n")
	rep := identifyFile(t, img)
	if rep.Format != FormatMBR || rep.PartitionTable == nil || rep.PartitionTable.DiskID != "0x1234abcd" {
		t.Fatalf("format %q table %+v, want mbr with disk id 0x1234abcd", rep.Format, rep.PartitionTable)
	}
	want := []Partition{
		{Index: 1, Type: "0x83", TypeName: "Linux", Bootable: true, Start: 2048 * sector, Size: 20480 * sector, Contents: FormatUnknown},
		{Index: 2, Type: "0x82", TypeName: "Linux swap / Solaris", Start: 22528 * sector, Size: 8192 * sector, Contents: FormatUnknown},
		{Index: 3, Type: "0x05", TypeName: "Extended", Start: 30720 * sector, Size: 90112 * sector},
		{Index: 5, Type: "0x83", TypeName: "Linux", Start: 32768 * sector, Size: 10240 * sector, Contents: FormatUnknown},
		{Index: 6, Type: "0x8e", TypeName: "Linux LVM", Start: 45056 * sector, Size: 20480 * sector, Contents: FormatUnknown},
	}
	if len(rep.Partitions) != len(want) {
		t.Fatalf("got %d partitions, want %d: %+v", len(rep.Partitions), len(want), rep.Partitions)
	}
	for i := range want {
		if rep.Partitions[i] != want[i] {
			t.Errorf("partition %d:\n got %+v\nwant %+v", i, rep.Partitions[i], want[i])
		}
	}
	if len(rep.Filesystems) != 0 || len(rep.Warnings) != 0 {
		t.Errorf("empty partitions: unexpected filesystems %+v or warnings %q", rep.Filesystems, rep.Warnings)
	}
	wantSafe(t, rep, true)

	// Filesystems made by mkfs in a primary and a logical partition are
	// found at their starts.
	testimg.Need(t, "mkfs.vfat", "mkswap")
	fat := sparseFile(t, dir, "p1.fat", 20480*sector)
	testimg.Run(t, "mkfs.vfat", "-F", "16", "-n", "BOOT", fat)
	copyInto(t, img, fat, 2048*sector)
	swap := sparseFile(t, dir, "p5.swap", 10240*sector)
	testimg.Run(t, "mkswap", "-L", "logical5", swap)
	copyInto(t, img, swap, 32768*sector)
	rep = identifyFile(t, img)
	if rep.Partitions[0].Contents != FormatFAT16 || rep.Partitions[3].Contents != FormatSwap || rep.Partitions[4].Contents != FormatUnknown {
		t.Fatalf("contents of partitions 1, 5, 6: %q %q %q; want fat16 swap unknown",
			rep.Partitions[0].Contents, rep.Partitions[3].Contents, rep.Partitions[4].Contents)
	}
	if f := findFS(t, rep, FormatFAT16, 2048*sector); f.Partition != 1 || f.Label != "BOOT" || f.Size != 20480*sector {
		t.Errorf("fat16 entry %+v", f)
	}
	if f := findFS(t, rep, FormatSwap, 32768*sector); f.Partition != 5 || f.Label != "logical5" || f.Size != 10240*sector {
		t.Errorf("swap entry %+v", f)
	}
}

// An extended boot record whose link points to itself ends the walk with a
// warning instead of looping.
func TestMBRExtendedChainLoopIsCut(t *testing.T) {
	dir := t.TempDir()
	img := sparseFile(t, dir, "loop.img", 64*mib)
	sfdisk(t, img, "label: dos\nstart=2048, size=90112, type=5\nstart=4096, size=4096, type=83\nstart=10240, size=4096, type=83\n")
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// The first EBR (at the extended partition's start) links to the second.
	link := make([]byte, 4)
	if _, err := f.ReadAt(link, 2048*sector+446+16+8); err != nil {
		t.Fatal(err)
	}
	second := int64(binary.LittleEndian.Uint32(link))
	if second == 0 {
		t.Fatal("sfdisk wrote no second EBR")
	}
	// Make the second EBR link to itself.
	if _, err := f.WriteAt([]byte{0x05}, (2048+second)*sector+446+16+4); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(link, (2048+second)*sector+446+16+8); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{1, 0, 0, 0}, (2048+second)*sector+446+16+12); err != nil {
		t.Fatal(err)
	}
	rep := identifyFile(t, img)
	if len(rep.Partitions) != 3 || rep.Partitions[1].Index != 5 || rep.Partitions[2].Index != 6 {
		t.Errorf("partitions %+v: want the extended one and logical 5 and 6, once each", rep.Partitions)
	}
	if len(rep.Warnings) != 1 || !strings.Contains(rep.Warnings[0], "loops back") {
		t.Errorf("warnings %q: want one about the loop", rep.Warnings)
	}
}

// gptScript is a GPT layout with fixed GUIDs, names and three partitions.
const gptScript = "label: gpt\nlabel-id: " + diskGUID + "\n" +
	"start=2048, size=32768, type=" + linuxFS + ", uuid=11111111-2222-3333-4444-555555555555, name=\"root fs\"\n" +
	"start=34816, size=8192, type=" + linuxSw + ", uuid=AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE, name=swap\n" +
	"start=43008, size=4096, type=" + efiSys + ", uuid=01234567-89AB-CDEF-0123-456789ABCDEF, name=\"EFI ✓\"\n"

func wantGPTPartitions(t *testing.T, rep *Report) {
	t.Helper()
	want := []Partition{
		{Index: 1, Type: linuxFS, TypeName: "Linux filesystem", UUID: "11111111-2222-3333-4444-555555555555", Name: "root fs",
			Start: 2048 * sector, Size: 32768 * sector, Contents: FormatUnknown},
		{Index: 2, Type: linuxSw, TypeName: "Linux swap", UUID: "AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE", Name: "swap",
			Start: 34816 * sector, Size: 8192 * sector, Contents: FormatUnknown},
		{Index: 3, Type: efiSys, TypeName: "EFI System", UUID: "01234567-89AB-CDEF-0123-456789ABCDEF", Name: "EFI ✓",
			Start: 43008 * sector, Size: 4096 * sector, Contents: FormatUnknown},
	}
	if len(rep.Partitions) != len(want) {
		t.Fatalf("got %d partitions, want %d: %+v", len(rep.Partitions), len(want), rep.Partitions)
	}
	for i := range want {
		if rep.Partitions[i] != want[i] {
			t.Errorf("partition %d:\n got %+v\nwant %+v", i, rep.Partitions[i], want[i])
		}
	}
}

func TestGPTPartitionsAreWhatSfdiskWasTold(t *testing.T) {
	dir := t.TempDir()
	img := sparseFile(t, dir, "gpt.img", 64*mib)
	sfdisk(t, img, gptScript)
	rep := identifyFile(t, img)
	if rep.Format != FormatGPT {
		t.Fatalf("format %q, want gpt", rep.Format)
	}
	pt := rep.PartitionTable
	if pt.DiskGUID != diskGUID || pt.SectorSize != 512 || pt.Backup != "ok" {
		t.Errorf("table %+v, want disk GUID %s, sector size 512, backup ok", pt, diskGUID)
	}
	wantGPTPartitions(t, rep)
	if len(rep.Warnings) != 0 {
		t.Errorf("warnings on a clean GPT: %q", rep.Warnings)
	}
	wantSafe(t, rep, true)
}

// flipByte inverts one byte of a file.
func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xFF
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func TestGPTDamagedPrimaryFallsBackToBackup(t *testing.T) {
	dir := t.TempDir()
	img := sparseFile(t, dir, "gpt.img", 64*mib)
	sfdisk(t, img, gptScript)
	flipByte(t, img, 512+40) // first usable LBA: breaks the header CRC
	rep := identifyFile(t, img)
	if rep.Format != FormatGPT || !strings.HasPrefix(rep.PartitionTable.Backup, "ok (used instead") {
		t.Fatalf("format %q table %+v: want the GPT read from its backup", rep.Format, rep.PartitionTable)
	}
	wantGPTPartitions(t, rep)
	if len(rep.Warnings) != 1 || !strings.Contains(rep.Warnings[0], "header CRC32 mismatch at LBA 1") {
		t.Errorf("warnings %q, want one about the primary header's CRC", rep.Warnings)
	}
}

func TestGPTDamagedBackupIsReported(t *testing.T) {
	dir := t.TempDir()
	img := sparseFile(t, dir, "gpt.img", 64*mib)
	sfdisk(t, img, gptScript)
	flipByte(t, img, 64*mib-512+40) // the backup header's first usable LBA
	rep := identifyFile(t, img)
	wantGPTPartitions(t, rep)
	if b := rep.PartitionTable.Backup; !strings.Contains(b, "header CRC32 mismatch") {
		t.Errorf("backup state %q, want a CRC mismatch", b)
	}
	if len(rep.Warnings) != 1 || !strings.Contains(rep.Warnings[0], "backup") {
		t.Errorf("warnings %q, want one about the backup header", rep.Warnings)
	}
}

func TestGPTPartitionTableEntriesCRCChecked(t *testing.T) {
	dir := t.TempDir()
	img := sparseFile(t, dir, "gpt.img", 64*mib)
	sfdisk(t, img, gptScript)
	// Rename partition 1 in the primary array only: its CRC no longer matches.
	flipByte(t, img, 1024+56)
	rep := identifyFile(t, img)
	wantGPTPartitions(t, rep) // read from the backup, with the original name
	if len(rep.Warnings) != 1 || !strings.Contains(rep.Warnings[0], "partition entries CRC32 mismatch") {
		t.Errorf("warnings %q, want one about the entries CRC", rep.Warnings)
	}
}

// mkfsExt4 makes an ext4 image of the given size with a known label and UUID.
func mkfsExt4(t *testing.T, path string, size int64, label, uuid string) {
	t.Helper()
	testimg.Need(t, "mkfs.ext4")
	sparseFile(t, filepath.Dir(path), filepath.Base(path), size)
	testimg.Run(t, "mkfs.ext4", "-q", "-F", "-L", label, "-U", uuid, path)
}

// copyInto writes the file src into dst at off.
func copyInto(t *testing.T, dst, src string, off int64) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func TestExt4FoundAtTheStartOfAGPTPartition(t *testing.T) {
	dir := t.TempDir()
	img := sparseFile(t, dir, "gpt.img", 64*mib)
	sfdisk(t, img, gptScript)
	fs := filepath.Join(dir, "part1.ext4")
	mkfsExt4(t, fs, 32768*sector, "rootfs", "c0ffee00-1234-4567-89ab-0123456789ab")
	copyInto(t, img, fs, 2048*sector)
	rep := identifyFile(t, img)
	if rep.Format != FormatGPT {
		t.Fatalf("format %q, want gpt", rep.Format)
	}
	if got := rep.Partitions[0].Contents; got != FormatExt4 {
		t.Errorf("partition 1 contents %q, want ext4", got)
	}
	if got := rep.Partitions[1].Contents; got != FormatUnknown {
		t.Errorf("partition 2 contents %q, want unknown", got)
	}
	f := findFS(t, rep, FormatExt4, 2048*sector)
	if f.Partition != 1 || f.Label != "rootfs" || f.UUID != "c0ffee00-1234-4567-89ab-0123456789ab" || f.Size != 32768*sector {
		t.Errorf("ext4 entry %+v: want partition 1, label rootfs, the mkfs UUID, size %d", f, 32768*sector)
	}
	if len(rep.Filesystems) != 1 {
		t.Errorf("filesystems %+v, want only the ext4", rep.Filesystems)
	}
	wantSafe(t, rep, true)
}

// A 1 GiB disk costs a few sectors: the reads do not grow with its size.
func TestBytesReadStaySmallOnALargeDisk(t *testing.T) {
	dir := t.TempDir()
	img := sparseFile(t, dir, "big.img", 1<<30)
	sfdisk(t, img, "label: gpt\nstart=2048, size=65536, type="+linuxFS+"\nstart=67584, type="+linuxFS+"\n")
	fs := filepath.Join(dir, "part1.ext4")
	mkfsExt4(t, fs, 65536*sector, "p1", "c0ffee00-1234-4567-89ab-0123456789ab")
	copyInto(t, img, fs, 2048*sector)
	rep := identifyFile(t, img)
	told := sfdiskDump(t, img)
	if len(rep.Partitions) != 2 || rep.Partitions[0].Contents != FormatExt4 ||
		rep.Partitions[1].Start != 67584*sector || rep.Partitions[1].Size != told[1].Size*sector {
		t.Fatalf("partitions %+v, sfdisk says %+v", rep.Partitions, told)
	}
	if rep.BytesRead >= 256<<10 {
		t.Errorf("read %d bytes of a 1 GiB disk, want < 256 KiB", rep.BytesRead)
	}
	if rep.BytesRead < 3*512 {
		t.Errorf("read only %d bytes: cannot have checked MBR, GPT header and backup", rep.BytesRead)
	}
	t.Logf("read %d bytes", rep.BytesRead)
}

func TestFilesystemsAtOffsetZero(t *testing.T) {
	const uuid = "5e1f0000-aaaa-4bbb-8ccc-0123456789ab"
	cases := []struct {
		name, tool string
		size       int64
		args       []string // the image path is appended
		format     string
		label      string
		uuid       string
		fsSize     int64 // 0: not checked
	}{
		{"ext2", "mkfs.ext2", 8 * mib, []string{"-q", "-F", "-L", "two", "-U", uuid}, FormatExt2, "two", uuid, 8 * mib},
		{"ext3", "mkfs.ext3", 8 * mib, []string{"-q", "-F", "-L", "three", "-U", uuid}, FormatExt3, "three", uuid, 8 * mib},
		{"ext4", "mkfs.ext4", 16 * mib, []string{"-q", "-F", "-L", "four", "-U", uuid}, FormatExt4, "four", uuid, 16 * mib},
		{"xfs", "mkfs.xfs", 300 * mib, []string{"-q", "-f", "-L", "xlabel", "-m", "uuid=" + uuid}, FormatXFS, "xlabel", uuid, 300 * mib},
		{"btrfs", "mkfs.btrfs", 128 * mib, []string{"-q", "-f", "-L", "blabel", "-U", uuid}, FormatBtrfs, "blabel", uuid, 128 * mib},
		{"fat12", "mkfs.vfat", 2 * mib, []string{"-F", "12", "-n", "F12", "-i", "1234ABCD"}, FormatFAT12, "F12", "1234-ABCD", 2 * mib},
		{"fat16", "mkfs.vfat", 32 * mib, []string{"-F", "16", "-n", "F16", "-i", "0000BEEF"}, FormatFAT16, "F16", "0000-BEEF", 32 * mib},
		{"fat32", "mkfs.vfat", 64 * mib, []string{"-F", "32", "-s", "1", "-n", "F32", "-i", "DEADBEEF"}, FormatFAT32, "F32", "DEAD-BEEF", 64 * mib},
		// mkntfs keeps the last sector for the backup boot sector.
		{"ntfs", "mkntfs", 16 * mib, []string{"-q", "-F", "-Q", "-L", "nlabel"}, FormatNTFS, "", "", 16*mib - 512},
		{"swap", "mkswap", 8 * mib, []string{"-L", "slabel", "-U", uuid}, FormatSwap, "slabel", uuid, 8 * mib},
	}
	dir := t.TempDir()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			testimg.Need(t, c.tool)
			img := sparseFile(t, dir, c.name+".img", c.size)
			if _, err := testimg.RunErr(c.tool, append(c.args, img)...); err != nil {
				t.Fatalf("%s: %v", c.tool, err)
			}
			rep := identifyFile(t, img)
			if rep.Format != c.format {
				t.Fatalf("format %q, want %q", rep.Format, c.format)
			}
			if len(rep.Filesystems) != 1 {
				t.Fatalf("filesystems %+v, want exactly one", rep.Filesystems)
			}
			f := rep.Filesystems[0]
			if f.Offset != 0 || f.Label != c.label || (c.uuid != "" && f.UUID != c.uuid) || (c.fsSize != 0 && f.Size != c.fsSize) {
				t.Errorf("got %+v, want label %q uuid %q size %d at offset 0", f, c.label, c.uuid, c.fsSize)
			}
			if rep.PartitionTable != nil || len(rep.Partitions) != 0 {
				t.Errorf("a filesystem's boot sector taken for a partition table: %+v", rep.PartitionTable)
			}
			wantSafe(t, rep, true)
		})
	}
}

func TestNestedLUKS(t *testing.T) {
	testimg.Need(t, "cryptsetup")
	dir := t.TempDir()
	for _, ver := range []string{"luks1", "luks2"} {
		t.Run(ver, func(t *testing.T) {
			img := sparseFile(t, dir, ver+".img", 8*mib)
			pass := testimg.WriteFile(t, dir, "pass-"+ver, []byte("pw"))
			const uuid = "0d0e0a0d-beef-4000-8000-00000000c0de"
			args := []string{"luksFormat", "-q", "--type", ver, "--key-file", pass, "--uuid", uuid,
				"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", img}
			if ver == "luks2" {
				args = append(args[:len(args)-1], "--label", "inner", img)
			}
			testimg.Run(t, "cryptsetup", args...)
			rep := identifyFile(t, img)
			f := findFS(t, rep, FormatLUKS, 0)
			wantDetail := map[string]string{"luks1": "LUKS1", "luks2": "LUKS2"}[ver]
			if rep.Format != FormatLUKS || f.UUID != uuid || f.Detail != wantDetail || f.Kind != KindVolume {
				t.Errorf("format %q entry %+v, want %s with UUID %s", rep.Format, f, wantDetail, uuid)
			}
			if ver == "luks2" && f.Label != "inner" {
				t.Errorf("label %q, want inner", f.Label)
			}
			wantSafe(t, rep, true)
		})
	}
}

func TestLVM2PhysicalVolume(t *testing.T) {
	testimg.Need(t, "pvcreate")
	dir := t.TempDir()
	img := sparseFile(t, dir, "pv.img", 16*mib)
	const pvUUID = "AbCdEf-1234-5678-9aBc-DeFg-HiJk-LmNoPq"
	// pvcreate refuses regular files; a loop device needs no device-mapper.
	if _, err := testimg.RunErr("pvcreate", "-y", "--uuid", pvUUID, "--norestorefile", img); err == nil {
		t.Log("pvcreate accepted the file directly")
	} else {
		loop := loopDevice(t, img, 512)
		testimg.Run(t, "pvcreate", "-y", "--config", "devices { use_devicesfile=0 }", "--uuid", pvUUID, "--norestorefile", loop)
		testimg.Run(t, "sync")
	}
	rep := identifyFile(t, img)
	f := findFS(t, rep, FormatLVM2, 0)
	if rep.Format != FormatLVM2 || f.UUID != pvUUID || f.Size != 16*mib {
		t.Errorf("format %q entry %+v, want lvm2 with UUID %s and size %d", rep.Format, f, pvUUID, 16*mib)
	}
	wantSafe(t, rep, true)
}

// loopDevice attaches a file to a loop device with the given logical sector
// size, or skips the test (only it) when this machine cannot.
func loopDevice(t *testing.T, path string, sectorSize int) string {
	t.Helper()
	testimg.Need(t, "losetup")
	out, err := testimg.RunErr("losetup", "-f", "--show", "-b", fmt.Sprint(sectorSize), path)
	if err != nil {
		if testimg.InCI() {
			t.Fatalf("no loop device (CI must test every vector): %v", err)
		}
		t.Skipf("SKIP this vector only: no loop device: %v", err)
	}
	loop := strings.TrimSpace(string(out))
	t.Cleanup(func() { testimg.RunErr("losetup", "-d", loop) })
	return loop
}

// sfdisk on a loop device with 4 KiB logical sectors writes a GPT in 4 KiB
// LBAs: the header at 4096, partition offsets in 4 KiB units.
func TestGPTWith4KiBSectors(t *testing.T) {
	testimg.Need(t, "sfdisk")
	dir := t.TempDir()
	img := sparseFile(t, dir, "gpt4k.img", 64*mib)
	loop := loopDevice(t, img, 4096)
	testimg.Run(t, "sh", "-c", "sfdisk --no-reread --no-tell-kernel -q \"$1\" <<'EOF'\nlabel: gpt\n"+
		"start=256, size=4096, type="+linuxFS+", name=\"four\"\nstart=4352, size=1024, type="+linuxSw+"\nEOF\n", "sh", loop)
	testimg.Run(t, "sync")
	rep := identifyFile(t, img)
	if rep.Format != FormatGPT || rep.PartitionTable.SectorSize != 4096 || rep.PartitionTable.Backup != "ok" {
		t.Fatalf("format %q table %+v: want a GPT with 4096-byte sectors and a good backup", rep.Format, rep.PartitionTable)
	}
	if len(rep.Partitions) != 2 || rep.Partitions[0].Start != 256*4096 || rep.Partitions[0].Size != 4096*4096 ||
		rep.Partitions[0].Name != "four" || rep.Partitions[1].Start != 4352*4096 || rep.Partitions[1].Size != 1024*4096 {
		t.Errorf("partitions %+v: want 16 MiB at 1 MiB and 4 MiB at 17 MiB", rep.Partitions)
	}
}

func TestISO9660(t *testing.T) {
	testimg.Need(t, "genisoimage")
	dir := t.TempDir()
	content := filepath.Join(dir, "content")
	if err := os.Mkdir(content, 0o700); err != nil {
		t.Fatal(err)
	}
	testimg.WriteFile(t, content, "hello.txt", []byte("hello"))
	iso := filepath.Join(dir, "cd.iso")
	testimg.Run(t, "genisoimage", "-quiet", "-V", "CIDATA", "-o", iso, content)
	rep := identifyFile(t, iso)
	st, _ := os.Stat(iso)
	f := findFS(t, rep, FormatISO9660, 0)
	if rep.Format != FormatISO9660 || f.Label != "CIDATA" || f.Size != st.Size() {
		t.Errorf("format %q entry %+v, want iso9660 labelled CIDATA of %d bytes", rep.Format, f, st.Size())
	}
	wantSafe(t, rep, true)
}

func TestDiskImageFormatsAreUnsafe(t *testing.T) {
	cases := []struct {
		name, qemuFormat string
		opts             string
		format, detail   string
		size             int64 // 0: not checked
	}{
		{"qcow2", "qcow2", "", FormatQcow2, "version 3", 64 * mib},
		{"qcow2-v2", "qcow2", "compat=0.10", FormatQcow2, "version 2", 64 * mib},
		{"qed", "qed", "", FormatQED, "", 64 * mib},
		{"vmdk-sparse", "vmdk", "", FormatVMDK, "sparse extent", 64 * mib},
		{"vmdk-descriptor", "vmdk", "subformat=twoGbMaxExtentSparse", FormatVMDK, `createType "twoGbMaxExtentSparse"`, 0},
		{"vhd-dynamic", "vpc", "", FormatVHD, "dynamic", 0},
		{"vhd-fixed", "vpc", "subformat=fixed", FormatVHD, "footer at the end", 0},
		{"vhdx", "vhdx", "", FormatVHDX, "", 0},
		{"vdi", "vdi", "", FormatVDI, "", 0},
	}
	dir := t.TempDir()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img := filepath.Join(dir, c.name+".img")
			args := []string{"create", "-q", "-f", c.qemuFormat}
			if c.opts != "" {
				args = append(args, "-o", c.opts)
			}
			testimg.QemuImg(t, append(args, img, "64M")...)
			rep := identifyFile(t, img)
			if rep.Format != c.format {
				t.Fatalf("format %q, want %q", rep.Format, c.format)
			}
			f := rep.Filesystems[0]
			if f.Kind != KindDiskImage || !strings.Contains(f.Detail, c.detail) || (c.size != 0 && f.Size != c.size) {
				t.Errorf("entry %+v, want a disk image with detail %q and size %d", f, c.detail, c.size)
			}
			wantSafe(t, rep, false)
			if !strings.Contains(rep.Reasons[0], c.format+" inside the image") || !strings.Contains(rep.Reasons[0], "QEMU would parse it as a disk image") {
				t.Errorf("reason %q does not name %s as a disk image", rep.Reasons[0], c.format)
			}
			if rep.BytesRead > 64<<10 {
				t.Errorf("read %d bytes", rep.BytesRead)
			}
		})
	}
}

func TestQcow2BackingFileNamedInReason(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "overlay.qcow2")
	testimg.QemuImg(t, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/passwd", "-u", img, "1M")
	rep := identifyFile(t, img)
	wantSafe(t, rep, false)
	if !strings.Contains(rep.Reasons[0], `backing file "/etc/passwd"`) {
		t.Errorf("reason %q does not name the backing file", rep.Reasons[0])
	}
}

func TestQcow2ExternalDataFileNamedInReason(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "meta.qcow2")
	data := filepath.Join(dir, "host-disk.raw")
	testimg.QemuImg(t, "create", "-q", "-f", "qcow2", "-o", "data_file="+data, img, "1M")
	rep := identifyFile(t, img)
	wantSafe(t, rep, false)
	if !strings.Contains(rep.Reasons[0], fmt.Sprintf("external data file %q", data)) {
		t.Errorf("reason %q does not name the data file", rep.Reasons[0])
	}
}

// A qcow2 written onto a partition is found there and judged like one at offset 0.
func TestQcow2AtAPartitionStartIsUnsafe(t *testing.T) {
	dir := t.TempDir()
	img := sparseFile(t, dir, "gpt.img", 64*mib)
	sfdisk(t, img, gptScript)
	q := filepath.Join(dir, "inner.qcow2")
	testimg.QemuImg(t, "create", "-q", "-f", "qcow2", q, "1G")
	copyInto(t, img, q, 34816*sector)
	rep := identifyFile(t, img)
	if rep.Format != FormatGPT || rep.Partitions[1].Contents != FormatQcow2 {
		t.Fatalf("format %q, partition 2 contents %q: want gpt with qcow2 in partition 2", rep.Format, rep.Partitions[1].Contents)
	}
	wantSafe(t, rep, false)
	if !strings.Contains(rep.Reasons[0], "qcow2 inside the image at the start of partition 2 (offset 17825792): QEMU would parse it as a disk image (version 3)") {
		t.Errorf("reason %q", rep.Reasons[0])
	}
}

func TestRandomBytesAreUnknownAndSafe(t *testing.T) {
	dir := t.TempDir()
	img := testimg.WriteFile(t, dir, "random.img", testimg.RandomBytes(4<<20, 42))
	rep := identifyFile(t, img)
	if rep.Format != FormatUnknown || rep.PartitionTable != nil || len(rep.Filesystems) != 0 {
		t.Fatalf("random bytes identified as %q %+v %+v", rep.Format, rep.PartitionTable, rep.Filesystems)
	}
	wantSafe(t, rep, true)
}

type failingReader struct{}

var errDisk = errors.New("disk on fire")

func (failingReader) ReadAt([]byte, int64) (int, error) { return 0, errDisk }

// An unreadable device is an error, never an "unknown, safe" verdict.
func TestReadErrorIsNotAVerdict(t *testing.T) {
	rep, err := Identify(failingReader{}, 1<<20)
	if !errors.Is(err, errDisk) || rep != nil {
		t.Fatalf("Identify = %+v, %v; want the read error", rep, err)
	}
}

func TestPolicy(t *testing.T) {
	rep := &Report{Format: FormatGPT, PartitionTable: &PartitionTable{Scheme: FormatGPT},
		Partitions: []Partition{{Index: 1, Contents: FormatExt4}, {Index: 2, Contents: FormatUnknown}},
		Filesystems: []Filesystem{{Format: FormatExt4, Offset: 1 << 20, Partition: 1},
			{Format: FormatVHD, Kind: KindDiskImage, Offset: 1 << 30}}}
	cases := []struct {
		name    string
		policy  string
		reasons []string
	}{
		{"default", `{}`, []string{"vhd inside the image at offset 1073741824: QEMU would parse it as a disk image"}},
		{"allow vhd", `{"allow": ["gpt", "ext4", "unknown", "VHD"]}`, nil},
		{"allow list", `{"allow": ["gpt", "vhd"]}`, []string{
			"unknown at partition 2 is not in the policy's allow list",
			"ext4 at the start of partition 1 (offset 1048576) is not in the policy's allow list"}},
		{"forbid wins", `{"allow": ["gpt", "ext4", "unknown", "vhd"], "forbid": ["ext4"]}`, []string{
			"ext4 at the start of partition 1 (offset 1048576) is forbidden by the policy"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := ParsePolicy([]byte(c.policy))
			if err != nil {
				t.Fatal(err)
			}
			p.Apply(rep)
			if rep.Safe != (len(c.reasons) == 0) || strings.Join(rep.Reasons, "|") != strings.Join(c.reasons, "|") {
				t.Errorf("safe %v reasons %q, want %q", rep.Safe, rep.Reasons, c.reasons)
			}
		})
	}
	for _, bad := range []string{`{"allow": ["ext5"]}`, `{"deny": ["qcow2"]}`, `{"allow": "ext4"}`, `{} {}`, `[]`} {
		if _, err := ParsePolicy([]byte(bad)); err == nil {
			t.Errorf("policy %s accepted", bad)
		}
	}
}
