package qcowio

import "fmt"

// Built-in feature bit names, used when the image has no feature name table
// entry for a bit.
var builtinFeatureNames = map[featureKey]string{
	{0, 0}: "dirty",
	{0, 1}: "corrupt",
	{0, 2}: "external data file",
	{0, 3}: "compression type",
	{0, 4}: "extended L2 entries",
	{1, 0}: "lazy refcounts",
	{2, 0}: "bitmaps",
	{2, 1}: "raw external data",
}

// featureList names the set bits of a feature field of the given kind
// (0 incompatible, 1 compatible, 2 autoclear).
func (h *header) featureList(kind byte, bits uint64) []string {
	var out []string
	for bit := byte(0); bit < 64; bit++ {
		if bits&(1<<bit) == 0 {
			continue
		}
		k := featureKey{kind, bit}
		name, ok := builtinFeatureNames[k]
		if !ok {
			name, ok = h.featureNames[k]
		}
		if !ok || name == "" {
			name = fmt.Sprintf("bit %d", bit)
		}
		out = append(out, name)
	}
	return out
}
