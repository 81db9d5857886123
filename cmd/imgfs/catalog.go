package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/imgfs/imgfs"
	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/cloud"
	"github.com/imgfs/imgfs/fusefs"
)

// Catalog defaults: many images read a little each, so each image's cache
// is smaller, its blocks finer and its read-ahead shorter than for one image.
const (
	catalogCacheSize  = 32 << 20
	catalogCacheTotal = 512 << 20
	catalogBlockSize  = 256 << 10
	catalogReadAhead  = 2
)

// catalogFlags are the flags of `imgfs mount --catalog`.
type catalogFlags struct {
	on          bool
	filters     cli.StringSlice
	ttl, idle   time.Duration
	maxOpen     int
	pageSize    int
	cacheTotal  string
	perImageSet bool // --cache-size was given
	blockSet    bool // --block-size was given
}

func (cf *catalogFlags) flags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "catalog", Destination: &cf.on, Usage: "mount every Glance image the credentials can see: MOUNTPOINT/<image-id>/, by-name/<name> links, catalog.json (MOUNTPOINT is the only argument)"},
		&cli.StringSliceFlag{Name: "filter", Destination: &cf.filters, Usage: "with --catalog, list only images matching `KEY=VALUE` (Glance list filters: status, visibility, tag, owner, name, disk_format, ... or a property such as os_encrypt_format=luks); repeatable, all must match"},
		&cli.DurationFlag{Name: "ttl", Value: fusefs.DefaultCatalogTTL, Destination: &cf.ttl, Usage: "with --catalog, list the images again after `DURATION`"},
		&cli.IntFlag{Name: "max-open", Value: fusefs.DefaultMaxOpen, Destination: &cf.maxOpen, Usage: "with --catalog, keep at most `N` images open (the least recently used idle one is closed first)"},
		&cli.DurationFlag{Name: "idle-timeout", Value: 10 * time.Minute, Destination: &cf.idle, Usage: "with --catalog, close an image (zeroing its keys) after `DURATION` with no open file (0 = never)"},
		&cli.StringFlag{Name: "cache-total", Value: "512MiB", Destination: &cf.cacheTotal, Usage: "with --catalog, memory for the block caches of all open images together: each gets at most `SIZE`/--max-open"},
		&cli.IntFlag{Name: "list-page-size", Value: cloud.DefaultListPageSize, Destination: &cf.pageSize, Usage: "with --catalog, images per Glance list call (`N`)"},
	}
}

