package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"unicode/utf8"

	"github.com/dustin/go-humanize"
	"github.com/gophercloud/gophercloud/v2"
	"github.com/urfave/cli/v2"

	"github.com/imgfs/imgfs/cloud"
	"github.com/imgfs/imgfs/keyring"
)

// os_encrypt_key_deletion_policy values.
const (
	deleteOnImageDeletion = "on_image_deletion"
	deleteNever           = "do_not_delete"
)

func uploadCommand() *cli.Command {
	var (
		ef                                   encryptFlags
		key                                  keyFlags
		keyID, name, cloudName, deletePolicy string
		noConsumer                           bool
	)
	return &cli.Command{
		Name:  "upload",
		Usage: "encrypt a raw or qcow2 INPUT and upload it to Glance as an encrypted image, its key in Barbican",
		Description: "Without --key-id a new Barbican secret is created: 32 random bytes (symmetric, aes-256,\n" +
			"as Cinder and Nova make them) whose lowercase hex is the LUKS passphrase, or a passphrase\n" +
			"secret from --passphrase-file, or a symmetric secret from --key-file. The image carries\n" +
			"os_encrypt_format, os_encrypt_key_id, os_encrypt_key_deletion_policy, os_decrypt_size and\n" +
			"os_decrypt_container_format, and is registered as a consumer of the secret (unless\n" +
			"--no-consumer; a failed registration fails the upload and deletes the image). The image id\n" +
			"is printed on stdout; key material never is.",
		ArgsUsage: "INPUT",
		Flags: append(append(ef.flags("uploaded format: luks (raw LUKS1, disk_format luks) or qcow2+luks (disk_format qcow2)"),
			key.sourceFlags()...),
			&cli.StringFlag{Name: "key-id", Destination: &keyID, Usage: "encrypt with the existing Barbican secret `ID` (or href) instead of creating one"},
			&cli.StringFlag{Name: "name", Destination: &name, Usage: "Glance image `NAME` (default: INPUT's file name)"},
			&cli.StringFlag{Name: "os-cloud", EnvVars: []string{"OS_CLOUD"}, Destination: &cloudName, Usage: "clouds.yaml entry `NAME` for Glance and Barbican (default: OS_CLOUD, else the OS_* variables)"},
			&cli.BoolFlag{Name: "no-consumer", Destination: &noConsumer, Usage: "do not register the image as a consumer of the secret (for a Barbican without the secret consumers API); without it a failed registration fails the upload"},
			&cli.StringFlag{Name: "key-deletion-policy", Destination: &deletePolicy, Usage: "os_encrypt_key_deletion_policy: on_image_deletion (default for a new secret) or do_not_delete (default with --key-id)"},
		),
		Action: func(c *cli.Context) (err error) {
			if c.NArg() != 1 {
				return usageError("upload: want INPUT")
			}
			spec := c.Args().First()
			x, err := ef.parse()
			if err != nil {
				return err
			}
			diskFormat := "luks"
			if x.format == encryptQcow2LUKS {
				diskFormat = "qcow2"
			}
			n := 0
			for _, s := range []string{keyID, key.passphraseFile, key.keyFile} {
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
			switch deletePolicy {
			case "":
			case deleteOnImageDeletion, deleteNever:
				policy = deletePolicy
			default:
				return usageError("--key-deletion-policy %q: want on_image_deletion or do_not_delete", deletePolicy)
			}
			if st, err := os.Stat(spec); err != nil {
				return fmt.Errorf("upload: %w", err)
			} else if !st.Mode().IsRegular() && st.Mode()&os.ModeDevice == 0 {
				return fmt.Errorf("upload: %s is not a file or block device", spec)
			}
			if name == "" {
				name = filepath.Base(spec)
			}

			ctx, stop := interruptible(c.Context)
			defer stop()
			sess, err := cloud.Connect(ctx, cloudName)
			if err != nil {
				return fmt.Errorf("upload: %w", err)
			}
			kc, err := sess.KeyManager()
			if err != nil {
				return fmt.Errorf("upload: %w", err)
			}
			ic, err := sess.ImageService()
			if err != nil {
				return fmt.Errorf("upload: %w", err)
			}
			secret, err := uploadSecret(ctx, kc, keyID, &key, "imgfs image "+name)
			if err != nil {
				return err
			}
			defer secret.Close()
			defer func() {
				if err != nil && secret.Created {
					if derr := cloud.DeleteSecret(context.Background(), kc, secret.ID); derr != nil {
						fmt.Fprintf(os.Stderr, "imgfs: warning: could not delete the barbican secret created for the failed upload: %v\n", derr)
					} else {
						fmt.Fprintf(os.Stderr, "imgfs: deleted barbican secret %s created for the failed upload\n", secret.ID)
					}
				}
			}()

			tmp, err := uploadTempFile(spec)
			if err != nil {
				return fmt.Errorf("upload: temporary file: %w", err)
			}
			defer os.Remove(tmp)
			size, err := x.encrypt(ctx, spec, output{path: tmp}, secret.Passphrase)
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
			id, err := cloud.UploadImage(ctx, ic, cloud.NewImage{Name: name, DiskFormat: diskFormat, Properties: map[string]string{
				"os_encrypt_format":              "luks",
				"os_encrypt_key_id":              secret.ID,
				"os_encrypt_key_deletion_policy": policy,
				"os_decrypt_size":                strconv.FormatInt(size, 10),
				"os_decrypt_container_format":    "bare",
			}}, f)
			if err != nil {
				return fmt.Errorf("upload: %w", err)
			}
			if noConsumer {
				fmt.Fprintf(os.Stderr, "imgfs: --no-consumer: image %s is not registered as a consumer of barbican secret %s\n", id, secret.ID)
			} else if err := cloud.AddSecretConsumer(ctx, kc, secret.ID, id); err != nil {
				if derr := cloud.DeleteImage(context.Background(), ic, id); derr != nil {
					return fmt.Errorf("upload: %w (and the image could not be deleted: %v)", err, derr)
				}
				return fmt.Errorf("upload: %w; the image was deleted again (use --no-consumer to upload without registering)", err)
			}
			fmt.Println(id)
			origin := "new"
			if !secret.Created {
				origin = "existing"
			}
			fmt.Fprintf(os.Stderr, "imgfs: uploaded %s as glance image %s (%q, disk_format %s, %s stored, %s virtual); key: %s %s barbican secret %s, deletion policy %s\n",
				spec, id, safeText(name), diskFormat, humanize.IBytes(uint64(st.Size())), humanize.IBytes(uint64(size)), origin, secret.Type, secret.ID, policy)
			return nil
		},
	}
}

// uploadSecret returns the key of the new image: the existing secret
// keyID, or a new Barbican secret made from --passphrase-file, --key-file
// or 32 random bytes.
func uploadSecret(ctx context.Context, kc *gophercloud.ServiceClient, keyID string, key *keyFlags, name string) (*cloud.Secret, error) {
	switch {
	case keyID != "":
		s, err := cloud.ExistingSecret(ctx, kc, keyID)
		if err != nil {
			return nil, fmt.Errorf("upload: --key-id: %w", err)
		}
		return s, nil
	case key.passphraseFile != "":
		p, err := keyring.PassphraseFile{Path: key.passphraseFile}.Passphrase(ctx)
		if err != nil {
			return nil, fmt.Errorf("upload: --passphrase-file: %w", err)
		}
		defer keyring.Zero(p)
		if !utf8.Valid(p) {
			return nil, usageError("upload: --passphrase-file: the passphrase is not UTF-8 text (Barbican stores passphrases as text); use --key-file for binary keys")
		}
		s, err := cloud.NewPassphraseSecret(ctx, kc, name, p)
		if err != nil {
			return nil, fmt.Errorf("upload: %w", err)
		}
		return s, nil
	}
	var raw []byte // nil: a new random key
	if key.keyFile != "" {
		var err error
		if raw, err = (keyring.KeyFile{Path: key.keyFile}).Key(ctx); err != nil {
			return nil, fmt.Errorf("upload: --key-file: %w", err)
		}
		defer keyring.Zero(raw)
	}
	s, err := cloud.NewSymmetricSecret(ctx, kc, name, raw)
	if err != nil {
		return nil, fmt.Errorf("upload: %w", err)
	}
	return s, nil
}

// uploadTempFile reserves a 0600 file for the ciphertext beside INPUT, or
// in $TMPDIR when INPUT's directory is not writable.
func uploadTempFile(spec string) (string, error) {
	dir := "" // $TMPDIR: INPUT may be a block device, and /dev is no place for an image
	if fi, err := os.Stat(spec); err == nil && fi.Mode().IsRegular() {
		dir = filepath.Dir(spec)
	}
	f, err := os.CreateTemp(dir, ".imgfs-upload-*")
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
