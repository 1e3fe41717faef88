package cuda

import (
	"fmt"
	"unsafe"

	"github.com/fewstep/fewstep/kernels"
)

// bf16 operands for fp32 tensors (GEMMBF16 mode). The models keep activations in fp32; the tensor
// cores want bf16. Rather than convert a GEMM's or the attention's fp32 input on every use, the op
// that produces it (Modulate, LayerNorm, RMSNorm, GELU, SiLU, RoPE, Attention) also writes a bf16
// copy into a persistent buffer kept per fp32 tensor, and records it in a small table of valid
// copies. A copy is valid until something may have written its fp32 source: an op that does not
// declare its writes clears the table (Alloc, a graph replay, …); the ops that declare every tensor
// they write (begin or enterW: the GEMMs, norms, modulation, activations, attention, the
// elementwise ops, the optimizer, FromHost/Copy/Zero/Fill, and their backward ops) drop only the
// copies they overlap, so the forward's copies of a training pass's activations are still valid
// when its backward needs them as GEMM and attention operands. Free forgets everything. Graph
// capture starts and ends a new epoch: a copy made outside a capture is never used inside it (the
// graph must convert for itself, or a replay would read a stale copy).

type actEntry struct {
	src   uintptr // fp32 source
	n     int     // elements
	sh    uintptr // bf16 copy
	epoch int
}

// maxActEntries bounds the table (oldest dropped first): a forward of Wan-1.3B records ~12 copies
// per block, 30 blocks, and its backward needs them all.
const maxActEntries = 2048

type actBuf struct {
	p uintptr
	n int
}

// shadowBuf returns the persistent bf16 buffer of fp32 tensor t, allocating it on first use (0
// during graph capture when it does not exist yet, or when t is not fp32).
func (d *Device) shadowBuf(t *kernels.Tensor) uintptr {
	if t.DType != kernels.F32 || d.GEMM != GEMMBF16 {
		return 0
	}
	n := t.Numel()
	if b, ok := d.actBufs[t.Ptr]; ok && b.n >= n {
		return b.p
	}
	if d.capturing {
		return 0
	}
	if b, ok := d.actBufs[t.Ptr]; ok {
		d.dropCopiesIn(b.p) // a smaller view's copy there must not outlive the buffer
		d.fail(d.drv.call("cuStreamSynchronize", d.drv.cuStreamSynchronize, d.stream))
		d.fail(d.drv.call("cuMemFree_v2(bf16 shadow)", d.drv.cuMemFree, b.p))
		delete(d.actBufs, t.Ptr)
	}
	var p uintptr
	if err := d.drv.call(fmt.Sprintf("cuMemAlloc_v2(bf16 shadow of %v)", t.Shape), d.drv.cuMemAlloc, uintptr(unsafe.Pointer(&p)), uintptr(2*n)); err != nil {
		d.fail(err)
		return 0
	}
	if d.actBufs == nil {
		d.actBufs = map[uintptr]actBuf{}
	}
	d.actBufs[t.Ptr] = actBuf{p, n}
	return p
}

// actSet records sh as the valid bf16 copy of t.
func (d *Device) actSet(t *kernels.Tensor, sh uintptr) {
	if sh == 0 {
		return
	}
	d.wrote(t)
	if len(d.acts) == maxActEntries {
		copy(d.acts, d.acts[1:])
		d.acts = d.acts[:maxActEntries-1]
	}
	d.acts = append(d.acts, actEntry{src: t.Ptr, n: t.Numel(), sh: sh, epoch: d.capEpoch})
}

// actSetF32 is actSet for an fp32 t (a bf16 t is its own operand: nothing to record).
func (d *Device) actSetF32(t *kernels.Tensor, sh uintptr) {
	if t.DType == kernels.F32 {
		d.actSet(t, sh)
	}
}

// actLookup returns the valid bf16 copy of t, or 0.
func (d *Device) actLookup(t *kernels.Tensor) uintptr {
	n := t.Numel()
	for _, e := range d.acts {
		if e.src == t.Ptr && e.n == n && e.epoch == d.capEpoch {
			return e.sh
		}
	}
	return 0
}

// wrote drops the copies whose sources overlap the given tensors.
func (d *Device) wrote(ts ...*kernels.Tensor) {
	for _, t := range ts {
		if t == nil || len(d.acts) == 0 {
			continue
		}
		lo, hi := t.Ptr, t.Ptr+uintptr(t.Numel()*t.DType.Size())
		k := 0
		for _, e := range d.acts {
			if !(lo < e.src+uintptr(4*e.n) && e.src < hi) {
				d.acts[k] = e
				k++
			}
		}
		d.acts = d.acts[:k]
	}
}

// dropCopiesIn forgets the copies held in the bf16 buffer at sh.
func (d *Device) dropCopiesIn(sh uintptr) {
	k := 0
	for _, e := range d.acts {
		if e.sh != sh {
			d.acts[k] = e
			k++
		}
	}
	d.acts = d.acts[:k]
}

// bf16Persistent returns a bf16 copy of fp32 t that stays valid as the table says: the recorded
// one, or a fresh conversion into t's persistent buffer (recorded). 0 when none can be made
// (capture without a buffer): the caller falls back.
func (d *Device) bf16Persistent(t *kernels.Tensor) uintptr {
	if p := d.actLookup(t); p != 0 {
		return p
	}
	p := d.shadowBuf(t)
	if p == 0 {
		return 0
	}
	d.convert(p, kernels.BF16, t)
	d.actSet(t, p)
	return p
}

// bf16View is a bf16 tensor header over p shaped like t.
func bf16View(d *Device, t *kernels.Tensor, p uintptr) *kernels.Tensor {
	return &kernels.Tensor{Dev: d, DType: kernels.BF16, Shape: t.Shape, Ptr: p}
}
