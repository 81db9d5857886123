package tests

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imgfs/imgfs/tests/testimg"
)

// targetCeph is a Ceph cluster for RBD targets: the one the environment
// names (CEPHL_DIR and CEPH_CONF as `tests/cloud/ceph.sh start` prints
// them), or one started for the test in a temporary directory on free
// ports and stopped when it ends. Without the Ceph packages the test
// skips loudly (fails in CI).
type targetCeph struct {
	conf, pool, user, roUser string
}

func needTargetCeph(t *testing.T) *targetCeph {
	t.Helper()
	if os.Getenv("CEPHL_DIR") != "" && os.Getenv("CEPH_CONF") != "" {
		return &targetCeph{conf: os.Getenv("CEPH_CONF"), pool: os.Getenv("CEPHL_POOL"), user: os.Getenv("CEPHL_USER"), roUser: os.Getenv("CEPHL_RO_USER")}
	}
	script, err := filepath.Abs("cloud/ceph.sh")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(script, "install").CombinedOutput(); err != nil {
		if testimg.InCI() {
			t.Fatalf("ceph.sh install: %v: %s", err, out)
		}
		t.Skipf("SKIP: no Ceph packages and they cannot be installed (run tests/install-deps.sh as root): %v", err)
	}
	dir, err := os.MkdirTemp("", "imgfs-vol-ceph-")
	if err != nil {
		t.Fatal(err)
	}
	var ports [2]string
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
		l.Close() // ceph.sh checks that the port is free

	}
	base := 40000 + rand.IntN(200)*100
	cmd := exec.Command(script, "start", dir)
	cmd.Env = append(os.Environ(), "CEPHL_MON_PORT="+ports[0], "CEPHL_MON_V2_PORT="+ports[1], fmt.Sprintf("CEPHL_BIND_PORTS=%d-%d", base, base+99))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	t0 := time.Now()
	out, err := cmd.Output()
	t.Cleanup(func() {
		exec.Command(script, "stop", dir).Run()
		os.RemoveAll(dir)
	})
	if err != nil {
		t.Fatalf("ceph.sh start: %v: %s", err, stderr.Bytes())
	}
	t.Logf("Ceph started in %.1fs", time.Since(t0).Seconds())
	env := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if k, v, ok := strings.Cut(strings.TrimPrefix(sc.Text(), "export "), "="); ok {
			env[k] = strings.Trim(v, "'")
		}
	}
	return &targetCeph{conf: env["CEPH_CONF"], pool: env["CEPHL_POOL"], user: env["CEPHL_USER"], roUser: env["CEPHL_RO_USER"]}
}

// rbd runs the rbd CLI as client.admin.
func (c *targetCeph) rbd(t *testing.T, args ...string) []byte {
	t.Helper()
	out, err := c.rbdErr(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (c *targetCeph) rbdErr(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "rbd", append([]string{"-c", c.conf}, args...)...)
	cmd.Env = append(os.Environ(), "CEPH_ARGS=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("rbd %s: %v: %s", strings.Join(args, " "), err, stderr.Bytes())
	}
	return out, nil
}

// export returns the bytes of pool/image (rbd export).
func (c *targetCeph) export(t *testing.T, image string) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "rbd-export")
	c.rbd(t, "export", "--no-progress", c.pool+"/"+image, p)
	return readFile(t, p)
}

// used returns the bytes `rbd du` says pool/image uses.
func (c *targetCeph) used(t *testing.T, image string) int64 {
	t.Helper()
	out := c.rbd(t, "du", "--format", "json", c.pool+"/"+image)
	var du struct {
		Images []struct {
			Name        string `json:"name"`
			UsedSize    int64  `json:"used_size"`
			Provisioned int64  `json:"provisioned_size"`
		} `json:"images"`
	}
	if err := json.Unmarshal(out, &du); err != nil || len(du.Images) != 1 {
		t.Fatalf("rbd du: %v: %s", err, out)
	}
	return du.Images[0].UsedSize
}

