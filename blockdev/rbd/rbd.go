// Package rbd reads Ceph RBD images (and their snapshots) read-only, as a
// blockdev.Device: a thin cgo binding to librados and librbd.
//
// It is built with cgo on Linux (Debian packages librbd-dev and
// librados-dev; link -lrbd -lrados). Elsewhere, with CGO_ENABLED=0 or with
// the build tag noceph, Connect fails with ErrNoCeph and the rest of imgfs
// builds as usual.
//
// A Glance image on an rbd store is an RBD image named after the Glance
// image id, with a protected snapshot "snap"; its location is
// "rbd://FSID/POOL/IMAGE/SNAP" (ParseLocation).
//
//	c, err := rbd.Connect(ctx, rbd.Config{ID: "glance"})
//	img, err := c.OpenImage("images", id, "snap")
//	n, err := img.ReadAt(p, off)
//
// Reads issue several asynchronous librbd reads at once (pieces of at most
// 4 MiB, up to 8 in flight) straight into the caller's buffers.
package rbd

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"
)

// Errors callers test with errors.Is. Each is wrapped with what was being
// done (and which pool, image or snapshot); errors that come from librados or
// librbd also match their syscall.Errno.
var (
	// ErrNoCeph is returned by Connect in a build without librados/librbd.
	ErrNoCeph = errors.New("built without Ceph support (needs linux, cgo, librbd-dev and librados-dev)")
	// ErrNotFound means a missing pool, image or snapshot (ENOENT).
	ErrNotFound = errors.New("pool, image or snapshot not found")
	// ErrPermission means cephx rejected the key, or the key lacks the
	// capabilities for the operation (EACCES, EPERM).
	ErrPermission = errors.New("key rejected or no permission")
	// ErrTimeout means the cluster (a mon or an OSD) did not answer within
	// Config.Timeout (ETIMEDOUT).
	ErrTimeout = errors.New("cluster unreachable")
	// ErrClosed means the Cluster or Image was closed.
	ErrClosed = errors.New("closed")
)

// DefaultConfFile is the ceph.conf read when neither Config.ConfFile nor
// $CEPH_CONF says otherwise.
const DefaultConfFile = "/etc/ceph/ceph.conf"

// DefaultTimeout is the Config.Timeout used when it is zero.
const DefaultTimeout = 30 * time.Second

// Config says how to reach a cluster. The zero Config behaves like the rbd
// CLI: $CEPH_CONF (else /etc/ceph/ceph.conf), the id from $CEPH_ARGS (else
// "admin"), and the keyring that ceph.conf names (librados reads it).
type Config struct {
	// ConfFile is the ceph.conf to read; default $CEPH_CONF, else
	// /etc/ceph/ceph.conf. It names the mons and the keyring.
	ConfFile string
	// ID is the client id without "client." (a leading "client." is
	// accepted); default as the rbd CLI: --id, --user or --name in
	// $CEPH_ARGS, else "admin".
	ID string
	// Timeout bounds connecting and each operation on the cluster (it sets
	// client_mount_timeout, rados_mon_op_timeout and rados_osd_op_timeout,
	// in whole seconds, rounded up); default 30 s. librados's own default
	// is to wait 300 s for a dead mon and forever for an OSD.
	Timeout time.Duration
}

// ConfPath returns the ceph.conf Connect reads: ConfFile, else
// $CEPH_CONF, else DefaultConfFile.
func (cfg Config) ConfPath() string { return cfg.confFile() }

// Client returns the client name Connect uses ("client.ID").
func (cfg Config) Client() string {
	id, err := cfg.clientID()
	if err != nil {
		return "client.?"
	}
	return "client." + id
}

// TimeoutOrDefault returns Timeout, or DefaultTimeout when it is zero.
func (cfg Config) TimeoutOrDefault() time.Duration { return cfg.timeout() }

// confFile returns the ceph.conf path Connect reads.
func (cfg Config) confFile() string {
	if cfg.ConfFile != "" {
		return cfg.ConfFile
	}
	if p := os.Getenv("CEPH_CONF"); p != "" {
		return p
	}
	return DefaultConfFile
}

// clientID returns the client id Connect uses (without "client.").
func (cfg Config) clientID() (string, error) {
	if cfg.ID != "" {
		return strings.TrimPrefix(cfg.ID, "client."), nil
	}
	id, err := idFromCephArgs(os.Getenv("CEPH_ARGS"))
	if err != nil {
		return "", err
	}
	if id != "" {
		return id, nil
	}
	return "admin", nil
}

// timeout returns cfg.Timeout or its default.
func (cfg Config) timeout() time.Duration {
	if cfg.Timeout > 0 {
		return cfg.Timeout
	}
	return DefaultTimeout
}

// idFromCephArgs finds the client id in $CEPH_ARGS as the Ceph CLIs do:
// --id X, --user X, -i X, --name client.X or -n client.X (also with "=").
// It returns "" if none is given.
func idFromCephArgs(args string) (string, error) {
	f := strings.Fields(args)
	id := ""
	for i := 0; i < len(f); i++ {
		opt, val, hasVal := strings.Cut(f[i], "=")
		switch opt {
		case "--id", "--user", "-i", "--name", "-n":
		default:
			continue
		}
		if !hasVal {
			if i+1 >= len(f) {
				return "", fmt.Errorf("rbd: CEPH_ARGS: %s needs a value", opt)
			}
			i++
			val = f[i]
		}
		if opt == "--name" || opt == "-n" {
			typ, rest, ok := strings.Cut(val, ".")
			if !ok || typ != "client" || rest == "" {
				return "", fmt.Errorf("rbd: CEPH_ARGS: %s %s: not a client name (client.ID)", opt, val)
			}
			val = rest
		}
		id = val // the last one wins, as in Ceph's argument parser
	}
	return id, nil
}

