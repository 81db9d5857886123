package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/dustin/go-humanize"
	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/imagedata"
	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/images"
	"github.com/gophercloud/gophercloud/v2/openstack/keymanager/v1/secrets"
	"github.com/urfave/cli/v2"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/keyring"
	"github.com/imgfs/imgfs/luksio"
)

// Values of os_encrypt_key_deletion_policy (Glance's encrypted image spec).
const (
	deleteOnImageDeletion = "on_image_deletion"
	deleteNever           = "do_not_delete"
)

func uploadCommand() *cli.Command {
	return &cli.Command{
		Name:  "upload",
		Usage: "encrypt a raw or qcow2 INPUT and upload it to Glance as an encrypted image, its key in Barbican",
		Description: "Without --key-id a new Barbican secret is created: 32 random bytes (symmetric, aes-256,\n" +
			"as Cinder and Nova make them) whose lowercase hex is the LUKS passphrase, or a passphrase\n" +
			"secret from --passphrase-file, or a symmetric secret from --key-file. The image carries\n" +
			"os_encrypt_format, os_encrypt_key_id, os_encrypt_key_deletion_policy, os_decrypt_size and\n" +
			"os_decrypt_container_format, and is registered as a consumer of the secret. The image id\n" +
			"is printed on stdout; key material never is.",
		ArgsUsage: "INPUT",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "format", Value: encryptLUKS, Usage: "uploaded format: luks (raw LUKS1, disk_format luks) or qcow2+luks (disk_format qcow2)"},
			&cli.StringFlag{Name: "key-id", Usage: "encrypt with the existing Barbican secret `ID` (or href) instead of creating one"},
			&cli.StringFlag{Name: "passphrase-file", Usage: "store the passphrase in `FILE` (- = stdin) as a new Barbican passphrase secret"},
			&cli.StringFlag{Name: "key-file", Usage: "store the binary key in `FILE` (- = stdin) as a new Barbican symmetric secret; its lowercase hex is the passphrase"},
			&cli.StringFlag{Name: "name", Usage: "Glance image `NAME` (default: INPUT's file name)"},
			&cli.StringFlag{Name: "os-cloud", EnvVars: []string{"OS_CLOUD"}, Usage: "clouds.yaml entry `NAME` for Glance and Barbican (default: OS_CLOUD, else the OS_* variables)"},
			&cli.StringFlag{Name: "key-deletion-policy", Usage: "os_encrypt_key_deletion_policy: on_image_deletion (default for a new secret) or do_not_delete (default with --key-id)"},
			&cli.StringFlag{Name: "input-format", Usage: "state INPUT's format (raw, qcow2); a mismatch with its magic is an error"},
			&cli.BoolFlag{Name: "allow-dirty", Usage: "accept a qcow2 INPUT whose dirty bit is set"},
			clusterSizeFlagDef(),
			&cli.StringFlag{Name: "cipher", Value: luksio.DefaultCipher, Usage: "dm-crypt cipher `SPEC` (aes-xts-plain64, aes-cbc-essiv:sha256, ...)"},
			&cli.IntFlag{Name: "key-size", Usage: "volume key size in `BITS` (default 512 for XTS, 256 otherwise)"},
			&cli.StringFlag{Name: "hash", Value: luksio.DefaultHash, Usage: "PBKDF2 and AF `HASH` (sha1, sha256, sha512)"},
			&cli.IntFlag{Name: "iter-time", Value: int(luksio.DefaultIterTime / time.Millisecond), Usage: "calibrate PBKDF2 to `MS` milliseconds of unlock time"},
			&cli.UintFlag{Name: "pbkdf-iterations", Usage: "use exactly `N` PBKDF2 iterations (at least 1000) instead of calibrating"},
			progressFlag(),
		},
		Action: uploadAction,
	}
}

// staticKey is a passphrase already in memory.
type staticKey struct {
	pass []byte
	name string
}

func (k *staticKey) Passphrase(context.Context) ([]byte, error) { return bytes.Clone(k.pass), nil }
func (k *staticKey) String() string                             { return k.name }

// uploadKey is the Barbican secret an upload uses.
type uploadKey struct {
	id      string // UUID
	typ     string // secret_type
	created bool   // made by this run: deleted if the upload fails
	pass    []byte
}

