package cloud

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/imgfs/imgfs/blockdev/remote"

	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/images"
)

// ErrImageNotActive means a Glance image has no data to read yet (or any
// more): its status is not "active".
var ErrImageNotActive = errors.New("image is not active")

var uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// GlanceID returns the image id of a SOURCE that names a Glance image: a
// bare UUID or "glance:<id>".
func GlanceID(spec string) (string, bool) {
	if id, ok := strings.CutPrefix(spec, "glance:"); ok && id != "" {
		return id, true
	}
	if uuidRE.MatchString(spec) {
		return spec, true
	}
	return "", false
}

// GlanceImage is the metadata of a Glance image that imgfs uses.
type GlanceImage struct {
	ID, Name, DiskFormat, ContainerFormat, Status string
	Size                                          int64
	Checksum                                      string // md5
	// Visibility, Owner, Tags and Created are what Glance lists them as.
	Visibility, Owner string
	Tags              []string
	Created           time.Time
	// Properties are the image's custom properties (os_encrypt_*, ...).
	Properties map[string]any
	// DirectURL is the image's direct_url (shown when Glance has
	// show_image_direct_url), e.g. rbd://FSID/POOL/IMAGE/snap; "" if not
	// shown.
	DirectURL string
	// Locations are the URLs of the image's locations (shown when Glance
	// has show_multiple_locations), in Glance's order.
	Locations []string
}

// DirectLocations returns the image's locations to read directly, without
// duplicates: direct_url first, then the locations' URLs.
func (g *GlanceImage) DirectLocations() []string {
	var out []string
	seen := map[string]bool{}
	for _, u := range append([]string{g.DirectURL}, g.Locations...) {
		if u != "" && !seen[u] {
			seen[u] = true
			out = append(out, u)
		}
	}
	return out
}

// takeLocations moves direct_url and locations, which gophercloud leaves
// among the custom properties, into DirectURL and Locations.
func (g *GlanceImage) takeLocations() {
	if v, ok := g.Properties["direct_url"].(string); ok {
		g.DirectURL = v
	}
	if locs, ok := g.Properties["locations"].([]any); ok {
		for _, l := range locs {
			if m, ok := l.(map[string]any); ok {
				if u, ok := m["url"].(string); ok && u != "" {
					g.Locations = append(g.Locations, u)
				}
			}
		}
	}
	delete(g.Properties, "direct_url")
	delete(g.Properties, "locations")
}

// Property returns a custom property as a string ("" if absent).
func (g *GlanceImage) Property(name string) string {
	switch v := g.Properties[name].(type) {
	case string:
		return v
	case nil:
		return ""
	default:
		return fmt.Sprint(v)
	}
}

// Hash returns the checksum to verify a full download against: the
// multihash (os_hash_algo/os_hash_value) when present, else the md5.
func (g *GlanceImage) Hash() remote.HashSpec {
	if a, v := g.Property("os_hash_algo"), g.Property("os_hash_value"); a != "" && v != "" {
		return remote.HashSpec{Algo: a, Value: v}
	}
	if g.Checksum != "" {
		return remote.HashSpec{Algo: "md5", Value: g.Checksum}
	}
	return remote.HashSpec{}
}

// Stated returns what the metadata says the image is: the outer format
// (raw, luks or qcow2; "" for other disk formats, which imgfs still
// detects from the bytes) and whether it is encrypted. os_encrypt_format
// (LUKSv1, luks, … compared case-insensitively) or a legacy
// cinder_encryption_key_id mean encrypted; Cinder-made raw LUKS images
// say disk_format raw, which then states "luks".
func (g *GlanceImage) Stated() (format string, encrypted bool) {
	ef := strings.ToLower(g.Property("os_encrypt_format"))
	encrypted = ef != "" || g.Property("cinder_encryption_key_id") != ""
	switch df := strings.ToLower(g.DiskFormat); df {
	case "qcow2", "luks":
		format = df
	case "raw":
		format = "raw"
		if encrypted {
			format = "luks"
		}
	}
	return format, encrypted
}

// KeyID returns the Barbican secret holding the image's key:
// os_encrypt_key_id, else the legacy cinder_encryption_key_id.
func (g *GlanceImage) KeyID() string {
	if k := g.Property("os_encrypt_key_id"); k != "" {
		return k
	}
	return g.Property("cinder_encryption_key_id")
}

// GetImage reads a Glance image's metadata.
func (c *Session) GetImage(ctx context.Context, id string) (*GlanceImage, error) {
	client, err := c.ImageService()
	if err != nil {
		return nil, fmt.Errorf("glance: %w", err)
	}
	img, err := images.Get(ctx, client, id).Extract()
	if err != nil {
		switch HTTPStatus(err) {
		case http.StatusNotFound:
			return nil, fmt.Errorf("glance image %s: not found (HTTP 404): %w", id, remote.ErrRemote)
		case http.StatusForbidden:
			return nil, fmt.Errorf("glance image %s: access denied (HTTP 403): %w", id, remote.ErrRemote)
		}
		return nil, fmt.Errorf("glance image %s: %s", id, DescribeAPIError(err))
	}
	return fromGophercloud(img), nil
}