// RBD targets: export creates the image at the disk's size and leaves the
// holes unallocated (rbd du), rbd export gives the expected bytes (a
// sparse 256 MiB qcow2 as raw, a qcow2+LUKS image as raw LUKS equal to the
// file export), --existing writes into an image prefilled with 0xFF and
// zeroes its holes, an existing image without --existing and a read-only
// key are refused and leave nothing behind.
func TestExportIntoRBD(t *testing.T) {
	ceph := needTargetCeph(t)
	testimg.Need(t, "qemu-img")
	dir := t.TempDir()
	url := serveDir(t, dir)
	pf := passFile(t, dir, testPass)
	uniq := fmt.Sprintf("imgfs-vol-%d-%d", os.Getpid(), time.Now().UnixNano())
	name := func(s string) string { return uniq + "-" + s }
	t.Cleanup(func() {
		out, _ := ceph.rbdErr("ls", ceph.pool)
		for _, im := range strings.Fields(string(out)) {
			if strings.HasPrefix(im, uniq) {
				ceph.rbdErr("rm", "--no-progress", ceph.pool+"/"+im)
			}
		}
	})
	cephArgs := []string{"--ceph-conf", ceph.conf, "--ceph-id", ceph.user}
	withCeph := func(cmd string, args ...string) []string {
		return append(append([]string{cmd}, cephArgs...), args...)
	}

	sparse, _ := testimg.MakeQcow2(t, dir, "sparse.qcow2", testimg.QcowImage{
		Size: 256 << 20, Passes: [][]testimg.QcowWrite{{{Off: 5 << 20, Len: 1 << 20, Seed: 181}, {Off: 200 << 20, Len: 3<<20 + 4096, Seed: 182}, {Off: 256<<20 - 4096, Len: 4096, Seed: 183}}},
	})
	want := filepath.Join(dir, "sparse.raw")
	testimg.QemuImg(t, "convert", "-f", "qcow2", "-O", "raw", sparse, want)
	wantRaw := readFile(t, want)
	for _, from := range []struct{ name, src string }{{"file", sparse}, {"http", url + "/sparse.qcow2"}} {
		t.Run("sparseQcow2-"+from.name, func(t *testing.T) {
			im := name("sparse-" + from.name)
			mustImgfs(t, nil, withCeph("export", "--to", "raw", "--verify", "-o", "rbd:"+ceph.pool+"/"+im, from.src)...)
			if got := ceph.export(t, im); !bytes.Equal(got, wantRaw) {
				t.Fatalf("rbd export differs from the disk at byte %d (%d bytes, want %d)", firstDiffAt(got, wantRaw), len(got), len(wantRaw))
			}
			if used := ceph.used(t, im); used > 16<<20 {
				t.Fatalf("rbd du: %d bytes used for 4 MiB of data: the holes were written", used)
			}
		})
	}

	t.Run("qcow2LUKS", func(t *testing.T) {
		qcow, plain := testimg.MakeQcow2(t, dir, "enc.qcow2", testimg.QcowImage{
			Size: 16 << 20, Options: "cluster_size=65536", Passphrase: testPass, Passes: exportWrites(65536),
		})
		file := filepath.Join(t.TempDir(), "out.luks")
		mustImgfs(t, nil, "export", "--to", "luks", "--passphrase-file", pf, "-o", file, qcow)
		im := name("luks")
		mustImgfs(t, nil, withCeph("export", "--to", "luks", "--passphrase-file", pf, "--verify", "-o", "rbd:"+ceph.pool+"/"+im, qcow)...)
		got := ceph.export(t, im)
		if !bytes.Equal(got, readFile(t, file)) {
			t.Fatal("the RBD image differs from the file export")
		}
		checkLUKSExport(t, file, testPass, plain)
	})

	t.Run("existing", func(t *testing.T) {
		plain := testimg.RandomBytes(12<<20, 184)
		clear(plain[4<<20 : 8<<20])
		src := testimg.WriteFile(t, t.TempDir(), "plain.raw", plain)
		ff := testimg.WriteFile(t, t.TempDir(), "ff", bytes.Repeat([]byte{0xff}, 16<<20))
		im := name("existing")
		ceph.rbd(t, "import", "--no-progress", ff, ceph.pool+"/"+im)
		r := runImgfs(t, nil, withCeph("cat", "-o", "rbd:"+ceph.pool+"/"+im, src)...)
		if r.code != 1 || !strings.Contains(string(r.stderr), "use --existing") {
			t.Fatalf("existing image without --existing: exit %d: %s", r.code, r.stderr)
		}
		mustImgfs(t, nil, withCeph("cat", "--existing", "--verify", "-o", "rbd:"+ceph.pool+"/"+im, src)...)
		got := ceph.export(t, im)
		if !bytes.Equal(got[:len(plain)], plain) || !allFF(got[len(plain):]) {
			t.Fatal("--existing: the image is not the disk followed by its old tail")
		}
	})

	t.Run("refused", func(t *testing.T) {
		src := testimg.WriteFile(t, t.TempDir(), "plain.raw", testimg.RandomBytes(1<<20, 185))
		im := name("ro")
		r := runImgfs(t, nil, "cat", "--ceph-conf", ceph.conf, "--ceph-id", ceph.roUser, "-o", "rbd:"+ceph.pool+"/"+im, src)
		if r.code != 1 || !strings.Contains(string(r.stderr), "permission") {
			t.Fatalf("read-only key: exit %d: %s", r.code, r.stderr)
		}
		if _, err := ceph.rbdErr("info", ceph.pool+"/"+im); err == nil {
			t.Fatal("read-only key: an image was left behind")
		}
		r = runImgfs(t, nil, withCeph("cat", "-o", "rbd:"+ceph.pool+"/"+name("small"), "--existing", src)...)
		if r.code != 1 || !strings.Contains(string(r.stderr), "no image") {
			t.Fatalf("--existing of a missing image: exit %d: %s", r.code, r.stderr)
		}
	})
}

