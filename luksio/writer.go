package luksio

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"hash"
	"io"
	"strings"
	"time"

	"github.com/imgfs/imgfs/blockdev"
)

// Defaults of FormatOptions, as `cryptsetup luksFormat --type luks1` has them.
const (
	DefaultCipher   = "aes-xts-plain64"
	DefaultHash     = "sha256"
	DefaultIterTime = 2 * time.Second
	// MinPBKDF2Iterations is cryptsetup's floor for PBKDF2 iterations.
	MinPBKDF2Iterations = 1000
	// digestIterTime is how long cryptsetup spends on the volume key digest.
	digestIterTime = 125 * time.Millisecond
	// luks1AlignKeyslots aligns each keyslot's key material (cryptsetup
	// LUKS_ALIGN_KEYSLOTS).
	luks1AlignKeyslots = 4096
	luks1Stripes       = 4000
)

// FormatOptions chooses the parameters of a new LUKS1 header. The zero value
// gives cryptsetup's LUKS1 defaults: aes-xts-plain64 with a 512-bit key,
// PBKDF2-sha256 calibrated to 2 s, 4000 stripes.
type FormatOptions struct {
	// Cipher is a dm-crypt specification (default aes-xts-plain64).
	Cipher string
	// KeyBytes is the volume key length (default 64 for XTS, else 32).
	KeyBytes int
	// Hash is the PBKDF2, AF and digest hash (default sha256).
	Hash string
	// Iterations fixes the keyslot PBKDF2 iterations; 0 calibrates them
	// to IterTime on this machine.
	Iterations uint32
	// IterTime is the calibration target for the keyslot (default 2 s).
	IterTime time.Duration
	// DigestIterations fixes the volume key digest iterations; 0 means
	// the calibrated 125 ms, or MinPBKDF2Iterations when Iterations is fixed.
	DigestIterations uint32
	// UUID is the header UUID (default: a random version 4 UUID).
	UUID string
	// Rand is the source of the volume key and salts (default crypto/rand).
	Rand io.Reader
}

func (o FormatOptions) withDefaults() (FormatOptions, error) {
	if o.Cipher == "" {
		o.Cipher = DefaultCipher
	}
	cs, err := parseCipherSpec(o.Cipher)
	if err != nil {
		return o, err
	}
	if cs.mode == modeECB {
		return o, fmt.Errorf("cipher %q: ECB is not offered for new volumes: %w", o.Cipher, ErrUnsupportedCipher)
	}
	if o.KeyBytes == 0 {
		o.KeyBytes = 32
		if cs.mode == modeXTS {
			o.KeyBytes = 64
		}
	}
	if !validKeyBytes(o.KeyBytes) {
		return o, fmt.Errorf("key size of %d bytes: %w", o.KeyBytes, ErrUnsupportedCipher)
	}
	if o.Hash == "" {
		o.Hash = DefaultHash
	}
	o.Hash = strings.ToLower(o.Hash)
	if _, err := hashByName(o.Hash); err != nil {
		return o, err
	}
	if o.IterTime <= 0 {
		o.IterTime = DefaultIterTime
	}
	if o.Iterations != 0 && o.Iterations < MinPBKDF2Iterations {
		return o, fmt.Errorf("%d PBKDF2 iterations is below the minimum %d", o.Iterations, MinPBKDF2Iterations)
	}
	if o.DigestIterations != 0 && o.DigestIterations < MinPBKDF2Iterations {
		return o, fmt.Errorf("%d digest iterations is below the minimum %d", o.DigestIterations, MinPBKDF2Iterations)
	}
	if len(o.UUID) > luks1UUIDLen-1 {
		return o, fmt.Errorf("UUID %q is longer than %d bytes", o.UUID, luks1UUIDLen-1)
	}
	if o.Rand == nil {
		o.Rand = rand.Reader
	}
	return o, nil
}

