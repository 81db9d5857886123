package imgfs

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/blockdev/rbd"
	"github.com/imgfs/imgfs/blockdev/remote"
	"github.com/imgfs/imgfs/cloud"
)

// ModeRBD is the read mode (Image.Mode, Info.Source["mode"]) of an image
// read directly from a Ceph cluster.
const ModeRBD remote.Mode = "rbd"

// errNoCephConfig means the ceph.conf to read is not there.
var errNoCephConfig = errors.New("no Ceph config")

// isRBDSpec reports whether SOURCE is in QEMU's RBD spelling,
// rbd:POOL/IMAGE[@SNAP] (not a Glance rbd:// location).
func isRBDSpec(spec string) bool {
	return strings.HasPrefix(spec, "rbd:") && !strings.HasPrefix(spec, "rbd://")
}

// rbdDevice is an opened RBD image as a cache's device below: it reports
// ModeRBD, counts the librbd reads, and after a read that timed out (an OSD
// or the network went away) it reconnects before the next read: a
// librados client whose OSD was restarted may keep timing out on its old
// connection. A reconnection must find the same cluster (fsid) and an
// image of the same size.
type rbdDevice struct {
	cfg  rbd.Config
	spec rbd.Spec
	fsid string
	size int64

	mu      sync.RWMutex
	cluster *rbd.Cluster
	image   *rbd.Image
	stale   atomic.Bool    // the last read timed out: reconnect first
	old     blockdev.Stats // counters of replaced images

	untrimmed atomic.Int64 // bytes read since the last rbd.TrimMemory
}

// trimEvery is how many bytes read from RBD between returns of the C
// heap's free memory to the system.
const trimEvery = 32 << 20

func newRBDDevice(cfg rbd.Config, c *rbd.Cluster, im *rbd.Image) *rbdDevice {
	return &rbdDevice{cfg: cfg, spec: im.Spec(), fsid: c.FSID(), size: im.Size(), cluster: c, image: im}
}

// Mode implements remote.ModeReporter.
func (*rbdDevice) Mode() remote.Mode { return ModeRBD }

// Size returns the image's size.
func (d *rbdDevice) Size() int64 { return d.size }

// Stats returns the librbd read counters of every connection made.
func (d *rbdDevice) Stats() blockdev.Stats {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.old.Add(d.image.Stats())
}

// ReadAt implements io.ReaderAt.
func (d *rbdDevice) ReadAt(p []byte, off int64) (int, error) {
	var n int
	err := d.do(int64(len(p)), func(im *rbd.Image) error {
		var err error
		n, err = im.ReadAt(p, off)
		return err
	})
	return n, err
}

// ReadVecAt implements blockdev.VectorReader.
func (d *rbdDevice) ReadVecAt(bufs [][]byte, off int64) error {
	want := int64(0)
	for _, b := range bufs {
		want += int64(len(b))
	}
	return d.do(want, func(im *rbd.Image) error { return im.ReadVecAt(bufs, off) })
}

// do runs read on the current connection; want is the bytes it asks for.
// Reads run in parallel (a read lock each); only a reconnect excludes them.
func (d *rbdDevice) do(want int64, read func(*rbd.Image) error) error {
	if err := d.reconnectIfStale(); err != nil {
		return err
	}
	d.mu.RLock()
	err := read(d.image)
	d.mu.RUnlock()
	if err == nil && d.untrimmed.Add(want) >= trimEvery && d.untrimmed.Swap(0) >= trimEvery {
		rbd.TrimMemory()
	}
	if errors.Is(err, rbd.ErrTimeout) {
		d.stale.Store(true)
	}
	return err
}

// reconnectIfStale replaces the connection after a timed-out read.
func (d *rbdDevice) reconnectIfStale() error {
	if !d.stale.Load() {
		return nil // the common case: no lock, so reads stay parallel
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.stale.Load() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), d.cfg.TimeoutOrDefault())
	defer cancel()
	c, err := rbd.Connect(ctx, d.cfg)
	if err != nil {
		return fmt.Errorf("%s: reconnect after a timeout: %w", d.spec, err)
	}
	if c.FSID() != d.fsid {
		c.Close()
		return fmt.Errorf("%s: reconnect after a timeout: cluster fsid is now %s, was %s: %w", d.spec, c.FSID(), d.fsid, remote.ErrRemote)
	}
	im, err := c.OpenImage(d.spec.Pool, d.spec.Image, d.spec.Snap)
	if err != nil {
		c.Close()
		return fmt.Errorf("%s: reconnect after a timeout: %w", d.spec, err)
	}
	if im.Size() != d.size {
		im.Close()
		c.Close()
		return fmt.Errorf("%s: reconnect after a timeout: size is now %d, was %d: %w", d.spec, im.Size(), d.size, remote.ErrRemote)
	}
	d.old = d.old.Add(d.image.Stats())
	d.image.Close()
	d.cluster.Close()
	d.cluster, d.image = c, im
	d.stale.Store(false)
	return nil
}

