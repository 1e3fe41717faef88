// Package kernels is the engine: tensor views, the Device interface, and the op set every model and
// objective is written in. Each op is a forward/backward pair with a fixed argument order
// (outputs, saved-for-backward, inputs, weights, sizes). Backward ops ACCUMULATE (+=) into every
// gradient they write, inputs' and parameters' alike (llm.c's convention); callers zero them.
package kernels

import "fmt"

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
