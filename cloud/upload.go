package cloud

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/imagedata"
	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/images"
)

// NewImage describes an image to create in Glance.
type NewImage struct {
	Name       string
	DiskFormat string // luks, qcow2, raw
	// Properties are custom properties (os_encrypt_*, os_decrypt_*), as
	// strings: Glance wants JSON strings.
	Properties map[string]string
}

// UploadImage creates the image, uploads data and waits until Glance has
// stored it. On failure the image is deleted again and deleted reports it.
func UploadImage(ctx context.Context, ic *gophercloud.ServiceClient, spec NewImage, data io.Reader) (id string, err error) {
	img, err := images.Create(ctx, ic, images.CreateOpts{
		Name: spec.Name, DiskFormat: spec.DiskFormat, ContainerFormat: "bare", Properties: spec.Properties,
	}).Extract()
	if err != nil {
		return "", fmt.Errorf("glance image create: %s", DescribeAPIError(err))
	}
	defer func() {
		if err != nil {
			if derr := images.Delete(context.Background(), ic, img.ID).ExtractErr(); derr == nil {
				err = fmt.Errorf("%w (the image was deleted again)", err)
			}
		}
	}()
	if err = imagedata.Upload(ctx, ic, img.ID, data).ExtractErr(); err != nil {
		return "", fmt.Errorf("glance image %s: data upload: %s", img.ID, DescribeAPIError(err))
	}
	status, err := waitActive(ctx, ic, img.ID)
	if err != nil {
		return "", fmt.Errorf("glance image %s: %s", img.ID, DescribeAPIError(err))
	}
	if status != images.ImageStatusActive {
		return "", fmt.Errorf("glance image %s is %s after the upload, not active", img.ID, status)
	}
	return img.ID, nil
}

// DeleteImage deletes a Glance image (one whose upload failed).
func DeleteImage(ctx context.Context, ic *gophercloud.ServiceClient, id string) error {
	if err := images.Delete(ctx, ic, id).ExtractErr(); err != nil {
		return fmt.Errorf("glance image %s: delete: %s", id, DescribeAPIError(err))
	}
	return nil
}

// waitActive polls the image until it leaves the saving/importing states.
func waitActive(ctx context.Context, ic *gophercloud.ServiceClient, id string) (images.ImageStatus, error) {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		img, err := images.Get(ctx, ic, id).Extract()
		if err != nil {
			return "", err
		}
		switch img.Status {
		case images.ImageStatusSaving, images.ImageStatusUploading, images.ImageStatusImporting:
			if time.Now().After(deadline) {
				return img.Status, nil
			}
		default:
			return img.Status, nil
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}
