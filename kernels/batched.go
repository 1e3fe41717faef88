package kernels

import "unsafe"

// Batched Linear layers (issue 14: "QKV as one GEMM"): several Linear layers that read the same
// input, e.g. self-attention's q, k, v from h1 or cross-attention's k, v from the context. Where
// the weights, the biases and the outputs each lie at a constant stride from one another (views of
// one buffer: the parameter table keeps q, k, v one Linear apart, models/pass.go allocates their
// outputs contiguously) a device may run them as one strided-batched GEMM: fewer, fuller waves of
// tiles than one GEMM each. The functions below fall back to the plain ops otherwise, so every
// device computes the same function and the CPU device needs no batched code.

// LinearBatcher runs n ≥ 2 Linear layers of one input in one launch where it can. Each method
// reports whether it did the whole op (false: nothing queued).
type LinearBatcher interface {
	// BatchesLinears reports whether LinearBatchedBack takes the batch at all now (callers then
	// leave it every bias gradient: it sums them in the pass that makes dOuts' bf16 copy).
	BatchesLinears() bool
	// LinearBatched: outs[i] = in·ws[i]ᵀ + bs[i] (bs nil or every bs[i] nil: no bias).
	LinearBatched(outs []*Tensor, in *Tensor, ws, bs []*Tensor) bool
	// LinearBatchedBack: dIn += Σ_i dOuts[i]·ws[i]; dWs[i] += dOuts[i]ᵀ·in; dBs[i] += Σ_rows dOuts[i]
	// (dIn nil, dWs nil or every dWs[i] nil, and likewise dBs: not wanted).
	LinearBatchedBack(dIn *Tensor, dWs, dBs, dOuts []*Tensor, in *Tensor, ws []*Tensor) bool
}

// LinearBatched is outs[i] = in·ws[i]ᵀ + bs[i] for every i on any device (one Linear each where
// d is no LinearBatcher or declines). bs may be nil (no biases).
func LinearBatched(d Device, outs []*Tensor, in *Tensor, ws, bs []*Tensor) {
	checkBatch("LinearBatched", len(outs), ws, bs)
	if f, ok := d.(LinearBatcher); ok && len(outs) > 1 && f.LinearBatched(outs, in, ws, bs) {
		return
	}
	for i, out := range outs {
		d.Linear(out, in, ws[i], at(bs, i))
	}
}

// LinearBatchedBack is the backward of LinearBatched on any device (one LinearBack each, in order,
// where d is no LinearBatcher or declines). dWs, dBs may be nil (no parameter gradients).
func LinearBatchedBack(d Device, dIn *Tensor, dWs, dBs, dOuts []*Tensor, in *Tensor, ws []*Tensor) {
	checkBatch("LinearBatchedBack", len(dOuts), ws, dBs)
	if dWs != nil && len(dWs) != len(dOuts) {
		panicf("LinearBatchedBack: %d weight gradients for %d layers", len(dWs), len(dOuts))
	}
	if f, ok := d.(LinearBatcher); ok && len(dOuts) > 1 && f.LinearBatchedBack(dIn, dWs, dBs, dOuts, in, ws) {
		return
	}
	for i, dOut := range dOuts {
		d.LinearBack(dIn, at(dWs, i), at(dBs, i), dOut, in, ws[i])
	}
}

// BatchesLinears reports whether d runs batched Linears (LinearBatcher.BatchesLinears).
func BatchesLinears(d Device) bool {
	f, ok := d.(LinearBatcher)
	return ok && f.BatchesLinears()
}

func checkBatch(op string, n int, ws, bs []*Tensor) {
	if n == 0 || len(ws) != n || (bs != nil && len(bs) != n) {
		panicf("%s: %d outputs, %d weights, %d biases", op, n, len(ws), len(bs))
	}
}

// at is ts[i], nil for a nil list.
func at(ts []*Tensor, i int) *Tensor {
	if ts == nil {
		return nil
	}
	return ts[i]
}

// BatchStride reports whether ts (two or more) are views at a constant stride of one another: the
// same dtype and size, ts[i] starting stride·i elements after ts[0], stride ≥ their size (no
// overlap). Otherwise, or with a nil entry, (0, false).
func BatchStride(ts []*Tensor) (stride int, ok bool) {
	if len(ts) < 2 {
		return 0, false
	}
	for _, t := range ts {
		if t == nil {
			return 0, false
		}
	}
	t0 := ts[0]
	n, sz := t0.Numel(), t0.DType.Size()
	a0, ok0 := addr(t0)
	if !ok0 {
		return 0, false
	}
	for i, t := range ts[1:] {
		a, ok := addr(t)
		if !ok || t.DType != t0.DType || t.Numel() != n || a <= a0 || (a-a0)%uintptr(sz) != 0 {
			return 0, false
		}
		s := int((a - a0) / uintptr(sz))
		if s%(i+1) != 0 {
			return 0, false
		}
		if i == 0 {
			stride = s
		} else if s != stride*(i+1) {
			return 0, false
		}
	}
	if stride < n {
		return 0, false
	}
	return stride, true
}

// addr is the address of t's element 0 (device or host storage).
func addr(t *Tensor) (uintptr, bool) {
	if t.F32 != nil {
		if len(t.F32) == 0 {
			return 0, false
		}
		return uintptr(unsafe.Pointer(&t.F32[0])), true
	}
	return t.Ptr, t.Ptr != 0
}

// AllNil reports whether every entry of ts is nil (a nil list too).
func AllNil(ts []*Tensor) bool {
	for _, t := range ts {
		if t != nil {
			return false
		}
	}
	return true
}
