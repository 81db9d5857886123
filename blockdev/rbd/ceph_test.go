//go:build linux && cgo && !noceph

package rbd

// Tests against a real Ceph cluster (one mon, one memstore OSD) that
// TestMain starts once for the package with tests/cloud/ceph.sh, unless the
// environment already names one (CEPHL_DIR and CEPH_CONF as printed by
// `ceph.sh start`). Without the Ceph packages (and no root to install them)
// the tests skip loudly; with CI=true they fail instead.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// cephEnv is the cluster the tests use and the data they put on it.
var cephEnv struct {
	skip    string // why there is no cluster ("" if there is one)
	script  string // tests/cloud/ceph.sh
	dir     string // CEPHL_DIR
	conf    string // CEPH_CONF
	fsid    string
	pool    string
	user    string // read-write client id
	roUser  string // read-only client id
	badConf string // ceph.conf whose keyrings cephx rejects

	image string // test image: data, snapshot "s1" holds data, the head holds head
	data  []byte // the imported file
	head  []byte // the image's head after the write over the snapshot
}

const imageSize = 64<<20 + 12345 // not a multiple of anything librbd uses

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	stop, noCeph, err := setupCeph()
	if stop != nil {
		defer stop()
	}
	switch {
	case err != nil:
		fmt.Fprintf(os.Stderr, "rbd tests: FAIL: %v\n", err)
		return 1
	case noCeph != nil && os.Getenv("CI") == "true":
		fmt.Fprintf(os.Stderr, "rbd tests: no Ceph packages and CI=true: FAIL: %v\n", noCeph)
		return 1
	case noCeph != nil:
		cephEnv.skip = noCeph.Error()
		fmt.Fprintf(os.Stderr, "\n*** rbd tests: NO CEPH, the tests against Ceph SKIP: %v\n"+
			"*** (run tests/install-deps.sh as root; with CI=true this fails)\n\n", noCeph)
	}
	if cephEnv.skip == "" {
		if err := makeImage(); err != nil {
			fmt.Fprintf(os.Stderr, "rbd tests: creating the test image: %v\n", err)
			return 1
		}
	}
	rc := m.Run()
	if cephEnv.image != "" {
		rbdCLI("snap", "purge", "--no-progress", cephEnv.pool+"/"+cephEnv.image)
		rbdCLI("rm", "--no-progress", cephEnv.pool+"/"+cephEnv.image)
	}
	return rc
}

// setupCeph fills cephEnv from the environment or starts a cluster in a
// temporary directory. stop (if not nil) stops what it started. noCeph says
// why the Ceph packages are missing and cannot be installed; err is any
// other failure.
func setupCeph() (stop func(), noCeph, err error) {
	script, err := filepath.Abs("../../tests/cloud/ceph.sh")
	if err != nil {
		return nil, nil, err
	}
	cephEnv.script = script
	env := map[string]string{}
	if os.Getenv("CEPHL_DIR") != "" && os.Getenv("CEPH_CONF") != "" {
		for _, k := range []string{"CEPHL_DIR", "CEPH_CONF", "CEPHL_FSID", "CEPHL_POOL", "CEPHL_USER", "CEPHL_RO_USER", "CEPHL_BADKEY_CONF"} {
			env[k] = os.Getenv(k)
		}
		fmt.Fprintf(os.Stderr, "rbd tests: using the cluster in %s\n", env["CEPHL_DIR"])
	} else {
		if out, err := exec.Command(script, "install").CombinedOutput(); err != nil {
			return nil, fmt.Errorf("the Ceph packages are missing and installing them failed: %v: %s", err, lastLines(out, 5)), nil
		}
		dir, err := os.MkdirTemp("", "imgfs-rbd-ceph-")
		if err != nil {
			return nil, nil, err
		}
		ports, err := freePorts()
		if err != nil {
			return nil, nil, err
		}
		cmd := exec.Command(script, "start", dir)
		cmd.Env = append(os.Environ(), "CEPHL_MON_PORT="+ports[0], "CEPHL_MON_V2_PORT="+ports[1], "CEPHL_BIND_PORTS="+ports[2])
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		t0 := time.Now()
		out, err := cmd.Output()
		stop = func() {
			exec.Command(script, "stop", dir).Run()
			os.RemoveAll(dir)
		}
		if err != nil {
			return stop, nil, fmt.Errorf("%s start %s: %v:\n%s", script, dir, err, lastLines(stderr.Bytes(), 20))
		}
		fmt.Fprintf(os.Stderr, "rbd tests: Ceph started in %.1fs (%s)\n", time.Since(t0).Seconds(), dir)
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			k, v, ok := strings.Cut(strings.TrimPrefix(sc.Text(), "export "), "=")
			if ok {
				env[k] = strings.Trim(v, "'")
			}
		}
	}
	for k, v := range env {
		if v == "" {
			return stop, nil, fmt.Errorf("cluster environment: %s is not set", k)
		}
	}
	cephEnv.dir, cephEnv.conf, cephEnv.fsid = env["CEPHL_DIR"], env["CEPH_CONF"], env["CEPHL_FSID"]
	cephEnv.pool, cephEnv.user, cephEnv.roUser = env["CEPHL_POOL"], env["CEPHL_USER"], env["CEPHL_RO_USER"]
	cephEnv.badConf = env["CEPHL_BADKEY_CONF"]
	return stop, nil, nil
}

