package luksio

import (
	"crypto/cipher"
	"errors"
	"fmt"
	"runtime"
	"sync"
)

// ivUnit is the size of one IV step: LUKS counts IV sectors in 512-byte
// units whatever the encryption sector size.
const ivUnit = 512

// parallelMin is the smallest buffer that DecryptSectors and EncryptSectors
// split across goroutines; below it one goroutine is faster.
const parallelMin = 256 << 10

// SectorCipher encrypts and decrypts whole sectors with a dm-crypt cipher
// specification such as "aes-xts-plain64". It is safe for concurrent use.
type SectorCipher struct {
	spec       cipherSpec
	sectorSize int
	bs         int              // cipher block size
	data       cipher.Block     // data key (XTS: first half)
	tweak      cipher.Block     // XTS tweak key (second half)
	essiv      cipher.Block     // ESSIV IV cipher
	workers    int              // goroutines for large buffers; 0 means GOMAXPROCS
	fast       fastXTS          // assembly AES-XTS (xtsasm*.go), or nil
	fastCBC    fastCBCDecrypter // assembly AES-CBC decryption (cbcasm*.go), or nil
	mu         sync.RWMutex
	closed     bool
}

var errCipherClosed = errors.New("luksio: sector cipher is closed")

// NewSectorCipher builds a cipher from a spec like "aes-xts-plain64" for the
// given volume key and encryption sector size (512..4096, a power of two).
// The key is not retained: the caller may zero it afterwards.
func NewSectorCipher(spec string, key []byte, sectorSize int) (*SectorCipher, error) {
	cs, err := parseCipherSpec(spec)
	if err != nil {
		return nil, err
	}
	if !validSectorSize(sectorSize) {
		return nil, fmt.Errorf("cipher %q: sector size %d is not a power of two in 512..4096: %w", spec, sectorSize, ErrUnsupportedCipher)
	}
	newBlock, err := blockFactory(cs.alg)
	if err != nil {
		return nil, err
	}
	c := &SectorCipher{spec: cs, sectorSize: sectorSize}
	badKey := func(err error) (*SectorCipher, error) {
		return nil, fmt.Errorf("cipher %q with a %d-byte key: %v: %w", spec, len(key), err, ErrUnsupportedCipher)
	}
	dataKey := key
	if cs.mode == modeXTS {
		if len(key)%2 != 0 || len(key) == 0 {
			return badKey(errors.New("XTS needs an even key length"))
		}
		half := len(key) / 2
		dataKey = key[:half]
		if c.tweak, err = newBlock(key[half:]); err != nil {
			return badKey(err)
		}
	}
	if c.data, err = newBlock(dataKey); err != nil {
		return badKey(err)
	}
	c.bs = c.data.BlockSize()
	if cs.mode == modeXTS && c.bs != 16 {
		return badKey(errors.New("XTS needs a 16-byte block cipher"))
	}
	// The assembly XTS derives the IV from the sector number itself: it
	// serves plain and plain64, not ESSIV (the portable path does).
	if cs.mode == modeXTS && cs.alg == "aes" && cs.iv != ivESSIV && newFastXTS != nil {
		c.fast = newFastXTS(key)
	}
	if cs.mode == modeCBC && cs.alg == "aes" && newFastCBCDecrypter != nil && sectorSize%128 == 0 {
		c.fastCBC = newFastCBCDecrypter(key)
	}
	if cs.iv == ivESSIV {
		newHash, err := hashByName(cs.ivHash)
		if err != nil {
			return badKey(err)
		}
		// The ESSIV key is hash(whole volume key): with XTS both halves, as
		// dm-crypt (crypt_iv_essiv) and qemu (qcrypto_ivgen_essiv) do.
		h := newHash()
		h.Write(key)
		salt := h.Sum(nil)
		c.essiv, err = newBlock(salt)
		clear(salt)
		if err != nil {
			return badKey(fmt.Errorf("ESSIV key: %w", err))
		}
		if c.essiv.BlockSize() != c.bs {
			return badKey(errors.New("ESSIV cipher block size differs"))
		}
	}
	return c, nil
}

func validSectorSize(n int) bool {
	return n >= 512 && n <= 4096 && n&(n-1) == 0
}

// SectorSize returns the encryption sector size in bytes.
func (c *SectorCipher) SectorSize() int { return c.sectorSize }

// Spec returns the cipher specification, e.g. "aes-xts-plain64".
func (c *SectorCipher) Spec() string { return c.spec.original }

