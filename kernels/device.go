package kernels

// Device is one backend of the engine: "cpu" (Go, goroutine-parallel, fp32) or "cuda" (bf16 storage
// where the tensor says so, fp32 accumulation). Models and objectives are written once against it.
//
// Conventions shared by every op:
//   - Shapes are row-major and contiguous; sizes not carried by the tensors are passed explicitly.
//   - Forward ops overwrite their outputs. Backward ops ACCUMULATE (+=) into every gradient they
//     write (inputs and parameters); a nil gradient tensor means "not wanted" and is skipped.
//   - Token tensors are [B, N, D] with N = F·h·w tokens ordered (f, h, w); "per frame" tensors are
//     [B, F, K, D] and apply to the tokensPerFrame tokens of their frame.
//   - Ops never allocate device memory in steady state (the CUDA device may keep per-shape tables).
//   - Ops run asynchronously on the device's stream; ToHost and Sync wait.
type Device interface {
	Name() string

	// Memory.
	Alloc(dt DType, shape ...int) *Tensor // zero-filled
	Free(t *Tensor)                       // releases a tensor made by Alloc (not a view)
	FromHost(dst *Tensor, src []float32)  // len(src) == dst.Numel(); converts to dst.DType
	ToHost(dst []float32, src *Tensor)    // len(dst) == src.Numel(); waits for the device
	Copy(dst, src *Tensor)                // same numel; converts dtype
	Zero(t *Tensor)
	Fill(t *Tensor, v float32)
	Sync() error // waits for all queued work; returns the first asynchronous error

	// Linear: out[M,N] = in[M,K]·w[N,K]ᵀ + b[N] (b may be nil). PyTorch's weight layout.
	Linear(out, in, w, b *Tensor)
	LinearBack(dIn, dW, dB, dOut, in, w *Tensor)

	// LayerNorm over the last dim D (rows = numel/D): out = (x−μ)·rstd·w + b; w, b nil = no affine.
	// mean, rstd [rows] are saved for backward.
	LayerNorm(out, mean, rstd, in, w, b *Tensor, eps float32)
	LayerNormBack(dIn, dW, dB, dOut, in, mean, rstd, w *Tensor)

	// RMSNorm over the last dim D: out = x·rsqrt(mean(x²)+eps)·w. rstd [rows] saved.
	RMSNorm(out, rstd, in, w *Tensor, eps float32)
	RMSNormBack(dIn, dW, dOut, in, rstd, w *Tensor)

	// Modulate: out[b,n,:] = x[b,n,:]·(1 + mod[b,f,iScale,:]) + mod[b,f,iShift,:], f = n/tokensPerFrame.
	// x, out [B,N,D]; mod [B,F,K,D]. Backward accumulates into dX and the two slices of dMod.
	Modulate(out, x, mod *Tensor, iShift, iScale, tokensPerFrame int)
	ModulateBack(dX, dMod, dOut, x, mod *Tensor, iShift, iScale, tokensPerFrame int)

	// GateAdd: x[b,n,:] += y[b,n,:]·mod[b,f,iGate,:] (the gated residual). Backward: dY += dX·gate,
	// dMod[gate] += Σ_tokens dX·y; dX itself flows on through the residual unchanged.
	GateAdd(x, y, mod *Tensor, iGate, tokensPerFrame int)
	GateAddBack(dY, dMod, dX, y, mod *Tensor, iGate, tokensPerFrame int)

	// Activations, elementwise; out may alias in for the forward.
	GELU(out, in *Tensor) // tanh form
	GELUBack(dIn, dOut, in *Tensor)
	SiLU(out, in *Tensor)
	SiLUBack(dIn, dOut, in *Tensor)

	// RoPE rotates x [B, N, heads, hd] in place by the 3D RoPE of docs/architecture.md: token n of the (f, h, w) grid
	// [frames, rows, cols] at absolute frame frame0+f. RoPEBack rotates a gradient back (in place).
	RoPE(x *Tensor, frames, rows, cols, frame0 int)
	RoPEBack(dx *Tensor, frames, rows, cols, frame0 int)

	// Attention: out[b,i,h,:] = softmax_j(q[b,i,h,:]·k[b,j,h,:]/√hd)·v[b,j,h,:] over the visible j.
	// q, out [B,Nq,H,hd]; k, v [B,Nk,H,hd]; lse [B,H,Nq] fp32 saved for backward.
	// Mask: chunkTokens == 0 → every key visible; else query i sits at absolute token qOffset+i, key j at
	// token j, and j is visible iff (j / chunkTokens) <= ((qOffset+i) / chunkTokens) (block-causal).
	Attention(out, lse, q, k, v *Tensor, chunkTokens, qOffset int)
	AttentionBack(dQ, dK, dV, dOut, out, lse, q, k, v *Tensor, chunkTokens, qOffset int)

	// Patchify: x [B,C,F,H,W] → out [B, F·(H/2)·(W/2), C·4], features ordered (c, pt, ph, pw).
	Patchify(out, x *Tensor, B, C, F, H, W int)
	PatchifyBack(dX, dOut *Tensor, B, C, F, H, W int)
	// Unpatchify: in [B, N, 4·C] with features ordered (pt, ph, pw, c) → out [B,C,F,H,W].
	Unpatchify(out, in *Tensor, B, C, F, H, W int)
	UnpatchifyBack(dIn, dOut *Tensor, B, C, F, H, W int)

	// Sinusoid: t [M] (timesteps in [0,1000]) → out [M, 2·half] = [cos(t·f), sin(t·f)],
	// f_i = 10000^(−i/half), computed in float64. Not differentiated.
	Sinusoid(out, t *Tensor, half int)

	// AddBroadcast: out[m, k, :] = a[k, :] + b[m, k, :] for a [K·D] broadcast over M (modulation + e0).
	// Backward accumulates dA (summed over m) and dB.
	AddBroadcast(out, a, b *Tensor)
	AddBroadcastBack(dA, dB, dOut *Tensor)

	// MeanTokens: out[b,:] = mean_n in[b,n,:]; in [B,N,D], out [B,D].
	MeanTokens(out, in *Tensor)
	MeanTokensBack(dIn, dOut *Tensor)

	// Elementwise over whole tensors (same numel).
	Add(out, a, b *Tensor)                    // out = a + b
	Axpy(y *Tensor, alpha float32, x *Tensor) // y += alpha·x
	Scale(x *Tensor, alpha float32)           // x *= alpha
	// Combine: out = a_g·x + b_g·y where the tensors are G equal groups (G = len(a) = len(b)),
	// e.g. per-sample (G = B) or per-(sample, frame) coefficients for [B,C,F,H,W] use PerFrame.
	Combine(out, x, y *Tensor, a, b []float32)
	// CombineFrames: like Combine for video tensors [B,C,F,H,W], with a, b of length B·F indexed b·F+f.
	CombineFrames(out, x, y *Tensor, a, b []float32, B, C, F, HW int)
	// RandnPhilox fills t with N(0, 1) drawn on the device: t is len(keys) equal slabs (t [B, ...]
	// with keys [B]), slab b from Philox4x32-10 under key keys[b] and the 64-bit counter counter,
	// Box–Muller to fp32 (kernels/philox.go: the layout, and the Go reference every device matches).
	RandnPhilox(t *Tensor, keys []uint64, counter uint64)

	// Reductions, returned to the host in float64 (they synchronize).
	Dot(a, b *Tensor) float64              // Σ a·b
	SumAbsGroups(dst []float64, x *Tensor) // dst[g] = Σ|x| over G = len(dst) equal groups
	// SumSquares: acc += Σ x², accumulated in float64 on the device, without synchronizing. acc is
	// a float64 accumulator (F64Acc): an F32 tensor of 2 elements, 8-byte aligned, whose 8 bytes
	// hold one float64; read accumulators back with ReadF64. The sum is Dot(x, x)'s, term for term:
	// after a Zero(acc), ReadF64 gives Dot(x, x) (bit for bit on the CPU).
	SumSquares(acc, x *Tensor)

	// Optimizer ops over parameter buffers (all fp32 master tensors of equal numel).
	// AdamW with bias correction (step ≥ 1); decay is applied to w as w −= lr·wd·w (decoupled).
	AdamW(w, g, m, v *Tensor, lr, beta1, beta2, eps, wd float32, step int)
	// EMA: ema = decay·ema + (1−decay)·w.
	EMA(ema, w *Tensor, decay float32)

	// The optimizer step gated on the device, and reading back without waiting (gate.go).
	Gater
}
