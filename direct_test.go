package imgfs

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imgfs/imgfs/blockdev/rbd"
)

// chooseDirect without a cluster: the reasons that need none.
func TestChooseDirectWithoutCluster(t *testing.T) {
	ctx := context.Background()
	missing := rbd.Config{ConfFile: filepath.Join(t.TempDir(), "ceph.conf")}
	for _, c := range []struct {
		locs     []string
		noDirect bool
		want     string
		rbd      bool
	}{
		{nil, false, "not used: no location shown (Glance's show_image_direct_url is off)", false},
		{[]string{"file:///var/lib/glance/images/x"}, false, "not used: the image's location is not on RBD (file)", false},
		{[]string{"rbd://f/images/x/snap"}, true, "not used: disabled (--no-direct)", true},
		{[]string{"rbd://f/images/x/snap"}, false, "not used: no Ceph config (" + missing.ConfFile + ")", true},
	} {
		d := chooseDirect(ctx, c.locs, 1, missing, c.noDirect)
		if !rbd.Supported && c.want != "" && strings.Contains(c.want, "no Ceph config") {
			c.want = "not used: built without Ceph support"
		}
		if d.image != nil || d.reason != c.want || d.rbdLocated != c.rbd {
			t.Errorf("chooseDirect(%v, noDirect %v) = %q (rbd %v), want %q (rbd %v)", c.locs, c.noDirect, d.reason, d.rbdLocated, c.want, c.rbd)
		}
	}
}

// chooseDirect against the test cluster (tests/with-cloud.sh exports
// CEPH_CONF and CEPHL_FSID): crafted locations that Glance would not give
// — another cluster's fsid, a missing snapshot, a size that is not
// Glance's — are never read; the right one is.
func TestChooseDirectRealCluster(t *testing.T) {
	fsid := os.Getenv("CEPHL_FSID")
	if os.Getenv("CEPH_CONF") == "" || fsid == "" || !rbd.Supported {
		if os.Getenv("CI") == "true" {
			t.Fatal("no test Ceph cluster (CEPH_CONF, CEPHL_FSID): run through tests/with-cloud.sh")
		}
		t.Skip("SKIP: no test Ceph cluster: run `tests/with-cloud.sh go test .` to test the RBD path choice")
	}
	pool := os.Getenv("CEPHL_POOL")
	name := "imgfs-choose-" + strings.ReplaceAll(time.Now().Format("150405.000000"), ".", "")
	data := bytes.Repeat([]byte("imgfs direct "), 100000)
	src := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	rbdCLI := func(args ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if out, err := exec.CommandContext(ctx, "rbd", append([]string{"--client-mount-timeout", "15"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("rbd %v: %v: %s", args, err, out)
		}
	}
	rbdCLI("import", src, pool+"/"+name)
	t.Cleanup(func() {
		exec.Command("rbd", "snap", "purge", pool+"/"+name).Run()
		exec.Command("rbd", "rm", pool+"/"+name).Run()
	})
	rbdCLI("snap", "create", pool+"/"+name+"@snap")
	ctx := context.Background()
	cfg := rbd.Config{Timeout: 10 * time.Second}
	size := int64(len(data))
	loc := func(fsid, snap string) string { return "rbd://" + fsid + "/" + pool + "/" + name + "/" + snap }
	other := "00000000-1111-2222-3333-444444444444"
	for _, c := range []struct {
		locs []string
		size int64
		want string
	}{
		{[]string{loc(other, "snap")}, size, "not used: fsid mismatch: location " + other + ", cluster " + fsid},
		{[]string{loc(fsid, "nosnap")}, size, `not used: image or snapshot missing: rbd: open ` + pool + "/" + name + `@nosnap: no snapshot "nosnap"`},
		{[]string{"rbd://" + fsid + "/" + pool + "/no-such-image/snap"}, size, "not used: image or snapshot missing"},
		{[]string{loc(fsid, "snap")}, size + 1, "not used: size mismatch"},
		{[]string{loc(other, "snap"), loc(fsid, "snap")}, size, "used: rbd:" + pool + "/" + name + "@snap on cluster " + fsid},
		{[]string{"file:///x", loc(fsid, "snap")}, size, "used: rbd:"},
	} {
		d := chooseDirect(ctx, c.locs, c.size, cfg, false)
		if !strings.HasPrefix(d.reason, c.want) {
			t.Errorf("chooseDirect(%v, %d) = %q, want %q...", c.locs, c.size, d.reason, c.want)
		}
		if d.image == nil {
			if strings.HasPrefix(c.want, "used:") {
				t.Errorf("chooseDirect(%v): no image opened", c.locs)
			}
			continue
		}
		if strings.HasPrefix(c.want, "not used") {
			t.Errorf("chooseDirect(%v) opened an image", c.locs)
		}
		dev := newRBDDevice(cfg, d.cluster, d.image)
		got := make([]byte, len(data))
		if _, err := dev.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
			t.Errorf("read through the chosen image: %v, equal %v", err, bytes.Equal(got, data))
		}
		dev.Close()
	}
}
