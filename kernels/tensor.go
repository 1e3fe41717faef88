// Package kernels is the engine: tensor views, the Device interface, and the op set every model and
// objective is written in. Each op is a forward/backward pair with a fixed argument order
// (outputs, saved-for-backward, inputs, weights, sizes). Backward ops ACCUMULATE (+=) into every
// gradient they write, inputs' and parameters' alike (llm.c's convention); callers zero them.
package kernels

import (
	"fmt"
	"math"
)

// DType is a tensor's storage type. Compute is fp32 on every device.
type DType uint8

const (
	F32 DType = iota
	BF16
	F16
)

func (d DType) String() string {
	switch d {
	case F32:
		return "float32"
	case BF16:
		return "bfloat16"
	case F16:
		return "float16"
	}
	return fmt.Sprintf("dtype(%d)", uint8(d))
}

// Size is the number of bytes of one element.
func (d DType) Size() int {
	if d == F32 {
		return 4
	}
	return 2
}

// Tensor is a view: a device, a storage dtype, a shape (row-major, contiguous), and the storage of
// its elements. On the CPU, F32 holds exactly the view's elements (a sub-slice of a larger buffer
// for carved views). On a GPU, Ptr is the device address of element 0.
type Tensor struct {
	Dev   Device
	DType DType
	Shape []int
	F32   []float32 // CPU storage; nil on other devices
	Ptr   uintptr   // GPU storage; 0 on the CPU
}

// Numel is the number of elements.
func (t *Tensor) Numel() int { return Numel(t.Shape) }

// Numel is the product of a shape's sizes.
func Numel(shape []int) int {
	n := 1
	for _, s := range shape {
		n *= s
	}
	return n
}

// View returns a contiguous sub-view of n = Numel(shape) elements starting at element off.
// It panics on an out-of-range view: that is a programming error, not bad input.
func (t *Tensor) View(off int, shape ...int) *Tensor {
	n := Numel(shape)
	if off < 0 || off+n > t.Numel() {
		panic(fmt.Sprintf("kernels: view [%d:%d] of a tensor of %d elements %v", off, off+n, t.Numel(), t.Shape))
	}
	v := &Tensor{Dev: t.Dev, DType: t.DType, Shape: append([]int(nil), shape...)}
	if t.F32 != nil {
		v.F32 = t.F32[off : off+n : off+n]
	} else {
		v.Ptr = t.Ptr + uintptr(off*t.DType.Size())
	}
	return v
}

// Reshape returns the same elements under another shape of equal size.
func (t *Tensor) Reshape(shape ...int) *Tensor {
	if Numel(shape) != t.Numel() {
		panic(fmt.Sprintf("kernels: reshape %v to %v", t.Shape, shape))
	}
	return t.View(0, shape...)
}

func (t *Tensor) String() string {
	dev := "nil"
	if t.Dev != nil {
		dev = t.Dev.Name()
	}
	return fmt.Sprintf("Tensor(%s %s %v)", dev, t.DType, t.Shape)
}

// F64Acc allocates k float64 accumulators on dev for SumSquares, zeroed: an F32 tensor [2k] whose
// element pair (2i, 2i+1) holds accumulator i's 8 bytes (little-endian). View(2i, 2) is
// accumulator i.
func F64Acc(dev Device, k int) *Tensor { return dev.Alloc(F32, 2*k) }

// ReadF64 reads the float64 accumulators of acc (an F64Acc or a view of whole pairs) into dst
// (len(dst) = acc.Numel()/2) with one dev.ToHost: the one synchronization.
func ReadF64(dev Device, dst []float64, acc *Tensor) {
	if acc.DType != F32 || acc.Numel() != 2*len(dst) {
		panicf("ReadF64: %v into %d float64s", acc, len(dst))
	}
	h := make([]float32, acc.Numel())
	dev.ToHost(h, acc)
	for i := range dst {
		dst[i] = f64Of(h[2*i], h[2*i+1])
	}
}

// ReadF64Host is ReadF64 on a host copy h of accumulators (2 float32 words each).
func ReadF64Host(dst []float64, h []float32) {
	if len(h) != 2*len(dst) {
		panicf("ReadF64Host: %d words into %d float64s", len(h), len(dst))
	}
	for i := range dst {
		dst[i] = f64Of(h[2*i], h[2*i+1])
	}
}

// f64Of and f64Bits move a float64's bits through two float32 words (lo, hi) without arithmetic,
// so NaN payloads and signs survive.
func f64Of(lo, hi float32) float64 {
	return math.Float64frombits(uint64(math.Float32bits(hi))<<32 | uint64(math.Float32bits(lo)))
}

func f64Bits(v float64) (lo, hi float32) {
	b := math.Float64bits(v)
	return math.Float32frombits(uint32(b)), math.Float32frombits(uint32(b >> 32))
}
