package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/urfave/cli/v2"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/cmd/imgfs/internal/image"
	"github.com/imgfs/imgfs/keyring"
)

// source is an opened SOURCE argument: the bytes as stored plus what the
// place it came from says about them (Glance metadata, for instance).
type source struct {
	dev blockdev.Device
	// info is shown under "source" in `imgfs info`; never secrets.
	info map[string]any
	// statedFormat, statedEncrypted and statedDecryptSize come from
	// metadata, not from magic.
	statedFormat      string
	statedEncrypted   bool
	statedDecryptSize int64
	// key is the Barbican secret named by --key-id or the image's
	// metadata; the key flags (--passphrase-file, --key-file) win over it.
	key   keyring.Source
	close func() error
	// stats returns the remote counters; nil for local files.
	stats func() blockdev.Stats
	// verify checks a completely read image against the checksum its
	// metadata states; nil when there is none.
	verify func(ctx context.Context) error
}

// sourceFlags select and tune remote sources (http(s) URLs, Glance images)
// and the Barbican key.
func sourceFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "os-cloud", EnvVars: []string{"OS_CLOUD"}, Usage: "clouds.yaml entry `NAME` for Glance and Barbican (default: OS_CLOUD, else the OS_* variables)"},
		&cli.StringFlag{Name: "key-id", Usage: "Barbican secret `ID` (or href) holding the key (default: the image's os_encrypt_key_id, else cinder_encryption_key_id)"},
		&cli.StringFlag{Name: "cache-dir", Usage: "`DIR` for the download of a server that ignores Range (default $XDG_CACHE_HOME/imgfs)"},
		&cli.StringFlag{Name: "cache-size", Value: "256MiB", Usage: "memory for cached blocks of a remote image"},
		&cli.StringFlag{Name: "block-size", Value: "1MiB", Usage: "unit of remote reads and of the cache"},
		&cli.IntFlag{Name: "parallel", Value: blockdev.DefaultParallel, Usage: "concurrent requests to a remote source (read-ahead uses them)"},
		&cli.DurationFlag{Name: "http-stall-timeout", Value: blockdev.DefaultStallTimeout, Usage: "abandon and retry (like a reset connection) a remote request that receives nothing, headers or body, for `DURATION`"},
	}
}

// remoteOptions reads the cache and HTTP tuning flags.
func remoteOptions(c *cli.Context) (blockdev.HTTPOptions, blockdev.CacheOptions, error) {
	ho := blockdev.HTTPOptions{CacheDir: c.String("cache-dir"), StallTimeout: c.Duration("http-stall-timeout")}
	co := blockdev.CacheOptions{Parallel: c.Int("parallel")}
	var err error
	if ho.StallTimeout <= 0 {
		return ho, co, usageError("--http-stall-timeout %s: want a positive duration (30s, 1m)", ho.StallTimeout)
	}
	if s := c.String("cache-size"); s != "" {
		if co.MaxBytes, err = parseSize(s); err != nil {
			return ho, co, usageError("--cache-size: %v", err)
		}
	}
	if s := c.String("block-size"); s != "" {
		if co.BlockSize, err = parseSize(s); err != nil || co.BlockSize < 4096 || co.BlockSize > 64<<20 || co.BlockSize%4096 != 0 {
			return ho, co, usageError("--block-size %q: want a multiple of 4 KiB up to 64 MiB", s)
		}
	}
	if p := co.Parallel; p < 0 || p > 64 {
		return ho, co, usageError("--parallel %d: want 1..64", p)
	}
	return ho, co, nil
}