// freePorts returns two free ports for the mon and a range of 100 for the
// OSD, as strings.
func freePorts() ([3]string, error) {
	var p [3]string
	for i := range 2 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return p, err
		}
		defer l.Close()
		p[i] = fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
	}
	base := 30000 + rand.IntN(300)*100
	p[2] = fmt.Sprintf("%d-%d", base, base+99)
	return p, nil
}

func lastLines(b []byte, n int) string {
	l := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(l[max(0, len(l)-n):], "\n")
}

// rbdCLI runs the rbd CLI as client.admin on the test cluster.
func rbdCLI(args ...string) ([]byte, error) {
	return cephCLI("rbd", args...)
}

func cephCLI(prog string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, prog, append([]string{"-c", cephEnv.conf}, args...)...)
	cmd.Env = append(os.Environ(), "CEPH_ARGS=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %v: %s", prog, strings.Join(args, " "), err, lastLines(stderr.Bytes(), 5))
	}
	return out, nil
}

// script runs a tests/cloud/ceph.sh command on the test cluster.
func script(t *testing.T, cmd string) {
	t.Helper()
	t0 := time.Now()
	if out, err := exec.Command(cephEnv.script, cmd, cephEnv.dir).CombinedOutput(); err != nil {
		t.Fatalf("ceph.sh %s: %v: %s", cmd, err, out)
	}
	t.Logf("ceph.sh %s: %.1fs", cmd, time.Since(t0).Seconds())
}

