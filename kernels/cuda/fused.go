package cuda

import (
	"github.com/fewstep/fewstep/kernels"
)

// The fused ops of kernels/fused.go (GateAddTo, RMSNormRoPE) and lazy zeroing (ZeroLazy): each
// takes the fp32 float4 paths only and returns false otherwise (the caller then runs the plain
// ops). FEWSTEP_FUSE=0 turns all of it off (A/B timings).

var (
	_ kernels.GateAdderTo   = (*Device)(nil)
	_ kernels.RMSNormRoPEer = (*Device)(nil)
	_ kernels.LazyZeroer    = (*Device)(nil)

	_ kernels.LayerNormModulator      = (*Device)(nil)
	_ kernels.LinearGELUer            = (*Device)(nil)
	_ kernels.GELUBackBiaser          = (*Device)(nil)
	_ kernels.GELUPreBF16er           = (*Device)(nil)
	_ kernels.LinearResidualer        = (*Device)(nil)
	_ kernels.RMSNormRoPEBacker       = (*Device)(nil)
	_ kernels.ModulateLayerNormBacker = (*Device)(nil)
)

// GateAddTo: out = x + y·mod[b, f, iGate, :] in one pass (the residual without a Copy first).
func (d *Device) GateAddTo(out, x, y, mod *kernels.Tensor, iGate, tpf int) bool {
	if !d.fuse {
		return false
	}
	_, N, D, F, K := modDims("GateAddTo", x, mod, []int{iGate}, tpf)
	n := sameNumel("GateAddTo", out, x, y)
	if !d.vecEW(D, n, mod.Numel(), out, x, y, mod) {
		return false
	}
	if !d.begin(n == 0, out) {
		return true
	}
	defer d.leave()
	d.touch(out)
	d.args.reset().ptr(out.Ptr).ptr(x.Ptr).ptr(y.Ptr).ptr(mod.Ptr).i32(iGate).i32(N).i32(D).i32(F).i32(K).i32(tpf).i64(n / 4)
	d.ew("gate_add_f32x4", n/4)
	return true
}

// RMSNormRoPE: out [B, N, heads, hd] = RoPE(RMSNorm(in)·w), in [B·N, D], in one pass (the row in
// registers, rotated with the RoPE tables), with out's bf16 copy (or only bf16 values for a bf16
// out) for the attention that reads it.
func (d *Device) RMSNormRoPE(out, rstd, in, w *kernels.Tensor, eps float32, frames, rows, cols, frame0 int) bool {
	if !d.fuse || len(out.Shape) != 4 {
		return false
	}
	N, H, hd := out.Shape[1], out.Shape[2], out.Shape[3]
	D := lastDim(in)
	n := sameNumel("RMSNormRoPE", out, in)
	must(N == frames*rows*cols, "RMSNormRoPE: out %v for a %d×%d×%d grid", out.Shape, frames, rows, cols)
	must(H*hd == D, "RMSNormRoPE: out %v, in %v", out.Shape, in.Shape)
	nrows := n / D
	must(rstd == nil || rstd.Numel() == nrows, "RMSNormRoPE: rstd %v for %d rows", rstd, nrows)
	must(w == nil || w.Numel() == D, "RMSNormRoPE: weight %v for D=%d", w, D)
	T := d.vecRow(D, in, w, rstd)
	if hd%4 != 0 || T == 0 || n == 0 || n >= 1<<31 {
		return false
	}
	if !d.begin(false, out, rstd) {
		return true
	}
	defer d.leave()
	op, sh, vok := d.vecOut(out)
	tf, th := d.ropeTable(hd, max(frame0+frames, rows, cols))
	if !vok || tf == 0 { // an unaligned out, or a RoPE table that cannot grow during a capture
		d.RMSNorm(out, rstd, in, w, eps)
		d.RoPE(out, frames, rows, cols, frame0)
		return true
	}
	d.args.reset().ptr(op).ptr(sh).ptr(ptrOf(rstd)).ptr(in.Ptr).ptr(ptrOf(w)).i32(D).f32(eps).
		ptr(tf).ptr(th).i32(N).i32(hd).i32(rows).i32(cols).i32(frame0)
	d.launch("rms_rope_f32x4", nrows, 1, 1, T, 1, 1, 0)
	d.actSetF32(out, sh)
	return true
}