func uploadAction(c *cli.Context) (err error) {
	spec, err := sourceArg(c)
	if err != nil {
		return usageError("upload: want INPUT")
	}
	format := strings.ToLower(c.String("format"))
	diskFormat := "luks"
	switch format {
	case encryptLUKS:
	case encryptQcow2LUKS:
		diskFormat = "qcow2"
	default:
		return usageError("--format %q: want luks or qcow2+luks", c.String("format"))
	}
	keyID, pf, kf := c.String("key-id"), c.String("passphrase-file"), c.String("key-file")
	n := 0
	for _, s := range []string{keyID, pf, kf} {
		if s != "" {
			n++
		}
	}
	if n > 1 {
		return usageError("upload: --key-id, --passphrase-file and --key-file exclude each other")
	}
	policy := deleteOnImageDeletion
	if keyID != "" {
		policy = deleteNever
	}
	if p := c.String("key-deletion-policy"); p != "" {
		switch p {
		case deleteOnImageDeletion, deleteNever:
			policy = p
		default:
			return usageError("--key-deletion-policy %q: want on_image_deletion or do_not_delete", p)
		}
	}
	fopts, err := formatOptions(c)
	if err != nil {
		return err
	}
	mode, err := progressMode(c)
	if err != nil {
		return err
	}
	var clusterSize int64
	if format == encryptQcow2LUKS {
		if clusterSize, err = clusterSizeFlag(c); err != nil {
			return err
		}
	}
	if st, err := os.Stat(spec); err != nil {
		return fmt.Errorf("upload: %w", err)
	} else if !st.Mode().IsRegular() && st.Mode()&os.ModeDevice == 0 {
		return fmt.Errorf("upload: %s is not a file or block device", spec)
	}
	name := c.String("name")
	if name == "" {
		name = filepath.Base(spec)
	}

	ctx, stop := interruptible(c.Context)
	defer stop()
	cloud, err := blockdev.ConnectCloud(ctx, c.String("os-cloud"))
	if err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	kc, err := openstack.NewKeyManagerV1(cloud.Provider, cloud.Endpoint)
	if err != nil {
		return fmt.Errorf("upload: no key manager (Barbican) in the catalog of cloud %s: %w", cloud.Name, err)
	}
	ic, err := openstack.NewImageV2(cloud.Provider, cloud.Endpoint)
	if err != nil {
		return fmt.Errorf("upload: no image service (Glance) in the catalog of cloud %s: %w", cloud.Name, err)
	}

	key, err := uploadSecret(ctx, kc, keyID, pf, kf, name)
	if err != nil {
		return err
	}
	defer keyring.Zero(key.pass)
	// From here on a failure deletes the secret this run created.
	defer func() {
		if err != nil && key.created {
			if derr := secrets.Delete(context.Background(), kc, key.id).ExtractErr(); derr != nil {
				fmt.Fprintf(os.Stderr, "imgfs: warning: could not delete barbican secret %s created for the failed upload: %s\n", key.id, blockdev.DescribeAPIError(derr))
			} else {
				fmt.Fprintf(os.Stderr, "imgfs: deleted barbican secret %s created for the failed upload\n", key.id)
			}
		}
	}()

	tmp, err := uploadTempFile(spec)
	if err != nil {
		return fmt.Errorf("upload: temporary file: %w", err)
	}
	defer os.Remove(tmp)
	src := &staticKey{pass: key.pass, name: "barbican secret " + key.id}
	size, err := encryptInput(c, spec, tmp, format, src, fopts, clusterSize, mode)
	if err != nil {
		return err
	}
	f, err := os.Open(tmp)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}

	img, err := images.Create(ctx, ic, images.CreateOpts{
		Name: name, DiskFormat: diskFormat, ContainerFormat: "bare",
		Properties: map[string]string{
			"os_encrypt_format":              "luks",
			"os_encrypt_key_id":              key.id,
			"os_encrypt_key_deletion_policy": policy,
			"os_decrypt_size":                strconv.FormatInt(size, 10),
			"os_decrypt_container_format":    "bare",
		},
	}).Extract()
	if err != nil {
		return fmt.Errorf("upload: glance image create: %s", blockdev.DescribeAPIError(err))
	}
	defer func() {
		if err != nil {
			if derr := images.Delete(context.Background(), ic, img.ID).ExtractErr(); derr == nil {
				fmt.Fprintf(os.Stderr, "imgfs: deleted glance image %s of the failed upload\n", img.ID)
			}
		}
	}()
	if err = imagedata.Upload(ctx, ic, img.ID, f).ExtractErr(); err != nil {
		return fmt.Errorf("upload: glance image %s: data upload: %s", img.ID, blockdev.DescribeAPIError(err))
	}
	status, err := waitActive(ctx, ic, img.ID)
	if err != nil {
		return fmt.Errorf("upload: glance image %s: %s", img.ID, blockdev.DescribeAPIError(err))
	}
	if status != images.ImageStatusActive {
		return fmt.Errorf("upload: glance image %s is %s after the upload, not active", img.ID, status)
	}
	if warn, err := addSecretConsumer(ctx, kc, key.id, img.ID); err != nil {
		return fmt.Errorf("upload: %w", err)
	} else if warn != "" {
		fmt.Fprintf(os.Stderr, "imgfs: warning: %s\n", warn)
	}
	fmt.Println(img.ID)
	origin := "new"
	if !key.created {
		origin = "existing"
	}
	fmt.Fprintf(os.Stderr, "imgfs: uploaded %s as glance image %s (%q, disk_format %s, %s stored, %s virtual); key: %s %s barbican secret %s, deletion policy %s\n",
		spec, img.ID, name, diskFormat, humanize.IBytes(uint64(st.Size())), humanize.IBytes(uint64(size)), origin, key.typ, key.id, policy)
	return nil
}

