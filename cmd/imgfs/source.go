package main

import (
	"context"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/cmd/imgfs/internal/image"
)

// source is an opened SOURCE argument: the bytes as stored plus what the
// place it came from says about them (Glance metadata, for instance).
type source struct {
	dev blockdev.Device
	// info is shown under "source" in `imgfs info`; never secrets.
	info map[string]any
	// statedFormat and statedEncrypted come from metadata, not from magic.
	statedFormat    string
	statedEncrypted bool
	close           func() error
}

// openSource opens SOURCE.
func openSource(_ context.Context, _ *cli.Context, spec string) (*source, error) {
	f, err := blockdev.OpenFile(spec)
	if err != nil {
		return nil, err
	}
	return &source{dev: f, info: map[string]any{"kind": "file", "path": spec}, close: f.Close}, nil
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
// --format wins only if it agrees (image.Open rejects disagreement).
func mergeStated(opts *image.Options, src *source) {
	if opts.Format == "" {
		opts.Format = src.statedFormat
	}
	opts.StatedEncrypted = opts.StatedEncrypted || src.statedEncrypted
}
