package cuda

import (
	"github.com/fewstep/fewstep/kernels"
)

// Batched Linears (kernels.LinearBatcher, kernels/batched.go): Linear layers of one input, e.g.
// self-attention's q, k, v from h1 or cross-attention's k, v from the context, as one
// strided-batched cuBLASLt GEMM (cublaslt.go's batch attributes; the bias by the epilogue with a
// bias batch stride) where their weights lie at a constant stride (the parameter table keeps them
// one Linear apart) and so do their outputs (models/pass.go allocates them in one buffer). At 4,680
// tokens one [4680×1536]·[1536×1536] GEMM is ~3.4 waves of tiles on an H200, run as 4; q, k, v
// together are ~10.1 waves (NOTES v16). The backward: the weight gradients of the batch as one
// batched GEMM; the input gradient as accumulating GEMMs (the dOuts are not one [M, 3N] matrix);
// the bias gradients and the bf16 copy of the dOuts (both GEMMs' operand) from one read.
// FEWSTEP_QKV=0 turns it off (A/B timings): the models then run one Linear each.

var _ kernels.LinearBatcher = (*Device)(nil)

// BatchesLinears: with the fusions on, unless FEWSTEP_QKV=0 (or SetBatchedLinears(d, false)).
func (d *Device) BatchesLinears() bool { return d.fuse && d.qkv }

// SetBatchedLinears turns the batched Linears on or off for ops queued afterwards (tests: both
// against the CPU).
func SetBatchedLinears(d *Device, on bool) { d.qkv = on }

// batchDims checks n Linear layers [N, K] of one input in (M rows of K) with outputs (or output
// gradients) outs [M·N] and biases bs (nil entries: none) and returns M, N, K.
func batchDims(op string, outs []*kernels.Tensor, in *kernels.Tensor, ws, bs []*kernels.Tensor) (M, N, K int) {
	w0 := ws[0]
	must(len(w0.Shape) == 2 && w0.Shape[1] > 0, "%s: weight %v is not [out, in]", op, w0.Shape)
	N, K = w0.Shape[0], w0.Shape[1]
	must(in.Numel()%K == 0, "%s: in %v, weight %v", op, in.Shape, w0.Shape)
	M = in.Numel() / K
	for i, out := range outs {
		must(len(ws[i].Shape) == 2 && ws[i].Shape[0] == N && ws[i].Shape[1] == K, "%s: weight %d %v, weight 0 %v", op, i, ws[i].Shape, w0.Shape)
		must(out.Numel() == M*N, "%s: output %d %v for in %v, weight %v", op, i, out.Shape, in.Shape, w0.Shape)
		if bs != nil && bs[i] != nil { // (must's arguments are evaluated: bs[i] only when bs has it)
			must(bs[i].Numel() == N, "%s: bias %d %v for %d outputs", op, i, bs[i].Shape, N)
		}
	}
	return M, N, K
}

// spanOK reports whether the weights from w0 on (at a constant stride) can be read as one span:
// stored bf16, or fp32 with exact (or TF32) GEMMs, or fp32 marked weights in bf16-operand mode
// (the span's bf16 copy is then cached by bf16Operand under w0's address). It depends only on the
// weights and the mode, so a set of weights takes the same path in every forward and backward:
// their bf16 copy is always the span's, never also the single weights' (cached under the same
// address with another size).
func (d *Device) spanOK(w0, in *kernels.Tensor) bool {
	switch {
	case w0.DType == kernels.BF16:
		return true
	case w0.DType != kernels.F32:
		return false
	case d.GEMM == GEMMBF16:
		return d.isWeight(w0) // unmarked: a scratch copy per GEMM, which the next GEMM overwrites
	}
	return in.DType == kernels.F32
}

