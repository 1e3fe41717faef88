package cuda

import (
	"fmt"
	"math"
	"unsafe"

	"github.com/ebitengine/purego"

	"github.com/fewstep/fewstep/kernels"
)

// The ops of kernels.Device on the GPU. Each queues work on the device's stream and returns; shapes
// are checked as on the CPU (a mismatch panics, naming the op and the shapes).

func must(cond bool, format string, args ...any) {
	if !cond {
		panic("cuda: " + fmt.Sprintf(format, args...))
	}
}

func sameNumel(op string, ts ...*kernels.Tensor) int {
	n := ts[0].Numel()
	for _, t := range ts[1:] {
		must(t.Numel() == n, "%s: %v and %v differ in size", op, ts[0], t)
	}
	return n
}

func lastDim(t *kernels.Tensor) int {
	must(len(t.Shape) > 0, "tensor %v has no dims", t)
	return t.Shape[len(t.Shape)-1]
}

// ---------------------------------------------------------------------------------------------
// GEMM through cuBLASLt.

func cudaType(dt kernels.DType) int {
	switch dt {
	case kernels.BF16:
		return cudaR16BF
	case kernels.F16:
		return cudaR16F
	}
	return cudaR32F
}

// convert queues dst (n elements of dtype ddt at dp) = src, converted; fp32↔bf16 four at a time
// when the addresses allow.
func (d *Device) convert(dp uintptr, ddt kernels.DType, src *kernels.Tensor) {
	n := src.Numel()
	if n%4 == 0 && dp%16 == 0 && src.Ptr%16 == 0 {
		switch {
		case src.DType == kernels.F32 && ddt == kernels.BF16:
			d.args.reset().ptr(dp).ptr(src.Ptr).i64(n / 4)
			d.ew("ew_f32_to_bf16x4", n/4)
			return
		case src.DType == kernels.BF16 && ddt == kernels.F32:
			d.args.reset().ptr(dp).ptr(src.Ptr).i64(n / 4)
			d.ew("ew_bf16_to_f32x4", n/4)
			return
		}
	}
	d.args.reset().ptr(dp).i32(int(ddt)).t(src).i64(n)
	d.ew("ew_convert", n)
}

// gemm: D (m×n, column-major, ld ldd) = op(A)·op(B) + beta·D (+ bias[m] per column when bias != nil),
// A, B, D given as tensors holding the column-major matrices. All-fp32 runs in fp32 (or TF32);
// anything else in bf16×bf16 with fp32 accumulation into D's dtype (fp32 or bf16).
func (d *Device) gemm(op string, transA, transB, m, n, k int, A *kernels.Tensor, lda int, B *kernels.Tensor, ldb int,
	D *kernels.Tensor, ldd int, beta float32, bias *kernels.Tensor) {
	d.gemmX(op, transA, transB, m, n, k, A, lda, B, ldb, D, ldd, beta, bias, 0, gemmEpi{})
}

// gemmEpi asks gemmX for an epilogue beyond the bias (the zero value: none).
type gemmEpi struct {
	gelu  bool    // D = GELU(op(A)·op(B) + bias), the tanh form
	aux   uintptr // with gelu: where the pre-activation op(A)·op(B) + bias is stored (D's dtype, m×n, ld auxLD)
	auxLD int
	// batch > 1: a strided batch of that many GEMMs (batched.go), A, B, D and the bias of GEMM i
	// at i·strideA, i·strideB, i·strideD, i·strideBias elements from the tensors' starts (0: shared);
	// gemmX then reports false, having queued nothing, when cuBLASLt has no algorithm for it
	batch                                 int
	strideA, strideB, strideD, strideBias int
}

// gemmX is gemm with C ≠ D (c: C's address, laid out as D; 0: C = D) and the epilogues of ep. It
// reports false, having queued nothing, when ep asks for the GELU epilogue and cuBLASLt has no
// algorithm with it (the caller then runs the plain ops), or when ep asks for a batch that it cannot
// run as one (no algorithm, matrices less than 16-byte aligned: the caller runs them one by one).
func (d *Device) gemmX(op string, transA, transB, m, n, k int, A *kernels.Tensor, lda int, B *kernels.Tensor, ldb int,
	D *kernels.Tensor, ldd int, beta float32, bias *kernels.Tensor, c uintptr, ep gemmEpi) bool {
	if m == 0 || n == 0 {
		return true
	}
	must(D.DType == kernels.F32 || D.DType == kernels.BF16, "%s: output %v must be float32 or bfloat16 on the GPU", op, D)
	if d.err != nil {
		return true
	}
	key := gemmKey{transA: transA, transB: transB, m: m, n: n, k: k, lda: lda, ldb: ldb, ldd: ldd, td: cudaType(D.DType)}
	exact := A.DType == kernels.F32 && B.DType == kernels.F32 && D.DType == kernels.F32 && d.GEMM != GEMMBF16
	bf16Bias := !exact && bias != nil && bias.DType == kernels.BF16 && D.DType == kernels.F32 // goes in as its fp32 copy
	nb := max(1, ep.batch)
	if nb > 1 {
		key.batch, key.sa, key.sb, key.sd, key.sbias = nb, ep.strideA, ep.strideB, ep.strideD, ep.strideBias
		opSize := 2 // the operands' element size as the GEMM reads them (converted copies start 256-byte aligned)
		if exact {
			opSize = 4
		}
		key.align = lowAlign(A.Ptr, B.Ptr, D.Ptr, uintptr(ep.strideA*opSize), uintptr(ep.strideB*opSize), uintptr(ep.strideD*D.DType.Size()))
		if bias != nil {
			bp, bs := bias.Ptr, ep.strideBias*bias.DType.Size()
			if bf16Bias {
				key.sbias = m // the fp32 copies, one after another in scratch
				bp, bs = 0, 4*m
			}
			if lowAlign(bp, uintptr(bs)) < 16 {
				return false
			}
		}
		if key.align < 16 {
			return false // the caller runs the batch's GEMMs one by one
		}
	}
	if exact {
		key.ta, key.tb, key.compute = cudaR32F, cudaR32F, computeF32
		if d.GEMM == GEMMTF32 {
			key.compute = computeF32TF32
		}
	} else {
		key.ta, key.tb, key.compute = cudaR16BF, cudaR16BF, computeF32
	}
	useBias := bias != nil && (bias.DType == D.DType || bias.DType == kernels.F32 || bf16Bias)
	if ep.gelu && bias != nil && !useBias {
		return false // the bias must come before the GELU
	}
	if useBias {
		key.biasDType = cudaType(bias.DType)
		if bf16Bias {
			key.biasDType = cudaR32F
		}
	}
	switch {
	case ep.gelu && ep.aux != 0 && useBias:
		key.epi = epilogueGAuxB
	case ep.gelu && ep.aux != 0:
		key.epi = epilogueGAux
	case ep.gelu && useBias:
		key.epi = epilogueGBias
	case ep.gelu:
		key.epi = epilogueGELU
	case useBias:
		key.epi = epilogueBias
	}
	if ep.aux != 0 {
		key.auxLD = ep.auxLD
	}
	p := d.getPlan(key)
	if p != nil && !p.ok && ep.gelu {
		return false
	}
	if p != nil && !p.ok && useBias { // no algorithm with the bias epilogue: plain GEMM, then a bias kernel
		key.epi, key.biasDType, key.sbias = 0, 0, 0
		useBias, bf16Bias = false, false
		p = d.getPlan(key)
	}
	if p == nil {
		return true
	}
	if !p.ok && nb > 1 {
		return false // the caller runs the batch's GEMMs one by one
	}
	if !p.ok {
		d.fail(fmt.Errorf("%s: cuBLASLt has no algorithm for m=%d n=%d k=%d (types %d×%d→%d, compute %d)", op, m, n, k, key.ta, key.tb, key.td, key.compute))
		return true
	}

	d.scratchReset()
	var pa, pb uintptr
	if exact {
		pa, pb = A.Ptr, B.Ptr
	} else {
		d.reserve(2*A.Numel()*btoi(A.DType != kernels.BF16 && !d.isWeight(A)) + 2*B.Numel()*btoi(B.DType != kernels.BF16 && !d.isWeight(B)) +
			4*m*nb*btoi(bf16Bias) + 1024)
		pa, pb = d.bf16Operand(A), d.bf16Operand(B)
		if bf16Bias && d.err == nil {
			// A bf16 bias (a network stored in bf16: the frozen teacher, a trainable one whose fp32
			// masters are sharded) and an fp32 output: its fp32 copy (m values; a batch's one after
			// another) goes into the epilogue, instead of a separate pass over D after the GEMM.
			bp := d.scratch(4 * m * nb)
			if bp == 0 {
				return true
			}
			for i := 0; i < nb; i++ {
				d.convert(bp+uintptr(4*m*i), kernels.F32, batchView(bias, i, ep.strideBias, m))
			}
			bias = &kernels.Tensor{Dev: d, DType: kernels.F32, Shape: []int{m * nb}, Ptr: bp}
		}
	}
	if d.err != nil {
		return true
	}
	set := func(what string, attr int, v uintptr) bool {
		if err := d.lt.call("cublasLtMatmulDescSetAttribute("+what+")", d.lt.descSetAttr, p.desc, uintptr(attr), uintptr(unsafe.Pointer(&v)), 8); err != nil {
			d.fail(err)
			return false
		}
		return true
	}
	switch {
	case useBias && !set("BIAS_POINTER", descBiasPtr, bias.Ptr):
		return true
	case ep.aux != 0 && !set("EPILOGUE_AUX_POINTER", descAuxPtr, ep.aux):
		return true
	}
	if c == 0 {
		c = D.Ptr
	}
	alpha := float32(1)
	pr := d.profBegin()
	r, _, _ := purego.SyscallN(d.lt.matmul, d.lt.handle, p.desc, uintptr(unsafe.Pointer(&alpha)), pa, p.la, pb, p.lb,
		uintptr(unsafe.Pointer(&beta)), c, p.ld, D.Ptr, p.ld, uintptr(unsafe.Pointer(&p.algo[0])), d.ws, ltWorkspace, d.stream)
	if r&0xffffffff != 0 {
		d.fail(fmt.Errorf("%s: cublasLtMatmul m=%d n=%d k=%d failed: cublasStatus %d", op, m, n, k, r&0xffffffff))
		return true
	}
	if pr != 0 {
		d.profEnd(fmt.Sprintf("gemm %s %d×%d×%d", op, m, n, k), pr)
	}
	for i := 0; i < nb && bias != nil && !useBias; i++ { // out[c, :] += bias (D is m×n column-major: bias over the m rows)
		Di, bi := batchView(D, i, ep.strideD, m*n), batchView(bias, i, ep.strideBias, m)
		d.args.reset().t(Di).t(bi).t(Di).i64(m).i64(m * n)
		d.ew("ew_add_broadcast", m*n)
	}
	return true
}