// Close drops the key schedules. The Go standard library keeps its AES key
// schedule inside an unexported value that cannot be zeroed, so Close only
// releases it to the garbage collector; later calls fail. The AES-XTS
// schedules of the assembly path (xtsasm_amd64.go) are zeroed.
func (c *SectorCipher) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	c.data, c.tweak, c.essiv = nil, nil, nil
	if c.fast != nil {
		c.fast.close() // zeroes the expanded keys
		c.fast = nil
	}
	if c.fastCBC != nil {
		c.fastCBC.close()
		c.fastCBC = nil
	}
}

// DecryptSectors decrypts len(src) bytes (a multiple of SectorSize) into dst.
// firstSector is the IV sector number of src[0] in 512-byte units; each
// following sector's IV advances by SectorSize()/512. dst and src may be the
// same slice but must not otherwise overlap. Large buffers are processed by
// several goroutines.
func (c *SectorCipher) DecryptSectors(dst, src []byte, firstSector uint64) error {
	return c.crypt(dst, src, firstSector, false)
}

// EncryptSectors is the inverse of DecryptSectors.
func (c *SectorCipher) EncryptSectors(dst, src []byte, firstSector uint64) error {
	return c.crypt(dst, src, firstSector, true)
}

func (c *SectorCipher) crypt(dst, src []byte, firstSector uint64, encrypt bool) error {
	if len(dst) != len(src) {
		return fmt.Errorf("luksio: dst has %d bytes, src %d", len(dst), len(src))
	}
	if len(src)%c.sectorSize != 0 {
		return fmt.Errorf("luksio: %d bytes is not a multiple of the %d-byte sector", len(src), c.sectorSize)
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return errCipherClosed
	}
	sectors := len(src) / c.sectorSize
	step := uint64(c.sectorSize / ivUnit)
	workers := c.workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	if workers > sectors {
		workers = sectors
	}
	if workers <= 1 || len(src) < parallelMin {
		c.cryptRange(dst, src, firstSector, encrypt)
		return nil
	}
	per := (sectors + workers - 1) / workers
	var wg sync.WaitGroup
	for start := 0; start < sectors; start += per {
		end := min(start+per, sectors)
		lo, hi := start*c.sectorSize, end*c.sectorSize
		first := firstSector + uint64(start)*step
		wg.Go(func() { c.cryptRange(dst[lo:hi], src[lo:hi], first, encrypt) })
	}
	wg.Wait()
	return nil
}

// cryptRange processes whole sectors sequentially.
func (c *SectorCipher) cryptRange(dst, src []byte, sector uint64, encrypt bool) {
	step := uint64(c.sectorSize / ivUnit)
	if c.fast != nil {
		c.fast.cryptSectors(dst, src, c.sectorSize, sector, step, xtsIVMask(c.spec.iv), encrypt)
		return
	}
	var iv [16]byte
	for off := 0; off < len(src); off += c.sectorSize {
		d, s := dst[off:off+c.sectorSize], src[off:off+c.sectorSize]
		switch c.spec.mode {
		case modeXTS:
			c.sectorIV(iv[:], sector)
			if encrypt {
				xtsEncryptSector(c.data, c.tweak, d, s, &iv)
			} else {
				xtsDecryptSector(c.data, c.tweak, d, s, &iv)
			}
		case modeCBC:
			c.sectorIV(iv[:c.bs], sector)
			switch {
			case encrypt:
				cbcEncryptSector(c.data, d, s, iv[:c.bs])
			case c.fastCBC != nil:
				c.fastCBC.decryptSector(d, s, iv[:16])
			default:
				cbcDecryptSector(c.data, d, s, iv[:c.bs])
			}
		case modeECB:
			for i := 0; i < len(s); i += c.bs {
				if encrypt {
					c.data.Encrypt(d[i:i+c.bs], s[i:i+c.bs])
				} else {
					c.data.Decrypt(d[i:i+c.bs], s[i:i+c.bs])
				}
			}
		}
		sector += step
	}
}

// sectorIV fills iv (one cipher block) for an IV sector number.
func (c *SectorCipher) sectorIV(iv []byte, sector uint64) {
	clear(iv)
	switch c.spec.iv {
	case ivPlain:
		sector &= 0xffffffff
		fallthrough
	case ivPlain64, ivESSIV:
		for i := 0; i < 8 && i < len(iv); i++ {
			iv[i] = byte(sector >> (8 * i))
		}
	}
	if c.spec.iv == ivESSIV {
		c.essiv.Encrypt(iv, iv)
	}
}