// weightSpan is the n weights at stride sW from w0 as one tensor, as the GEMMs read it: as stored,
// or its cached bf16 copy (inside an entered op; nil after an error).
func (d *Device) weightSpan(w0 *kernels.Tensor, n, sW int) *kernels.Tensor {
	span := spanOf(w0, n, sW)
	if w0.DType == kernels.F32 && d.GEMM == GEMMBF16 {
		p := d.bf16Operand(span)
		if p == 0 {
			return nil
		}
		return bf16View(d, span, p)
	}
	return span
}

// spanOf is the tensor of n views at stride s from t0 (one header over all of them).
func spanOf(t0 *kernels.Tensor, n, s int) *kernels.Tensor {
	return viewAt(t0, 0, (n-1)*s+t0.Numel())
}

// viewAt is a header of the given shape at element off of t (no bounds check: t may be a span
// whose header is shorter than the memory it stands for).
func viewAt(t *kernels.Tensor, off int, shape ...int) *kernels.Tensor {
	return &kernels.Tensor{Dev: t.Dev, DType: t.DType, Shape: shape, Ptr: t.Ptr + uintptr(off*t.DType.Size())}
}

// LinearBatched: outs[i] = in·ws[i]ᵀ + bs[i], one strided-batched GEMM where the outputs (and the
// biases) lie at a constant stride, else one GEMM each on the weights' span. False (nothing queued)
// when the weights are not at a constant stride or cannot be read as a span (spanOK).
func (d *Device) LinearBatched(outs []*kernels.Tensor, in *kernels.Tensor, ws, bs []*kernels.Tensor) bool {
	if !d.BatchesLinears() {
		return false
	}
	n := len(outs)
	M, N, K := batchDims("LinearBatched", outs, in, ws, bs)
	sW, ok := kernels.BatchStride(ws)
	if !ok || !d.spanOK(ws[0], in) {
		return false
	}
	if !d.begin(M*N == 0, outs...) {
		return true
	}
	defer d.leave()
	defer d.wrote(outs...)
	wspan := d.weightSpan(ws[0], n, sW)
	if wspan == nil {
		return true
	}
	sO, okO := kernels.BatchStride(outs)
	sB, okB := kernels.BatchStride(bs)
	noBias := kernels.AllNil(bs)
	if okO && (okB || noBias) { // outᵀ_i (N×M) = (w_i as K×N)ᵀ·(in as K×M) for every i
		var b0 *kernels.Tensor
		if !noBias {
			b0 = spanOf(bs[0], n, sB)
		}
		if d.gemmX("LinearBatched", opT, opN, N, M, K, wspan, K, in, K, spanOf(outs[0], n, sO), N, 0, b0, 0,
			gemmEpi{batch: n, strideA: sW, strideD: sO, strideBias: sB}) {
			return true
		}
	}
	for i, out := range outs { // one GEMM each (no batched algorithm, or outputs not at one stride)
		var b *kernels.Tensor
		if bs != nil {
			b = bs[i]
		}
		d.gemm("Linear", opT, opN, N, M, K, viewAt(wspan, i*sW, N, K), K, in, K, out, N, 0, b)
	}
	return true
}