// Close closes the image and the connection.
func (d *rbdDevice) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	err := d.image.Close()
	d.cluster.Close()
	return err
}

// openRBDSpec opens SOURCE rbd:POOL/IMAGE[@SNAP] read-only behind a block
// cache.
func openRBDSpec(ctx context.Context, spec string, opts Options) (*source, error) {
	s, err := rbd.ParseSpec(spec)
	if err != nil {
		return nil, err
	}
	c, err := connectCeph(ctx, opts.Ceph)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", spec, err)
	}
	im, err := c.OpenImage(s.Pool, s.Image, s.Snap)
	if err != nil {
		c.Close()
		return nil, err
	}
	d, err := newRBDSource(newRBDDevice(opts.Ceph, c, im), opts.Cache)
	if err != nil {
		return nil, err
	}
	d.info = map[string]any{"kind": "rbd", "spec": s.String(), "fsid": c.FSID(), "size": im.Size(), "mode": liveMode{d.dev.(*remote.Cache)}}
	return d, nil
}

// connectCeph connects as opts says, after checking that the ceph.conf
// exists (librados's own message for a missing one is vague).
func connectCeph(ctx context.Context, cfg rbd.Config) (*rbd.Cluster, error) {
	if !rbd.Supported {
		return nil, fmt.Errorf("rbd: %w", rbd.ErrNoCeph)
	}
	if _, err := os.Stat(cfg.ConfPath()); err != nil {
		return nil, fmt.Errorf("%w: %w", errNoCephConfig, err)
	}
	return rbd.Connect(ctx, cfg)
}

// newRBDSource puts a block cache in front of an opened RBD image; closing
// the source closes the cache, the image and the cluster connection.
func newRBDSource(d *rbdDevice, co remote.CacheOptions) (*source, error) {
	cache, err := remote.NewCache(d, co)
	if err != nil {
		d.Close()
		return nil, err
	}
	return &source{
		dev: cache,
		close: func() error {
			cache.Close()
			return d.Close()
		},
		stats: cache.Stats,
	}, nil
}

// direct is the outcome of choosing how to read a Glance image.
type direct struct {
	// image and cluster are open when the image is read from RBD.
	image   *rbd.Image
	cluster *rbd.Cluster
	// reason is Info.Source["direct"]: "used: ..." or "not used: ...".
	reason string
	// rbdLocated: the image has an rbd:// location (a fallback then
	// deserves a note on stderr).
	rbdLocated bool
}

