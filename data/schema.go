// Package data is the dataset layer: latent datasets in Arrow IPC (memory-mapped, zero-copy) and
// Parquet (FastVideo's files, through pqarrow), one schema of FastVideo tensor triplets
// (X_bytes, X_shape, X_dtype); the writer; the loader (shuffle, shard, prefetch, CFG dropout, an
// exact resume cursor); and the synthetic dataset with its toy text encoder (docs/data.md).
package data

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/fewstep/fewstep/kernels"
)

// Column names (FastVideo's convention).
const (
	ColID      = "id"
	ColCaption = "caption"
	Latent     = "vae_latent"     // [C, F, H, W]
	TextEmb    = "text_embedding" // [L, text_dim], unpadded
	TrajLatent = "trajectory_latents"
	TrajTimes  = "trajectory_timesteps"
)

// Triplet column names of tensor X.
func BytesCol(x string) string { return x + "_bytes" }
func ShapeCol(x string) string { return x + "_shape" }
func DTypeCol(x string) string { return x + "_dtype" }

// ParseDType reads a dtype column value.
func ParseDType(s string) (kernels.DType, error) {
	switch s {
	case "float32", "fp32", "torch.float32":
		return kernels.F32, nil
	case "bfloat16", "bf16", "torch.bfloat16":
		return kernels.BF16, nil
	case "float16", "fp16", "half", "torch.float16":
		return kernels.F16, nil
	}
	return 0, fmt.Errorf("unknown dtype %q (want float32, bfloat16 or float16)", s)
}

// Schema is the Arrow schema of a dataset file holding the given tensors:
// id, caption, then X_bytes (binary), X_shape (list<int64>), X_dtype (string) per tensor.
func Schema(tensors ...string) *arrow.Schema {
	fs := []arrow.Field{
		{Name: ColID, Type: arrow.BinaryTypes.String},
		{Name: ColCaption, Type: arrow.BinaryTypes.String},
	}
	for _, x := range tensors {
		fs = append(fs,
			arrow.Field{Name: BytesCol(x), Type: arrow.BinaryTypes.Binary},
			arrow.Field{Name: ShapeCol(x), Type: arrow.ListOf(arrow.PrimitiveTypes.Int64)},
			arrow.Field{Name: DTypeCol(x), Type: arrow.BinaryTypes.String},
		)
	}
	return arrow.NewSchema(fs, nil)
}

// --- element conversion (little-endian storage) ---

// BF16 rounds to bfloat16 (round to nearest even; NaN stays NaN).
func BF16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 {
		return uint16(b>>16) | 0x40
	}
	return uint16((b + 0x7fff + (b>>16)&1) >> 16)
}

// BF16ToF32 widens a bfloat16.
func BF16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// F16 rounds to IEEE half precision (round to nearest even, overflow to ±Inf).
func F16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int((b>>23)&0xff) - 127 + 15
	man := b & 0x7fffff
	switch {
	case (b>>23)&0xff == 0xff: // Inf/NaN
		if man != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	case exp >= 31:
		return sign | 0x7c00
	case exp <= 0: // subnormal or zero
		if exp < -10 {
			return sign
		}
		man |= 0x800000
		shift := uint32(14 - exp)
		half := uint32(1) << (shift - 1)
		r := man >> shift
		rem := man & (1<<shift - 1)
		if rem > half || (rem == half && r&1 == 1) {
			r++
		}
		return sign | uint16(r)
	}
	r := uint32(exp)<<10 | man>>13
	rem := man & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && r&1 == 1) {
		r++ // may carry into the exponent: correct (rounds up to the next binade or Inf)
	}
	return sign | uint16(r)
}

// F16ToF32 widens a half.
func F16ToF32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	man := uint32(h & 0x3ff)
	switch {
	case exp == 0:
		if man == 0 {
			return math.Float32frombits(sign)
		}
		f := float32(man) / 1024 / 16384 // man · 2^-24
		if sign != 0 {
			return -f
		}
		return f
	case exp == 31:
		return math.Float32frombits(sign | 0x7f800000 | man<<13)
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | man<<13)
}

// EncodeTensor stores fp32 values as little-endian bytes of dtype dt.
func EncodeTensor(v []float32, dt kernels.DType) []byte {
	out := make([]byte, len(v)*dt.Size())
	switch dt {
	case kernels.F32:
		for i, x := range v {
			binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(x))
		}
	case kernels.BF16:
		for i, x := range v {
			binary.LittleEndian.PutUint16(out[2*i:], BF16(x))
		}
	case kernels.F16:
		for i, x := range v {
			binary.LittleEndian.PutUint16(out[2*i:], F16(x))
		}
	}
	return out
}

// DecodeInto converts little-endian bytes of dtype dt into dst (len(dst) elements), applying
// y = (x − mean)/std per channel when mean != nil, where the tensor is [C, rest...] and each channel
// holds len(dst)/C elements. This is the single copy a latent makes on its way to the model.
func DecodeInto(dst []float32, src []byte, dt kernels.DType, mean, std []float64) {
	n := len(dst)
	if mean == nil {
		switch dt {
		case kernels.F32:
			for i := range dst {
				dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
			}
		case kernels.BF16:
			for i := range dst {
				dst[i] = BF16ToF32(binary.LittleEndian.Uint16(src[2*i:]))
			}
		case kernels.F16:
			for i := range dst {
				dst[i] = F16ToF32(binary.LittleEndian.Uint16(src[2*i:]))
			}
		}
		return
	}
	C := len(mean)
	per := n / C
	for c := 0; c < C; c++ {
		m, s := float32(mean[c]), float32(1/std[c])
		lo := c * per
		d := dst[lo : lo+per]
		switch dt {
		case kernels.F32:
			b := src[4*lo:]
			for i := range d {
				d[i] = (math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:])) - m) * s
			}
		case kernels.BF16:
			b := src[2*lo:]
			for i := range d {
				d[i] = (BF16ToF32(binary.LittleEndian.Uint16(b[2*i:])) - m) * s
			}
		case kernels.F16:
			b := src[2*lo:]
			for i := range d {
				d[i] = (F16ToF32(binary.LittleEndian.Uint16(b[2*i:])) - m) * s
			}
		}
	}
}