// LinearGELU: out (bf16) = GELU(in·wᵀ + b) by cuBLASLt's GELU_BIAS epilogue in bf16-GEMM mode: no
// GELU pass. keepPre (a training pass): GELU_AUX_BIAS also stores the pre-activation into pre, which
// must then be bf16 (the epilogue writes it in D's type; GELUPreBF16 has the models allocate it so):
// no fp32 pre-activation written, read and converted. Elsewhere false.
func (d *Device) LinearGELU(out, pre, in, w, b *kernels.Tensor, keepPre bool) bool {
	if !d.fuse || out.DType != kernels.BF16 || d.GEMM != GEMMBF16 {
		return false
	}
	N, K := w.Shape[0], w.Numel()/w.Shape[0]
	must(len(w.Shape) == 2 && in.Numel()%K == 0, "LinearGELU: in %v w %v", in.Shape, w.Shape)
	M := in.Numel() / K
	must(out.Numel() == M*N && (b == nil || b.Numel() == N), "LinearGELU: out %v in %v w %v b %v", out.Shape, in.Shape, w.Shape, b)
	ep := gemmEpi{gelu: true}
	if keepPre {
		must(pre.Numel() == M*N, "LinearGELU: pre %v for out %v", pre.Shape, out.Shape)
		if pre.DType != kernels.BF16 || N%8 != 0 || pre.Ptr%16 != 0 { // the aux matrix: D's type, ld a multiple of 8
			return false
		}
		ep.aux, ep.auxLD = pre.Ptr, N
	}
	if !d.begin(false, out, pre) {
		return true
	}
	defer d.leave()
	bb := b                                                  // the epilogue's bias in D's type, bf16 (cuBLASLt found no GELU_BIAS algorithm with an fp32 bias and bf16 D, H200, cuBLASLt 13.1)
	if b != nil && b.DType == kernels.F32 && d.isWeight(b) { // its cached bf16 shadow (a scratch copy would not outlive gemmX's reset)
		if p := d.bf16Operand(b); p != 0 {
			bb = bf16View(d, b, p)
		}
	}
	if !d.gemmX("Linear+GELU", opT, opN, N, M, K, w, K, in, K, out, N, 0, bb, 0, ep) {
		d.Linear(pre, in, w, b) // no algorithm with the epilogue
		d.GELU(out, pre)
	}
	return true
}

// GELUPreBF16: in bf16-GEMM mode with the fusions on, the models keep the FFN's pre-activation (which
// LinearGELU's GELU_AUX_BIAS writes) and the gradients around the GELU in bf16 (GELUBackBias).
func (d *Device) GELUPreBF16() bool { return d.fuse && d.geluAux && d.GEMM == GEMMBF16 }

// GELUBackBias: GELUBack of a bf16 pre-activation in (as GELUPreBF16 has the models keep it) with
// bf16 dIn and dOut, and dIn's column sums into dBias (fp32; nil: none), in one pass
// (act_gelu_back_bias_bf16x8): the GELU backward and the bias gradient's reduction over [M, ffn]
// read the gradient once. Other dtypes or alignments: false.
func (d *Device) GELUBackBias(dIn, dBias, dOut, in *kernels.Tensor) bool {
	if !d.fuse || !d.vec || dIn.DType != kernels.BF16 || dOut.DType != kernels.BF16 || in.DType != kernels.BF16 ||
		(dBias != nil && dBias.DType != kernels.F32) {
		return false
	}
	cols := lastDim(in)
	n := sameNumel("GELUBackBias", dIn, dOut, in)
	rows := n / cols
	must(dBias == nil || dBias.Numel() == cols, "GELUBackBias: dBias %v for %d columns", dBias, cols)
	if cols%8 != 0 || dIn.Ptr%16 != 0 || dOut.Ptr%16 != 0 || in.Ptr%16 != 0 {
		return false
	}
	fresh := d.claimZero(dIn) // ZeroLazy(dIn) just before: dIn = the gradient
	if !d.begin(n == 0, dIn, dBias) {
		return true
	}
	defer d.leave()
	// 256 columns a block (32 threads × 8), about 8 blocks per SM, rows split evenly.
	gx := (cols + 255) / 256
	gy := max(1, min((8*d.sms+gx-1)/gx, (rows+7)/8))
	rpb := ((rows+gy-1)/gy + 7) &^ 7
	gy = (rows + rpb - 1) / rpb
	d.args.reset().ptr(dIn.Ptr).ptr(ptrOf(dBias)).ptr(dOut.Ptr).ptr(in.Ptr).i32(btoi(!fresh)).i64(rows).i64(cols).i32(rpb)
	d.launch("act_gelu_back_bias_bf16x8", gx, gy, 1, 32, 8, 1, 0)
	return true
}

