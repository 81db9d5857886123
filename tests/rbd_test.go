package tests

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/images"
	"golang.org/x/sys/unix"

	"github.com/imgfs/imgfs/tests/testimg"
)

// needCeph is needCloud for tests of Glance's rbd store: tests/with-cloud.sh
// started a Ceph cluster and gave Glance the store "ceph". Without it the
// test fails in CI and skips loudly elsewhere.
func needCeph(t *testing.T) *testCloud {
	t.Helper()
	tc := needCloud(t)
	if os.Getenv("IMGFS_TEST_CEPH") != "1" || os.Getenv("CEPH_CONF") == "" {
		if testimg.InCI() {
			t.Fatal("no test Ceph (IMGFS_TEST_CEPH is not 1): tests/with-cloud.sh starts one unless IMGFS_TEST_NO_CEPH=1")
		}
		t.Skip("SKIP: no local Ceph cluster: run the tests through tests/with-cloud.sh (or `make test`) to test RBD")
	}
	return tc
}

// uploadRBD creates an image and uploads the file at p to Glance's rbd
// store ("ceph"); it returns the image id once the image is active.
func (tc *testCloud) uploadRBD(t *testing.T, diskFormat string, props map[string]string, p string) string {
	t.Helper()
	id := tc.createImage(t, diskFormat, props)
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, tc.fileURL(id), f)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = st.Size()
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("X-Image-Meta-Store", "ceph")
	req.Header.Set("X-Auth-Token", tc.cloud.Provider.Token())
	resp, err := tc.cloud.HTTP.Do(req)
	if err != nil {
		t.Fatalf("glance upload to the rbd store: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("glance upload to the rbd store: HTTP %d", resp.StatusCode)
	}
	for i := 0; ; i++ {
		img, err := images.Get(ctx, tc.images, id).Extract()
		if err != nil {
			t.Fatal(err)
		}
		if img.Status == images.ImageStatusActive {
			if u, _ := img.Properties["direct_url"].(string); !strings.HasPrefix(u, "rbd://"+os.Getenv("CEPHL_FSID")+"/") {
				t.Fatalf("image %s: direct_url %q, want rbd://%s/...", id, u, os.Getenv("CEPHL_FSID"))
			}
			return id
		}
		if i > 300 {
			t.Fatalf("image %s still %s after upload", id, img.Status)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// infoLine returns the value of "key:" in `imgfs info` output ("" if absent).
func infoLine(info, key string) string {
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), key+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// The four permutations of OpenStack's encrypted-image scenario, stored in
// Glance's rbd store: `imgfs cat <id>` and a mount read them straight from
// RADOS (info: mode rbd), exact bytes, the key still from Barbican.
func TestRBDGlanceEncryptedImages(t *testing.T) {
	tc := needCeph(t)
	plain := testimg.RandomBytes(5<<20, 131)
	clear(plain[1<<20 : 2<<20]) // a zero MiB: unallocated in the qcow2
	for i, c := range encryptedCases {
		t.Run(c.name, func(t *testing.T) {
			p, payload := c.make(t, t.TempDir(), plain, uint64(140+i))
			secret := tc.createSecret(t, c.secretType, payload)
			id := tc.uploadRBD(t, c.diskFormat, map[string]string{
				"os_encrypt_format":              c.encryptFormat,
				"os_encrypt_key_id":              secret,
				"os_encrypt_key_deletion_policy": "on_image_deletion",
				"os_decrypt_size":                strconv.Itoa(len(plain)),
				"os_decrypt_container_format":    "bare",
			}, p)
			r := runImgfs(t, nil, "cat", "--stats", id)
			if r.code != 0 || !bytes.Equal(r.stdout, plain) {
				t.Fatalf("imgfs cat %s: exit %d, %d bytes (equal: %v): %s", id, r.code, len(r.stdout), bytes.Equal(r.stdout, plain), r.stderr)
			}
			if !strings.Contains(string(r.stderr), "rbd mode") || strings.Contains(string(r.stderr), "not directly") {
				t.Fatalf("cat --stats: want rbd mode and no fallback note: %s", r.stderr)
			}
			info := string(mustImgfs(t, nil, "info", id))
			if infoLine(info, "mode") != "rbd" || !strings.HasPrefix(infoLine(info, "direct"), "used: rbd:images/"+id+"@snap") {
				t.Fatalf("info: want mode rbd, direct used: rbd:images/%s@snap:\n%s", id, info)
			}
			if strings.Contains(info, hex.EncodeToString(payload)) || strings.Contains(info, testPassphrase) {
				t.Fatal("info prints the key")
			}
			mnt, pid := mountDaemon(t, id)
			got, err := os.ReadFile(filepath.Join(mnt, "disk"))
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("mounted disk: %v, %d bytes, equal %v", err, len(got), bytes.Equal(got, plain))
			}
			var st mountStats
			if err := json.Unmarshal(readFile(t, filepath.Join(mnt, "stats")), &st); err != nil || st.Mode != "rbd" {
				t.Fatalf("mount stats: %v, mode %q, want rbd", err, st.Mode)
			}
			unmountAndCheck(t, mnt, pid)
		})
	}
}

// Glance refuses Range for images in its rbd store (400): without the
// direct path, imgfs could only stream them.
func TestRBDGlanceRefusesRange(t *testing.T) {
	tc := needCeph(t)
	plain := testimg.RandomBytes(2<<20, 132)
	id := tc.uploadRBD(t, "raw", nil, testimg.WriteFile(t, t.TempDir(), "plain.raw", plain))
	for _, rng := range []string{"bytes=0-1023", "bytes=1024-", "bytes=-1024"} {
		req, _ := http.NewRequest(http.MethodGet, tc.fileURL(id), nil)
		req.Header.Set("X-Auth-Token", tc.cloud.Provider.Token())
		req.Header.Set("Range", rng)
		resp, err := tc.cloud.HTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("Range %s on an rbd-store image: HTTP %d, want 400", rng, resp.StatusCode)
		}
	}
	// and over HTTP imgfs can only stream it
	r := runImgfs(t, nil, "cat", "--no-direct", "--stats", "--offset", "1048576", "--length", "4096", id)
	if r.code != 0 || !bytes.Equal(r.stdout, plain[1<<20:1<<20+4096]) || !strings.Contains(string(r.stderr), "sequential mode") {
		t.Fatalf("cat --no-direct: exit %d, equal %v: %s", r.code, bytes.Equal(r.stdout, plain[1<<20:1<<20+4096]), r.stderr)
	}
}

// 20 random 4 KiB reads across a 1 GiB image in the rbd store fetch less
// than 64 MiB from RADOS, through cat and through a mount.
func TestRBDRandomReadsFetchLittle(t *testing.T) {
	tc := needCeph(t)
	const size = 1 << 30
	dir := t.TempDir()
	p := filepath.Join(dir, "big.raw")
	testimg.QemuImg(t, "create", "-f", "raw", p, strconv.Itoa(size))
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// 16 MiB of data spread over the disk in 1 MiB runs
	for i := range 16 {
		if _, err := f.WriteAt(testimg.RandomBytes(1<<20, uint64(200+i)), int64(i)*(size/16)+int64(i)*12345*512); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	id := tc.uploadRBD(t, "raw", nil, p)
	want, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer want.Close()

	mnt, pid := mountDaemon(t, id)
	disk, err := os.Open(filepath.Join(mnt, "disk"))
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(7, 13))
	a, b := make([]byte, 4096), make([]byte, 4096)
	for range 20 {
		off := rng.Int64N(size/4096) * 4096
		if i := rng.IntN(2); i == 0 { // half of them land in the data runs
			k := rng.Int64N(16)
			off = k*(size/16) + k*12345*512 + rng.Int64N(256)*4096
		}
		if _, err := disk.ReadAt(a, off); err != nil {
			t.Fatalf("read at %d: %v", off, err)
		}
		want.ReadAt(b, off)
		if !bytes.Equal(a, b) {
			t.Fatalf("4 KiB at %d differs", off)
		}
	}
	disk.Close()
	st := readMountStats(t, mnt)
	t.Logf("FIGURE rbd 20 random 4 KiB reads of a 1 GiB image: fetched %d bytes in %d requests (mode %s)", st.BytesFetched, st.Requests, st.Mode)
	if st.Mode != "rbd" || st.BytesFetched >= 64<<20 || st.BytesFetched < 20*4096 {
		t.Fatalf("mount stats %+v: want mode rbd and < 64 MiB fetched", st)
	}
	unmountAndCheck(t, mnt, pid)

	// far into the image with cat
	off := int64(15)*(size/16) + 15*12345*512
	r := runImgfs(t, nil, "cat", "--stats", "--offset", strconv.FormatInt(off, 10), "--length", "4096", id)
	want.ReadAt(b, off)
	if r.code != 0 || !bytes.Equal(r.stdout, b) || !strings.Contains(string(r.stderr), "rbd mode") {
		t.Fatalf("cat far into the image: exit %d, equal %v: %s", r.code, bytes.Equal(r.stdout, b), r.stderr)
	}
}

// imgfsTimed runs imgfs and returns its result and how long it took.
func imgfsTimed(t *testing.T, env []string, args ...string) (result, time.Duration) {
	t.Helper()
	start := time.Now()
	r := runImgfsEnv(t, env, args...)
	return r, time.Since(start)
}

// When the direct path cannot be used, a Glance image in the rbd store is
// read over Glance's API (sequential) with the reason on stderr (once) and
// in info, never wrong bytes; a read-only key is enough for the direct
// path; rbd: sources fail with the reason.
func TestRBDFallbacksSayWhy(t *testing.T) {
	tc := needCeph(t)
	plain := testimg.RandomBytes(3<<20+512, 133)
	id := tc.uploadRBD(t, "raw", nil, testimg.WriteFile(t, t.TempDir(), "plain.raw", plain))
	spec := "rbd:" + os.Getenv("CEPHL_POOL") + "/" + id + "@snap"
	check := func(t *testing.T, args []string, mode, direct, note string) {
		t.Helper()
		r := runImgfs(t, nil, append(append([]string{"cat", "--stats"}, args...), id)...)
		if r.code != 0 || !bytes.Equal(r.stdout, plain) {
			t.Fatalf("cat %v: exit %d, equal %v: %s", args, r.code, bytes.Equal(r.stdout, plain), r.stderr)
		}
		if !strings.Contains(string(r.stderr), mode+" mode") {
			t.Fatalf("cat %v: want %s mode: %s", args, mode, r.stderr)
		}
		if n := strings.Count(string(r.stderr), "not directly from RBD"); note == "" && n != 0 || note != "" && (n != 1 || !strings.Contains(string(r.stderr), note)) {
			t.Fatalf("cat %v: want the note %q once on stderr: %s", args, note, r.stderr)
		}
		info := string(mustImgfs(t, nil, append(append([]string{"info"}, args...), id)...))
		if !strings.Contains(infoLine(info, "direct"), direct) {
			t.Fatalf("info %v: direct line %q does not say %q", args, infoLine(info, "direct"), direct)
		}
	}
	t.Run("read-only key works", func(t *testing.T) {
		check(t, []string{"--ceph-id", os.Getenv("CEPHL_RO_USER")}, "rbd", "used: rbd:images/"+id+"@snap", "")
	})
	t.Run("no-direct", func(t *testing.T) {
		check(t, []string{"--no-direct"}, "sequential", "not used: disabled", "")
	})
	t.Run("no ceph config", func(t *testing.T) {
		check(t, []string{"--ceph-conf", "/nonexistent/ceph.conf"}, "sequential", "not used: no Ceph config (/nonexistent/ceph.conf)", "no Ceph config")
	})
	t.Run("wrong key", func(t *testing.T) {
		check(t, []string{"--ceph-conf", os.Getenv("CEPHL_BADKEY_CONF"), "--ceph-timeout", "10s"}, "sequential", "not used: permission denied", "permission denied")
		r := runImgfs(t, nil, "cat", "--ceph-conf", os.Getenv("CEPHL_BADKEY_CONF"), "--ceph-timeout", "10s", spec)
		mustFail(t, r, "key rejected")
	})
	t.Run("missing snapshot", func(t *testing.T) {
		r := runImgfs(t, nil, "cat", strings.TrimSuffix(spec, "@snap")+"@nosuchsnap")
		mustFail(t, r, `no snapshot "nosuchsnap"`)
		r = runImgfs(t, nil, "cat", "rbd:"+os.Getenv("CEPHL_POOL")+"/no-such-image")
		mustFail(t, r, `no image "no-such-image"`)
	})
	t.Run("rbd spec reads exact bytes", func(t *testing.T) {
		got := mustImgfs(t, nil, "cat", spec)
		if !bytes.Equal(got, plain) {
			t.Fatal("cat rbd:POOL/IMAGE@SNAP differs")
		}
		info := string(mustImgfs(t, nil, "info", spec))
		if infoLine(info, "kind") != "rbd" || infoLine(info, "mode") != "rbd" || infoLine(info, "fsid") != os.Getenv("CEPHL_FSID") {
			t.Fatalf("info %s:\n%s", spec, info)
		}
	})
	t.Run("stopped cluster", func(t *testing.T) {
		cephSh(t, "stop-mon", os.Getenv("IMGFS_TEST_CEPH_DIR"))
		t.Cleanup(func() { cephSh(t, "resume", os.Getenv("IMGFS_TEST_CEPH_DIR")) })
		r, took := imgfsTimed(t, nil, "cat", "--ceph-timeout", "3s", spec)
		mustFail(t, r, "cluster unreachable")
		if took > 20*time.Second {
			t.Fatalf("rbd: source with the mon stopped failed after %s, want about --ceph-timeout 3s", took)
		}
		// the Glance image: the direct path is abandoned within the
		// timeout; Glance itself cannot read RBD either, so the read fails
		// (or, had Glance a copy, succeeds) — never wrong bytes
		r, took = imgfsTimed(t, nil, "cat", "--ceph-timeout", "3s", "--http-stall-timeout", "2s", id)
		t.Logf("glance image with the mon stopped: exit %d after %s: %s", r.code, took, r.stderr)
		if !strings.Contains(string(r.stderr), "cluster unreachable") {
			t.Fatalf("stderr does not say the cluster is unreachable: %s", r.stderr)
		}
		if r.code == 0 && !bytes.Equal(r.stdout, plain) {
			t.Fatal("wrong bytes with the mon stopped")
		}
	})
}

// cleanCephEnv is the environment without the shared test cluster's
// CEPH*_ variables, plus extra.
func cleanCephEnv(extra []string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CEPHL_") && !strings.HasPrefix(kv, "CEPH_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// cephSh runs tests/cloud/ceph.sh CMD DIR (bounded).
func cephSh(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "cloud/ceph.sh", args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("ceph.sh %v: %v: %s", args, err, errb.Bytes())
	}
	return out.String()
}

// An OSD killed mid-read (bluestore: its data survives): reads of blocks
// not yet fetched fail with EIO within --ceph-timeout, and once the OSD is
// back they return the exact bytes. Its own cluster in a temporary
// directory, not the shared one.
func TestRBDOSDRestartMidRead(t *testing.T) {
	tc := needCeph(t)
	dir := filepath.Join(t.TempDir(), "ceph")
	start := time.Now()
	t.Cleanup(func() { exec.Command("cloud/ceph.sh", "stop", dir).Run() })
	// The ports are in the kernel's ephemeral range, where any outgoing
	// connection may hold one: a start whose mon could not bind (CI saw
	// "Address already in use") is tried again on other ports.
	var env []string
	for attempt := 1; ; attempt++ {
		base := freePortBlock(t, 40000, 89, 100)
		env = []string{"CEPH_STORE=bluestore", "CEPHL_STORE_SIZE=2G",
			"CEPHL_MON_PORT=" + strconv.Itoa(base), "CEPHL_MON_V2_PORT=" + strconv.Itoa(base+1),
			fmt.Sprintf("CEPHL_BIND_PORTS=%d-%d", base+5, base+99)}
		cmd := exec.Command("cloud/ceph.sh", "start", dir)
		cmd.Env = cleanCephEnv(env)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		if err == nil {
			break
		}
		if attempt < 3 && strings.Contains(errb.String(), "Address already in use") {
			t.Logf("start a bluestore cluster on port %d: a port was taken; again on others", base)
			exec.Command("cloud/ceph.sh", "stop", dir).Run()
			os.RemoveAll(dir)
			continue
		}
		t.Fatalf("start a bluestore cluster: %v: %s", err, errb.Bytes())
	}
	t.Logf("bluestore cluster up in %s", time.Since(start).Round(time.Millisecond))
	conf := filepath.Join(dir, "ceph.conf")
	plain := testimg.RandomBytes(48<<20, 134)
	p := testimg.WriteFile(t, t.TempDir(), "plain.raw", plain)
	for _, a := range [][]string{{"import", p, "images/disk"}, {"snap", "create", "images/disk@s1"}} {
		if out, err := exec.Command("rbd", append([]string{"-c", conf, "--client-mount-timeout", "15"}, a...)...).CombinedOutput(); err != nil {
			t.Fatalf("rbd %v: %v: %s", a, err, out)
		}
	}
	// Another cluster while we have one: a Glance image of the shared
	// cluster, and an image of the same name (other bytes) at the same
	// pool/name@snap in this one. With this cluster's ceph.conf imgfs must
	// refuse it (fsid mismatch) and read Glance's bytes over HTTP.
	gplain := testimg.RandomBytes(1<<20, 136)
	gid := tc.uploadRBD(t, "raw", nil, testimg.WriteFile(t, t.TempDir(), "g.raw", gplain))
	impostor := testimg.WriteFile(t, t.TempDir(), "impostor.raw", testimg.RandomBytes(1<<20, 137))
	for _, a := range [][]string{{"import", impostor, "images/" + gid}, {"snap", "create", "images/" + gid + "@snap"}} {
		if out, err := exec.Command("rbd", append([]string{"-c", conf, "--client-mount-timeout", "15"}, a...)...).CombinedOutput(); err != nil {
			t.Fatalf("rbd %v: %v: %s", a, err, out)
		}
	}
	r := runImgfs(t, nil, "cat", "--ceph-conf", conf, gid)
	if r.code != 0 || !bytes.Equal(r.stdout, gplain) {
		t.Fatalf("cat with another cluster's ceph.conf: exit %d, equal to Glance's bytes %v: %s", r.code, bytes.Equal(r.stdout, gplain), r.stderr)
	}
	if !strings.Contains(string(r.stderr), "fsid mismatch: location "+os.Getenv("CEPHL_FSID")) {
		t.Fatalf("cat with another cluster's ceph.conf does not say fsid mismatch: %s", r.stderr)
	}

	mnt, pid := mountDaemon(t, "--ceph-conf", conf, "--ceph-timeout", "5s", "rbd:images/disk@s1")
	disk, err := os.Open(filepath.Join(mnt, "disk"))
	if err != nil {
		t.Fatal(err)
	}
	defer disk.Close()
	buf := make([]byte, 4096)
	if _, err := disk.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, plain[:4096]) {
		t.Fatalf("first read: %v", err)
	}
	if out, err := exec.Command("cloud/ceph.sh", "kill-osd", dir).CombinedOutput(); err != nil {
		t.Fatalf("kill-osd: %v: %s", err, out)
	}
	t0 := time.Now()
	_, err = disk.ReadAt(buf, 40<<20)
	t.Logf("read with the OSD killed: %v after %s", err, time.Since(t0).Round(time.Millisecond))
	if err == nil {
		t.Fatal("read with the OSD down succeeded")
	}
	if !strings.Contains(err.Error(), "input/output error") {
		t.Fatalf("read with the OSD down: %v, want EIO", err)
	}
	if time.Since(t0) > 30*time.Second {
		t.Fatalf("read with the OSD down took %s, want about --ceph-timeout 5s", time.Since(t0))
	}
	rc := exec.Command("cloud/ceph.sh", "resume", dir)
	rc.Env = cleanCephEnv(env)
	if out, err := rc.CombinedOutput(); err != nil {
		t.Fatalf("resume: %v: %s", err, out)
	}
	// the client learns the new OSD map within a few seconds; until then a
	// read may still time out (EIO), never return other bytes
	got := make([]byte, 8<<20)
	t1 := time.Now()
	for {
		_, err := disk.ReadAt(got, 40<<20)
		if err == nil {
			if !bytes.Equal(got, plain[40<<20:]) {
				t.Fatal("read after the OSD is back: bytes differ")
			}
			break
		}
		if time.Since(t1) > 60*time.Second {
			t.Fatalf("read after the OSD is back: still %v after %s", err, time.Since(t1))
		}
		t.Logf("read after resume: %v (retrying)", err)
		time.Sleep(time.Second)
	}
	t.Logf("exact bytes %s after resume", time.Since(t1).Round(time.Millisecond))
	all, err := os.ReadFile(filepath.Join(mnt, "disk"))
	if err != nil || !bytes.Equal(all, plain) {
		t.Fatalf("whole disk after recovery: %v, equal %v", err, bytes.Equal(all, plain))
	}
	t.Logf("FIGURE OSD kill/restart test total %s", time.Since(start).Round(time.Millisecond))
	disk.Close()
	unmountAndCheck(t, mnt, pid)
}

