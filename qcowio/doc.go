// Package qcowio reads qcow2 images (versions 2 and 3, including extended L2
// entries, zlib and zstd compressed clusters and native LUKS encryption) from a
// blockdev.Device, lazily and without qemu.
//
// Every image is inspected against a safety policy before any data is read:
// backing files, external data files, unknown incompatible features, legacy
// AES encryption and tables that point outside the file are refused, the same
// checks the OpenStack format inspector applies.
package qcowio