// openSource opens SOURCE: an http(s) URL, a Glance image (a UUID that is
// not a local file, or glance:<id>), or a local file.
func openSource(ctx context.Context, c *cli.Context, spec string) (*source, error) {
	if strings.HasPrefix(spec, "http://") || strings.HasPrefix(spec, "https://") {
		return openHTTPSource(ctx, c, spec)
	}
	if id, ok := blockdev.GlanceID(spec); ok {
		if _, err := os.Stat(spec); err != nil || strings.HasPrefix(spec, "glance:") {
			return openGlanceSource(ctx, c, id)
		}
	}
	f, err := blockdev.OpenFile(spec)
	if err != nil {
		return nil, err
	}
	src := &source{dev: f, info: map[string]any{"kind": "file", "path": spec}, close: f.Close}
	if id := c.String("key-id"); id != "" {
		if src.key, err = barbicanKey(ctx, c, nil, id); err != nil {
			f.Close()
			return nil, err
		}
	}
	return src, nil
}

func openHTTPSource(ctx context.Context, c *cli.Context, spec string) (*source, error) {
	ho, co, err := remoteOptions(c)
	if err != nil {
		return nil, err
	}
	h, err := blockdev.OpenHTTP(ctx, spec, ho)
	if err != nil {
		return nil, err
	}
	cache, err := blockdev.NewCache(h, co)
	if err != nil {
		h.Close()
		return nil, err
	}
	src := &source{
		dev:  cache,
		info: map[string]any{"kind": "http", "url": h.Name(), "size": h.Size(), "mode": liveMode{cache}},
		close: func() error {
			cache.Close()
			return h.Close()
		},
		stats: cache.Stats,
	}
	if id := c.String("key-id"); id != "" {
		if src.key, err = barbicanKey(ctx, c, nil, id); err != nil {
			src.close()
			return nil, err
		}
	}
	return src, nil
}

func openGlanceSource(ctx context.Context, c *cli.Context, id string) (*source, error) {
	ho, co, err := remoteOptions(c)
	if err != nil {
		return nil, err
	}
	cloud, err := blockdev.ConnectCloud(ctx, c.String("os-cloud"))
	if err != nil {
		return nil, fmt.Errorf("glance image %s: %w", id, err)
	}
	g, err := blockdev.OpenGlance(ctx, cloud, id, blockdev.GlanceOptions{HTTP: ho, Cache: co})
	if err != nil {
		return nil, err
	}
	img := g.Image
	info := map[string]any{
		"kind": "glance", "image_id": img.ID, "name": img.Name, "disk_format": img.DiskFormat,
		"container_format": img.ContainerFormat, "status": img.Status, "size": img.Size, "mode": liveMode{g},
		"cloud": cloud.Name,
	}
	for k := range img.Properties {
		if strings.HasPrefix(k, "os_encrypt_") || strings.HasPrefix(k, "os_decrypt_") || strings.HasPrefix(k, "cinder_encryption_") {
			info[k] = img.Property(k) // ids and policies, never key material
		}
	}
	if h := img.Hash(); h.Algo != "" {
		info["checksum"] = h.Algo
	}
	src := &source{dev: g, info: info, close: g.Close, stats: g.Stats, verify: g.Verify}
	src.statedFormat, src.statedEncrypted = img.Stated()
	if v := img.Property("os_decrypt_size"); v != "" && src.statedEncrypted {
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil || n <= 0 {
			g.Close()
			return nil, fmt.Errorf("glance image %s: os_decrypt_size %q is not a size in bytes: %w", id, v, blockdev.ErrRemote)
		}
		src.statedDecryptSize = n
	}
	keyID := c.String("key-id")
	if keyID == "" {
		keyID = img.KeyID()
	}
	if keyID != "" {
		if src.key, err = barbicanKey(ctx, c, cloud, keyID); err != nil {
			g.Close()
			return nil, err
		}
	}
	return src, nil
}

// barbicanKey returns the Barbican source for a secret id. It connects
// (to the cloud, and to the key manager) only when the passphrase is
// needed, so `imgfs info` works without Barbican.
func barbicanKey(_ context.Context, c *cli.Context, cloud *blockdev.Cloud, id string) (keyring.Source, error) {
	return &lazyBarbican{cloudName: c.String("os-cloud"), cloud: cloud, b: keyring.Barbican{SecretID: id}}, nil
}