// LinearBatchedBack: dIn += Σ_i dOuts[i]·ws[i] (accumulating GEMMs), dWs[i] += dOuts[i]ᵀ·in (one
// strided-batched GEMM where the dOuts and the dWs lie at constant strides), dBs[i] += Σ_rows
// dOuts[i]. In bf16-operand mode the dOuts' bf16 copy (every GEMM's operand) is made once, with
// the bias gradients from the same read where the dOuts are one buffer and the dBs at one stride.
// False (nothing queued) as LinearBatched's.
func (d *Device) LinearBatchedBack(dIn *kernels.Tensor, dWs, dBs, dOuts []*kernels.Tensor, in *kernels.Tensor, ws []*kernels.Tensor) bool {
	if !d.BatchesLinears() {
		return false
	}
	n := len(dOuts)
	M, N, K := batchDims("LinearBatchedBack", dOuts, in, ws, dBs)
	sW, ok := kernels.BatchStride(ws)
	if !ok || !d.spanOK(ws[0], in) {
		return false
	}
	if dIn != nil {
		mustNumel("LinearBatchedBack dIn", M*K, dIn)
	}
	for i := range dOuts {
		if dWs != nil && dWs[i] != nil {
			mustNumel("LinearBatchedBack dW", N*K, dWs[i])
		}
	}
	betaIn := float32(1)
	if d.claimZero(dIn) { // ZeroLazy(dIn) just before: the first GEMM writes dIn
		betaIn = 0
	}
	if !d.begin(M*N == 0) {
		if betaIn == 0 {
			d.Zero(dIn)
		}
		return true
	}
	defer d.leave()
	defer d.wrote(dIn)
	defer d.wrote(dWs...)
	defer d.wrote(dBs...)
	wspan := d.weightSpan(ws[0], n, sW)
	if wspan == nil {
		return true
	}

	// g[i]: dOuts[i] as the GEMMs read it; gspan: all of them at stride sG (nil: not at one stride)
	g := append([]*kernels.Tensor(nil), dOuts...)
	sG, okG := kernels.BatchStride(dOuts)
	var gspan *kernels.Tensor
	if okG {
		gspan = spanOf(dOuts[0], n, sG)
	}
	biasDone := false
	if d.GEMM == GEMMBF16 && okG && sG == M*N && dOuts[0].DType == kernels.F32 {
		var sh uintptr
		sB, okB := kernels.BatchStride(dBs)
		if okB && dBs[0].DType == kernels.F32 && d.colVec(N, gspan, nil, nil, nil) && d.actLookup(gspan) == 0 {
			// the bias gradients (n segments of M rows) and the bf16 copy from one read
			if sh = d.shadowBuf(gspan); sh != 0 {
				d.colReduceVec(dBs[0].Ptr, 0, sh, sB, gspan, nil, nil, nil, n, M, N, 0)
				d.actSet(gspan, sh)
				biasDone = true
			}
		}
		if sh == 0 {
			sh = d.bf16Persistent(gspan)
		}
		if sh != 0 {
			gspan = bf16View(d, gspan, sh)
			for i := range g {
				g[i] = viewAt(gspan, i*M*N, M, N)
			}
		}
	} else if d.GEMM == GEMMBF16 {
		gspan = nil // one bf16 copy per dOut for both its GEMMs
		for i, t := range dOuts {
			if t.DType == kernels.F32 {
				if p := d.bf16Persistent(t); p != 0 {
					g[i] = bf16View(d, t, p)
				}
			}
		}
	}
	if !biasDone {
		for i, dB := range dBs {
			if dB != nil {
				d.colReduce(dB, 0, N, dOuts[i], nil, nil, nil, 1, M, N, 0, 1, false)
			}
		}
	}
	if dIn != nil { // dInᵀ (K×M) += (w_i as K×N)·(dOut_i as N×M), i = 0…n−1
		for i := range g {
			beta := float32(1)
			if i == 0 {
				beta = betaIn
			}
			d.gemm("LinearBatchedBack(dIn)", opN, opN, K, M, N, viewAt(wspan, i*sW, N, K), K, g[i], N, dIn, K, beta, nil)
		}
	}
	if kernels.AllNil(dWs) {
		return true
	}
	// dWᵀ_i (K×N) += (in as K×M)·(dOut_i as N×M)ᵀ
	if sD, okD := kernels.BatchStride(dWs); okD && gspan != nil {
		sGB := sG
		if gspan.DType != dOuts[0].DType || gspan.Ptr != dOuts[0].Ptr {
			sGB = M * N // the bf16 copy, contiguous
		}
		if d.gemmX("LinearBatchedBack(dW)", opN, opT, K, N, M, in, K, gspan, N, spanOf(dWs[0], n, sD), K, 1, nil, 0,
			gemmEpi{batch: n, strideB: sGB, strideD: sD}) {
			return true
		}
	}
	for i, dW := range dWs {
		if dW != nil {
			d.gemm("LinearBatchedBack(dW)", opN, opT, K, N, M, in, K, g[i], N, dW, K, 1, nil)
		}
	}
	return true
}