// NewLUKS1 makes a LUKS1 header area for a fresh random volume key:
// the 592-byte phdr with keyslot 0 holding the key under passphrase
// (PBKDF2, AF split with 4000 stripes, encrypted with the volume cipher),
// keyslots 1-7 disabled, followed by the key material of all eight slots at
// cryptsetup's offsets. The area ends at the end of the key material
// (aligned to 4 KiB), and its payload offset field says so, as in qcow2+LUKS
// images; a raw volume puts its payload further (see NewLUKS1View). The
// caller must Close the key.
func NewLUKS1(passphrase []byte, opts FormatOptions) (area []byte, key *Key, err error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, nil, fmt.Errorf("luks1 format: %w", err)
	}
	newHash, _ := hashByName(o.Hash)
	name, mode, _ := strings.Cut(o.Cipher, "-")
	if len(name) >= luks1CipherNameLen || len(mode) >= luks1CipherModeLen {
		return nil, nil, fmt.Errorf("luks1 format: cipher %q does not fit the header: %w", o.Cipher, ErrUnsupportedCipher)
	}
	random := func(n int) ([]byte, error) {
		b := make([]byte, n)
		if _, err := io.ReadFull(o.Rand, b); err != nil {
			return nil, fmt.Errorf("luks1 format: random bytes: %w", err)
		}
		return b, nil
	}

	iter, digestIter := o.Iterations, o.DigestIterations
	if iter == 0 {
		perSec := pbkdf2Rate(newHash, o.KeyBytes)
		iter = clampIter(perSec * o.IterTime.Seconds())
		if digestIter == 0 {
			digestIter = clampIter(perSec * digestIterTime.Seconds())
		}
	}
	if digestIter == 0 {
		digestIter = MinPBKDF2Iterations
	}

	// Layout: key material of slot i at 4 KiB-aligned sectors after the phdr.
	splitSectors := roundUp(int64(o.KeyBytes)*luks1Stripes, luks1SectorSize) / luks1SectorSize
	slotStride := roundUp(splitSectors*luks1SectorSize, luks1AlignKeyslots) / luks1SectorSize
	firstSlot := int64(roundUp(luks1PhdrSize, luks1AlignKeyslots) / luks1SectorSize)
	end := (firstSlot + luks1NumKeys*slotStride) * luks1SectorSize
	area = make([]byte, end)

	vk, err := random(o.KeyBytes)
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		if err != nil {
			clear(vk)
		}
	}()
	be := binary.BigEndian
	copy(area, luksMagic)
	be.PutUint16(area[luks1OffsetVersion:], 1)
	copy(area[luks1OffCipherName:], name)
	copy(area[luks1OffCipherMode:], mode)
	copy(area[luks1OffHashSpec:], o.Hash)
	be.PutUint32(area[luks1OffPayload:], uint32(end/luks1SectorSize))
	be.PutUint32(area[luks1OffKeyBytes:], uint32(o.KeyBytes))
	mkSalt, err := random(luks1SaltSize)
	if err != nil {
		return nil, nil, err
	}
	copy(area[luks1OffMKDigestSalt:], mkSalt)
	mkDigest := pbkdf2Key(newHash, vk, mkSalt, int(digestIter), luks1DigestSize)
	copy(area[luks1OffMKDigest:], mkDigest)
	be.PutUint32(area[luks1OffMKDigestIter:], digestIter)
	uuid := o.UUID
	if uuid == "" {
		if uuid, err = randomUUID(o.Rand); err != nil {
			return nil, nil, err
		}
	}
	copy(area[luks1OffUUID:], uuid)

	for i := range luks1NumKeys {
		s := area[luks1KeyslotOffset+i*luks1KeyslotSize:][:luks1KeyslotSize]
		be.PutUint32(s, luks1KeyDisabled)
		be.PutUint32(s[luks1SlotOffKeyMat:], uint32(firstSlot+int64(i)*slotStride))
		be.PutUint32(s[luks1SlotOffStripes:], luks1Stripes)
	}

	// Keyslot 0: PBKDF2(passphrase) keys the volume cipher that encrypts the
	// AF-split volume key, IVs counted from the start of the key material.
	if err := fillLUKS1Keyslot(area, 0, vk, passphrase, o.Hash, o.Cipher, iter, o.Rand); err != nil {
		return nil, nil, fmt.Errorf("luks1 format: %w", err)
	}
	return area, &Key{key: vk, slot: 0, spec: o.Cipher, sectorSize: luks1SectorSize}, nil
}

// NewLUKS1View makes a LUKS1 header for a fresh random volume key (NewLUKS1)
// and returns plain as a raw LUKS1 volume under it, with the payload at
// 2 MiB like cryptsetup. The volume key lives only in the view's cipher;
// Close drops it.
func NewLUKS1View(plain blockdev.Device, passphrase []byte, opts FormatOptions) (*RawView, error) {
	area, key, err := NewLUKS1(passphrase, opts)
	if err != nil {
		return nil, err
	}
	c, err := key.Cipher()
	key.Close()
	if err != nil {
		return nil, err
	}
	v, err := newRawView(plain, bytesDevice(area), c, true)
	if err != nil {
		c.Close()
		return nil, err
	}
	return v, nil
}

