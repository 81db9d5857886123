package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/dustin/go-humanize"
	"github.com/urfave/cli/v2"

	"github.com/imgfs/imgfs"
	"github.com/imgfs/imgfs/blockdev/rbd"
	"github.com/imgfs/imgfs/blockdev/remote"
	"github.com/imgfs/imgfs/keyring"
	"github.com/imgfs/imgfs/luksio"
	"github.com/imgfs/imgfs/qcowio"
)

// Each flag set is defined once, as a struct its flags fill; a command
// lists the sets it takes and converts them into library options, so no
// command reads a flag it does not have.

// keyFlags select where the passphrase comes from (none takes the key
// itself) and bound what unlocking may cost.
type keyFlags struct {
	passphraseFile, keyFile, maxMemory string
	slot                               int
	maxIterations, maxTime             uint64
}

// sourceFlags are the flags that say where the passphrase comes from.
func (k *keyFlags) sourceFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "passphrase-file", Destination: &k.passphraseFile, Usage: "read the LUKS passphrase from `FILE` (- = stdin; one trailing newline is stripped)"},
		&cli.StringFlag{Name: "key-file", Destination: &k.keyFile, Usage: "read a binary key from `FILE` (- = stdin); its lowercase hex is the passphrase (OpenStack's rule)"},
	}
}

func (k *keyFlags) flags() []cli.Flag {
	return append(k.sourceFlags(),
		&cli.IntFlag{Name: "key-slot", Value: -1, Destination: &k.slot, Usage: "try only keyslot `N` (default: every active slot)"},
		&cli.StringFlag{Name: "max-kdf-memory", Value: "4GiB", Destination: &k.maxMemory, Usage: "refuse argon2 keyslots needing more than `SIZE` of memory (one budget for the whole unlock)"},
		&cli.Uint64Flag{Name: "max-kdf-iterations", Value: luksio.DefaultMaxKDFIterations, Destination: &k.maxIterations, Usage: "stop unlocking once the keyslots and digests tried would cost more than `N` PBKDF2 iterations in all"},
		&cli.Uint64Flag{Name: "max-kdf-time", Value: luksio.DefaultMaxKDFTime, Destination: &k.maxTime, Usage: "bound argon2 work: memory × passes summed over the keyslots tried stays within --max-kdf-memory × `N`"},
	)
}

// source returns the key source the flags name, or nil for none.
func (k *keyFlags) source() (keyring.Source, error) {
	switch {
	case k.passphraseFile != "" && k.keyFile != "":
		return nil, usageError("--passphrase-file and --key-file exclude each other")
	case k.passphraseFile != "":
		return keyring.PassphraseFile{Path: k.passphraseFile}, nil
	case k.keyFile != "":
		return keyring.KeyFile{Path: k.keyFile}, nil
	}
	return nil, nil
}

func (k *keyFlags) unlock() (luksio.UnlockOptions, error) {
	o := luksio.UnlockOptions{Slot: k.slot}
	n, err := parseSize(k.maxMemory)
	if err != nil || n < 1024 || n/1024 > math.MaxUint32 {
		return o, usageError("--max-kdf-memory %q: want a size from 1KiB to below 4TiB", k.maxMemory)
	}
	o.MaxKDFMemoryKiB = uint32(n / 1024)
	for _, f := range []struct {
		name string
		v    uint64
		dst  *uint32
	}{{"max-kdf-iterations", k.maxIterations, &o.MaxKDFIterations}, {"max-kdf-time", k.maxTime, &o.MaxKDFTime}} {
		if f.v < 1 || f.v > math.MaxUint32 {
			return o, usageError("--%s %d: want 1 to %d", f.name, f.v, uint64(math.MaxUint32))
		}
		*f.dst = uint32(f.v)
	}
	return o, nil
}

// formatFlags describe the image.
type formatFlags struct {
	format     string
	allowDirty bool
}

func (f *formatFlags) flags(name, usage string) []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: name, Destination: &f.format, Usage: usage},
		&cli.BoolFlag{Name: "allow-dirty", Destination: &f.allowDirty, Usage: "accept a qcow2 image whose dirty bit is set"},
	}
}

func (f *formatFlags) apply(o *imgfs.Options, name string, allowed ...string) error {
	o.Format = strings.ToLower(f.format)
	o.Policy = qcowio.Policy{AllowDirty: f.allowDirty}
	if o.Format == "" {
		return nil
	}
	for _, a := range allowed {
		if o.Format == a {
			return nil
		}
	}
	return usageError("--%s %q: want %s", name, f.format, strings.Join(allowed, ", "))
}

// sourceFlags select and tune remote sources (http(s) URLs, Glance images,
// RBD images) and the Barbican key.
type sourceFlags struct {
	cloud, keyID, cacheDir, cacheSize, blockSize string
	parallel                                     int
	stallTimeout                                 time.Duration
	cephConf, cephID                             string
	cephTimeout                                  time.Duration
	noDirect                                     bool
}