// makeImage imports a random file as an image, snapshots it as s1, then
// overwrites parts of the head (with rbd import-diff) so that the head and
// the snapshot differ.
func makeImage() error {
	r := rand.New(rand.NewPCG(1, 2))
	cephEnv.data = make([]byte, imageSize)
	for i := 0; i+8 <= len(cephEnv.data); i += 8 {
		binary.LittleEndian.PutUint64(cephEnv.data[i:], r.Uint64())
	}
	tmp, err := os.MkdirTemp("", "imgfs-rbd-data-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	f := filepath.Join(tmp, "data")
	if err := os.WriteFile(f, cephEnv.data, 0o600); err != nil {
		return err
	}
	name := fmt.Sprintf("imgfs-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	spec := cephEnv.pool + "/" + name
	t0 := time.Now()
	if _, err := rbdCLI("import", "--no-progress", f, spec); err != nil {
		return err
	}
	cephEnv.image = name
	fmt.Fprintf(os.Stderr, "rbd tests: rbd import of %d bytes: %.1fs\n", len(cephEnv.data), time.Since(t0).Seconds())
	if _, err := rbdCLI("snap", "create", "--no-progress", spec+"@s1"); err != nil {
		return err
	}
	// An rbd diff v1 stream: size, then writes (w OFF LEN DATA), then e.
	cephEnv.head = bytes.Clone(cephEnv.data)
	var diff bytes.Buffer
	diff.WriteString("rbd diff v1\n")
	le := func(v uint64) { binary.Write(&diff, binary.LittleEndian, v) }
	diff.WriteByte('s')
	le(imageSize)
	for _, w := range [][2]int{{0, 4096}, {8<<20 - 100, 300}, {imageSize - 1000, 1000}} {
		b := cephEnv.head[w[0] : w[0]+w[1]]
		for i := range b {
			b[i] = ^b[i]
		}
		diff.WriteByte('w')
		le(uint64(w[0]))
		le(uint64(w[1]))
		diff.Write(b)
	}
	diff.WriteByte('e')
	df := filepath.Join(tmp, "diff")
	if err := os.WriteFile(df, diff.Bytes(), 0o600); err != nil {
		return err
	}
	_, err = rbdCLI("import-diff", "--no-progress", df, spec)
	return err
}

func needCeph(t *testing.T) {
	t.Helper()
	if cephEnv.skip != "" {
		t.Skipf("SKIP (no Ceph cluster): %s", cephEnv.skip)
	}
}

// dial connects as user with the test cluster's ceph.conf.
func dial(t *testing.T, user string) *Cluster {
	t.Helper()
	c, err := Connect(context.Background(), Config{ConfFile: cephEnv.conf, ID: user, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("Connect as %s: %v", user, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func open(t *testing.T, c *Cluster, snap string) *Image {
	t.Helper()
	img, err := c.OpenImage(cephEnv.pool, cephEnv.image, snap)
	if err != nil {
		t.Fatalf("OpenImage: %v", err)
	}
	t.Cleanup(func() { img.Close() })
	return img
}

func TestFSID(t *testing.T) {
	needCeph(t)
	c := dial(t, cephEnv.user)
	out, err := cephCLI("ceph", "fsid")
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.TrimSpace(string(out)); c.FSID() != want || c.FSID() != cephEnv.fsid {
		t.Errorf("FSID() = %q; `ceph fsid` says %q, ceph.sh %q", c.FSID(), want, cephEnv.fsid)
	}
}

func TestReadWhole(t *testing.T) {
	needCeph(t)
	c := dial(t, cephEnv.user)
	img := open(t, c, "s1")
	if img.Size() != imageSize {
		t.Fatalf("Size() = %d, want %d", img.Size(), imageSize)
	}
	buf := make([]byte, imageSize)
	t0 := time.Now()
	n, err := img.ReadAt(buf, 0)
	dt := time.Since(t0)
	if n != imageSize || err != nil {
		t.Fatalf("ReadAt(whole) = %d, %v", n, err)
	}
	if !bytes.Equal(buf, cephEnv.data) {
		t.Fatal("whole read differs from the imported file")
	}
	st := img.Stats()
	wantReq := int64((imageSize + pieceBytes - 1) / pieceBytes)
	if st.Requests != wantReq || st.BytesFetched != imageSize {
		t.Errorf("Stats after one whole read: %d requests, %d bytes; want %d, %d", st.Requests, st.BytesFetched, wantReq, imageSize)
	}
	t.Logf("FIGURE whole read of %d MiB into a new buffer: %v (%.0f MiB/s), %d requests", imageSize>>20, dt.Round(time.Millisecond),
		float64(imageSize)/(1<<20)/dt.Seconds(), st.Requests)
	best := time.Hour
	for range 3 {
		t0 := time.Now()
		if _, err := img.ReadAt(buf, 0); err != nil {
			t.Fatal(err)
		}
		best = min(best, time.Since(t0))
	}
	t.Logf("FIGURE whole read of %d MiB again (best of 3): %v (%.0f MiB/s)", imageSize>>20, best.Round(time.Millisecond),
		float64(imageSize)/(1<<20)/best.Seconds())
}

func TestRandomReads(t *testing.T) {
	needCeph(t)
	c := dial(t, cephEnv.user)
	img := open(t, c, "s1")
	r := rand.New(rand.NewPCG(3, 4))
	var wantBytes int64
	for i := range 50 {
		off := r.Int64N(imageSize)
		n := 1 + r.IntN(9<<20)
		if i%10 == 0 {
			n = 1 + r.IntN(4096) // small ones too
		}
		buf := make([]byte, n)
		got, err := img.ReadAt(buf, off)
		want := min(int64(n), imageSize-off)
		if int64(got) != want || (want < int64(n)) != (err == io.EOF) || (err != nil && err != io.EOF) {
			t.Fatalf("ReadAt(%d bytes at %d) = %d, %v; want %d", n, off, got, err, want)
		}
		if !bytes.Equal(buf[:got], cephEnv.data[off:off+want]) {
			t.Fatalf("ReadAt(%d bytes at %d): wrong bytes", n, off)
		}
		wantBytes += want
	}
	if st := img.Stats(); st.BytesFetched != wantBytes {
		t.Errorf("Stats: %d bytes fetched for %d bytes read", st.BytesFetched, wantBytes)
	}
}

func TestReadVec(t *testing.T) {
	needCeph(t)
	c := dial(t, cephEnv.user)
	img := open(t, c, "s1")
	// 2000 buffers of 4 KiB: several rbd_aio_readv of at most maxSegs buffers
	const nb, bs, off = 2000, 4096, 5<<20 + 7
	bufs := make([][]byte, nb)
	for i := range bufs {
		bufs[i] = make([]byte, bs)
	}
	if err := img.ReadVecAt(bufs, off); err != nil {
		t.Fatal(err)
	}
	if got := bytes.Join(bufs, nil); !bytes.Equal(got, cephEnv.data[off:off+nb*bs]) {
		t.Fatal("ReadVecAt: wrong bytes")
	}
	wantReq := int64((nb + maxSegs - 1) / maxSegs)
	if st := img.Stats(); st.Requests != wantReq || st.BytesFetched != nb*bs {
		t.Errorf("Stats: %d requests, %d bytes; want %d, %d", st.Requests, st.BytesFetched, wantReq, nb*bs)
	}
	// mixed sizes, empty buffers, one buffer larger than a piece
	sizes := []int{0, 1, 511, 6 << 20, 0, 100000, 3}
	bufs = bufs[:0]
	total := 0
	for _, s := range sizes {
		bufs = append(bufs, make([]byte, s))
		total += s
	}
	if err := img.ReadVecAt(bufs, 1234); err != nil {
		t.Fatal(err)
	}
	if got := bytes.Join(bufs, nil); !bytes.Equal(got, cephEnv.data[1234:1234+total]) {
		t.Fatal("ReadVecAt (mixed sizes): wrong bytes")
	}
	// buffers that share one backing array (pinned more than once)
	big := make([]byte, 3<<20)
	bufs = [][]byte{big[:100], big[100 : 1<<20], big[1<<20 : 1<<20], big[1<<20:]}
	if err := img.ReadVecAt(bufs, 999); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(big, cephEnv.data[999:999+3<<20]) {
		t.Fatal("ReadVecAt (one backing array): wrong bytes")
	}
	// up to the end exactly, then one byte past it
	if err := img.ReadVecAt([][]byte{make([]byte, 10), make([]byte, 5)}, imageSize-15); err != nil {
		t.Errorf("ReadVecAt up to the end: %v", err)
	}
	before := img.Stats()
	if err := img.ReadVecAt([][]byte{make([]byte, 10), make([]byte, 6)}, imageSize-15); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("ReadVecAt past the end: %v, want io.ErrUnexpectedEOF", err)
	}
	if img.Stats() != before {
		t.Error("ReadVecAt past the end asked librbd")
	}
}

func TestReadAtEnd(t *testing.T) {
	needCeph(t)
	c := dial(t, cephEnv.user)
	img := open(t, c, "s1")
	buf := make([]byte, 100)
	n, err := img.ReadAt(buf, imageSize-10)
	if n != 10 || err != io.EOF || !bytes.Equal(buf[:10], cephEnv.data[imageSize-10:]) {
		t.Errorf("read crossing the end = %d, %v; want 10, io.EOF and the last 10 bytes", n, err)
	}
	if st := img.Stats(); st.Requests != 1 || st.BytesFetched != 10 {
		t.Errorf("Stats after the crossing read: %+v; want 1 request, 10 bytes", st)
	}
	for _, off := range []int64{imageSize, imageSize + 1, imageSize + 4096, 1 << 50} {
		if n, err := img.ReadAt(buf, off); n != 0 || err != io.EOF {
			t.Errorf("ReadAt at %d (size %d) = %d, %v; want 0, io.EOF", off, imageSize, n, err)
		}
	}
	if n, err := img.ReadAt(nil, imageSize); n != 0 || err != nil {
		t.Errorf("empty ReadAt at the end = %d, %v; want 0, nil", n, err)
	}
	if n, err := img.ReadAt(buf, -1); n != 0 || err == nil {
		t.Errorf("ReadAt at -1 = %d, %v; want an error", n, err)
	}
	if st := img.Stats(); st.Requests != 1 || st.BytesFetched != 10 {
		t.Errorf("reads at or past the end reached librbd: %+v", st)
	}
}

func TestSnapshotKeepsOldBytes(t *testing.T) {
	needCeph(t)
	c := dial(t, cephEnv.user)
	snap, head := open(t, c, "s1"), open(t, c, "")
	for _, rg := range [][2]int64{{0, 8192}, {8<<20 - 4096, 8192}, {imageSize - 5000, 5000}} {
		a, b := make([]byte, rg[1]), make([]byte, rg[1])
		if _, err := snap.ReadAt(a, rg[0]); err != nil {
			t.Fatal(err)
		}
		if _, err := head.ReadAt(b, rg[0]); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, cephEnv.data[rg[0]:rg[0]+rg[1]]) {
			t.Errorf("snapshot at %d: not the imported bytes", rg[0])
		}
		if !bytes.Equal(b, cephEnv.head[rg[0]:rg[0]+rg[1]]) {
			t.Errorf("head at %d: not the bytes written after the snapshot", rg[0])
		}
		if bytes.Equal(a, b) {
			t.Errorf("snapshot and head are equal at %d", rg[0])
		}
	}
}

func TestNotFound(t *testing.T) {
	needCeph(t)
	c := dial(t, cephEnv.user)
	cases := []struct{ pool, image, snap, msg string }{
		{"no-such-pool", cephEnv.image, "s1", `no pool "no-such-pool"`},
		{cephEnv.pool, "no-such-image", "", `no image "no-such-image" in pool "` + cephEnv.pool + `"`},
		{cephEnv.pool, "no-such-image", "s1", `no image "no-such-image" in pool "` + cephEnv.pool + `"`},
		{cephEnv.pool, cephEnv.image, "no-such-snap", `no snapshot "no-such-snap" of image "` + cephEnv.image + `"`},
	}
	for _, tc := range cases {
		img, err := c.OpenImage(tc.pool, tc.image, tc.snap)
		if err == nil {
			img.Close()
			t.Errorf("OpenImage(%q, %q, %q) succeeded", tc.pool, tc.image, tc.snap)
			continue
		}
		if !errors.Is(err, ErrNotFound) || !errors.Is(err, syscall.ENOENT) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("OpenImage(%q, %q, %q): %v; want ErrNotFound naming it (%s)", tc.pool, tc.image, tc.snap, err, tc.msg)
		}
		t.Logf("%v", err)
	}
}

func TestWrongKey(t *testing.T) {
	needCeph(t)
	for _, user := range []string{cephEnv.user, cephEnv.roUser} {
		t0 := time.Now()
		c, err := Connect(context.Background(), Config{ConfFile: cephEnv.badConf, ID: user, Timeout: 10 * time.Second})
		if err == nil {
			c.Close()
			t.Fatalf("Connect as %s with a wrong key succeeded", user)
		}
		if !errors.Is(err, ErrPermission) || !strings.Contains(err.Error(), "client."+user) {
			t.Errorf("Connect with a wrong key: %v; want ErrPermission naming client.%s", err, user)
		}
		t.Logf("%v (%v)", err, time.Since(t0).Round(time.Millisecond))
	}
	// a client the cluster does not know at all
	c, err := Connect(context.Background(), Config{ConfFile: cephEnv.badConf, ID: "admin", Timeout: 10 * time.Second})
	if !errors.Is(err, ErrPermission) {
		if c != nil {
			c.Close()
		}
		t.Errorf("Connect as admin with a wrong key: %v; want ErrPermission", err)
	}
}

func TestConfigErrors(t *testing.T) {
	needCeph(t)
	// no keyring for this client where ceph.conf says: not "not found"
	c, err := Connect(context.Background(), Config{ConfFile: cephEnv.conf, ID: "nobody", Timeout: 10 * time.Second})
	if err == nil {
		c.Close()
		t.Fatal("Connect as client.nobody succeeded")
	}
	if !errors.Is(err, ErrPermission) || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "no key for client.nobody") {
		t.Errorf("Connect without a key: %v; want ErrPermission saying there is no key", err)
	}
	t.Log(err)
	// no mon host: not "no key"
	noMon := filepath.Join(t.TempDir(), "nomon.conf")
	keyring := filepath.Join(filepath.Dir(cephEnv.conf), "ceph.client."+cephEnv.user+".keyring")
	if err := os.WriteFile(noMon, []byte("[global]\nkeyring = "+keyring+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err = Connect(context.Background(), Config{ConfFile: noMon, ID: cephEnv.user, Timeout: 3 * time.Second})
	if err == nil {
		c.Close()
		t.Fatal("Connect without a mon host succeeded")
	}
	if errors.Is(err, ErrPermission) || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "no mon host") {
		t.Errorf("Connect without a mon host: %v; want an error saying so", err)
	}
	t.Log(err)
	missing := filepath.Join(t.TempDir(), "missing.conf")
	c, err = Connect(context.Background(), Config{ConfFile: missing, ID: cephEnv.user})
	if err == nil {
		c.Close()
		t.Fatal("Connect with a missing ceph.conf succeeded")
	}
	if !errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), missing) {
		t.Errorf("Connect with a missing ceph.conf: %v; want fs.ErrNotExist naming the file", err)
	}
	t.Log(err)
	// CEPH_CONF and CEPH_ARGS as the rbd CLI reads them
	t.Setenv("CEPH_CONF", cephEnv.conf)
	t.Setenv("CEPH_ARGS", "--id "+cephEnv.roUser)
	c, err = Connect(context.Background(), Config{})
	if err != nil {
		t.Fatalf("Connect with CEPH_CONF and CEPH_ARGS: %v", err)
	}
	defer c.Close()
	if _, err := c.OpenImage(cephEnv.pool, cephEnv.image, "s1"); err != nil {
		t.Errorf("OpenImage as client.%s from CEPH_ARGS: %v", cephEnv.roUser, err)
	}
}

func TestReadOnlyKey(t *testing.T) {
	needCeph(t)
	c := dial(t, cephEnv.roUser)
	for snap, want := range map[string][]byte{"s1": cephEnv.data, "": cephEnv.head} {
		img := open(t, c, snap)
		buf := make([]byte, 9<<20)
		if _, err := img.ReadAt(buf, 7<<20); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, want[7<<20:16<<20]) {
			t.Errorf("read-only key, snap %q: wrong bytes", snap)
		}
	}
}

