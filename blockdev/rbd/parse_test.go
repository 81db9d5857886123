package rbd

import (
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseSpec(t *testing.T) {
	good := map[string]Spec{
		"rbd:images/abc":          {Pool: "images", Image: "abc"},
		"rbd:images/abc@snap":     {Pool: "images", Image: "abc", Snap: "snap"},
		"rbd:p/0b9a-uuid@my-snap": {Pool: "p", Image: "0b9a-uuid", Snap: "my-snap"},
	}
	for in, want := range good {
		got, err := ParseSpec(in)
		if err != nil || got != want {
			t.Errorf("ParseSpec(%q) = %+v, %v; want %+v", in, got, err, want)
		}
		if got.String() != in {
			t.Errorf("Spec.String() = %q, want %q", got.String(), in)
		}
	}
	bad := map[string]string{
		"images/abc":                   "want rbd:POOL/IMAGE",
		"rbd:":                         "want rbd:POOL/IMAGE",
		"rbd:images":                   "want rbd:POOL/IMAGE",
		"rbd:/abc":                     "want rbd:POOL/IMAGE",
		"rbd:images/":                  "want rbd:POOL/IMAGE",
		"rbd:images/abc@":              "bad snapshot",
		"rbd:images/abc@a@b":           "bad snapshot",
		"rbd:images/ns/abc":            "namespaces",
		"rbd:images/abc:conf=/x.conf":  "options after ':'",
		"rbd:images/abc@s:id=glance":   "options after ':'",
		"rbd://fsid/images/abc/snap":   "Glance location",
		"rbd:images/abc@snap:keyring=": "options after ':'",
	}
	for in, want := range bad {
		if s, err := ParseSpec(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseSpec(%q) = %+v, %v; want an error containing %q", in, s, err, want)
		}
	}
}

func TestParseLocation(t *testing.T) {
	fsid, s, err := ParseLocation("rbd://6080866d-10a2-4b09-a286-08a0b0e6e33d/images/0b9a7e4c-1111-2222-3333-444455556666/snap")
	if err != nil || fsid != "6080866d-10a2-4b09-a286-08a0b0e6e33d" ||
		s != (Spec{Pool: "images", Image: "0b9a7e4c-1111-2222-3333-444455556666", Snap: "snap"}) {
		t.Errorf("ParseLocation = %q, %+v, %v", fsid, s, err)
	}
	// glance_store URL-quotes each part
	if fsid, s, err := ParseLocation("rbd://f/my%20pool/im%2Fg/sn%40p"); err != nil || fsid != "f" ||
		s != (Spec{Pool: "my pool", Image: "im/g", Snap: "sn@p"}) {
		t.Errorf("ParseLocation(escaped) = %q, %+v, %v", fsid, s, err)
	}
	if fsid, s, err := ParseLocation("rbd:///images/img/"); err != nil || fsid != "" || s != (Spec{Pool: "images", Image: "img"}) {
		t.Errorf("ParseLocation(no fsid, no snap) = %q, %+v, %v", fsid, s, err)
	}
	for _, in := range []string{"rbd://img", "rbd://f/images/img", "rbd://f/images/img/snap/x",
		"rbd:images/img", "file:///var/lib/glance/images/x", "rbd://f//img/snap", "rbd://f/p/%zz/snap"} {
		if f, s, err := ParseLocation(in); err == nil {
			t.Errorf("ParseLocation(%q) = %q, %+v: want an error", in, f, s)
		}
	}
}

func TestClientID(t *testing.T) {
	cases := map[string]string{
		"":                                   "admin",
		"--id glance":                        "glance",
		"--id=glance":                        "glance",
		"--user glance":                      "glance",
		"-c /x.conf --name client.glance-ro": "glance-ro",
		"-n client.a --id b":                 "b",
		"--keyring /k -i x":                  "x",
	}
	for args, want := range cases {
		t.Setenv("CEPH_ARGS", args)
		if got, err := (Config{}).clientID(); err != nil || got != want {
			t.Errorf("CEPH_ARGS=%q: id %q, %v; want %q", args, got, err, want)
		}
	}
	for _, args := range []string{"--name osd.0", "--id", "-n client."} {
		t.Setenv("CEPH_ARGS", args)
		if got, err := (Config{}).clientID(); err == nil {
			t.Errorf("CEPH_ARGS=%q: id %q, want an error", args, got)
		}
	}
	t.Setenv("CEPH_ARGS", "--id other")
	if got, _ := (Config{ID: "client.glance"}).clientID(); got != "glance" {
		t.Errorf("Config.ID client.glance: id %q", got)
	}
}

func TestDefaults(t *testing.T) {
	t.Setenv("CEPH_CONF", "")
	if got := (Config{}).confFile(); got != DefaultConfFile {
		t.Errorf("conf file %q", got)
	}
	t.Setenv("CEPH_CONF", "/tmp/x.conf")
	if got := (Config{}).confFile(); got != "/tmp/x.conf" {
		t.Errorf("conf file with $CEPH_CONF: %q", got)
	}
	if got := (Config{ConfFile: "/y"}).confFile(); got != "/y" {
		t.Errorf("conf file %q", got)
	}
	if (Config{}).timeout() != 30*time.Second {
		t.Errorf("default timeout %v", (Config{}).timeout())
	}
	for d, want := range map[time.Duration]int64{0: 1, time.Millisecond: 1, time.Second: 1, 3 * time.Second: 3, 3100 * time.Millisecond: 4} {
		if got := mountSeconds(d); got != want {
			t.Errorf("mountSeconds(%v) = %d, want %d", d, got, want)
		}
	}
}

func TestErrFromRet(t *testing.T) {
	for ret, kind := range map[int]error{-2: ErrNotFound, -13: ErrPermission, -1: ErrPermission, -110: ErrTimeout} {
		err := errFromRet(ret)
		if !errors.Is(err, kind) || !errors.Is(err, syscall.Errno(-ret)) {
			t.Errorf("errFromRet(%d) = %v: not %v and errno %d", ret, err, kind, -ret)
		}
	}
	err := errFromRet(-int(syscall.EIO))
	if !errors.Is(err, syscall.EIO) || errors.Is(err, ErrNotFound) || err.Error() != syscall.EIO.Error() {
		t.Errorf("errFromRet(-EIO) = %v", err)
	}
	if errFromRet(0) != nil || errFromRet(5) != nil {
		t.Error("errFromRet of a non-negative value is not nil")
	}
}