// LinearResidual: out = res + in·wᵀ + b, res read as the GEMM's C (fp32 out and res).
func (d *Device) LinearResidual(out, in, w, b, res *kernels.Tensor) bool {
	if !d.fuse || out.DType != kernels.F32 || res.DType != kernels.F32 {
		return false
	}
	N, K := w.Shape[0], w.Numel()/w.Shape[0]
	must(len(w.Shape) == 2 && in.Numel()%K == 0, "LinearResidual: in %v w %v", in.Shape, w.Shape)
	M := in.Numel() / K
	must(out.Numel() == M*N && res.Numel() == M*N && (b == nil || b.Numel() == N), "LinearResidual: out %v res %v in %v w %v b %v", out.Shape, res.Shape, in.Shape, w.Shape, b)
	if !d.begin(false, out) {
		return true
	}
	defer d.leave()
	d.gemmX("Linear+residual", opT, opN, N, M, K, w, K, in, K, out, N, 1, b, res.Ptr, gemmEpi{})
	return true
}

// LayerNormModulate: ln (unless !keepLn), mean, rstd and the modulated h from one read of x
// (ln_mod_fwd_f32x4); h fp32 with its bf16 copy, or bf16 only (models.Shape.BF16Operands).
func (d *Device) LayerNormModulate(ln, h, mean, rstd, x, mod *kernels.Tensor, iShift, iScale, tpf int, eps float32, keepLn bool) bool {
	if !d.fuse {
		return false
	}
	_, N, D, F, K := modDims("LayerNormModulate", x, mod, []int{iShift, iScale}, tpf)
	n := sameNumel("LayerNormModulate", ln, h, x)
	rows := n / D
	must(mean.Numel() == rows && rstd.Numel() == rows, "LayerNormModulate: mean %v rstd %v for %d rows", mean, rstd, rows)
	T := d.vecRow(D, ln, x, mean, rstd, mod)
	if T == 0 || n == 0 || mod.Numel() >= 1<<31 {
		return false
	}
	if !d.begin(false, ln, h, mean, rstd) {
		return true
	}
	defer d.leave()
	hp, sh, vok := d.vecOut(h)
	if !vok {
		d.LayerNorm(ln, mean, rstd, x, nil, nil, eps)
		d.Modulate(h, ln, mod, iShift, iScale, tpf)
		return true
	}
	lp := ln.Ptr
	if !keepLn {
		lp = 0
	}
	d.args.reset().ptr(lp).ptr(hp).ptr(sh).ptr(mean.Ptr).ptr(rstd.Ptr).ptr(x.Ptr).ptr(mod.Ptr).
		i32(iShift).i32(iScale).i32(N).i32(F).i32(K).i32(tpf).i32(D).f32(eps)
	d.launch("ln_mod_fwd_f32x4", rows, 1, 1, T, 1, 1, 0)
	d.actSetF32(h, sh)
	return true
}

// RMSNormRoPEBack: dOut [B, N, heads, hd] rotated back in place and the RMSNorm gradient into dIn
// (written when a ZeroLazy(dIn) came just before) in one pass (rms_bwd_f32x4 with the RoPE
// tables), then dW from the rotated-back dOut as RMSNormBack.
func (d *Device) RMSNormRoPEBack(dIn, dW, dOut, in, rstd, w *kernels.Tensor, frames, rows, cols, frame0 int) bool {
	return d.rmsRoPEBack(dIn, dW, nil, dOut, in, rstd, w, frames, rows, cols, frame0)
}