// uploadSecret fetches the secret keyID, or creates one: random 256-bit
// symmetric by default, else from the passphrase or key file.
func uploadSecret(ctx context.Context, kc *gophercloud.ServiceClient, keyID, pf, kf, name string) (*uploadKey, error) {
	if keyID != "" {
		b := keyring.Barbican{Client: kc, SecretID: keyID}
		pass, err := b.Passphrase(ctx)
		if err != nil {
			return nil, fmt.Errorf("upload: --key-id: %w", err)
		}
		meta, err := secrets.Get(ctx, kc, b.SecretUUID()).Extract()
		if err != nil {
			keyring.Zero(pass)
			return nil, fmt.Errorf("upload: --key-id: %s: %s", b, blockdev.DescribeAPIError(err))
		}
		return &uploadKey{id: b.SecretUUID(), typ: meta.SecretType, pass: pass}, nil
	}
	opts := secrets.CreateOpts{Name: "imgfs image " + name}
	var pass []byte
	switch {
	case pf != "":
		p, err := keyring.PassphraseFile{Path: pf}.Passphrase(ctx)
		if err != nil {
			return nil, fmt.Errorf("upload: --passphrase-file: %w", err)
		}
		if !utf8.Valid(p) {
			keyring.Zero(p)
			return nil, usageError("upload: --passphrase-file: the passphrase is not UTF-8 text (Barbican stores passphrases as text); use --key-file for binary keys")
		}
		pass = p
		opts.SecretType = secrets.PassphraseSecret
		opts.Payload, opts.PayloadContentType = string(p), "text/plain"
	default:
		var raw []byte
		if kf != "" {
			h, err := keyring.KeyFile{Path: kf}.Passphrase(ctx)
			if err != nil {
				return nil, fmt.Errorf("upload: --key-file: %w", err)
			}
			raw = make([]byte, hex.DecodedLen(len(h)))
			_, err = hex.Decode(raw, h)
			keyring.Zero(h)
			if err != nil {
				return nil, fmt.Errorf("upload: --key-file: cannot decode the key")
			}
		} else {
			raw = make([]byte, 32)
			if _, err := rand.Read(raw); err != nil {
				return nil, fmt.Errorf("upload: random key: %w", err)
			}
		}
		pass = keyring.PassphraseFromSecret("symmetric", raw)
		opts.SecretType = secrets.SymmetricSecret
		opts.Payload = base64.StdEncoding.EncodeToString(raw)
		opts.PayloadContentType, opts.PayloadContentEncoding = "application/octet-stream", "base64"
		opts.Algorithm, opts.BitLength, opts.Mode = "aes", len(raw)*8, "xts"
		keyring.Zero(raw)
	}
	s, err := secrets.Create(ctx, kc, opts).Extract()
	opts.Payload = ""
	if err != nil {
		keyring.Zero(pass)
		return nil, fmt.Errorf("upload: barbican secret create: %s", blockdev.DescribeAPIError(err))
	}
	id := path.Base(strings.TrimRight(s.SecretRef, "/"))
	return &uploadKey{id: id, typ: string(opts.SecretType), created: true, pass: pass}, nil
}

// uploadTempFile reserves a 0600 file for the ciphertext beside INPUT, or
// in $TMPDIR when INPUT's directory is not writable.
func uploadTempFile(spec string) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(spec), ".imgfs-upload-*")
	if err != nil {
		if f, err = os.CreateTemp("", ".imgfs-upload-*"); err != nil {
			return "", err
		}
	}
	name := f.Name()
	if err := f.Close(); err != nil {
		os.Remove(name)
		return "", err
	}
	return name, nil
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

// addSecretConsumer registers the image as a consumer of the secret
// (Barbican's secret consumers API). Older Barbicans lack the API: a 404
// or 405 is a warning, returned as text; other failures are errors.
func addSecretConsumer(ctx context.Context, kc *gophercloud.ServiceClient, secretID, imageID string) (warning string, err error) {
	body := map[string]string{"service": "image", "resource_type": "image", "resource_id": imageID}
	_, err = kc.Post(ctx, kc.ServiceURL("secrets", secretID, "consumers"), body, nil,
		&gophercloud.RequestOpts{OkCodes: []int{200, 201, 202}})
	if err == nil {
		return "", nil
	}
	switch blockdev.HTTPStatus(err) {
	case http.StatusNotFound, http.StatusMethodNotAllowed:
		return fmt.Sprintf("barbican secret %s: the secret consumers API is not available (%s); image %s is not registered as a consumer",
			secretID, blockdev.DescribeAPIError(err), imageID), nil
	}
	return "", fmt.Errorf("barbican secret %s: registering image %s as a consumer failed: %s", secretID, imageID, blockdev.DescribeAPIError(err))
}