// A Glance image exported into RBD is checked against os_hash_value while
// it streams: a byte changed in Glance's store behind its back fails the
// export, and the image created for it is removed again.
func TestExportGlanceIntoRBDVerified(t *testing.T) {
	tc := needCloud(t)
	store := os.Getenv("IMGFS_TEST_CLOUD_DIR")
	if store == "" {
		t.Fatal("IMGFS_TEST_CLOUD_DIR not set (tests/with-cloud.sh sets it)")
	}
	ceph := needTargetCeph(t)
	dir := t.TempDir()
	data := testimg.RandomBytes(6<<20, 193)
	id := tc.uploadImage(t, "raw", nil, testimg.WriteFile(t, dir, "r", data))
	im := fmt.Sprintf("imgfs-vol-glance-%d-%d", os.Getpid(), time.Now().UnixNano())
	t.Cleanup(func() { ceph.rbdErr("rm", "--no-progress", ceph.pool+"/"+im) })
	args := []string{"export", "--to", "raw", "--ceph-conf", ceph.conf, "--ceph-id", ceph.user, "-o", "rbd:" + ceph.pool + "/" + im, id}
	mustImgfs(t, nil, args...)
	if !bytes.Equal(ceph.export(t, im), data) {
		t.Fatal("the RBD image differs from the Glance image")
	}
	ceph.rbd(t, "rm", "--no-progress", ceph.pool+"/"+im)

	f, err := os.OpenFile(filepath.Join(store, "glance", "images", id), os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("glance store file: %v", err)
	}
	if _, err := f.WriteAt([]byte{data[5<<20] ^ 0xff}, 5<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	mustFail(t, runImgfs(t, nil, args...), "integrity check failed", "was removed")
	if _, err := ceph.rbdErr("info", ceph.pool+"/"+im); err == nil {
		t.Fatal("the image of a failed verification was left behind")
	}
}