// rmsRoPEBack is RMSNormRoPEBack, with dIn's column sums into dB (RMSNormRoPEBackBias) when dB is
// not nil; false: nothing queued.
func (d *Device) rmsRoPEBack(dIn, dW, dB, dOut, in, rstd, w *kernels.Tensor, frames, rows, cols, frame0 int) bool {
	if !d.fuse || len(dOut.Shape) != 4 || dIn == nil {
		return false
	}
	N, H, hd := dOut.Shape[1], dOut.Shape[2], dOut.Shape[3]
	D := lastDim(in)
	n := sameNumel("RMSNormRoPEBack", in, dOut, dIn)
	must(N == frames*rows*cols, "RMSNormRoPEBack: dOut %v for a %d×%d×%d grid", dOut.Shape, frames, rows, cols)
	must(H*hd == D, "RMSNormRoPEBack: dOut %v, in %v", dOut.Shape, in.Shape)
	nrows := n / D
	must(rstd.Numel() == nrows, "RMSNormRoPEBack: rstd %v for %d rows", rstd, nrows)
	T := d.vecRow(D, dIn, dOut, in, w, rstd)
	if hd%4 != 0 || T == 0 || n == 0 || n >= 1<<31 {
		return false
	}
	sums := d.colSums() && (dW != nil || dB != nil) && sumDst(dW, 0)
	if dB != nil && !(sums && d.biasSums(dB, D)) {
		return false
	}
	fresh := d.claimZero(dIn)
	if !d.begin(false, dIn, dW, dOut, dB) {
		return true
	}
	defer d.leave()
	tf, th := d.ropeTable(hd, max(frame0+frames, rows, cols))
	if tf == 0 { // a RoPE table that cannot grow during a capture: the plain ops
		if fresh {
			d.zeroNow(dIn)
		}
		d.RoPEBack(dOut, frames, rows, cols, frame0)
		d.RMSNormBack(dIn, dW, dOut, in, rstd, w)
		if dB != nil {
			d.colReduce(dB, 0, D, dIn, nil, nil, nil, 1, nrows, D, 0, 1, false)
		}
		return true
	}
	if sums { // dW (and dB += Σ dIn) from the same reads (colsums.go)
		must(dW == nil || dW.Numel() == D, "RMSNormRoPEBack: dW %v for D=%d", dW, D)
		sh := d.biasCopy(dIn, dB)
		d.rmsBackSums(T, nrows, D, dIn, dW, dB, sh, dOut, in, rstd, w, fresh, tf, th, N, hd, rows, cols, frame0)
		d.actSet(dIn, sh)
		return true
	}
	d.rmsBackVec(T, nrows, D, dIn, dOut, in, rstd, w, fresh, tf, th, N, hd, rows, cols, frame0)
	if dW != nil {
		mustNumel("RMSNormRoPEBack dW", D, dW)
		d.colReduce(dW, 0, D, dOut, in, nil, rstd, 1, nrows, D, 3, 1, false)
	}
	return true
}

// ModulateLayerNormBack: dX += the LayerNorm gradient of dH·(1 + scale) in one pass (ln_bwd_f32x4
// with mod; dLn is never stored), and dMod's shift and scale slices as ModulateBack.
func (d *Device) ModulateLayerNormBack(dX, dMod, dH, ln, x, mean, rstd, mod *kernels.Tensor, iShift, iScale, tpf int) bool {
	return d.modLnBack(dX, dMod, nil, dH, ln, x, mean, rstd, mod, iShift, iScale, tpf)
}

