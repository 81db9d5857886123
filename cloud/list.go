package cloud

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/images"
	"github.com/gophercloud/gophercloud/v2/pagination"
)

// Bounds of ListImages.
const (
	// DefaultListPageSize is how many images one Glance list call asks for.
	DefaultListPageSize = 100
	// MaxListPageSize is the largest page ListImages asks for (Glance's
	// api_limit_max defaults to 1000).
	MaxListPageSize = 1000
	// MaxListedImages bounds a listing: a catalog with more images must be
	// narrowed with filters.
	MaxListedImages = 100000
)

// ErrTooManyImages means a listing holds more than MaxListedImages images.
var ErrTooManyImages = errors.New("too many images")

// reservedListKeys are query parameters of Glance's image list that select
// pages or order, not images: ListImages sets them itself.
var reservedListKeys = map[string]bool{"limit": true, "marker": true, "sort": true, "sort_key": true, "sort_dir": true}

var filterKeyRE = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,255}$`)

// ListFilter is one Glance image list filter, KEY=VALUE: a standard one
// (status, visibility, tag, owner, name, member_status, disk_format,
// container_format, os_hidden, size_min, size_max, created_at, updated_at)
// or a custom property (os_encrypt_format=luks). A key given more than once
// is sent more than once (several tags must all be present).
type ListFilter struct{ Key, Value string }

// ParseListFilter reads KEY=VALUE.
func ParseListFilter(s string) (ListFilter, error) {
	k, v, ok := strings.Cut(s, "=")
	switch {
	case !ok:
		return ListFilter{}, fmt.Errorf("filter %q: want KEY=VALUE", s)
	case !filterKeyRE.MatchString(k):
		return ListFilter{}, fmt.Errorf("filter %q: the key must be 1 to 255 letters, digits, '_', '.', ':' or '-'", s)
	case reservedListKeys[k]:
		return ListFilter{}, fmt.Errorf("filter %q: %s selects pages, not images", s, k)
	case v == "":
		return ListFilter{}, fmt.Errorf("filter %q: empty value", s)
	}
	return ListFilter{Key: k, Value: v}, nil
}

// String gives the filter as KEY=VALUE.
func (f ListFilter) String() string { return f.Key + "=" + f.Value }

// ListOptions configure ListImages.
type ListOptions struct {
	Filters []ListFilter
	// PageSize is how many images each list call asks for (0 means
	// DefaultListPageSize).
	PageSize int
}

// listQuery is a Glance image list query with arbitrary filters, which
// gophercloud's ListOpts cannot all express (custom properties).
type listQuery struct{ values url.Values }

// ToImageListQuery implements images.ListOptsBuilder.
func (q listQuery) ToImageListQuery() (string, error) { return "?" + q.values.Encode(), nil }

// ListImages lists the images the session can see that match every
// filter, following Glance's pages (each page one list call; calls counts
// them). It reads metadata only, never image data.
func (c *Session) ListImages(ctx context.Context, opts ListOptions) (list []*GlanceImage, calls int, err error) {
	size := opts.PageSize
	if size == 0 {
		size = DefaultListPageSize
	}
	if size < 1 || size > MaxListPageSize {
		return nil, 0, fmt.Errorf("glance image list: page size %d is not within 1..%d", size, MaxListPageSize)
	}
	client, err := c.ImageService()
	if err != nil {
		return nil, 0, err
	}
	q := url.Values{}
	for _, f := range opts.Filters {
		if _, err := ParseListFilter(f.String()); err != nil {
			return nil, 0, fmt.Errorf("glance image list: %w", err)
		}
		q.Add(f.Key, f.Value)
	}
	q.Set("limit", fmt.Sprint(size))
	err = images.List(client, listQuery{q}).EachPage(ctx, func(_ context.Context, page pagination.Page) (bool, error) {
		calls++
		imgs, err := images.ExtractImages(page)
		if err != nil {
			return false, err
		}
		if len(list)+len(imgs) > MaxListedImages {
			return false, fmt.Errorf("more than %d images: narrow the listing with filters: %w", MaxListedImages, ErrTooManyImages)
		}
		for i := range imgs {
			list = append(list, fromGophercloud(&imgs[i]))
		}
		return true, nil
	})
	if err != nil {
		if errors.Is(err, ErrTooManyImages) {
			return nil, calls, fmt.Errorf("glance image list: %w", err)
		}
		return nil, calls, fmt.Errorf("glance image list (%d calls made): %s", calls, DescribeAPIError(err))
	}
	return list, calls, nil
}