// batchView is the n elements of GEMM i of a strided batch over t (stride elements apart; the
// whole of t when not a batch).
func batchView(t *kernels.Tensor, i, stride, n int) *kernels.Tensor {
	if stride == 0 && i == 0 && t.Numel() == n {
		return t
	}
	return viewAt(t, i*stride, n)
}

// getPlan returns the cached cuBLASLt plan of key, making it on first use (nil after an error).
func (d *Device) getPlan(key gemmKey) *gemmPlan {
	if p := d.plans[key]; p != nil {
		return p
	}
	p, err := d.lt.plan(key)
	if err != nil {
		d.fail(fmt.Errorf("gemm plan m=%d n=%d k=%d: %w", key.m, key.n, key.k, err))
		return nil
	}
	d.plans[key] = p
	return p
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Linear: out[M,N] = in[M,K]·w[N,K]ᵀ + b. Column-major, that is outᵀ (N×M) = (w as K×N)ᵀ·(in as K×M).
func (d *Device) Linear(out, in, w, b *kernels.Tensor) {
	N, K := w.Shape[0], w.Numel()/w.Shape[0]
	must(len(w.Shape) == 2 && in.Numel()%K == 0, "Linear: in %v w %v", in.Shape, w.Shape)
	M := in.Numel() / K
	must(out.Numel() == M*N && (b == nil || b.Numel() == N), "Linear: out %v in %v w %v b %v", out.Shape, in.Shape, w.Shape, b)
	if !d.begin(false) {
		return
	}
	defer d.leave()
	d.gemm("Linear", opT, opN, N, M, K, w, K, in, K, out, N, 0, b)
	d.wrote(out)
}

// LinearBack: dIn += dOut·w; dW += dOutᵀ·in; dB += Σ_rows dOut.
func (d *Device) LinearBack(dIn, dW, dB, dOut, in, w *kernels.Tensor) {
	N, K := w.Shape[0], w.Numel()/w.Shape[0]
	M := in.Numel() / K
	must(dOut.Numel() == M*N, "LinearBack: dOut %v in %v w %v", dOut.Shape, in.Shape, w.Shape)
	betaIn := float32(1)
	if d.claimZero(dIn) { // ZeroLazy(dIn) just before: write dIn instead of adding to zeros
		betaIn = 0
	}
	if !d.begin(false) {
		return
	}
	defer d.leave()
	defer d.wrote(dIn, dW, dB)
	if dB != nil && d.GEMM == GEMMBF16 && (dIn != nil || dW != nil) && dB.DType == kernels.F32 &&
		d.colVec(N, dOut, nil, nil, nil) && d.actLookup(dOut) == 0 {
		// The bias gradient and dOut's bf16 copy (both GEMMs' operand) from one read of dOut.
		mustNumel("LinearBack dB", N, dB)
		if sh := d.shadowBuf(dOut); sh != 0 {
			d.colReduceVec(dB.Ptr, 0, sh, N, dOut, nil, nil, nil, 1, M, N, 0)
			d.actSet(dOut, sh)
			dB = nil
		}
	}
	if d.GEMM == GEMMBF16 && dIn != nil && dW != nil {
		d.bf16Persistent(dOut) // one bf16 copy of dOut for both GEMMs
	}
	if dIn != nil { // dInᵀ (K×M) = (w as K×N)·(dOut as N×M)
		mustNumel("LinearBack dIn", M*K, dIn)
		d.gemm("LinearBack(dIn)", opN, opN, K, M, N, w, K, dOut, N, dIn, K, betaIn, nil)
	}
	if dW != nil { // dWᵀ (K×N) = (in as K×M)·(dOut as N×M)ᵀ
		mustNumel("LinearBack dW", N*K, dW)
		d.gemm("LinearBack(dW)", opN, opT, K, N, M, in, K, dOut, N, dW, K, 1, nil)
	}
	if dB != nil {
		mustNumel("LinearBack dB", N, dB)
		d.colReduce(dB, 0, N, dOut, nil, nil, nil, 1, M, N, 0, 1, false)
	}
}

// ---------------------------------------------------------------------------------------------
// Column reductions into any dtype: dst (s, c) at dstOff + s·dstStride + c += scale·Σ term (see
// colreduce in reductions.cu); overwrite replaces instead. fp32 destinations take the atomics
// directly; others go through an fp32 accumulator in scratch.

func (d *Device) colReduce(dst *kernels.Tensor, dstOff, dstStride int, a, b, mean, rstd *kernels.Tensor,
	nseg, segRows, cols, mode int, scale float32, overwrite bool) {
	d.colReduce2(dst, dstOff, nil, 0, dstStride, a, b, mean, rstd, nseg, segRows, cols, mode, scale, overwrite)
}

// colReduce2 is colReduce with a second destination dst0 (at dst0Off, same stride; nil for none)
// that takes the plain column sums of a (mode 0) in the same pass when the fp32 float4 kernel can
// (both destinations fp32, added to), else in a second reduction.
func (d *Device) colReduce2(dst *kernels.Tensor, dstOff int, dst0 *kernels.Tensor, dst0Off, dstStride int, a, b, mean, rstd *kernels.Tensor,
	nseg, segRows, cols, mode int, scale float32, overwrite bool) {
	if nseg == 0 || cols == 0 || segRows == 0 {
		return
	}
	direct := dst.DType == kernels.F32 && scale == 1 && !overwrite
	if direct && d.colVec(cols, a, b, mean, rstd) && (dst0 == nil || dst0.DType == kernels.F32) {
		var acc0 uintptr
		if dst0 != nil {
			acc0 = dst0.Ptr + uintptr(4*dst0Off)
		}
		d.colReduceVec(dst.Ptr+uintptr(4*dstOff), acc0, 0, dstStride, a, b, mean, rstd, nseg, segRows, cols, mode)
		return
	}
	if dst0 != nil {
		d.colReduce2(dst0, dst0Off, nil, 0, dstStride, a, nil, nil, nil, nseg, segRows, cols, 0, 1, false)
	}
	d.scratchReset()
	acc, accStride := dst.Ptr+uintptr(4*dstOff), dstStride
	if !direct {
		acc, accStride = d.scratch(4*nseg*cols), cols
		if acc == 0 {
			return
		}
		d.fail(d.drv.call("cuMemsetD8Async", d.drv.cuMemsetD8Async, acc, 0, uintptr(4*nseg*cols), d.stream))
	}
	gx := (cols + 31) / 32
	gy := (4*d.sms + gx*nseg - 1) / (gx * nseg)
	if lim := (segRows + 7) / 8; gy > lim {
		gy = lim
	}
	if gy < 1 {
		gy = 1
	}
	rpb := (segRows + gy - 1) / gy
	rpb = (rpb + 7) &^ 7
	gy = (segRows + rpb - 1) / rpb
	sdt := kernels.F32
	if mean != nil {
		sdt = mean.DType
	} else if rstd != nil {
		sdt = rstd.DType
	}
	d.args.reset().ptr(acc).i64(accStride).t(a).t(b).ptr(ptrOf(mean)).ptr(ptrOf(rstd)).i32(int(sdt)).
		i64(segRows).i64(cols).i32(rpb).i32(mode)
	d.launch("colreduce", gx, gy, nseg, 32, 8, 1, 0)
	if !direct {
		dp := *dst
		dp.Ptr += uintptr(dstOff * dst.DType.Size())
		d.args.reset().t(&dp).ptr(acc).i64(nseg).i64(dstStride).i64(cols).f32(scale).i32(btoi(overwrite))
		d.ew("ew_finalize", nseg*cols)
	}
}

// colReduceVec queues colreduce_f32x4 (operands checked by colVec; sh: a's bf16 copy or 0): 128
// columns per block, about 8 blocks per SM, rows split evenly.
func (d *Device) colReduceVec(acc, acc0, sh uintptr, accStride int, a, b, mean, rstd *kernels.Tensor, nseg, segRows, cols, mode int) {
	gx := (cols + 127) / 128
	gy := (8*d.sms + gx*nseg - 1) / (gx * nseg)
	gy = max(1, min(gy, (segRows+7)/8))
	rpb := (segRows + gy - 1) / gy
	rpb = (rpb + 7) &^ 7
	gy = (segRows + rpb - 1) / rpb
	d.args.reset().ptr(acc).ptr(acc0).ptr(sh).i64(accStride).ptr(a.Ptr).ptr(ptrOf(b)).
		ptr(ptrOf(mean)).ptr(ptrOf(rstd)).i64(segRows).i64(cols).i32(rpb).i32(mode)
	d.launch("colreduce_f32x4", gx, gy, nseg, 32, 8, 1, 0)
}

// colVec reports whether colreduce_f32x4 takes these operands: fp32 (or nil) tensors, a and b
// 16-byte aligned, rows of cols % 4 == 0 elements.
func (d *Device) colVec(cols int, a, b, mean, rstd *kernels.Tensor) bool {
	if !d.vec || cols%4 != 0 || a.DType != kernels.F32 || a.Ptr%16 != 0 || (b != nil && (b.DType != kernels.F32 || b.Ptr%16 != 0)) {
		return false
	}
	return (mean == nil || mean.DType == kernels.F32) && (rstd == nil || rstd.DType == kernels.F32)
}

func ptrOf(t *kernels.Tensor) uintptr {
	if t == nil {
		return 0
	}
	return t.Ptr
}

// ---------------------------------------------------------------------------------------------
// Normalization, modulation, activations.

func rowThreads(D int) int {
	switch {
	case D >= 2048:
		return 512
	case D >= 512:
		return 256
	case D >= 128:
		return 128
	}
	return 32
}

func (d *Device) LayerNorm(out, mean, rstd, in, w, b *kernels.Tensor, eps float32) {
	D := lastDim(in)
	n := sameNumel("LayerNorm", out, in)
	rows := n / D
	must((mean == nil || mean.Numel() == rows) && (rstd == nil || rstd.Numel() == rows), "LayerNorm: mean %v rstd %v for %d rows", mean, rstd, rows)
	must(w == nil || w.Numel() == D, "LayerNorm: weight %v for D=%d", w, D)
	must(b == nil || b.Numel() == D, "LayerNorm: bias %v for D=%d", b, D)
	must(w == nil || b == nil || w.DType == b.DType, "LayerNorm: weight %v and bias %v dtypes differ", w, b)
	if !d.begin(rows == 0, out, mean, rstd) {
		return
	}
	defer d.leave()
	sdt := 0
	if mean != nil {
		sdt = int(mean.DType)
	}
	must(mean == nil || rstd == nil || mean.DType == rstd.DType, "LayerNorm: mean %v rstd %v dtypes differ", mean, rstd)
	wdt := 0
	if w != nil {
		wdt = int(w.DType)
	} else if b != nil {
		wdt = int(b.DType)
	}
	op, sh, vok := d.vecOut(out)
	if T := d.vecRow(D, in, w, b, mean, rstd); T > 0 && vok {
		d.args.reset().ptr(op).ptr(sh).ptr(ptrOf(mean)).ptr(ptrOf(rstd)).ptr(in.Ptr).ptr(ptrOf(w)).ptr(ptrOf(b)).i32(D).f32(eps)
		d.launch("ln_fwd_f32x4", rows, 1, 1, T, 1, 1, 0)
	} else {
		sh = genericCopy(out, sh)
		d.args.reset().t(out).ptr(sh).ptr(ptrOf(mean)).ptr(ptrOf(rstd)).i32(sdt).t(in).ptr(ptrOf(w)).ptr(ptrOf(b)).i32(wdt).i64(D).f32(eps)
		d.launch("ln_fwd", rows, 1, 1, rowThreads(D), 1, 1, 0)
	}
	d.actSetF32(out, sh)
}

func (d *Device) LayerNormBack(dIn, dW, dB, dOut, in, mean, rstd, w *kernels.Tensor) {
	D := lastDim(in)
	n := sameNumel("LayerNormBack", in, dOut)
	rows := n / D
	must(mean.Numel() == rows && rstd.Numel() == rows && mean.DType == rstd.DType, "LayerNormBack: mean %v rstd %v for %d rows", mean, rstd, rows)
	if !d.begin(rows == 0, dIn, dW, dB) {
		return
	}
	defer d.leave()
	if dIn != nil {
		mustNumel("LayerNormBack dIn", n, dIn)
		T := d.vecRow(D, dIn, dOut, in, w, mean, rstd)
		if T > 0 && d.colSums() && (dW != nil || dB != nil) && sumDst(dW, 0) && sumDst(dB, 0) {
			// dW += Σ dOut·x̂ and dB += Σ dOut from the rows ln_bwd reads (colsums.go)
			must(dW == nil || dW.Numel() == D, "LayerNormBack: dW %v for D=%d", dW, D)
			must(dB == nil || dB.Numel() == D, "LayerNormBack: dB %v for D=%d", dB, D)
			d.lnBackSums(T, rows, D, dIn, dOut, in, mean, rstd, w, nil, 0, 1, 1, 1, 1, ptrOf(dW), ptrOf(dB), 0, rows, nil, 0)
			return
		}
		if T > 0 && d.fuse {
			d.lnBackVec(T, rows, D, dIn, dOut, in, mean, rstd, w, nil, 0, 1, 1, 1, 1)
		} else {
			d.lnBackGeneric(rows, D, dIn, dOut, in, mean, rstd, w)
		}
	}
	switch {
	case dW != nil && dB != nil: // one pass over dOut for both
		mustNumel("LayerNormBack dW", D, dW)
		mustNumel("LayerNormBack dB", D, dB)
		d.colReduce2(dW, 0, dB, 0, D, dOut, in, mean, rstd, 1, rows, D, 2, 1, false)
	case dW != nil:
		mustNumel("LayerNormBack dW", D, dW)
		d.colReduce(dW, 0, D, dOut, in, mean, rstd, 1, rows, D, 2, 1, false)
	case dB != nil:
		mustNumel("LayerNormBack dB", D, dB)
		d.colReduce(dB, 0, D, dOut, nil, nil, nil, 1, rows, D, 0, 1, false)
	}
}

// lnBackGeneric queues ln_bwd (any dtypes): dIn += the LayerNorm gradient of dOut.
func (d *Device) lnBackGeneric(rows, D int, dIn, dOut, in, mean, rstd, w *kernels.Tensor) {
	wdt := 0
	if w != nil {
		wdt = int(w.DType)
	}
	d.args.reset().t(dIn).t(dOut).t(in).ptr(mean.Ptr).ptr(rstd.Ptr).i32(int(mean.DType)).ptr(ptrOf(w)).i32(wdt).i64(D)
	d.launch("ln_bwd", rows, 1, 1, rowThreads(D), 1, 1, 0)
}

// lnBackVec queues ln_bwd_f32x4 (operands checked by vecRow, T its block size): dIn += the
// LayerNorm gradient of dOut·w, or, with mod, of dOut·(1 + mod[b, f, iScale]) (ModulateBack folded in).
func (d *Device) lnBackVec(T, rows, D int, dIn, dOut, in, mean, rstd, w, mod *kernels.Tensor, iScale, N, F, K, tpf int) {
	d.args.reset().ptr(dIn.Ptr).ptr(dOut.Ptr).ptr(in.Ptr).ptr(mean.Ptr).ptr(rstd.Ptr).ptr(ptrOf(w)).ptr(ptrOf(mod)).
		i32(iScale).i32(N).i32(F).i32(K).i32(tpf).i32(D)
	d.launch("ln_bwd_f32x4", rows, 1, 1, T, 1, 1, 0)
}

func (d *Device) RMSNorm(out, rstd, in, w *kernels.Tensor, eps float32) {
	D := lastDim(in)
	n := sameNumel("RMSNorm", out, in)
	rows := n / D
	must(rstd == nil || rstd.Numel() == rows, "RMSNorm: rstd %v for %d rows", rstd, rows)
	must(w == nil || w.Numel() == D, "RMSNorm: weight %v for D=%d", w, D)
	if !d.begin(rows == 0) {
		return
	}
	defer d.leave()
	d.wrote(out, rstd)
	sdt, wdt := 0, 0
	if rstd != nil {
		sdt = int(rstd.DType)
	}
	if w != nil {
		wdt = int(w.DType)
	}
	sh := d.shadowBuf(out)
	if T := d.vecRow(D, out, in, w, rstd); T > 0 {
		d.args.reset().ptr(out.Ptr).ptr(sh).ptr(ptrOf(rstd)).ptr(in.Ptr).ptr(ptrOf(w)).i32(D).f32(eps)
		d.launch("rms_fwd_f32x4", rows, 1, 1, T, 1, 1, 0)
	} else {
		d.args.reset().t(out).ptr(sh).ptr(ptrOf(rstd)).i32(sdt).t(in).ptr(ptrOf(w)).i32(wdt).i64(D).f32(eps)
		d.launch("rms_fwd", rows, 1, 1, rowThreads(D), 1, 1, 0)
	}
	d.actSet(out, sh)
}

func (d *Device) RMSNormBack(dIn, dW, dOut, in, rstd, w *kernels.Tensor) {
	d.rmsNormBack(dIn, dW, nil, dOut, in, rstd, w)
}

// rmsNormBack is RMSNormBack, with dIn's column sums into dB (RMSNormBackBias) when dB is not nil;
// then it reports whether it took the op (false: nothing queued).
func (d *Device) rmsNormBack(dIn, dW, dB, dOut, in, rstd, w *kernels.Tensor) bool {
	D := lastDim(in)
	n := sameNumel("RMSNormBack", in, dOut)
	rows := n / D
	must(rstd.Numel() == rows, "RMSNormBack: rstd %v for %d rows", rstd, rows)
	T := 0
	if dIn != nil {
		mustNumel("RMSNormBack dIn", n, dIn)
		T = d.vecRow(D, dIn, dOut, in, w, rstd)
	}
	sums := T > 0 && d.colSums() && (dW != nil || dB != nil) && sumDst(dW, 0)
	if dB != nil && !(sums && d.biasSums(dB, D)) {
		return false
	}
	fresh := d.claimZero(dIn) // ZeroLazy(dIn) just before: dIn = the gradient
	if !d.begin(rows == 0, dIn, dW, dB) {
		return true
	}
	defer d.leave()
	if sums { // dW += Σ dOut·x̂ (and dB += Σ dIn) from the rows rms_bwd reads (colsums.go)
		must(dW == nil || dW.Numel() == D, "RMSNormBack: dW %v for D=%d", dW, D)
		sh := d.biasCopy(dIn, dB)
		d.rmsBackSums(T, rows, D, dIn, dW, dB, sh, dOut, in, rstd, w, fresh, 0, 0, 1, 1, 1, 1, 0)
		d.actSet(dIn, sh)
		return true
	}
	if dIn != nil {
		if T > 0 && d.fuse {
			d.rmsBackVec(T, rows, D, dIn, dOut, in, rstd, w, fresh, 0, 0, 1, 1, 1, 1, 0)
		} else {
			if fresh {
				d.zeroNow(dIn)
			}
			wdt := 0
			if w != nil {
				wdt = int(w.DType)
			}
			d.args.reset().t(dIn).t(dOut).t(in).ptr(rstd.Ptr).i32(int(rstd.DType)).ptr(ptrOf(w)).i32(wdt).i64(D)
			d.launch("rms_bwd", rows, 1, 1, rowThreads(D), 1, 1, 0)
		}
	}
	if dW != nil {
		mustNumel("RMSNormBack dW", D, dW)
		d.colReduce(dW, 0, D, dOut, in, nil, rstd, 1, rows, D, 3, 1, false)
	}
	return true
}

// rmsBackVec queues rms_bwd_f32x4 (operands checked by vecRow, T its block size): dIn (+)= the
// RMSNorm gradient of dOut (fresh: written, not added); with the RoPE tables tf, th, dOut is first
// rotated back in place (RoPEBack folded in) for the N-token grid rows × cols at frame0.
func (d *Device) rmsBackVec(T, nrows, D int, dIn, dOut, in, rstd, w *kernels.Tensor, fresh bool, tf, th uintptr, N, hd, rows, cols, frame0 int) {
	d.args.reset().ptr(dIn.Ptr).ptr(dOut.Ptr).ptr(in.Ptr).ptr(rstd.Ptr).ptr(ptrOf(w)).i32(D).i32(btoi(!fresh)).
		ptr(tf).ptr(th).i32(N).i32(hd).i32(rows).i32(cols).i32(frame0)
	d.launch("rms_bwd_f32x4", nrows, 1, 1, T, 1, 1, 0)
}

// modDims reads x [B,N,D] and mod [B,F,K,D] and checks they agree.
func modDims(op string, x, mod *kernels.Tensor, idx []int, tpf int) (B, N, D, F, K int) {
	must(len(x.Shape) == 3 && len(mod.Shape) == 4, "%s: x %v mod %v (want [B,N,D], [B,F,K,D])", op, x.Shape, mod.Shape)
	B, N, D = x.Shape[0], x.Shape[1], x.Shape[2]
	F, K = mod.Shape[1], mod.Shape[2]
	must(mod.Shape[0] == B && mod.Shape[3] == D && tpf > 0 && N == F*tpf, "%s: x %v mod %v tokensPerFrame %d", op, x.Shape, mod.Shape, tpf)
	for _, i := range idx {
		must(i >= 0 && i < K, "%s: mod index %d of K=%d", op, i, K)
	}
	return
}

func (d *Device) Modulate(out, x, mod *kernels.Tensor, iShift, iScale, tpf int) {
	B, N, D, F, K := modDims("Modulate", x, mod, []int{iShift, iScale}, tpf)
	n := sameNumel("Modulate", out, x)
	if !d.begin(n == 0, out) {
		return
	}
	defer d.leave()
	_ = B
	op, sh, vok := d.vecOut(out)
	if d.vecEW(D, n, mod.Numel(), x, mod) && vok {
		d.args.reset().ptr(op).ptr(sh).ptr(x.Ptr).ptr(mod.Ptr).i32(iShift).i32(iScale).i32(N).i32(D).i32(F).i32(K).i32(tpf).i64(n / 4)
		d.ew("mod_fwd_f32x4", n/4)
	} else {
		sh = genericCopy(out, sh)
		d.args.reset().t(out).ptr(sh).t(x).t(mod).i32(iShift).i32(iScale).i64(N).i64(D).i32(F).i32(K).i64(tpf).i64(n)
		d.ew("mod_fwd", n)
	}
	d.actSetF32(out, sh)
}

func (d *Device) ModulateBack(dX, dMod, dOut, x, mod *kernels.Tensor, iShift, iScale, tpf int) {
	B, N, D, F, K := modDims("ModulateBack", x, mod, []int{iShift, iScale}, tpf)
	n := sameNumel("ModulateBack", dOut, x)
	if !d.begin(n == 0, dX, dMod) {
		return
	}
	defer d.leave()
	if dX != nil {
		mustNumel("ModulateBack dX", n, dX)
		d.args.reset().t(dX).t(dOut).t(mod).i32(iScale).i64(N).i64(D).i32(F).i32(K).i64(tpf).i64(n)
		d.ew("mod_bwd_x", n)
	}
	if dMod != nil {
		mustNumel("ModulateBack dMod", mod.Numel(), dMod)
		// Segments = (b, f), tpf rows each; dMod[b,f,i,:] at ((b·F+f)·K + i)·D.
		// The scale gradient Σ dOut·x and the shift gradient Σ dOut in one pass over dOut.
		d.colReduce2(dMod, iScale*D, dMod, iShift*D, K*D, dOut, x, nil, nil, B*F, tpf, D, 1, 1, false)
	}
}

func (d *Device) GateAdd(x, y, mod *kernels.Tensor, iGate, tpf int) {
	_, N, D, F, K := modDims("GateAdd", x, mod, []int{iGate}, tpf)
	n := sameNumel("GateAdd", x, y)
	if !d.begin(n == 0, x) {
		return
	}
	defer d.leave()
	d.gateAdd(x, y, mod, iGate, N, D, F, K, tpf, n, false)
}

func (d *Device) GateAddBack(dY, dMod, dX, y, mod *kernels.Tensor, iGate, tpf int) {
	d.gateAddBack(dY, dMod, nil, dX, y, mod, iGate, tpf)
}

// gateAddBack is GateAddBack, with dY's column sums into dB (GateAddBackBias) when dB is not nil;
// then it reports whether it took the op (false: nothing queued).
func (d *Device) gateAddBack(dY, dMod, dB, dX, y, mod *kernels.Tensor, iGate, tpf int) bool {
	B, N, D, F, K := modDims("GateAddBack", y, mod, []int{iGate}, tpf)
	n := sameNumel("GateAddBack", dX, y)
	sums := dY != nil && d.colSums() && (dMod != nil || dB != nil) && sumDst(dMod, iGate*D) && d.vecEW(D, n, mod.Numel(), dY, dX, y, mod)
	if dB != nil && !(sums && d.biasSums(dB, D)) {
		return false
	}
	fresh := d.claimZero(dY) // ZeroLazy(dY) just before: dY = dX·gate
	if !d.begin(n == 0, dY, dMod, dB) {
		return true
	}
	defer d.leave()
	if sums { // dY and the gate's gradient (and dB += Σ dY) from one read of dX (colsums.go)
		mustNumel("GateAddBack dY", n, dY)
		must(dMod == nil || dMod.Numel() == mod.Numel(), "GateAddBack: dMod %v for mod %v", dMod, mod)
		sh := d.biasCopy(dY, dB)
		d.gateAddBackSums(dY, dMod, dB, sh, dX, y, mod, iGate, B*F, tpf, D, K, fresh)
		d.actSet(dY, sh)
		return true
	}
	if dY != nil { // dY += dX·gate: the forward's form
		mustNumel("GateAddBack dY", n, dY)
		d.gateAdd(dY, dX, mod, iGate, N, D, F, K, tpf, n, fresh)
	}
	if dMod != nil {
		mustNumel("GateAddBack dMod", mod.Numel(), dMod)
		d.colReduce(dMod, iGate*D, K*D, dX, y, nil, nil, B*F, tpf, D, 1, 1, false)
	}
	return true
}

// gateAdd queues x += y·mod[b,f,iGate] (fresh: x = y·mod[b,f,iGate], x's zeroing folded in).
func (d *Device) gateAdd(x, y, mod *kernels.Tensor, iGate, N, D, F, K, tpf, n int, fresh bool) {
	if d.vecEW(D, n, mod.Numel(), x, y, mod) {
		xin := x.Ptr
		if fresh {
			xin = 0
		}
		d.args.reset().ptr(x.Ptr).ptr(xin).ptr(y.Ptr).ptr(mod.Ptr).i32(iGate).i32(N).i32(D).i32(F).i32(K).i32(tpf).i64(n / 4)
		d.ew("gate_add_f32x4", n/4)
		return
	}
	if fresh {
		d.zeroNow(x)
	}
	d.args.reset().t(x).t(y).t(mod).i32(iGate).i64(N).i64(D).i32(F).i32(K).i64(tpf).i64(n)
	d.ew("gate_add", n)
}

// vecRow returns the block size of the fp32 float4 row kernels (ln/rms_fwd_f32x4) for rows of D
// when every given tensor is fp32 (or nil) and 16-byte aligned, else 0.
func (d *Device) vecRow(D int, ts ...*kernels.Tensor) int {
	const maxV = 4 // VEC_MAXV of the kernels
	if !d.vec || D%4 != 0 || D/4 > maxV*1024 {
		return 0
	}
	for _, t := range ts {
		if t != nil && (t.DType != kernels.F32 || t.Ptr%16 != 0) {
			return 0
		}
	}
	T := (D/4 + 2) / 3 // about three float4s per thread
	T = min(max((T+31)&^31, (D/4+maxV-1)/maxV), 1024)
	return (T + 31) &^ 31
}

// vecOut gives the output pointers of the fp32 float4 producers (ln_fwd_f32x4, mod_fwd_f32x4,
// act_gelu_f32x4) for out: (out, its persistent bf16 copy or 0) for fp32; (0, out) for bf16 (the
// kernel writes only the bf16 values: models.Shape.BF16Operands); ok false for other dtypes or
// alignments (the generic kernels then; sh is still the copy to pass them).
func (d *Device) vecOut(out *kernels.Tensor) (op, sh uintptr, ok bool) {
	switch out.DType {
	case kernels.F32:
		return out.Ptr, d.shadowBuf(out), d.vec && out.Ptr%16 == 0
	case kernels.BF16:
		return 0, out.Ptr, d.vec && out.Ptr%8 == 0
	}
	return 0, 0, false
}

// genericCopy is the bf16 copy a generic producer writes beside out: none for a bf16 out.
func genericCopy(out *kernels.Tensor, sh uintptr) uintptr {
	if out.DType != kernels.F32 {
		return 0
	}
	return sh
}

// vecEW reports whether the fp32 float4 modulation kernels take tensors of width D, n elements.
func (d *Device) vecEW(D, n, nmod int, ts ...*kernels.Tensor) bool {
	if !d.vec || D%4 != 0 || n%4 != 0 || n >= 1<<31 || nmod >= 1<<31 {
		return false
	}
	for _, t := range ts {
		if t.DType != kernels.F32 || t.Ptr%16 != 0 {
			return false
		}
	}
	return true
}

func (d *Device) act(name string, out, in *kernels.Tensor) {
	n := sameNumel(name, out, in)
	if !d.begin(n == 0, out) {
		return
	}
	defer d.leave()
	op, sh, vok := d.vecOut(out)
	if name == "act_gelu" && vok && in.DType == kernels.F32 && n%4 == 0 && in.Ptr%16 == 0 {
		d.args.reset().ptr(op).ptr(sh).ptr(in.Ptr).i64(n / 4)
		d.ew("act_gelu_f32x4", n/4)
	} else {
		sh = genericCopy(out, sh)
		d.args.reset().t(out).ptr(sh).t(in).i64(n)
		d.ew(name, n)
	}
	d.actSetF32(out, sh)
}

func (d *Device) actBack(name string, dIn, dOut, in *kernels.Tensor) {
	n := sameNumel(name, dIn, dOut, in)
	fresh := d.claimZero(dIn) // ZeroLazy(dIn) just before: dIn = the gradient
	if !d.begin(n == 0, dIn) {
		return
	}
	defer d.leave()
	if name == "act_gelu_back" && d.vec && n%4 == 0 && dIn.DType == kernels.F32 && dOut.DType == kernels.F32 && in.DType == kernels.F32 &&
		dIn.Ptr%16 == 0 && dOut.Ptr%16 == 0 && in.Ptr%16 == 0 {
		// fp32 float4 path; in GEMMBF16 mode it also writes dIn's bf16 copy for the GEMM that reads it next.
		sh := d.shadowBuf(dIn)
		d.args.reset().ptr(dIn.Ptr).ptr(sh).ptr(dOut.Ptr).ptr(in.Ptr).i32(btoi(!fresh)).i64(n / 4)
		d.ew("act_gelu_back_f32x4", n/4)
		d.actSet(dIn, sh)
		return
	}
	if fresh {
		d.zeroNow(dIn)
	}
	d.args.reset().t(dIn).t(dOut).t(in).i64(n)
	d.ew(name, n)
}

func (d *Device) GELU(out, in *kernels.Tensor)           { d.act("act_gelu", out, in) }
func (d *Device) GELUBack(dIn, dOut, in *kernels.Tensor) { d.actBack("act_gelu_back", dIn, dOut, in) }
func (d *Device) SiLU(out, in *kernels.Tensor)           { d.act("act_silu", out, in) }
func (d *Device) SiLUBack(dIn, dOut, in *kernels.Tensor) { d.actBack("act_silu_back", dIn, dOut, in) }

// ---------------------------------------------------------------------------------------------
// RoPE and attention.

func (d *Device) rope(op string, x *kernels.Tensor, frames, rows, cols, frame0 int, sign float32) {
	must(len(x.Shape) == 4 && x.Shape[3]%2 == 0, "%s: x %v is not [B,N,heads,hd] with even hd", op, x.Shape)
	N, H, hd := x.Shape[1], x.Shape[2], x.Shape[3]
	must(N == frames*rows*cols, "%s: x %v for a %d×%d×%d grid", op, x.Shape, frames, rows, cols)
	n := x.Numel() / 2
	if !d.begin(n == 0) {
		return
	}
	defer d.leave()
	d.wrote(x)
	if tf, th := d.ropeTable(hd, max(frame0+frames, rows, cols)); tf != 0 && 2*n < 1<<31 {
		var sh uintptr
		if sign > 0 {
			sh = d.shadowBuf(x)
		}
		d.args.reset().t(x).ptr(sh).ptr(tf).ptr(th).i32(N).i32(H).i32(hd).i32(rows).i32(cols).i32(frame0).f32(sign).i64(n)
		d.ew("rope_apply_tab", n)
		d.actSet(x, sh)
		return
	}
	d.args.reset().t(x).i64(N).i32(H).i32(hd).i32(rows).i32(cols).i32(frame0).f32(sign).i64(n)
	d.ew("rope_apply", n)
}

type ropeTab struct {
	tf, th uintptr
	P      int
}

// ropeTable returns the cos/sin tables of head dim hd for positions [0, P) or more (0 when they
// would have to grow during a graph capture: the caller computes the angles itself).
func (d *Device) ropeTable(hd, P int) (tf, th uintptr) {
	if d.ropeTabs == nil {
		d.ropeTabs = map[int]*ropeTab{}
	}
	t := d.ropeTabs[hd]
	if t != nil && t.P >= P {
		return t.tf, t.th
	}
	if d.capturing {
		return 0, 0
	}
	P = max(P, 2*tabP(t), 64)
	c := hd / 2
	nh := c / 3
	nf := c - 2*nh
	if t != nil {
		d.fail(d.drv.call("cuStreamSynchronize", d.drv.cuStreamSynchronize, d.stream))
		d.fail(d.drv.call("cuMemFree_v2(rope table)", d.drv.cuMemFree, t.tf))
	}
	t = &ropeTab{P: P}
	if err := d.drv.call("cuMemAlloc_v2(rope table)", d.drv.cuMemAlloc, uintptr(unsafe.Pointer(&t.tf)), uintptr(8*P*(nf+nh))); err != nil {
		d.fail(err)
		return 0, 0
	}
	t.th = t.tf + uintptr(8*P*nf)
	d.ropeTabs[hd] = t
	d.args.reset().ptr(t.tf).ptr(t.th).i32(P).i32(nf).i32(nh)
	d.ew("rope_table", P*(nf+nh))
	return t.tf, t.th
}

func tabP(t *ropeTab) int {
	if t == nil {
		return 0
	}
	return t.P
}

func (d *Device) RoPE(x *kernels.Tensor, frames, rows, cols, frame0 int) {
	d.rope("RoPE", x, frames, rows, cols, frame0, 1)
}
func (d *Device) RoPEBack(dx *kernels.Tensor, frames, rows, cols, frame0 int) {
	d.rope("RoPEBack", dx, frames, rows, cols, frame0, -1)
}

// FusedAttention is filled in by attention.go (the FlashAttention-2 kernels of attention*.cu): each
// returns false when it does not take the case (head dim, dtype, …) and the reference kernels of
// refattn.cu run instead. FEWSTEP_ATTENTION=ref forces the reference.
var FusedAttention struct {
	Fwd  func(d *Device, out, lse, q, k, v *kernels.Tensor, chunkTokens, qOffset int) bool
	Back func(d *Device, dQ, dK, dV, dOut, out, lse, q, k, v *kernels.Tensor, chunkTokens, qOffset int) bool
}

func attnDims(op string, out, lse, q, k, v *kernels.Tensor) (B, Nq, Nk, H, hd int) {
	must(len(q.Shape) == 4 && len(k.Shape) == 4, "%s: q %v k %v are not [B,N,H,hd]", op, q.Shape, k.Shape)
	B, Nq, H, hd = q.Shape[0], q.Shape[1], q.Shape[2], q.Shape[3]
	Nk = k.Shape[1]
	must(k.Shape[0] == B && k.Shape[2] == H && k.Shape[3] == hd, "%s: q %v k %v", op, q.Shape, k.Shape)
	must(v.Numel() == k.Numel(), "%s: k %v v %v", op, k.Shape, v.Shape)
	must(out.Numel() == q.Numel(), "%s: q %v out %v", op, q.Shape, out.Shape)
	must(lse.Numel() == B*H*Nq, "%s: lse %v for [B=%d,H=%d,Nq=%d]", op, lse.Shape, B, H, Nq)
	must(hd <= 256, "%s: head dim %d > 256", op, hd)
	must(q.DType == k.DType && k.DType == v.DType, "%s: q %v k %v v %v dtypes differ", op, q, k, v)
	return
}

func (d *Device) Attention(out, lse, q, k, v *kernels.Tensor, chunkTokens, qOffset int) {
	B, Nq, Nk, H, hd := attnDims("Attention", out, lse, q, k, v)
	must(chunkTokens >= 0 && qOffset >= 0, "Attention: chunkTokens %d qOffset %d", chunkTokens, qOffset)
	if B*Nq*H == 0 {
		return
	}
	if !d.begin(false) {
		return
	}
	defer d.leave()
	defer d.wrote(out, lse)
	if !d.refAttn && FusedAttention.Fwd != nil {
		// GEMMBF16 mode with fp32 storage of some operands: the fused kernel on bf16 copies of the
		// fp32 ones (made by the ops that produced q and k); an fp32 output gets its bf16 result
		// converted and kept as the o-projection's operand, a bf16 output is written directly.
		if d.GEMM == GEMMBF16 && mixedBF16(q, k, v, out) && (hd == 64 || hd == 128) {
			qb, kb, vb := d.bf16Of(q), d.bf16Of(k), d.bf16Of(v)
			ob := out.Ptr
			if out.DType == kernels.F32 {
				ob = d.shadowBuf(out)
			}
			if qb != 0 && kb != 0 && vb != 0 && ob != 0 &&
				FusedAttention.Fwd(d, bf16View(d, out, ob), lse, bf16View(d, q, qb), bf16View(d, k, kb), bf16View(d, v, vb), chunkTokens, qOffset) {
				if out.DType == kernels.F32 {
					d.convert(out.Ptr, kernels.F32, bf16View(d, out, ob))
					d.wrote(out, lse)
					d.actSet(out, ob)
				}
				return
			}
		}
		if FusedAttention.Fwd(d, out, lse, q, k, v, chunkTokens, qOffset) {
			return
		}
	}
	rows := B * H * Nq
	d.args.reset().t(out).t(lse).ptr(q.Ptr).ptr(k.Ptr).ptr(v.Ptr).i32(int(q.DType)).i32(B).i64(Nq).i64(Nk).i32(H).i32(hd).i64(chunkTokens).i64(qOffset)
	d.launch("refattn_fwd", (rows*32+255)/256, 1, 1, 256, 1, 1, 0)
}

// mixedBF16: every tensor is fp32 or bf16 and at least one is fp32 (all-bf16 goes to the fused
// kernels directly).
func mixedBF16(ts ...*kernels.Tensor) bool {
	f32 := false
	for _, t := range ts {
		switch t.DType {
		case kernels.F32:
			f32 = true
		case kernels.BF16:
		default:
			return false
		}
	}
	return f32
}

// bf16Of is t's address as bf16: t itself when bf16, else its persistent bf16 copy (0: none).
func (d *Device) bf16Of(t *kernels.Tensor) uintptr {
	if t.DType == kernels.BF16 {
		return t.Ptr
	}
	return d.bf16Persistent(t)
}

func (d *Device) AttentionBack(dQ, dK, dV, dOut, out, lse, q, k, v *kernels.Tensor, chunkTokens, qOffset int) {
	B, Nq, Nk, H, hd := attnDims("AttentionBack", out, lse, q, k, v)
	sameNumel("AttentionBack", dOut, out)
	if B*Nq*H == 0 {
		return
	}
	if !d.begin(false) {
		return
	}
	defer d.leave()
	defer d.wrote(dQ, dK, dV)
	if !d.refAttn && FusedAttention.Back != nil {
		if d.GEMM == GEMMBF16 && mixedBF16(q, k, v, out, dOut) && (hd == 64 || hd == 128) {
			qb, kb, vb, ob, gb := d.bf16Of(q), d.bf16Of(k), d.bf16Of(v), d.bf16Of(out), d.bf16Of(dOut)
			if qb != 0 && kb != 0 && vb != 0 && ob != 0 && gb != 0 &&
				FusedAttention.Back(d, dQ, dK, dV, bf16View(d, dOut, gb), bf16View(d, out, ob), lse, bf16View(d, q, qb), bf16View(d, k, kb), bf16View(d, v, vb), chunkTokens, qOffset) {
				return
			}
		}
		if FusedAttention.Back(d, dQ, dK, dV, dOut, out, lse, q, k, v, chunkTokens, qOffset) {
			return
		}
	}
	gdt := kernels.F32
	for _, g := range []*kernels.Tensor{dQ, dK, dV} {
		if g != nil {
			gdt = g.DType
		}
	}
	must((dQ == nil || dQ.DType == gdt) && (dK == nil || dK.DType == gdt) && (dV == nil || dV.DType == gdt), "AttentionBack: gradient dtypes differ")
	d.reserve(4 * B * H * Nq)
	delta := d.scratch(4 * B * H * Nq)
	if delta == 0 {
		return
	}
	rows := B * H * Nq
	d.args.reset().ptr(delta).t(dOut).t(out).i32(B).i64(Nq).i32(H).i32(hd)
	d.launch("refattn_delta", (rows*32+255)/256, 1, 1, 256, 1, 1, 0)
	if dQ != nil {
		d.args.reset().ptr(dQ.Ptr).i32(int(gdt)).t(dOut).t(lse).ptr(delta).ptr(q.Ptr).ptr(k.Ptr).ptr(v.Ptr).i32(int(q.DType)).
			i32(B).i64(Nq).i64(Nk).i32(H).i32(hd).i64(chunkTokens).i64(qOffset)
		d.launch("refattn_dq", (rows*32+255)/256, 1, 1, 256, 1, 1, 0)
	}
	if dK != nil || dV != nil {
		krows := B * H * Nk
		d.args.reset().ptr(ptrOf(dK)).ptr(ptrOf(dV)).i32(int(gdt)).t(dOut).t(lse).ptr(delta).ptr(q.Ptr).ptr(k.Ptr).ptr(v.Ptr).i32(int(q.DType)).
			i32(B).i64(Nq).i64(Nk).i32(H).i32(hd).i64(chunkTokens).i64(qOffset)
		d.launch("refattn_dkv", (krows*32+255)/256, 1, 1, 256, 1, 1, 0)
	}
}

// ---------------------------------------------------------------------------------------------
// Layout ops, time embedding, broadcasts, token means.

func (d *Device) patch(name string, tok, vid *kernels.Tensor, n, B, C, F, H, W, back int) {
	must(H%2 == 0 && W%2 == 0, "%s: H=%d W=%d must be even", name, H, W)
	if !d.begin(n == 0, tok, vid) {
		return
	}
	defer d.leave()
	d.args.reset().t(tok).t(vid).i32(C).i32(F).i32(H).i32(W).i32(back).i64(n)
	d.ew(name, n)
}

func (d *Device) Patchify(out, x *kernels.Tensor, B, C, F, H, W int) {
	n := B * C * F * H * W
	mustNumel("Patchify x", n, x)
	mustNumel("Patchify out", n, out)
	d.patch("patchify", out, x, n, B, C, F, H, W, 0)
}

func (d *Device) PatchifyBack(dX, dOut *kernels.Tensor, B, C, F, H, W int) {
	n := B * C * F * H * W
	mustNumel("PatchifyBack dX", n, dX)
	mustNumel("PatchifyBack dOut", n, dOut)
	d.patch("patchify", dOut, dX, n, B, C, F, H, W, 1)
}

func (d *Device) Unpatchify(out, in *kernels.Tensor, B, C, F, H, W int) {
	n := B * C * F * H * W
	mustNumel("Unpatchify in", n, in)
	mustNumel("Unpatchify out", n, out)
	d.patch("unpatchify", out, in, n, B, C, F, H, W, 0)
}

func (d *Device) UnpatchifyBack(dIn, dOut *kernels.Tensor, B, C, F, H, W int) {
	n := B * C * F * H * W
	mustNumel("UnpatchifyBack dIn", n, dIn)
	mustNumel("UnpatchifyBack dOut", n, dOut)
	d.patch("unpatchify", dOut, dIn, n, B, C, F, H, W, 1)
}

func (d *Device) Sinusoid(out, t *kernels.Tensor, half int) {
	M := t.Numel()
	mustNumel("Sinusoid out", M*2*half, out)
	if !d.begin(M*half == 0, out) {
		return
	}
	defer d.leave()
	d.args.reset().t(out).t(t).i32(half).i64(M * half)
	d.ew("sinusoid", M*half)
}

func (d *Device) AddBroadcast(out, a, b *kernels.Tensor) {
	n := sameNumel("AddBroadcast", out, b)
	KD := a.Numel()
	must(KD > 0 && n%KD == 0, "AddBroadcast: a %v does not tile b %v", a.Shape, b.Shape)
	if !d.begin(n == 0, out) {
		return
	}
	defer d.leave()
	d.args.reset().t(out).t(a).t(b).i64(KD).i64(n)
	d.ew("ew_add_broadcast", n)
}

func (d *Device) AddBroadcastBack(dA, dB, dOut *kernels.Tensor) {
	n := dOut.Numel()
	if !d.begin(n == 0, dA, dB) {
		return
	}
	defer d.leave()
	if dB != nil {
		mustNumel("AddBroadcastBack dB", n, dB)
		d.args.reset().t(dB).f32(1).t(dOut).i64(n)
		d.ew("ew_axpy", n)
	}
	if dA != nil {
		KD := dA.Numel()
		must(KD > 0 && n%KD == 0, "AddBroadcastBack: dA %v does not tile dOut %v", dA.Shape, dOut.Shape)
		d.colReduce(dA, 0, KD, dOut, nil, nil, nil, 1, n/KD, KD, 0, 1, false)
	}
}

func (d *Device) MeanTokens(out, in *kernels.Tensor) {
	must(len(in.Shape) == 3, "MeanTokens: in %v is not [B,N,D]", in.Shape)
	B, N, D := in.Shape[0], in.Shape[1], in.Shape[2]
	mustNumel("MeanTokens out", B*D, out)
	if !d.begin(B*D == 0, out) {
		return
	}
	defer d.leave()
	d.colReduce(out, 0, D, in, nil, nil, nil, B, N, D, 0, 1/float32(N), true)
}

func (d *Device) MeanTokensBack(dIn, dOut *kernels.Tensor) {
	must(len(dIn.Shape) == 3, "MeanTokensBack: dIn %v is not [B,N,D]", dIn.Shape)
	B, N, D := dIn.Shape[0], dIn.Shape[1], dIn.Shape[2]
	mustNumel("MeanTokensBack dOut", B*D, dOut)
	n := B * N * D
	if !d.begin(n == 0, dIn) {
		return
	}
	defer d.leave()
	d.args.reset().t(dIn).t(dOut).i64(N).i64(D).i64(n)
	d.ew("ew_mean_tokens_back", n)
}

// ---------------------------------------------------------------------------------------------
// Elementwise.

func (d *Device) Add(out, a, b *kernels.Tensor) {
	n := sameNumel("Add", out, a, b)
	if !d.begin(n == 0, out) {
		return
	}
	defer d.leave()
	d.touch(out)
	d.args.reset().t(out).t(a).t(b).i64(n)
	d.ew("ew_add", n)
}

func (d *Device) Axpy(y *kernels.Tensor, alpha float32, x *kernels.Tensor) {
	n := sameNumel("Axpy", y, x)
	if !d.begin(n == 0, y) {
		return
	}
	defer d.leave()
	d.touch(y)
	d.args.reset().t(y).f32(alpha).t(x).i64(n)
	d.ew("ew_axpy", n)
}

func (d *Device) Scale(x *kernels.Tensor, alpha float32) {
	n := x.Numel()
	if !d.begin(n == 0, x) {
		return
	}
	defer d.leave()
	d.touch(x)
	d.args.reset().t(x).f32(alpha).i64(n)
	d.ew("ew_scale", n)
}

const maxGroups = 64 // coefficients passed by value (see Coefs in elementwise.cu)

// combine: groupSize > 0 → g = i/groupSize; else the video layout [B,C,F,HW] with g = b·F + f.
func (d *Device) combine(op string, out, x, y *kernels.Tensor, a, b []float32, groupSize, C, F, HW int) {
	n := sameNumel(op, out, x, y)
	if !d.begin(n == 0, out) {
		return
	}
	defer d.leave()
	d.touch(out)
	G := len(a)
	if G <= maxGroups {
		var pa, pb [maxGroups]float32
		copy(pa[:], a)
		copy(pb[:], b)
		if groupSize > 0 {
			d.args.reset().t(out).t(x).t(y).floats(pa[:], pb[:]).i64(groupSize).i64(n)
			d.ew("ew_combine", n)
		} else {
			d.args.reset().t(out).t(x).t(y).floats(pa[:], pb[:]).i32(C).i32(F).i64(HW).i64(n)
			d.ew("ew_combine_frames", n)
		}
		return
	}
	if d.capturing {
		d.fail(fmt.Errorf("%s: %d coefficient groups (> %d) cannot be captured in a graph", op, G, maxGroups))
		return
	}
	d.reserve(8*G + 256)
	p := d.scratch(8 * G)
	if p == 0 {
		return
	}
	ab := append(append(make([]float32, 0, 2*G), a...), b...)
	d.fail(d.drv.call("cuMemcpyHtoDAsync_v2", d.drv.cuMemcpyHtoDAsync, p, uintptr(unsafe.Pointer(&ab[0])), uintptr(8*G), d.stream))
	d.args.reset().t(out).t(x).t(y).ptr(p).ptr(p + uintptr(4*G)).i64(groupSize).i32(C).i32(F).i64(HW).i64(n)
	d.ew("ew_combine_frames_dev", n)
}

func (d *Device) Combine(out, x, y *kernels.Tensor, a, b []float32) {
	n := x.Numel()
	G := len(a)
	must(G > 0 && len(b) == G && n%G == 0, "Combine: %d coefficients a, %d b for %d elements", len(a), len(b), n)
	d.combine("Combine", out, x, y, a, b, n/G, 0, 0, 0)
}

func (d *Device) CombineFrames(out, x, y *kernels.Tensor, a, b []float32, B, C, F, HW int) {
	must(x.Numel() == B*C*F*HW, "CombineFrames: %v is not [%d,%d,%d,%d]", x.Shape, B, C, F, HW)
	must(len(a) == B*F && len(b) == B*F, "CombineFrames: %d/%d coefficients for B·F = %d", len(a), len(b), B*F)
	d.combine("CombineFrames", out, x, y, a, b, 0, C, F, HW)
}

// ---------------------------------------------------------------------------------------------
// Reductions to the host (synchronizing).

func (d *Device) dblBuf(n int) uintptr {
	if n > d.dblCap {
		if d.dbl != 0 {
			d.fail(d.drv.call("cuStreamSynchronize", d.drv.cuStreamSynchronize, d.stream))
			d.fail(d.drv.call("cuMemFree_v2", d.drv.cuMemFree, d.dbl))
			d.dbl, d.dblCap = 0, 0
		}
		c := max(n, 1024)
		if err := d.drv.call("cuMemAlloc_v2(reduction buffer)", d.drv.cuMemAlloc, uintptr(unsafe.Pointer(&d.dbl)), uintptr(8*c)); err != nil {
			d.fail(err)
			return 0
		}
		d.dblCap = c
	}
	d.fail(d.drv.call("cuMemsetD8Async", d.drv.cuMemsetD8Async, d.dbl, 0, uintptr(8*n), d.stream))
	return d.dbl
}

func (d *Device) Dot(a, b *kernels.Tensor) float64 {
	n := sameNumel("Dot", a, b)
	if !d.enterW() {
		d.leave()
		return math.NaN()
	}
	defer d.leave()
	p := d.dblBuf(1)
	if p == 0 {
		return math.NaN()
	}
	if n > 0 {
		d.args.reset().ptr(p).t(a).t(b).i64(n)
		d.ew("red_dot", n)
	}
	var r [1]float64
	d.fail(d.drv.call("cuMemcpyDtoHAsync_v2", d.drv.cuMemcpyDtoHAsync, uintptr(unsafe.Pointer(&r[0])), p, 8, d.stream))
	d.fail(d.drv.call("cuStreamSynchronize", d.drv.cuStreamSynchronize, d.stream))
	if d.err != nil {
		return math.NaN()
	}
	return r[0]
}

// SumSquares: acc += Σ x² by red_dot (Dot's kernel) into the accumulator's 8 bytes, queued on the
// stream: no copy back, no synchronization.
func (d *Device) SumSquares(acc, x *kernels.Tensor) {
	must(acc.DType == kernels.F32 && acc.Numel() == 2 && acc.Ptr%8 == 0, "SumSquares: accumulator %v is not an 8-byte aligned F64Acc pair", acc)
	n := x.Numel()
	if !d.begin(n == 0, acc) {
		return
	}
	defer d.leave()
	d.args.reset().ptr(acc.Ptr).t(x).t(x).i64(n)
	d.ew("red_dot", n)
}

func (d *Device) SumAbsGroups(dst []float64, x *kernels.Tensor) {
	n := x.Numel()
	G := len(dst)
	must(G > 0 && n%G == 0, "SumAbsGroups: %d groups for %v", G, x.Shape)
	if !d.enterW() {
		d.leave()
		for i := range dst {
			dst[i] = math.NaN()
		}
		return
	}
	defer d.leave()
	p := d.dblBuf(G)
	if p == 0 {
		return
	}
	gs := n / G
	if gs > 0 {
		gx := max(1, min((gs+255)/256, (8*d.sms+G-1)/G))
		d.args.reset().ptr(p).t(x).i64(gs)
		d.launch("red_sumabs", gx, G, 1, 256, 1, 1, 0)
	}
	d.fail(d.drv.call("cuMemcpyDtoHAsync_v2", d.drv.cuMemcpyDtoHAsync, uintptr(unsafe.Pointer(&dst[0])), p, uintptr(8*G), d.stream))
	d.fail(d.drv.call("cuStreamSynchronize", d.drv.cuStreamSynchronize, d.stream))
	if d.err != nil {
		for i := range dst {
			dst[i] = math.NaN()
		}
	}
}

// ---------------------------------------------------------------------------------------------
// Optimizer.

func (d *Device) AdamW(w, g, m, v *kernels.Tensor, lr, beta1, beta2, eps, wd float32, step int) {
	n := sameNumel("AdamW", w, g, m, v)
	must(step >= 1, "AdamW: step %d < 1", step)
	must(m.DType == v.DType, "AdamW: m %v and v %v dtypes differ", m, v)
	if !d.begin(n == 0, w, g, m, v) {
		return
	}
	defer d.leave()
	d.touch(w)
	stepSize, rbc2 := kernels.AdamScalars(lr, beta1, beta2, step)
	decay := 1 - lr*wd
	d.adamwParts(n, w, g, m, v, func(i0, k int) {
		d.adamwScalar(w, g, m, v, i0, k, beta1, beta2, eps, decay, stepSize, rbc2)
	}, func(b uintptr, n4 int) {
		d.args.reset().ptr(w.Ptr + b).ptr(g.Ptr + b).ptr(m.Ptr + b).ptr(v.Ptr + b).f32(beta1).f32(beta2).f32(eps).f32(decay).f32(stepSize).f32(rbc2).i64(n4)
		d.ew("adamw_f32x4", n4)
	})
}

// adamwParts splits AdamW's n elements between its kernels (AdamW, AdamWGated). All fp32 with the
// same address offset mod 16 (views at one offset into four buffers): scalar(i0, k) for the head up
// to the 16-byte boundary, body(b, n4) for the float4 body (b its byte offset), scalar for the tail
// (k may be 0); else scalar for all n.
func (d *Device) adamwParts(n int, w, g, m, v *kernels.Tensor, scalar func(i0, k int), body func(b uintptr, n4 int)) {
	if d.vec && w.DType == kernels.F32 && g.DType == kernels.F32 && m.DType == kernels.F32 &&
		g.Ptr%16 == w.Ptr%16 && m.Ptr%16 == w.Ptr%16 && v.Ptr%16 == w.Ptr%16 && w.Ptr%4 == 0 && n >= 64 {
		head := (4 - int(w.Ptr%16)/4) % 4
		n4 := (n - head) / 4
		scalar(0, head)
		body(uintptr(4*head), n4)
		scalar(head+4*n4, n-head-4*n4)
		return
	}
	scalar(0, n)
}

// adamwScalar queues the scalar adamw kernel on elements [i0, i0+n) of the four tensors.
func (d *Device) adamwScalar(w, g, m, v *kernels.Tensor, i0, n int, beta1, beta2, eps, decay, stepSize, rbc2 float32) {
	if n == 0 {
		return
	}
	at := func(t *kernels.Tensor) uintptr { return t.Ptr + uintptr(i0*t.DType.Size()) }
	d.args.reset().ptr(at(w)).i32(int(w.DType)).ptr(at(g)).i32(int(g.DType)).ptr(at(m)).ptr(at(v)).i32(int(m.DType)).
		f32(beta1).f32(beta2).f32(eps).f32(decay).f32(stepSize).f32(rbc2).i64(n)
	d.ew("adamw", n)
}

func (d *Device) EMA(ema, w *kernels.Tensor, decay float32) {
	n := sameNumel("EMA", ema, w)
	if !d.begin(n == 0, ema) {
		return
	}
	defer d.leave()
	d.touch(ema)
	d.args.reset().t(ema).t(w).f32(decay).i64(n)
	d.ew("ema", n)
}

// lowAlign is the largest power of two ≤ 256 that divides every x (addresses and byte strides).
func lowAlign(xs ...uintptr) int {
	var v uintptr
	for _, x := range xs {
		v |= x
	}
	if v == 0 {
		return 256
	}
	return int(min(v&-v, 256))
}