func (s *sourceFlags) flags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "os-cloud", EnvVars: []string{"OS_CLOUD"}, Destination: &s.cloud, Usage: "clouds.yaml entry `NAME` for Glance and Barbican (default: OS_CLOUD, else the OS_* variables)"},
		&cli.StringFlag{Name: "key-id", Destination: &s.keyID, Usage: "Barbican secret `ID` (or href) holding the key (default: the image's os_encrypt_key_id, else cinder_encryption_key_id)"},
		&cli.StringFlag{Name: "cache-dir", Destination: &s.cacheDir, Usage: "`DIR` for the download of a server that ignores Range (default $XDG_CACHE_HOME/imgfs)"},
		&cli.StringFlag{Name: "cache-size", Value: "256MiB", Destination: &s.cacheSize, Usage: "memory for cached blocks of a remote image"},
		&cli.StringFlag{Name: "block-size", Value: "1MiB", Destination: &s.blockSize, Usage: "unit of remote reads and of the cache"},
		&cli.IntFlag{Name: "parallel", Value: remote.DefaultParallel, Destination: &s.parallel, Usage: "range requests at a time to a remote source, for scattered reads and read-ahead (a long sequential run is one streaming request)"},
		&cli.DurationFlag{Name: "http-stall-timeout", Value: remote.DefaultStallTimeout, Destination: &s.stallTimeout, Usage: "abandon and retry (like a reset connection) a remote request that receives nothing, headers or body, for `DURATION`"},
		&cli.StringFlag{Name: "ceph-conf", EnvVars: []string{"CEPH_CONF"}, Value: rbd.DefaultConfFile, Destination: &s.cephConf, Usage: "ceph.conf `FILE` (mons, keyring) for rbd:POOL/IMAGE[@SNAP] and Glance images stored in RBD"},
		&cli.StringFlag{Name: "ceph-id", Destination: &s.cephID, Usage: "Ceph client `ID` without \"client.\" (default as the rbd CLI: --id/--user/--name in $CEPH_ARGS, else admin)"},
		&cli.DurationFlag{Name: "ceph-timeout", Value: rbd.DefaultTimeout, Destination: &s.cephTimeout, Usage: "fail (or, for a Glance image, fall back to HTTP) when the Ceph cluster does not answer a connect or a read within `DURATION`"},
		&cli.BoolFlag{Name: "no-direct", Destination: &s.noDirect, Usage: "read Glance images through Glance's API even when their rbd:// location is reachable"},
	}
}

func (s *sourceFlags) apply(o *imgfs.Options) error {
	o.Cloud, o.KeyID = s.cloud, s.keyID
	o.HTTP = remote.HTTPOptions{CacheDir: s.cacheDir, StallTimeout: s.stallTimeout}
	o.Cache = remote.CacheOptions{Parallel: s.parallel}
	o.Ceph = rbd.Config{ConfFile: s.cephConf, ID: s.cephID, Timeout: s.cephTimeout}
	o.NoDirect = s.noDirect
	var err error
	if s.cephTimeout <= 0 {
		return usageError("--ceph-timeout %s: want a positive duration (30s, 1m)", s.cephTimeout)
	}
	if s.stallTimeout <= 0 {
		return usageError("--http-stall-timeout %s: want a positive duration (30s, 1m)", s.stallTimeout)
	}
	if o.Cache.MaxBytes, err = parseSize(s.cacheSize); err != nil {
		return usageError("--cache-size: %v", err)
	}
	if o.Cache.BlockSize, err = parseSize(s.blockSize); err != nil || o.Cache.BlockSize < 4096 || o.Cache.BlockSize > 64<<20 || o.Cache.BlockSize%4096 != 0 {
		return usageError("--block-size %q: want a multiple of 4 KiB up to 64 MiB", s.blockSize)
	}
	if p := s.parallel; p < 0 || p > 64 {
		return usageError("--parallel %d: want 1..64", p)
	}
	return nil
}

// openFlags are the flags of a command that opens SOURCE to read it.
type openFlags struct {
	key    keyFlags
	format formatFlags
	source sourceFlags
}

func (o *openFlags) flags() []cli.Flag {
	fl := append(o.key.flags(), o.format.flags("format", "state the outer format (raw, luks, qcow2); a mismatch with the image's magic is an error")...)
	return append(fl, o.source.flags()...)
}

// storedFlags are the flags of a command that describes an image without
// a key (info, map): the format and source sets of openFlags.
func (o *openFlags) storedFlags() []cli.Flag {
	return append(o.format.flags("format", "state the outer format (raw, luks, qcow2); a mismatch with the image's magic is an error"), o.source.flags()...)
}

