package kernels

// Fused ops: optional Device methods that do in one pass what two or three ops of Device do (issue
// 14: fewer passes over the activations). A device implements the interface it can run; each
// method reports whether it took the work (false: nothing queued, e.g. dtypes or alignments it has
// no kernel for). Callers use the functions below, which fall back to the plain ops, so every
// device computes the same function and the CPU device needs no fused code.

// GateAdderTo computes out = x + y·mod[b, f, iGate, :] (GateAdd from a separate residual input:
// no Copy of x first). out may alias x.
type GateAdderTo interface {
	GateAddTo(out, x, y, mod *Tensor, iGate, tokensPerFrame int) bool
}

// RMSNormRoPEer computes out = RoPE(RMSNorm(in)·w): in [B·N, D], out [B, N, heads, hd] (D =
// heads·hd), rstd [B·N] saved as RMSNorm saves it; the rotation as RoPE's.
type RMSNormRoPEer interface {
	RMSNormRoPE(out, rstd, in, w *Tensor, eps float32, frames, rows, cols, frame0 int) bool
}

// LinearGELUer computes out = GELU(in·wᵀ + b) (the tanh form) in one GEMM with the activation in
// its epilogue; keepPre true: the pre-activation pre is needed afterwards (GELUBack) and the device
// declines unless it can write it too.
type LinearGELUer interface {
	LinearGELU(out, pre, in, w, b *Tensor, keepPre bool) bool
}

// GELUBackBiaser computes GELUBack (dIn += dOut·GELU'(in)) and, in the same pass, adds the column
// sums of the new dIn into dBias (the bias gradient of the layer that made in; nil: none).
type GELUBackBiaser interface {
	GELUBackBias(dIn, dBias, dOut, in *Tensor) bool
}

// GELUPreBF16er is a device that wants the GELU's pre-activation, its gradient and the gradient of
// its output (LinearGELU's pre; GELUBackBias's in, dIn, dOut) stored in bf16: its GEMM epilogue
// writes the pre-activation so, and its GELU backward reads and writes bf16.
type GELUPreBF16er interface {
	GELUPreBF16() bool
}

// LinearResidualer computes out = res + in·wᵀ + b (a residual added in the GEMM's epilogue).
type LinearResidualer interface {
	LinearResidual(out, in, w, b, res *Tensor) bool
}

// LayerNormModulator computes ln = LayerNorm(x) (no affine; mean, rstd saved) and
// h = ln·(1 + mod[b, f, iScale]) + mod[b, f, iShift] in one pass; keepLn false: ln's values are not
// needed afterwards (an inference pass) and the device may leave ln unwritten.
type LayerNormModulator interface {
	LayerNormModulate(ln, h, mean, rstd, x, mod *Tensor, iShift, iScale, tokensPerFrame int, eps float32, keepLn bool) bool
}

// RMSNormRoPEBacker is the backward of RMSNormRoPE: dOut [B, N, heads, hd], the gradient of the
// rotated output, is rotated back in place (as RoPEBack leaves it), then dIn and dW accumulate as
// RMSNormBack's.
type RMSNormRoPEBacker interface {
	RMSNormRoPEBack(dIn, dW, dOut, in, rstd, w *Tensor, frames, rows, cols, frame0 int) bool
}

// ModulateLayerNormBacker is the backward of Modulate(LayerNorm(x)) with no affine LayerNorm: dX
// accumulates the gradient through the norm of dLn = dH·(1 + mod[b, f, iScale]) (not stored), dMod's
// shift and scale slices accumulate as ModulateBack's. ln is the saved normalized x.
type ModulateLayerNormBacker interface {
	ModulateLayerNormBack(dX, dMod, dH, ln, x, mean, rstd, mod *Tensor, iShift, iScale, tokensPerFrame int) bool
}

// BackBiaser is a device whose backward row ops also add the column sums of the gradient they write
// (dIn, dY, dX after the op) into dBias: the bias gradient of the Linear whose output that gradient
// belongs to (its LinearBack then gets no dB), taken from the values in registers instead of another
// read. Each method reports whether it did the whole op (false: nothing queued).
type BackBiaser interface {
	RMSNormBackBias(dIn, dW, dBias, dOut, in, rstd, w *Tensor) bool
	RMSNormRoPEBackBias(dIn, dW, dBias, dOut, in, rstd, w *Tensor, frames, rows, cols, frame0 int) bool
	GateAddBackBias(dY, dMod, dBias, dX, y, mod *Tensor, iGate, tokensPerFrame int) bool
	ModulateLayerNormBackBias(dX, dMod, dBias, dH, ln, x, mean, rstd, mod *Tensor, iShift, iScale, tokensPerFrame int) bool
}