// modLnBack is ModulateLayerNormBack, with dX's column sums into dB (ModulateLayerNormBackBias)
// when dB is not nil; false: nothing queued.
func (d *Device) modLnBack(dX, dMod, dB, dH, ln, x, mean, rstd, mod *kernels.Tensor, iShift, iScale, tpf int) bool {
	if !d.fuse || dX == nil {
		return false
	}
	B, N, D, F, K := modDims("ModulateLayerNormBack", x, mod, []int{iShift, iScale}, tpf)
	n := sameNumel("ModulateLayerNormBack", dX, dH, ln, x)
	rows := n / D
	must(mean.Numel() == rows && rstd.Numel() == rows, "ModulateLayerNormBack: mean %v rstd %v for %d rows", mean, rstd, rows)
	T := d.vecRow(D, dX, dH, ln, x, mean, rstd, mod)
	if T == 0 || n == 0 || mod.Numel() >= 1<<31 {
		return false
	}
	sums := d.colSums() && (dMod != nil || dB != nil) && sumDst(dMod, iScale*D) && sumDst(dMod, iShift*D)
	if dB != nil && !(sums && d.biasSums(dB, D)) {
		return false
	}
	if !d.begin(false, dX, dMod, dB) {
		return true
	}
	defer d.leave()
	if sums {
		// the scale and shift gradients from the same reads (colsums.go): Σ dH·x̂, Σ dH per frame
		// (and dB += Σ dX)
		must(dMod == nil || dMod.Numel() == mod.Numel(), "ModulateLayerNormBack: dMod %v for mod %v", dMod, mod)
		sh := d.biasCopy(dX, dB)
		d.lnBackSums(T, rows, D, dX, dH, x, mean, rstd, nil, mod, iScale, N, F, K, tpf, addr(dMod, iScale*D), addr(dMod, iShift*D), K*D, tpf, dB, sh)
		d.actSet(dX, sh)
		return true
	}
	d.lnBackVec(T, rows, D, dX, dH, x, mean, rstd, nil, mod, iScale, N, F, K, tpf)
	if dMod != nil {
		mustNumel("ModulateLayerNormBack dMod", mod.Numel(), dMod)
		d.colReduce2(dMod, iScale*D, dMod, iShift*D, K*D, dH, ln, nil, nil, B*F, tpf, D, 1, 1, false)
	}
	return true
}

// ZeroLazy zeroes t now or, when the next op claims it (claimZero: LinearBack's dIn, GELUBack's
// dIn, GateAddBack's dY, RMSNormBack's and RMSNormRoPEBack's dIn), lets that op write instead of
// accumulate.
func (d *Device) ZeroLazy(t *kernels.Tensor) {
	if !d.fuse || t.Numel() == 0 || d.capturing {
		d.Zero(t)
		return
	}
	d.flushZero()
	d.pz, d.pzOn = *t, true
	d.touch(t)
	d.wrote(t)
}

// claimZero reports whether t is the pending ZeroLazy tensor (same address and bytes) and takes
// it: the op then overwrites t. Called by an op before it begins.
func (d *Device) claimZero(t *kernels.Tensor) bool {
	if !d.pzOn || t == nil || d.err != nil {
		return false
	}
	if d.pz.Ptr == t.Ptr && d.pz.Numel()*d.pz.DType.Size() == t.Numel()*t.DType.Size() {
		d.pzOn = false
		return true
	}
	return false
}

// flushZero zeroes the pending ZeroLazy tensor.
func (d *Device) flushZero() {
	if d.pzOn {
		d.pzOn = false
		t := d.pz
		d.Zero(&t)
	}
}

// dropZero forgets a pending zeroing of memory that t (about to be freed) overlaps.
func (d *Device) dropZero(t *kernels.Tensor) {
	if !d.pzOn {
		return
	}
	lo, hi := t.Ptr, t.Ptr+uintptr(t.Numel()*t.DType.Size())
	if d.pz.Ptr < hi && lo < d.pz.Ptr+uintptr(d.pz.Numel()*d.pz.DType.Size()) {
		d.pzOn = false
	}
}

// zeroNow queues the memset of t inside an entered op.
func (d *Device) zeroNow(t *kernels.Tensor) {
	pr := d.profBegin()
	d.fail(d.drv.call("cuMemsetD8Async", d.drv.cuMemsetD8Async, t.Ptr, 0, uintptr(t.Numel()*t.DType.Size()), d.stream))
	d.profEnd("memset", pr)
}