// fillLUKS1Keyslot enables keyslot i of the LUKS1 header area and wraps
// the volume key vk in it under passphrase: a fresh salt, iter PBKDF2
// iterations of hashName, and the AF split of vk (the slot's stripe count)
// encrypted with cipherSpec at the slot's key material offset, IVs counted
// from the start of the material. On an error the material is zeroed.
func fillLUKS1Keyslot(area []byte, i int, vk, passphrase []byte, hashName, cipherSpec string, iter uint32, rnd io.Reader) error {
	be := binary.BigEndian
	newHash, err := hashByName(hashName)
	if err != nil {
		return err
	}
	s := area[luks1KeyslotOffset+i*luks1KeyslotSize:][:luks1KeyslotSize]
	stripes := int64(be.Uint32(s[luks1SlotOffStripes:]))
	off := int64(be.Uint32(s[luks1SlotOffKeyMat:])) * luks1SectorSize
	n := roundUp(int64(len(vk))*stripes, luks1SectorSize)
	if stripes < 1 || stripes > luks1MaxStripes || off < luks1PhdrSize || off+n > int64(len(area)) {
		return corruptf("keyslot %d: %d stripes of key material at %d do not fit the %d-byte header area", i, stripes, off, len(area))
	}
	salt := s[luks1SlotOffSalt : luks1SlotOffSalt+luks1SaltSize]
	if _, err := io.ReadFull(rnd, salt); err != nil {
		return fmt.Errorf("random salt: %w", err)
	}
	material := area[off : off+n]
	clear(material)
	if err := afSplit(material[:int64(len(vk))*stripes], vk, int(stripes), newHash, rnd); err != nil {
		clear(material)
		return err
	}
	slotKey := pbkdf2Key(newHash, passphrase, salt, int(iter), len(vk))
	c, err := NewSectorCipher(cipherSpec, slotKey, luks1SectorSize)
	clear(slotKey)
	if err != nil {
		clear(material)
		return err
	}
	err = c.EncryptSectors(material, material, 0)
	c.Close()
	if err != nil {
		clear(material)
		return err
	}
	be.PutUint32(s, luks1KeyEnabled)
	be.PutUint32(s[luks1SlotOffIterations:], iter)
	return nil
}

// afSplit is the LUKS anti-forensic split (cryptsetup lib/luks1/af.c):
// stripes-1 random stripes, each XORed into a running buffer that is then
// diffused, and a last stripe that XORs the buffer with the key. dst holds
// stripes*len(key) bytes.
func afSplit(dst, key []byte, stripes int, newHash func() hash.Hash, rnd io.Reader) error {
	n := len(key)
	buf := make([]byte, n)
	defer clear(buf)
	h := newHash()
	for i := 0; i < stripes-1; i++ {
		stripe := dst[i*n : (i+1)*n]
		if _, err := io.ReadFull(rnd, stripe); err != nil {
			return fmt.Errorf("random stripe: %w", err)
		}
		xorInto(buf, stripe)
		diffuse(h, buf)
	}
	last := dst[(stripes-1)*n : stripes*n]
	for i := range last {
		last[i] = buf[i] ^ key[i]
	}
	return nil
}

// pbkdf2Rate measures PBKDF2 iterations per second for a keyLen-byte
// output, running for at least 50 ms.
func pbkdf2Rate(newHash func() hash.Hash, keyLen int) float64 {
	pass := []byte("imgfs calibration")
	salt := make([]byte, luks1SaltSize)
	for iter := 1000; ; iter *= 2 {
		start := time.Now()
		clear(pbkdf2Key(newHash, pass, salt, iter, keyLen))
		if d := time.Since(start); d >= 50*time.Millisecond || iter >= 1<<28 {
			return float64(iter) / d.Seconds()
		}
	}
}

// clampIter turns a calibrated iteration count into a header field.
func clampIter(f float64) uint32 {
	switch {
	case f < MinPBKDF2Iterations:
		return MinPBKDF2Iterations
	case f > 1<<31-1:
		return 1<<31 - 1
	}
	return uint32(f)
}

// randomUUID returns a random (version 4) UUID in its text form.
func randomUUID(rnd io.Reader) (string, error) {
	var u [16]byte
	if _, err := io.ReadFull(rnd, u[:]); err != nil {
		return "", fmt.Errorf("luks1 format: random UUID: %w", err)
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16]), nil
}

// bytesDevice is a Device over a byte slice.
type bytesDevice []byte

func (b bytesDevice) Size() int64 { return int64(len(b)) }

func (b bytesDevice) ReadAt(p []byte, off int64) (int, error) {
	n, eof := blockdev.Clip(p, off, int64(len(b)))
	if n == 0 {
		return 0, eof
	}
	copy(p, b[off:off+int64(n)])
	return n, eof
}