// LazyZeroer zeroes t like Zero, but may fold the zeroing into the next op when that op
// accumulates into the whole of t (it then writes instead of adding: no memset, no read of the
// zeros). Any other next op sees t zeroed as after Zero.
type LazyZeroer interface {
	ZeroLazy(t *Tensor)
}

// GateAddTo is out = x + y·mod[b, f, iGate, :] on any device (Copy and GateAdd where d has no
// GateAddTo).
func GateAddTo(d Device, out, x, y, mod *Tensor, iGate, tokensPerFrame int) {
	if f, ok := d.(GateAdderTo); ok && f.GateAddTo(out, x, y, mod, iGate, tokensPerFrame) {
		return
	}
	if !sameStorage(out, x) {
		d.Copy(out, x)
	}
	d.GateAdd(out, y, mod, iGate, tokensPerFrame)
}

// RMSNormRoPE is out = RoPE(RMSNorm(in)·w) on any device (RMSNorm then RoPE in place where d has
// no RMSNormRoPE).
func RMSNormRoPE(d Device, out, rstd, in, w *Tensor, eps float32, frames, rows, cols, frame0 int) {
	if f, ok := d.(RMSNormRoPEer); ok && f.RMSNormRoPE(out, rstd, in, w, eps, frames, rows, cols, frame0) {
		return
	}
	d.RMSNorm(out, rstd, in, w, eps)
	d.RoPE(out, frames, rows, cols, frame0)
}

// LinearGELU is out = GELU(in·wᵀ + b) on any device; pre [M, N] holds the pre-activation (the
// plain ops' Linear output; written unless a fused device was told !keepPre).
func LinearGELU(d Device, out, pre, in, w, b *Tensor, keepPre bool) {
	if f, ok := d.(LinearGELUer); ok && f.LinearGELU(out, pre, in, w, b, keepPre) {
		return
	}
	d.Linear(pre, in, w, b)
	d.GELU(out, pre)
}

// GELUBackBias is GELUBack on any device, with dIn's column sums (the bias gradient of the layer
// that made in) added into dBias in the same pass where the device does that: the result says so
// (true: done; false: the caller still owes it, e.g. as the dB of that layer's LinearBack).
func GELUBackBias(d Device, dIn, dBias, dOut, in *Tensor) bool {
	if f, ok := d.(GELUBackBiaser); ok && f.GELUBackBias(dIn, dBias, dOut, in) {
		return dBias != nil
	}
	d.GELUBack(dIn, dOut, in)
	return false
}

// GELUPreBF16 reports whether d wants the GELU's pre-activation and its gradient in bf16
// (GELUPreBF16er).
func GELUPreBF16(d Device) bool {
	f, ok := d.(GELUPreBF16er)
	return ok && f.GELUPreBF16()
}

// LinearResidual is out = res + in·wᵀ + b on any device; tmp [M, N] is the plain ops' Linear
// output (its contents afterwards unspecified).
func LinearResidual(d Device, out, tmp, in, w, b, res *Tensor) {
	if f, ok := d.(LinearResidualer); ok && f.LinearResidual(out, in, w, b, res) {
		return
	}
	d.Linear(tmp, in, w, b)
	d.Add(out, res, tmp)
}

// LayerNormModulate is LayerNorm (no affine) then Modulate on any device (see LayerNormModulator).
func LayerNormModulate(d Device, ln, h, mean, rstd, x, mod *Tensor, iShift, iScale, tokensPerFrame int, eps float32, keepLn bool) {
	if f, ok := d.(LayerNormModulator); ok && f.LayerNormModulate(ln, h, mean, rstd, x, mod, iShift, iScale, tokensPerFrame, eps, keepLn) {
		return
	}
	d.LayerNorm(ln, mean, rstd, x, nil, nil, eps)
	d.Modulate(h, ln, mod, iShift, iScale, tokensPerFrame)
}

// RMSNormRoPEBack is the backward of RMSNormRoPE on any device (RoPEBack in place, then
// RMSNormBack, where d has no RMSNormRoPEBack).
func RMSNormRoPEBack(d Device, dIn, dW, dOut, in, rstd, w *Tensor, frames, rows, cols, frame0 int) {
	if f, ok := d.(RMSNormRoPEBacker); ok && f.RMSNormRoPEBack(dIn, dW, dOut, in, rstd, w, frames, rows, cols, frame0) {
		return
	}
	d.RoPEBack(dOut, frames, rows, cols, frame0)
	d.RMSNormBack(dIn, dW, dOut, in, rstd, w)
}