// storedOptions converts storedFlags into imgfs.Options with StoredOnly.
func (o *openFlags) storedOptions() (imgfs.Options, error) {
	opts := imgfs.Options{StoredOnly: true}
	if err := o.format.apply(&opts, "format", imgfs.FormatRaw, imgfs.FormatLUKS, imgfs.FormatQcow2); err != nil {
		return opts, err
	}
	return opts, o.source.apply(&opts)
}

// options converts the flags into imgfs.Options.
func (o *openFlags) options() (imgfs.Options, error) {
	var opts imgfs.Options
	var err error
	if opts.Key, err = o.key.source(); err != nil {
		return opts, err
	}
	if opts.Unlock, err = o.key.unlock(); err != nil {
		return opts, err
	}
	if err := o.format.apply(&opts, "format", imgfs.FormatRaw, imgfs.FormatLUKS, imgfs.FormatQcow2); err != nil {
		return opts, err
	}
	return opts, o.source.apply(&opts)
}

// newLUKSFlags describe a new LUKS1 header (encrypt, upload).
type newLUKSFlags struct {
	cipher, hash, clusterSize string
	keySize, iterTime         int
	iterations                uint
}

// clusterSizeFlag is --cluster-size alone (export --to qcow2).
func (n *newLUKSFlags) clusterSizeFlag() cli.Flag {
	return &cli.StringFlag{Name: "cluster-size", Value: "64K", Destination: &n.clusterSize, Usage: "qcow2 cluster `SIZE` (4K to 2M)"}
}

func (n *newLUKSFlags) flags() []cli.Flag {
	return []cli.Flag{
		n.clusterSizeFlag(),
		&cli.StringFlag{Name: "cipher", Value: luksio.DefaultCipher, Destination: &n.cipher, Usage: "dm-crypt cipher `SPEC` (aes-xts-plain64, aes-cbc-essiv:sha256, ...)"},
		&cli.IntFlag{Name: "key-size", Destination: &n.keySize, Usage: "volume key size in `BITS` (default 512 for XTS, 256 otherwise)"},
		&cli.StringFlag{Name: "hash", Value: luksio.DefaultHash, Destination: &n.hash, Usage: "PBKDF2 and AF `HASH` (sha1, sha256, sha512)"},
		&cli.IntFlag{Name: "iter-time", Value: int(luksio.DefaultIterTime / time.Millisecond), Destination: &n.iterTime, Usage: "calibrate PBKDF2 to `MS` milliseconds of unlock time"},
		&cli.UintFlag{Name: "pbkdf-iterations", Destination: &n.iterations, Usage: "use exactly `N` PBKDF2 iterations (at least 1000) instead of calibrating"},
	}
}

func (n *newLUKSFlags) options() (luksio.FormatOptions, error) {
	o := luksio.FormatOptions{Cipher: n.cipher, Hash: n.hash}
	if bits := n.keySize; bits != 0 {
		if bits%8 != 0 || bits < 0 {
			return o, usageError("--key-size %d: want a multiple of 8 bits", bits)
		}
		o.KeyBytes = bits / 8
	}
	if n.iterTime <= 0 {
		return o, usageError("--iter-time %d: want a positive number of milliseconds", n.iterTime)
	}
	o.IterTime = time.Duration(n.iterTime) * time.Millisecond
	if n.iterations != 0 {
		if n.iterations < luksio.MinPBKDF2Iterations || n.iterations > 1<<31-1 {
			return o, usageError("--pbkdf-iterations %d: want %d to %d", n.iterations, luksio.MinPBKDF2Iterations, 1<<31-1)
		}
		o.Iterations = uint32(n.iterations)
	}
	return o, nil
}

// clusterBytes reads --cluster-size.
func (n *newLUKSFlags) clusterBytes() (int64, error) {
	v, err := parseSize(n.clusterSize)
	if err != nil || v < 4096 || v > 2<<20 || v&(v-1) != 0 {
		return 0, usageError("--cluster-size %q: want a power of two from 4K to 2M", n.clusterSize)
	}
	return v, nil
}

// parseSize reads a byte count. A bare K, M, G, T, P or E suffix is binary
// (as in dd and qemu-img: 1M = 1048576); KB, MB... are decimal and KiB,
// MiB... binary, as go-humanize reads them.
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("empty size")
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("size %q is negative", s)
		}
		return n, nil
	}
	last := rune(s[len(s)-1])
	if unicode.IsLetter(last) && strings.ContainsRune("kmgtpeKMGTPE", last) {
		if len(s) < 2 || !unicode.IsDigit(rune(s[len(s)-2])) && s[len(s)-2] != ' ' && s[len(s)-2] != '.' {
			return 0, fmt.Errorf("size %q: bad number", s)
		}
		s += "iB"
	}
	n, err := humanize.ParseBytes(s)
	if err != nil {
		return 0, fmt.Errorf("size %q: %w", s, err)
	}
	if n > 1<<62 {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return int64(n), nil
}