// chooseDirect decides whether a Glance image of size bytes whose
// locations are locs is read directly from RBD: only from a cluster whose
// fsid is the location's, at the location's snapshot, and only if the RBD
// image has Glance's size. It connects with cfg and opens the image; the
// caller owns what it returns open.
func chooseDirect(ctx context.Context, locs []string, size int64, cfg rbd.Config, noDirect bool) direct {
	var rbdLocs []string
	var schemes []string
	for _, l := range locs {
		if strings.HasPrefix(l, "rbd://") {
			rbdLocs = append(rbdLocs, l)
		} else if u, err := url.Parse(l); err == nil && u.Scheme != "" {
			schemes = append(schemes, u.Scheme)
		}
	}
	switch {
	case len(locs) == 0:
		return direct{reason: "not used: no location shown (Glance's show_image_direct_url is off)"}
	case len(rbdLocs) == 0:
		return direct{reason: fmt.Sprintf("not used: the image's location is not on RBD (%s)", strings.Join(schemes, ", "))}
	}
	d := direct{rbdLocated: true}
	if noDirect {
		d.reason = "not used: disabled (--no-direct)"
		return d
	}
	c, err := connectCeph(ctx, cfg)
	if err != nil {
		d.reason = "not used: " + describeCephError(err, cfg)
		return d
	}
	// Try every rbd location (several copies may exist); the reason kept
	// is the first location's.
	for _, l := range rbdLocs {
		reason := ""
		fsid, spec, err := rbd.ParseLocation(l)
		switch {
		case err != nil:
			reason = fmt.Sprintf("not used: unreadable location: %v", err)
		case fsid == "":
			reason = fmt.Sprintf("not used: location %s names no cluster fsid", spec)
		case !strings.EqualFold(fsid, c.FSID()):
			reason = fmt.Sprintf("fsid mismatch: location %s, cluster %s (%s)", fsid, c.FSID(), cfg.ConfPath())
			reason = "not used: " + reason
		}
		if reason == "" {
			im, err := c.OpenImage(spec.Pool, spec.Image, spec.Snap)
			switch {
			case err != nil:
				reason = "not used: " + describeCephError(err, cfg)
			case im.Size() != size:
				reason = fmt.Sprintf("not used: size mismatch: %s has %d bytes, Glance says %d", spec, im.Size(), size)
				im.Close()
			default:
				return direct{image: im, cluster: c, rbdLocated: true,
					reason: fmt.Sprintf("used: %s on cluster %s as %s", spec, c.FSID(), cfg.Client())}
			}
		}
		if d.reason == "" {
			d.reason = reason
		}
	}
	c.Close()
	return d
}

// describeCephError words why the cluster could not be used, starting
// with the kind of problem the README lists.
func describeCephError(err error, cfg rbd.Config) string {
	switch {
	case errors.Is(err, rbd.ErrNoCeph):
		return "built without Ceph support"
	case errors.Is(err, errNoCephConfig):
		return fmt.Sprintf("no Ceph config (%s)", cfg.ConfPath())
	case errors.Is(err, rbd.ErrPermission):
		return fmt.Sprintf("permission denied (%s): %v", cfg.Client(), err)
	case errors.Is(err, rbd.ErrNotFound):
		return fmt.Sprintf("image or snapshot missing: %v", err)
	case errors.Is(err, rbd.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return fmt.Sprintf("cluster unreachable within %s: %v", cfg.TimeoutOrDefault(), err)
	}
	return fmt.Sprintf("cannot use the cluster (%s): %v", cfg.ConfPath(), err)
}

// openGlanceDirect opens a Glance image's data from RBD when chooseDirect
// allows it, else over Glance's HTTP API. The metadata, the key and the
// checksum come from Glance either way.
func openGlanceDirect(ctx context.Context, sess *cloud.Session, img *cloud.GlanceImage, opts Options) (*source, error) {
	d := chooseDirect(ctx, img.DirectLocations(), img.Size, opts.Ceph, opts.NoDirect)
	hash := img.Hash()
	if d.image == nil {
		g, err := cloud.OpenGlanceData(ctx, sess, img, cloud.GlanceOptions{HTTP: opts.HTTP, Cache: opts.Cache, SkipChecksum: opts.SkipChecksum})
		if err != nil {
			return nil, err
		}
		src := &source{dev: g, info: map[string]any{"mode": liveMode{g}, "direct": d.reason}, close: g.Close, stats: g.Stats}
		if g.Verifiable() {
			src.verify = g.Verify
		}
		if d.rbdLocated && !opts.NoDirect {
			src.directNote = fmt.Sprintf("glance image %s: reading over Glance's API, not directly from RBD: %s", img.ID, strings.TrimPrefix(d.reason, "not used: "))
		}
		return src, nil
	}
	co := opts.Cache
	check := hash.Supported() && !opts.SkipChecksum
	if check {
		co.Hash = hash
	}
	src, err := newRBDSource(newRBDDevice(opts.Ceph, d.cluster, d.image), co)
	if err != nil {
		return nil, err
	}
	cache := src.dev.(*remote.Cache)
	src.info = map[string]any{"mode": liveMode{cache}, "direct": d.reason}
	if check {
		src.verify = cache.Verify
	}
	return src, nil
}

var (
	_ blockdev.Device        = (*rbdDevice)(nil)
	_ blockdev.VectorReader  = (*rbdDevice)(nil)
	_ blockdev.StatsReporter = (*rbdDevice)(nil)
)