// catalogMount builds the catalog mount's options: one Keystone session,
// Glance list calls for the listing, imgfs.Open for each image.
func catalogMount(ctx context.Context, cf *catalogFlags, opts imgfs.Options) (fusefs.CatalogOptions, error) {
	var co fusefs.CatalogOptions
	if opts.Key != nil || opts.KeyID != "" || opts.Format != "" {
		return co, usageError("mount --catalog: --passphrase-file, --key-file, --key-id and --format name one image's key or format; a catalog takes each image's key from Barbican and its format from Glance")
	}
	var filters []cloud.ListFilter
	for _, s := range cf.filters.Value() {
		f, err := cloud.ParseListFilter(s)
		if err != nil {
			return co, usageError("--filter: %v", err)
		}
		filters = append(filters, f)
	}
	switch {
	case cf.maxOpen < 1 || cf.maxOpen > fusefs.MaxMaxOpen:
		return co, usageError("--max-open %d: want 1..%d", cf.maxOpen, fusefs.MaxMaxOpen)
	case cf.ttl <= 0:
		return co, usageError("--ttl %s: want a positive duration (30s, 5m)", cf.ttl)
	case cf.idle < 0:
		return co, usageError("--idle-timeout %s: want 0 (never) or a positive duration", cf.idle)
	case cf.pageSize < 1 || cf.pageSize > cloud.MaxListPageSize:
		return co, usageError("--list-page-size %d: want 1..%d", cf.pageSize, cloud.MaxListPageSize)
	}
	total, err := parseSize(cf.cacheTotal)
	if err != nil {
		return co, usageError("--cache-total: %v", err)
	}
	if !cf.blockSet {
		opts.Cache.BlockSize = catalogBlockSize
	}
	if !cf.perImageSet {
		opts.Cache.MaxBytes = catalogCacheSize
	}
	opts.Cache.MaxBytes = min(opts.Cache.MaxBytes, total/int64(cf.maxOpen))
	if opts.Cache.MaxBytes < 4*opts.Cache.BlockSize {
		return co, usageError("--cache-total %s over --max-open %d leaves %s per image, less than 4 blocks of %s: raise --cache-total or lower --max-open or --block-size",
			cf.cacheTotal, cf.maxOpen, blockdev.IBytes(opts.Cache.MaxBytes), blockdev.IBytes(opts.Cache.BlockSize))
	}
	opts.Cache.ReadAhead = catalogReadAhead

	sess, err := cloud.Connect(ctx, opts.Cloud)
	if err != nil {
		return co, err
	}
	opts.Session = sess
	var fs []string
	for _, f := range filters {
		fs = append(fs, f.String())
	}
	co = fusefs.CatalogOptions{
		TTL:         cf.ttl,
		MaxOpen:     cf.maxOpen,
		IdleTimeout: cf.idle,
		FsName:      "imgfs-catalog",
		Info: map[string]any{"cloud": sess.Name, "filters": fs, "cache_per_image": opts.Cache.MaxBytes,
			"cache_total": total, "block_size": opts.Cache.BlockSize, "list_page_size": cf.pageSize},
		List: func(ctx context.Context) ([]fusefs.CatalogEntry, int, error) {
			imgs, calls, err := sess.ListImages(ctx, cloud.ListOptions{Filters: filters, PageSize: cf.pageSize})
			if err != nil {
				return nil, calls, err
			}
			out := make([]fusefs.CatalogEntry, 0, len(imgs))
			for _, g := range imgs {
				meta, err := json.MarshalIndent(listedMeta(g), "", "  ")
				if err != nil {
					return nil, calls, fmt.Errorf("image %s: metadata: %w", g.ID, err)
				}
				out = append(out, fusefs.CatalogEntry{ID: g.ID, Name: g.Name, Created: g.Created, Meta: append(meta, '\n')})
			}
			return out, calls, nil
		},
		Open: func(ctx context.Context, id string) (*fusefs.CatalogImage, error) {
			return openCatalogImage(ctx, id, opts)
		},
	}
	return co, nil
}

// openCatalogImage opens one image of the catalog; an unsafe one is closed
// again and refused.
func openCatalogImage(ctx context.Context, id string, opts imgfs.Options) (*fusefs.CatalogImage, error) {
	img, err := imgfs.Open(ctx, "glance:"+id, opts)
	if err != nil {
		return nil, err
	}
	if !img.Info.Safe {
		img.Close()
		return nil, fmt.Errorf("judged unsafe: %s", strings.Join(img.Info.Reasons, "; "))
	}
	fo, _, err := mountOptions(img)
	if err != nil {
		img.Close()
		return nil, err
	}
	return &fusefs.CatalogImage{Files: fo, Close: img.Close, Fetched: func() int64 {
		st, _ := img.Stats()
		return st.BytesFetched
	}}, nil
}

// listedMeta is image.json of an image that cannot be opened: what the
// Glance listing says of it (ids and policies, never key material).
func listedMeta(g *cloud.GlanceImage) map[string]any {
	m := map[string]any{
		"source": "glance listing (the image could not be opened: see error.txt)",
		"id":     g.ID, "name": g.Name, "status": g.Status, "disk_format": g.DiskFormat,
		"container_format": g.ContainerFormat, "size": g.Size, "visibility": g.Visibility,
		"owner": g.Owner, "tags": g.Tags, "created_at": g.Created,
	}
	for k := range g.Properties {
		if strings.HasPrefix(k, "os_encrypt_") || strings.HasPrefix(k, "os_decrypt_") ||
			strings.HasPrefix(k, "cinder_encryption_") || k == "os_hash_algo" || k == "os_hash_value" {
			m[k] = g.Property(k)
		}
	}
	return m
}