// maxImageJSON bounds the image metadata ParseImage accepts.
const maxImageJSON = 4 << 20

// ParseImage reads a Glance v2 image record (the JSON of GET
// /v2/images/{id}) as GetImage does.
func ParseImage(body []byte) (*GlanceImage, error) {
	if len(body) > maxImageJSON {
		return nil, fmt.Errorf("glance image metadata of %d bytes exceeds %d: %w", len(body), maxImageJSON, remote.ErrRemote)
	}
	var img images.Image
	if err := json.Unmarshal(body, &img); err != nil {
		return nil, fmt.Errorf("glance image metadata: %w", err)
	}
	return fromGophercloud(&img), nil
}

func fromGophercloud(img *images.Image) *GlanceImage {
	g := &GlanceImage{ID: img.ID, Name: img.Name, DiskFormat: img.DiskFormat, ContainerFormat: img.ContainerFormat,
		Status: string(img.Status), Size: img.SizeBytes, Checksum: img.Checksum, Properties: img.Properties,
		Visibility: string(img.Visibility), Owner: img.Owner, Tags: img.Tags, Created: img.CreatedAt}
	g.takeLocations()
	return g
}

// GetReadableImage reads a Glance image's metadata and checks that it has
// data to read: it is active and states its size.
func (c *Session) GetReadableImage(ctx context.Context, id string) (*GlanceImage, error) {
	img, err := c.GetImage(ctx, id)
	if err != nil {
		return nil, err
	}
	if img.Status != "active" {
		return nil, fmt.Errorf("glance image %s (%q) is %s, not active: it has no data to read: %w", id, img.Name, img.Status, ErrImageNotActive)
	}
	if img.Size <= 0 {
		return nil, fmt.Errorf("glance image %s (%q): metadata gives no size: %w", id, img.Name, remote.ErrRemote)
	}
	return img, nil
}

// GlanceOptions configure OpenGlance.
type GlanceOptions struct {
	HTTP  remote.HTTPOptions  // Client, Token, Size, Name and Hash are set by OpenGlance
	Cache remote.CacheOptions // Hash is set by OpenGlance
	// SkipChecksum: the image's checksum is not computed as its bytes
	// arrive, and Verify checks nothing (Verifiable is false).
	SkipChecksum bool
}

// Glance is a Device over a Glance image's data: the HTTP source of
// /v2/images/{id}/file with the session's token, behind a block Cache.
type Glance struct {
	*remote.Cache
	HTTP  *remote.HTTP
	Image *GlanceImage

	skipChecksum bool
}

// OpenGlance resolves image id and opens its data. The image must be
// active.
func OpenGlance(ctx context.Context, cloud *Session, id string, opts GlanceOptions) (*Glance, error) {
	img, err := cloud.GetReadableImage(ctx, id)
	if err != nil {
		return nil, err
	}
	return OpenGlanceData(ctx, cloud, img, opts)
}

// OpenGlanceData opens the data of an image whose metadata
// GetReadableImage returned, over HTTP.
func OpenGlanceData(ctx context.Context, cloud *Session, img *GlanceImage, opts GlanceOptions) (*Glance, error) {
	id := img.ID
	client, err := cloud.ImageService()
	if err != nil {
		return nil, fmt.Errorf("glance: %w", err)
	}
	ho := opts.HTTP
	ho.Client = cloud.HTTP
	ho.Token = cloud.TokenSource()
	ho.Size = img.Size
	ho.Name = "glance image " + id
	if h := img.Hash(); h.Supported() && !opts.SkipChecksum {
		ho.Hash = h
	}
	h, err := remote.OpenHTTP(ctx, client.ServiceURL("images", id, "file"), ho)
	if err != nil {
		return nil, err
	}
	co := opts.Cache
	co.Hash = ho.Hash
	c, err := remote.NewCache(h, co)
	if err != nil {
		h.Close()
		return nil, err
	}
	return &Glance{Cache: c, HTTP: h, Image: img, skipChecksum: opts.SkipChecksum}, nil
}

// Preconnect dials one more connection to Glance in the background, for a
// request known to come while another is under way (remote.Preconnect).
func (g *Glance) Preconnect() { g.HTTP.Preconnect() }

// Close stops all downloads.
func (g *Glance) Close() error {
	g.Cache.Close()
	return g.HTTP.Close()
}

// Verifiable reports whether the image has a checksum imgfs can check
// (Glance may state an os_hash_algo that Go does not implement) and it
// was not skipped.
func (g *Glance) Verifiable() bool {
	h := g.Image.Hash()
	return h.Supported() && !g.skipChecksum
}

// Verify checks the whole image against its Glance checksum, reading
// what has not been read yet. It returns an error wrapping ErrIntegrity on
// a mismatch, and nil without checking when the image has no checksum it
// can check (see Verifiable).
func (g *Glance) Verify(ctx context.Context) error {
	if !g.Verifiable() {
		return nil
	}
	if g.HTTP.Mode() == remote.ModeSequential {
		_, err := g.HTTP.VerifyAll()
		return err
	}
	return g.Cache.Verify(ctx)
}