// ModulateLayerNormBack is the backward of Modulate(LayerNorm(x)) on any device; dLn [B, N, D] is
// the scratch of the plain ops (ModulateBack into a zeroed dLn, then LayerNormBack) where d has no
// ModulateLayerNormBack. Its contents afterwards are unspecified.
func ModulateLayerNormBack(d Device, dX, dMod, dH, dLn, ln, x, mean, rstd, mod *Tensor, iShift, iScale, tokensPerFrame int) {
	if f, ok := d.(ModulateLayerNormBacker); ok && f.ModulateLayerNormBack(dX, dMod, dH, ln, x, mean, rstd, mod, iShift, iScale, tokensPerFrame) {
		return
	}
	ZeroLazy(d, dLn)
	d.ModulateBack(dLn, dMod, dH, ln, mod, iShift, iScale, tokensPerFrame)
	d.LayerNormBack(dX, nil, nil, dLn, x, mean, rstd, nil)
}

// RMSNormBackBias is RMSNormBack on any device, with dIn's column sums (after the op) added into
// dBias in the same pass where the device does that: true: done; false: the caller still owes them
// (as GELUBackBias), e.g. as the dB of the LinearBack that reads dIn next.
func RMSNormBackBias(d Device, dIn, dW, dBias, dOut, in, rstd, w *Tensor) bool {
	if f, ok := d.(BackBiaser); ok && dBias != nil && f.RMSNormBackBias(dIn, dW, dBias, dOut, in, rstd, w) {
		return true
	}
	d.RMSNormBack(dIn, dW, dOut, in, rstd, w)
	return false
}

// RMSNormRoPEBackBias is RMSNormRoPEBack on any device, with dIn's column sums added into dBias
// where the device does that (the result says so, as RMSNormBackBias).
func RMSNormRoPEBackBias(d Device, dIn, dW, dBias, dOut, in, rstd, w *Tensor, frames, rows, cols, frame0 int) bool {
	if f, ok := d.(BackBiaser); ok && dBias != nil && f.RMSNormRoPEBackBias(dIn, dW, dBias, dOut, in, rstd, w, frames, rows, cols, frame0) {
		return true
	}
	RMSNormRoPEBack(d, dIn, dW, dOut, in, rstd, w, frames, rows, cols, frame0)
	return false
}

// GateAddBackBias is GateAddBack on any device, with dY's column sums (after the op) added into
// dBias where the device does that (the result says so, as RMSNormBackBias).
func GateAddBackBias(d Device, dY, dMod, dBias, dX, y, mod *Tensor, iGate, tokensPerFrame int) bool {
	if f, ok := d.(BackBiaser); ok && dBias != nil && f.GateAddBackBias(dY, dMod, dBias, dX, y, mod, iGate, tokensPerFrame) {
		return true
	}
	d.GateAddBack(dY, dMod, dX, y, mod, iGate, tokensPerFrame)
	return false
}

// ModulateLayerNormBackBias is ModulateLayerNormBack on any device, with dX's column sums (after the
// op) added into dBias where the device does that (the result says so, as RMSNormBackBias).
func ModulateLayerNormBackBias(d Device, dX, dMod, dBias, dH, dLn, ln, x, mean, rstd, mod *Tensor, iShift, iScale, tokensPerFrame int) bool {
	if f, ok := d.(BackBiaser); ok && dBias != nil &&
		f.ModulateLayerNormBackBias(dX, dMod, dBias, dH, ln, x, mean, rstd, mod, iShift, iScale, tokensPerFrame) {
		return true
	}
	ModulateLayerNormBack(d, dX, dMod, dH, dLn, ln, x, mean, rstd, mod, iShift, iScale, tokensPerFrame)
	return false
}

// ZeroLazy zeroes t (lazily where d is a LazyZeroer: see there).
func ZeroLazy(d Device, t *Tensor) {
	if z, ok := d.(LazyZeroer); ok {
		z.ZeroLazy(t)
		return
	}
	d.Zero(t)
}

// sameStorage reports whether a and b are the same elements (same device storage, same size).
func sameStorage(a, b *Tensor) bool {
	if a.Numel() != b.Numel() || a.DType != b.DType {
		return false
	}
	if a.F32 != nil || b.F32 != nil {
		return len(a.F32) > 0 && len(b.F32) > 0 && &a.F32[0] == &b.F32[0]
	}
	return a.Ptr == b.Ptr
}