// A sparse 1 GiB qcow2 in the rbd store, mounted: SEEK_DATA and SEEK_HOLE
// follow its L2 tables through the block cache over RBD, dd far into it
// reads the exact bytes, and little is fetched.
func TestRBDMountSparseQcow2Seeks(t *testing.T) {
	tc := needCeph(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "sparse.qcow2")
	testimg.QemuImg(t, "create", "-f", "qcow2", img, "1G")
	testimg.QemuIO(t, "-f", "qcow2", "-c", "write -P 0x5a 0 1M", "-c", "write -P 0xa5 300M 2M",
		"-c", "write -P 0x77 1073676288 65536", img)
	id := tc.uploadRBD(t, "qcow2", nil, img)
	mnt, pid := mountDaemon(t, id)
	f, err := os.Open(filepath.Join(mnt, "disk"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		off    int64
		whence int
		want   int64
	}{
		{0, unix.SEEK_HOLE, 1 << 20},
		{1 << 20, unix.SEEK_DATA, 300 << 20},
		{300 << 20, unix.SEEK_HOLE, 302 << 20},
		{302 << 20, unix.SEEK_DATA, 1073676288},
		{1073676288, unix.SEEK_HOLE, 1 << 30},
	} {
		if got, err := unix.Seek(int(f.Fd()), c.off, c.whence); err != nil || got != c.want {
			t.Errorf("lseek(%d, whence %d) = %d, %v; want %d", c.off, c.whence, got, err, c.want)
		}
	}
	buf := make([]byte, 65536)
	if _, err := f.ReadAt(buf, 1073676288); err != nil || !bytes.Equal(buf, bytes.Repeat([]byte{0x77}, 65536)) {
		t.Fatalf("read of the last 64 KiB: %v or bytes differ", err)
	}
	if _, err := f.ReadAt(buf, 301<<20); err != nil || !bytes.Equal(buf, bytes.Repeat([]byte{0xa5}, 65536)) {
		t.Fatalf("read at 301 MiB: %v or bytes differ", err)
	}
	f.Close()
	st := readMountStats(t, mnt)
	if st.Mode != "rbd" || st.BytesFetched > 16<<20 {
		t.Fatalf("mount stats %+v: want mode rbd and little fetched", st)
	}
	unmountAndCheck(t, mnt, pid)
}

// The integrity check still comes from Glance on the direct path: an RBD
// snapshot whose bytes are not what Glance hashed (here: the snapshot
// Glance made renamed away, the head changed, a new "snap" taken as
// admin) fails a whole read with "integrity check failed".
func TestRBDTamperedSnapshotFailsIntegrity(t *testing.T) {
	tc := needCeph(t)
	testimg.Need(t, "/usr/bin/python3")
	plain := testimg.RandomBytes(2<<20, 135)
	id := tc.uploadRBD(t, "raw", nil, testimg.WriteFile(t, t.TempDir(), "plain.raw", plain))
	py := `
import rados, rbd, sys
c = rados.Rados(conffile=sys.argv[1]); c.connect(timeout=15)
io = c.open_ioctx(sys.argv[2])
with rbd.Image(io, sys.argv[3]) as im:
    im.rename_snap("snap", "glance-orig")
    im.write(b"X", 4096)
    im.create_snap("snap")
io.close(); c.shutdown()
`
	if out, err := exec.Command("/usr/bin/python3", "-I", "-c", py, os.Getenv("CEPH_CONF"), os.Getenv("CEPHL_POOL"), id).CombinedOutput(); err != nil {
		t.Fatalf("tamper with the RBD image: %v: %s", err, out)
	}
	info := string(mustImgfs(t, nil, "info", id))
	if infoLine(info, "mode") != "rbd" || infoLine(info, "checksum") == "" {
		t.Fatalf("info: want mode rbd and a checksum:\n%s", info)
	}
	out := filepath.Join(t.TempDir(), "out.raw")
	mustFail(t, runImgfs(t, nil, "cat", id, "-o", out), "integrity check failed")
	if _, err := os.Stat(out); err == nil {
		t.Fatal("a failed verification left the output file")
	}
	// a partial read is not verified (nothing to compare with) and shows
	// what RADOS holds
	got := mustImgfs(t, nil, "cat", "--length", "8192", id)
	if !bytes.Equal(got[:4096], plain[:4096]) || got[4096] != 'X' {
		t.Fatal("partial read: unexpected bytes")
	}
}

// rbd: sources without a cluster: the spelling is checked, a missing
// ceph.conf is named, --ceph-timeout must be positive, and a build without
// Ceph says so.
func TestRBDSpecErrorsWithoutCluster(t *testing.T) {
	mustFail(t, runImgfs(t, nil, "cat", "--ceph-conf", "/nonexistent/ceph.conf", "rbd:images/disk"), "no Ceph config", "/nonexistent/ceph.conf")
	mustFail(t, runImgfs(t, nil, "cat", "rbd:images"), "want rbd:POOL/IMAGE[@SNAP]")
	mustFail(t, runImgfs(t, nil, "cat", "rbd:images/disk:conf=/x"), "options after ':' are not supported")
	mustFail(t, runImgfs(t, nil, "cat", "--ceph-timeout", "0s", "rbd:images/disk"), "--ceph-timeout")

	bin := filepath.Join(t.TempDir(), "imgfs-noceph")
	build := exec.Command("go", "build", "-tags", "noceph", "-o", bin, "../cmd/imgfs")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build -tags noceph: %v: %s", err, out)
	}
	cmd := exec.Command(bin, "cat", "rbd:images/disk")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err == nil || out.Len() != 0 || !strings.Contains(errb.String(), "built without Ceph support") {
		t.Fatalf("noceph build: %v, %d bytes out, stderr %q", err, out.Len(), errb.String())
	}
}

// freePortBlock returns lo+i*step for a random i < n whose first two ports
// (the mon's) can be bound on 127.0.0.1 now.
func freePortBlock(t *testing.T, lo, n, step int) int {
	t.Helper()
	for range 50 {
		base := lo + rand.IntN(n)*step
		free := true
		for _, p := range []int{base, base + 1} {
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
			if err != nil {
				free = false
				break
			}
			l.Close()
		}
		if free {
			return base
		}
	}
	t.Fatalf("no free port block in %d-%d", lo, lo+n*step)
	return 0
}
