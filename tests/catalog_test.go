package tests

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/imagedata"
	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/images"

	"github.com/imgfs/imgfs/tests/testimg"
)

// catalogJSON is what the tests read of MOUNTPOINT/catalog.json.
type catalogJSON struct {
	Listings     int64            `json:"listings"`
	ListCalls    int64            `json:"list_calls"`
	Images       int              `json:"images"`
	OpenNow      int              `json:"open_now"`
	MaxOpenSeen  int              `json:"max_open_seen"`
	Opens        int64            `json:"opens"`
	OpenErrors   int64            `json:"open_errors"`
	Closes       int64            `json:"closes"`
	BytesFetched int64            `json:"bytes_fetched"`
	Fetched      map[string]int64 `json:"fetched"`
	Process      struct {
		Goroutines int `json:"goroutines"`
		FDs        int `json:"fds"`
	} `json:"process"`
}

func readCatalog(t *testing.T, dir string) catalogJSON {
	t.Helper()
	b := readFile(t, filepath.Join(dir, "catalog.json"))
	var c catalogJSON
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatalf("catalog.json: %v\n%s", err, b)
	}
	return c
}

// uploadNamed uploads the file at p as a new Glance image with a name,
// tags and properties, deleted when the test ends; it returns the id.
func (tc *testCloud) uploadNamed(t *testing.T, name, diskFormat string, tags []string, props map[string]string, p string) string {
	t.Helper()
	ctx := context.Background()
	img, err := images.Create(ctx, tc.images, images.CreateOpts{Name: name, DiskFormat: diskFormat, ContainerFormat: "bare",
		Tags: tags, Properties: props}).Extract()
	if err != nil {
		t.Fatalf("glance create %q: %v", name, err)
	}
	t.Cleanup(func() { images.Delete(context.Background(), tc.images, img.ID) })
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := imagedata.Upload(ctx, tc.images, img.ID, f).ExtractErr(); err != nil {
		t.Fatalf("glance upload of %q (%s): %v", name, filepath.Base(p), err)
	}
	for i := 0; ; i++ {
		got, err := images.Get(ctx, tc.images, img.ID).Extract()
		if err != nil {
			t.Fatal(err)
		}
		if got.Status == images.ImageStatusActive {
			return img.ID
		}
		if i > 100 {
			t.Fatalf("image %s still %s after upload", img.ID, got.Status)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// catalogImage is one image of the test catalog.
type catalogImage struct {
	id, name, kind string
	plain          []byte // nil: it cannot be opened
	stored         int64
	errWant        string // what its error.txt must say
}

// TestCatalogMount mounts a Glance catalog of 22 images — raw, qcow2, raw
// LUKS and qcow2+LUKS, keys in Barbican passphrase and symmetric secrets,
// one whose secret belongs to another project, one qcow2 with a backing
// file — through the real loopback Glance and real FUSE, and checks: ls
// costs list calls only, by-name tells duplicates apart and escapes names,
// `file -s MOUNT/*/disk` fetches < 2 MiB per image, the disks hold the
// plaintext, the two bad images show error.txt and no disk, never more
// than --max-open images are open, closing images gives back their
// goroutines and file descriptors, unmount closes every image, and
// --filter selects by tag and by property.
func TestCatalogMount(t *testing.T) {
	testimg.Need(t, "file", "ls", "qemu-img", "fusermount3")
	tc := needCloud(t)
	admin := needCloud(t, "loopback-admin")
	start := time.Now()
	dir := t.TempDir()
	tag := fmt.Sprintf("imgfs-catalog-%d", time.Now().UnixNano())
	subTag := tag + "-sub"

	// The stored files, each uploaded several times. qcow2 disks are 32 MiB
	// and sparse: data at 0 (256 KiB) and at 16 MiB (3 MiB), beyond what
	// file(1) reads; raw LUKS images carry a 2 MiB header.
	symKey := testimg.RandomBytes(32, 300)
	symPass := hex.EncodeToString(symKey)
	rawPlain := testimg.RandomBytes(1<<20, 301)
	rawPath := testimg.WriteFile(t, dir, "raw.img", rawPlain)
	luksPlain := testimg.RandomBytes(1<<20, 302)
	luksPass := testimg.QemuLUKS1(t, dir, "luks-pass", luksPlain, testPassphrase, testimg.QemuLUKSOpts{})
	luksSym := testimg.QemuLUKS1(t, dir, "luks-sym", luksPlain, symPass, testimg.QemuLUKSOpts{})
	qPlain := make([]byte, 32<<20) // zeros stay unallocated in the qcow2
	copy(qPlain, testimg.RandomBytes(256<<10, 303))
	copy(qPlain[16<<20:], testimg.RandomBytes(3<<20, 304))
	qPlainPath := testimg.ConvertQcow2(t, dir, "plain.qcow2", qPlain, "", "", false)
	qPass := testimg.ConvertQcow2(t, dir, "qluks-pass.qcow2", qPlain, "", testPassphrase, false)
	qSym := testimg.ConvertQcow2(t, dir, "qluks-sym.qcow2", qPlain, "", symPass, false)
	base := filepath.Join(dir, "base.qcow2")
	testimg.QemuImg(t, "create", "-q", "-f", "qcow2", base, "4M")
	overlay := filepath.Join(dir, "overlay.qcow2")
	testimg.QemuImg(t, "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", overlay, "4M")
	size := func(p string) int64 {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return st.Size()
	}
	foreign := admin.createSecret(t, "passphrase", []byte(testPassphrase))
	t.Logf("made the image files in %s", time.Since(start).Round(time.Millisecond))

	var imgs []*catalogImage
	add := func(name, kind string, p string, plain []byte, errWant string) {
		t.Helper()
		props := map[string]string{"imgfs_kind": kind}
		format := "raw"
		switch kind {
		case "qcow2":
			format = "qcow2"
		case "luks-pass", "luks-sym", "luks-foreign":
			format = "luks"
			if len(imgs)%2 == 0 {
				format = "raw" // as Cinder uploads them
			}
		case "qcow2-luks-pass", "qcow2-luks-sym", "qcow2-backing":
			format = "qcow2"
		}
		switch kind {
		case "luks-pass", "qcow2-luks-pass":
			props["os_encrypt_format"] = "luks"
			props["os_encrypt_key_id"] = tc.createSecret(t, "passphrase", []byte(testPassphrase))
		case "luks-sym", "qcow2-luks-sym":
			props["os_encrypt_format"] = "LUKSv1"
			props["os_encrypt_key_id"] = tc.createSecret(t, "symmetric", symKey)
		case "luks-foreign":
			props["os_encrypt_format"] = "luks"
			props["os_encrypt_key_id"] = foreign
		}
		tags := []string{tag}
		if len(imgs)%7 == 3 {
			tags = append(tags, subTag)
		}
		id := tc.uploadNamed(t, name, format, tags, props, p)
		imgs = append(imgs, &catalogImage{id: id, name: name, kind: kind, plain: plain, stored: size(p), errWant: errWant})
	}
	for i := range 4 {
		add(fmt.Sprintf("cat-raw-%d", i), "raw", rawPath, rawPlain, "")
		add(fmt.Sprintf("cat-qcow2-%d", i), "qcow2", qPlainPath, qPlain, "")
		add(fmt.Sprintf("cat-luks-pass-%d", i), "luks-pass", luksPass, luksPlain, "")
	}
	for i := range 3 {
		add(fmt.Sprintf("cat-luks-sym-%d", i), "luks-sym", luksSym, luksPlain, "")
		add(fmt.Sprintf("cat-qcow2-luks-pass-%d", i), "qcow2-luks-pass", qPass, qPlain, "")
	}
	add("dup-name", "qcow2-luks-sym", qSym, qPlain, "")
	add("dup-name", "qcow2-luks-sym", qSym, qPlain, "")
	add("evil/../name", "raw", rawPath, rawPlain, "")
	add(".hidden", "qcow2", qPlainPath, qPlain, "")
	add("cat-foreign-key", "luks-foreign", luksPass, nil, "403")
	add("cat-backing-file", "qcow2-backing", overlay, nil, "backing file")
	if len(imgs) < 20 {
		t.Fatalf("only %d images", len(imgs))
	}
	t.Logf("uploaded %d images in %s", len(imgs), time.Since(start).Round(time.Millisecond))

	// mount A: room for every image, so that each is opened once
	mnt, pid := mountDaemon(t, "--catalog", "--filter", "tag="+tag, "--max-open", "32", "--list-page-size", "5", "--ttl", "1h")

	// ls of the root and of by-name: list calls only (22 images, 5 a page)
	testimg.Run(t, "ls", "-l", mnt)
	testimg.Run(t, "ls", "-l", filepath.Join(mnt, "by-name"))
	st := readCatalog(t, mnt)
	if st.Opens != 0 || st.OpenErrors != 0 || st.Listings != 1 || st.ListCalls != 5 || st.Images != len(imgs) {
		t.Fatalf("after ls: %+v; want 1 listing of %d images in 5 list calls, nothing opened", st, len(imgs))
	}
	ents, err := os.ReadDir(mnt)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != len(imgs)+2 {
		t.Fatalf("%d root entries, want %d images + by-name + catalog.json", len(ents), len(imgs))
	}
	links, err := os.ReadDir(filepath.Join(mnt, "by-name"))
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]string{}
	for _, l := range links {
		tgt, err := os.Readlink(filepath.Join(mnt, "by-name", l.Name()))
		if err != nil {
			t.Fatal(err)
		}
		names[l.Name()] = strings.TrimPrefix(tgt, "../")
	}
	// the older keeps the name (Glance's created_at has whole seconds; a
	// tie goes to the smaller id)
	dup1, dup2 := imgs[len(imgs)-6], imgs[len(imgs)-5]
	if names["dup-name"] == dup2.id {
		dup1, dup2 = dup2, dup1
	}
	for name, id := range map[string]string{"dup-name": dup1.id, "dup-name~" + dup2.id[:8]: dup2.id,
		"evil%2F..%2Fname": imgs[len(imgs)-4].id, "%2Ehidden": imgs[len(imgs)-3].id, "cat-raw-0": imgs[0].id} {
		if names[name] != id {
			t.Errorf("by-name/%s -> %q, want %s", name, names[name], id)
		}
	}
	if len(names) != len(imgs) {
		t.Errorf("by-name has %d links for %d images: %v", len(names), len(imgs), names)
	}
	if st := readCatalog(t, mnt); st.Opens != 0 || st.ListCalls != 5 {
		t.Fatalf("by-name links opened images or listed again: %+v", st)
	}

	// file -s on every disk: each image opened, < 2 MiB fetched each
	fileStart := time.Now()
	out := testimg.Run(t, "sh", "-c", `file -s "$1"/*/disk`, "sh", mnt)
	took := time.Since(fileStart)
	if n := bytes.Count(out, []byte("\n")); n != len(imgs)-2 {
		t.Fatalf("file -s printed %d lines for %d openable images:\n%s", n, len(imgs)-2, out)
	}
	st = readCatalog(t, mnt)
	t.Logf("file -s MOUNT/*/disk over %d images in %s: %+v", len(imgs)-2, took.Round(time.Millisecond), st)
	if st.Opens != int64(len(imgs)-2) || st.Closes != 0 || st.OpenErrors != 2 {
		t.Fatalf("counters after file -s: %+v; want %d opens, none closed, 2 open errors", st, len(imgs)-2)
	}
	var large int
	for _, im := range imgs {
		if im.plain == nil {
			continue
		}
		got := st.Fetched[im.id]
		if got == 0 || got >= 2<<20 {
			t.Errorf("%s (%s, %d bytes stored): file -s fetched %d bytes, want 1 to 2 MiB", im.name, im.kind, im.stored, got)
		}
		if im.stored > 2<<20 {
			large++
		}
	}
	if large < 15 {
		t.Fatalf("only %d images are stored in more than 2 MiB: the fetch bound proves nothing", large)
	}
	if st.ListCalls != 5 {
		t.Fatalf("opening images listed the catalog again: %+v", st)
	}

	// the disks hold the plaintext: one of each kind, through by-name too
	seen := map[string]bool{}
	for _, im := range imgs {
		if im.plain == nil || seen[im.kind] {
			continue
		}
		seen[im.kind] = true
		got := readFile(t, filepath.Join(mnt, im.id, "disk"))
		if !bytes.Equal(got, im.plain) {
			t.Fatalf("%s (%s): disk differs from the plaintext (%d bytes, want %d)", im.name, im.kind, len(got), len(im.plain))
		}
	}
	if got := readFile(t, filepath.Join(mnt, "by-name", "dup-name~"+dup2.id[:8], "disk")); !bytes.Equal(got, qPlain) {
		t.Fatal("by-name/dup-name~<id>/disk differs from the plaintext")
	}
	files, err := os.ReadDir(filepath.Join(mnt, imgs[2].id))
	if err != nil {
		t.Fatal(err)
	}
	var fnames []string
	for _, f := range files {
		fnames = append(fnames, f.Name())
	}
	if got := strings.Join(fnames, " "); !strings.Contains(got, "disk disk.luks encrypted image.json stats") {
		t.Errorf("raw LUKS image directory: %s", got)
	}

	// the two images that cannot be opened: error.txt and image.json only
	for _, im := range imgs {
		if im.plain != nil {
			continue
		}
		d := filepath.Join(mnt, im.id)
		ents, err := os.ReadDir(d)
		if err != nil {
			t.Fatal(err)
		}
		if len(ents) != 2 || ents[0].Name() != "error.txt" || ents[1].Name() != "image.json" {
			t.Fatalf("%s: directory %v, want error.txt and image.json", im.name, ents)
		}
		msg := string(readFile(t, filepath.Join(d, "error.txt")))
		if !strings.Contains(msg, im.errWant) || !strings.Contains(msg, im.id) {
			t.Errorf("%s: error.txt %q does not say %q", im.name, msg, im.errWant)
		}
		if strings.Contains(msg, testPassphrase) {
			t.Fatal("error.txt holds the passphrase")
		}
		var meta map[string]any
		if err := json.Unmarshal(readFile(t, filepath.Join(d, "image.json")), &meta); err != nil || meta["id"] != im.id {
			t.Errorf("%s: image.json: %v %v", im.name, meta, err)
		}
		t.Logf("%s: error.txt: %s", im.name, strings.TrimSpace(msg))
	}

	unmountAndCheck(t, mnt, pid)

	// mount B: at most 4 open while 10 images are read in turn, idle
	// images closed after 2 s; after two more rounds over the 10 images,
	// the daemon has the file descriptors and goroutines it had after the
	// first, and unmount closes every image
	logPath := filepath.Join(t.TempDir(), "catalog.log")
	mnt, pid = mountDaemon(t, "--catalog", "--filter", "tag="+tag, "--max-open", "4", "--idle-timeout", "2s", "--log", logPath)
	openable := imgs[:len(imgs)-2]
	touch := func(round int) {
		t.Helper()
		for _, im := range openable[:10] {
			f, err := os.Open(filepath.Join(mnt, im.id, "disk"))
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 64<<10)
			if _, err := f.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, im.plain[:64<<10]) {
				t.Fatalf("round %d, %s: %v or bytes differ", round, im.name, err)
			}
			f.Close()
			if st := readCatalog(t, mnt); st.OpenNow > 4 || st.MaxOpenSeen > 4 {
				t.Fatalf("round %d: more than --max-open 4 images open: %+v", round, st)
			}
		}
	}
	touch(0)
	idle := func() catalogJSON {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			st := readCatalog(t, mnt)
			if st.OpenNow == 0 || time.Now().After(deadline) {
				return st
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	before := idle()
	if before.OpenNow != 0 {
		t.Fatalf("images still open 30 s after the last read with --idle-timeout 2s: %+v", before)
	}
	touch(1)
	touch(2)
	// go-fuse starts and ends request readers on demand, so the count moves
	// by one or two at rest; one goroutine left per image would be 20 more.
	const goroutineSlack = 3
	var after catalogJSON
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(300 * time.Millisecond) {
		after = idle()
		if after.OpenNow == 0 && after.Process.FDs <= before.Process.FDs && after.Process.Goroutines <= before.Process.Goroutines+goroutineSlack ||
			time.Now().After(deadline) {
			break
		}
	}
	t.Logf("daemon before 20 more opens: %d fds, %d goroutines; after: %d fds, %d goroutines (%d opens, %d closes, at most %d open)",
		before.Process.FDs, before.Process.Goroutines, after.Process.FDs, after.Process.Goroutines, after.Opens, after.Closes, after.MaxOpenSeen)
	if after.Process.FDs > before.Process.FDs || after.Process.Goroutines > before.Process.Goroutines+goroutineSlack {
		t.Fatalf("opening and closing 20 images leaked: fds %d -> %d, goroutines %d -> %d",
			before.Process.FDs, after.Process.FDs, before.Process.Goroutines, after.Process.Goroutines)
	}
	if after.MaxOpenSeen > 4 || after.Opens < before.Opens+20 || before.Opens < 10 {
		t.Fatalf("counters: %+v", after)
	}

	unmountAndCheck(t, mnt, pid)
	log := string(readFile(t, logPath))
	m := regexp.MustCompile(`catalog unmounted: (\d+) list calls, (\d+) opens, (\d+) closes, (\d+) open`).FindStringSubmatch(log)
	if m == nil || m[2] != m[3] || m[4] != "0" {
		t.Fatalf("unmount did not close every image: log %q", log)
	}
	if strings.Contains(log, testPassphrase) || strings.Contains(log, symPass) {
		t.Fatal("the log holds a key")
	}

	// --filter: a second tag, and a property
	byTag := func(args ...string) []string {
		t.Helper()
		mnt, pid := mountDaemon(t, append([]string{"--catalog"}, args...)...)
		ents, err := os.ReadDir(mnt)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, e := range ents {
			if e.IsDir() && e.Name() != "by-name" {
				ids = append(ids, e.Name())
			}
		}
		unmountAndCheck(t, mnt, pid)
		return ids
	}
	want := func(pred func(i int, im *catalogImage) bool) []string {
		var ids []string
		for i, im := range imgs {
			if pred(i, im) {
				ids = append(ids, im.id)
			}
		}
		sort.Strings(ids)
		return ids
	}
	if got, w := byTag("--filter", "tag="+subTag), want(func(i int, _ *catalogImage) bool { return i%7 == 3 }); strings.Join(got, " ") != strings.Join(w, " ") || len(w) < 3 {
		t.Errorf("--filter tag=%s: %v, want %v", subTag, got, w)
	}
	if got, w := byTag("--filter", "tag="+tag, "--filter", "imgfs_kind=qcow2-luks-pass"), want(func(_ int, im *catalogImage) bool { return im.kind == "qcow2-luks-pass" }); strings.Join(got, " ") != strings.Join(w, " ") || len(w) != 3 {
		t.Errorf("--filter imgfs_kind=qcow2-luks-pass: %v, want %v", got, w)
	}
	t.Logf("FIGURE catalog: %d images, test took %s", len(imgs), time.Since(start).Round(time.Millisecond))
}

// mount --catalog refuses one image's key flags and the catalog flags
// without --catalog.
func TestCatalogMountRefusals(t *testing.T) {
	dir := t.TempDir()
	pf := passFile(t, dir, "x")
	mustFail(t, runImgfs(t, nil, "mount", "--catalog", "--passphrase-file", pf, dir), "--passphrase-file")
	mustFail(t, runImgfs(t, nil, "mount", "--catalog", "--filter", "limit=3", dir), "limit")
	mustFail(t, runImgfs(t, nil, "mount", "--catalog", "--filter", "novalue", dir), "KEY=VALUE")
	mustFail(t, runImgfs(t, nil, "mount", "--catalog", "--max-open", "0", dir), "--max-open")
	mustFail(t, runImgfs(t, nil, "mount", "--max-open", "3", "x.img", dir), "--max-open needs --catalog")
	mustFail(t, runImgfs(t, nil, "mount", "--catalog", "a", dir), "MOUNTPOINT only")
}

// A filter Glance refuses fails the mount itself, with Glance's status.
func TestCatalogMountBadFilterFailsEarly(t *testing.T) {
	testimg.Need(t, "fusermount3")
	needCloud(t)
	dir := t.TempDir()
	r := runImgfs(t, nil, "mount", "-d", "--catalog", "--filter", "visibility=nonsense", dir)
	mustFail(t, r, "glance image list", "400")
	if got := mountType(dir); got != "" {
		t.Fatalf("a %s mount is left at %s", got, dir)
	}
}