// mountSeconds converts a timeout to the whole seconds librados takes,
// rounding up, at least 1.
func mountSeconds(d time.Duration) int64 {
	s := int64((d + time.Second - 1) / time.Second)
	return max(s, 1)
}

// cephError is an error code from librados or librbd. It matches its Errno
// and, for the codes callers act on, one of the sentinels above.
type cephError struct {
	errno syscall.Errno
	kind  error // ErrNotFound, ErrPermission, ErrTimeout or nil
}

func (e *cephError) Error() string {
	if e.kind != nil {
		return e.kind.Error() + " (" + e.errno.Error() + ")"
	}
	return e.errno.Error()
}

func (e *cephError) Unwrap() []error {
	if e.kind != nil {
		return []error{e.kind, e.errno}
	}
	return []error{e.errno}
}

// errFromRet turns a negative librados/librbd return value into an error.
func errFromRet(ret int) error {
	if ret >= 0 {
		return nil
	}
	e := &cephError{errno: syscall.Errno(-ret)}
	switch e.errno {
	case syscall.ENOENT:
		e.kind = ErrNotFound
	case syscall.EACCES, syscall.EPERM:
		e.kind = ErrPermission
	case syscall.ETIMEDOUT:
		e.kind = ErrTimeout
	}
	return e
}

// Spec names an RBD image, and optionally one of its snapshots.
type Spec struct {
	Pool  string // pool name
	Image string // image name (for Glance: the Glance image id)
	Snap  string // snapshot name; "" means the image's head
}

// String returns the spec in the form ParseSpec reads: rbd:POOL/IMAGE[@SNAP].
func (s Spec) String() string {
	return "rbd:" + s.path()
}

// path returns POOL/IMAGE[@SNAP], for error messages.
func (s Spec) path() string {
	p := s.Pool + "/" + s.Image
	if s.Snap != "" {
		p += "@" + s.Snap
	}
	return p
}

// ParseSpec reads an image spec in QEMU's spelling, "rbd:POOL/IMAGE" or
// "rbd:POOL/IMAGE@SNAP". Namespaces (POOL/NS/IMAGE) and QEMU's options
// after ':' (":conf=...", ":id=...") are refused: Config says how to reach
// the cluster.
func ParseSpec(s string) (Spec, error) {
	if strings.HasPrefix(s, "rbd://") {
		return Spec{}, fmt.Errorf("rbd: spec %q is a Glance location (read it with ParseLocation): want rbd:POOL/IMAGE[@SNAP]", s)
	}
	rest, ok := strings.CutPrefix(s, "rbd:")
	if !ok {
		return Spec{}, fmt.Errorf("rbd: spec %q: want rbd:POOL/IMAGE[@SNAP]", s)
	}
	if strings.Contains(rest, ":") {
		return Spec{}, fmt.Errorf("rbd: spec %q: options after ':' are not supported (use the ceph.conf and client id settings): want rbd:POOL/IMAGE[@SNAP]", s)
	}
	path, snap, hasSnap := strings.Cut(rest, "@")
	pool, image, ok := strings.Cut(path, "/")
	switch {
	case !ok || pool == "" || image == "":
		return Spec{}, fmt.Errorf("rbd: spec %q: want rbd:POOL/IMAGE[@SNAP]", s)
	case strings.Contains(image, "/"):
		return Spec{}, fmt.Errorf("rbd: spec %q: RBD namespaces (POOL/NAMESPACE/IMAGE) are not supported", s)
	case hasSnap && (snap == "" || strings.Contains(snap, "@")):
		return Spec{}, fmt.Errorf("rbd: spec %q: bad snapshot name after '@'", s)
	}
	return Spec{Pool: pool, Image: image, Snap: snap}, nil
}

// ParseLocation reads the location Glance's rbd store gives an image,
// "rbd://FSID/POOL/IMAGE/SNAP" (each part URL-escaped), and returns the
// cluster's fsid and the image spec. The fsid may be empty; the old
// one-part form "rbd://IMAGE" (no pool) is refused.
func ParseLocation(loc string) (fsid string, spec Spec, err error) {
	rest, ok := strings.CutPrefix(loc, "rbd://")
	if !ok {
		return "", Spec{}, fmt.Errorf("rbd: location %q: not an rbd:// URL", loc)
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 4 {
		return "", Spec{}, fmt.Errorf("rbd: location %q: want rbd://FSID/POOL/IMAGE/SNAPSHOT", loc)
	}
	for i, p := range parts {
		u, err := url.PathUnescape(p)
		if err != nil {
			return "", Spec{}, fmt.Errorf("rbd: location %q: %w", loc, err)
		}
		parts[i] = u
	}
	if parts[1] == "" || parts[2] == "" {
		return "", Spec{}, fmt.Errorf("rbd: location %q: empty pool or image name", loc)
	}
	return parts[0], Spec{Pool: parts[1], Image: parts[2], Snap: parts[3]}, nil
}
