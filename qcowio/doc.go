// Package qcowio reads qcow2 images (versions 2 and 3, including extended L2
// entries, zlib and zstd compressed clusters and native LUKS encryption) from a
// blockdev.Device, lazily and without qemu.
//
// Every image is inspected against a safety policy before any data is read:
// backing files, external data files, unknown incompatible features, legacy
// AES encryption and tables that point outside the file are refused, the same
// checks the OpenStack format inspector applies.
//
// Reads map guest clusters through the L1 table and a bounded LRU cache of
// L2 tables, coalesce clusters that are contiguous in the file into one read
// of the device below, and decrypt qcow2+LUKS data in place with the IV
// sector taken from the host offset (as qemu does). Open validates every L1
// entry before any data is read, and every L2 table and cluster descriptor
// too when the L2 tables total at most 8 MiB; above that it checks each L2
// table when a read first loads it, so that opening a large image costs its
// header and L1 table, not all its tables (Inspect always walks them all).
package qcowio