// lazyBarbican is a keyring.Barbican whose client is made on first use.
type lazyBarbican struct {
	cloudName string
	cloud     *blockdev.Cloud
	b         keyring.Barbican
}

func (l *lazyBarbican) String() string { return l.b.String() }

// Passphrase implements keyring.Source.
func (l *lazyBarbican) Passphrase(ctx context.Context) ([]byte, error) {
	if l.b.Client == nil {
		if l.cloud == nil {
			cloud, err := blockdev.ConnectCloud(ctx, l.cloudName)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", l.b, err)
			}
			l.cloud = cloud
		}
		client, err := openstack.NewKeyManagerV1(l.cloud.Provider, l.cloud.Endpoint)
		if err != nil {
			return nil, fmt.Errorf("%s: no key manager in the catalog: %w", l.b, err)
		}
		l.b.Client = client
	}
	return l.b.Passphrase(ctx)
}

// liveMode shows a remote source's read mode as it is when printed (it
// switches to sequential when the server refuses ranges).
type liveMode struct{ m blockdev.ModeReporter }

func (l liveMode) String() string { return string(l.m.Mode()) }

// MarshalJSON implements json.Marshaler.
func (l liveMode) MarshalJSON() ([]byte, error) { return json.Marshal(l.String()) }

// statsLine describes the remote counters for --stats ("" for files).
func (s *source) statsLine() string {
	if s.stats == nil {
		return ""
	}
	st := s.stats()
	line := st.String()
	if m, ok := s.dev.(blockdev.ModeReporter); ok {
		line += fmt.Sprintf(", %s mode", m.Mode())
	}
	if size := s.dev.Size(); size > 0 {
		line += fmt.Sprintf(", fetched %.1f%% of the %d-byte image", 100*float64(st.BytesFetched)/float64(size), size)
	}
	return line
}

// sourceArg returns the single SOURCE argument.
func sourceArg(c *cli.Context, extra ...string) (string, error) {
	want := 1 + len(extra)
	if c.NArg() != want {
		names := "SOURCE"
		for _, e := range extra {
			names += " " + e
		}
		return "", usageError("%s: want %s", c.Command.Name, names)
	}
	return c.Args().First(), nil
}

// openImage opens SOURCE and builds the read stack with the flags' options.
func openImage(c *cli.Context, spec string) (*image.Image, *source, error) {
	opts, err := openOptions(c)
	if err != nil {
		return nil, nil, err
	}
	src, err := openSource(c.Context, c, spec)
	if err != nil {
		return nil, nil, err
	}
	mergeStated(&opts, src)
	img, err := image.Open(c.Context, src.dev, opts)
	if err != nil {
		src.close()
		return nil, nil, fmt.Errorf("%s: %w", spec, err)
	}
	if img.Info != nil {
		img.Info.Source = src.info
	}
	return img, src, nil
}

// mergeStated adds what the source's metadata states to the flags' options;
// --format wins only if it agrees (image.Open rejects disagreement). A key
// from the flags wins over the Barbican key the metadata names.
func mergeStated(opts *image.Options, src *source) {
	if opts.Format == "" {
		opts.Format = src.statedFormat
	}
	opts.StatedEncrypted = opts.StatedEncrypted || src.statedEncrypted
	opts.DecryptSize = src.statedDecryptSize
	if opts.Key == nil && src.key != nil {
		opts.Key = src.key
	}
}

// printSource prints the source section of `imgfs info`, keys sorted.
func printSource(w io.Writer, m map[string]any) {
	if len(m) == 0 {
		return
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Fprintln(w, "source:")
	for _, k := range keys {
		fmt.Fprintf(w, "  %-20s %v\n", k+":", m[k])
	}
}