func TestConcurrentReads(t *testing.T) {
	needCeph(t)
	c := dial(t, cephEnv.user)
	img := open(t, c, "s1")
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 5))
			for range 10 {
				off, n := r.Int64N(imageSize-(2<<20)), 1+r.IntN(2<<20)
				buf := make([]byte, n)
				if _, err := img.ReadAt(buf, off); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(buf, cephEnv.data[off:off+int64(n)]) {
					errs <- fmt.Errorf("goroutine %d: wrong bytes at %d", g, off)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Cluster.Close closes the image; reading it afterwards is ErrClosed
	c.Close()
	if _, err := img.ReadAt(make([]byte, 10), 0); !errors.Is(err, ErrClosed) {
		t.Errorf("read after Cluster.Close: %v, want ErrClosed", err)
	}
	if _, err := c.OpenImage(cephEnv.pool, cephEnv.image, ""); !errors.Is(err, ErrClosed) {
		t.Errorf("OpenImage after Close: %v, want ErrClosed", err)
	}
}

// TestUnreachable stops the OSD, then the mon: reads and connects fail
// with ErrTimeout within Timeout and a few seconds. It runs last (it
// restarts the daemons at the end).
func TestUnreachable(t *testing.T) {
	needCeph(t)
	const timeout = 3 * time.Second
	c, err := Connect(context.Background(), Config{ConfFile: cephEnv.conf, ID: cephEnv.user, Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	img, err := c.OpenImage(cephEnv.pool, cephEnv.image, "s1")
	if err != nil {
		t.Fatal(err)
	}
	resumed := false
	defer func() {
		if !resumed {
			exec.Command(cephEnv.script, "resume", cephEnv.dir).Run()
		}
	}()

	script(t, "stop-osd")
	t0 := time.Now()
	_, err = img.ReadAt(make([]byte, 1<<20), 12<<20)
	dt := time.Since(t0)
	if !errors.Is(err, ErrTimeout) || dt > timeout+5*time.Second {
		t.Errorf("read with the OSD down: %v after %v; want ErrTimeout within %v", err, dt, timeout+5*time.Second)
	}
	t.Logf("read with the OSD down: %v after %v", err, dt.Round(time.Millisecond))

	script(t, "stop-mon")
	t0 = time.Now()
	c2, err := Connect(context.Background(), Config{ConfFile: cephEnv.conf, ID: cephEnv.user, Timeout: timeout})
	dt = time.Since(t0)
	if err == nil {
		c2.Close()
	}
	if !errors.Is(err, ErrTimeout) || dt > timeout+3*time.Second {
		t.Errorf("Connect with the mon down: %v after %v; want ErrTimeout within %v", err, dt, timeout+3*time.Second)
	}
	t.Logf("Connect with the mon down: %v after %v", err, dt.Round(time.Millisecond))

	// ctx ends before Timeout: Connect returns then
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	t0 = time.Now()
	c3, err := Connect(ctx, Config{ConfFile: cephEnv.conf, ID: cephEnv.user, Timeout: 30 * time.Second})
	dt = time.Since(t0)
	if err == nil {
		c3.Close()
	}
	if !errors.Is(err, context.DeadlineExceeded) || dt > 2*time.Second {
		t.Errorf("Connect with a 1s context and the mon down: %v after %v", err, dt)
	}

	script(t, "resume")
	resumed = true
	// the image opened before still works once the cluster is back
	buf := make([]byte, 1<<20)
	if _, err := img.ReadAt(buf, 12<<20); err != nil || !bytes.Equal(buf, cephEnv.data[12<<20:13<<20]) {
		t.Errorf("read after the cluster came back: %v", err)
	}
}
