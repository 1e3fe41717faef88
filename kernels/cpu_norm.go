package kernels

import "math"

// Normalization, modulation and activations on the CPU. Each op checks its shapes, puts its
// arguments in the device's argument block and runs a top-level row function over the pool.

// LayerNorm: out = (x−μ)·rstd·w + b over the last dim; statistics in float64.
func (c *cpuDevice) LayerNorm(out, mean, rstd, in, w, b *Tensor, eps float32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	D := lastDim(in)
	n := sameNumel("LayerNorm", out, in)
	rows := n / D
	if !(mean.Numel() == rows && rstd.Numel() == rows) {
		panicf("LayerNorm: mean %v rstd %v for %d rows", mean.Shape, rstd.Shape, rows)
	}
	if !(w == nil || w.Numel() == D) {
		panicf("LayerNorm: weight %v for D=%d", shapeOf(w), D)
	}
	if !(b == nil || b.Numel() == D) {
		panicf("LayerNorm: bias %v for D=%d", shapeOf(b), D)
	}
	a := c.args()
	a.s[0], a.s[1], a.s[2], a.s[3], a.s[4], a.s[5] = f32(out), f32(in), f32(mean), f32(rstd), f32(w), f32(b)
	a.i[0], a.x[0] = D, eps
	c.pool.For(rows, c.pool.grain(rows, 6*D), layerNormRows, a)
}

func layerNormRows(a *opArgs, _, lo, hi int) {
	o, x, mu, rs, ww, bb := a.s[0], a.s[1], a.s[2], a.s[3], a.s[4], a.s[5]
	D, eps := a.i[0], a.x[0]
	for r := lo; r < hi; r++ {
		xr, or := x[r*D:(r+1)*D], o[r*D:(r+1)*D]
		var s float64
		for _, v := range xr {
			s += float64(v)
		}
		m := s / float64(D)
		var ss float64
		for _, v := range xr {
			d := float64(v) - m
			ss += d * d
		}
		r64 := 1 / math.Sqrt(ss/float64(D)+float64(eps))
		mf, rf := float32(m), float32(r64)
		mu[r], rs[r] = mf, rf
		switch {
		case ww != nil && bb != nil:
			for i, v := range xr {
				or[i] = (v-mf)*rf*ww[i] + bb[i]
			}
		case ww != nil:
			for i, v := range xr {
				or[i] = (v - mf) * rf * ww[i]
			}
		default:
			for i, v := range xr {
				or[i] = (v - mf) * rf
			}
		}
	}
}

// LayerNormBack: dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) with ĝ = dOut·w; dW += Σ dOut·x̂, dB += Σ dOut.
func (c *cpuDevice) LayerNormBack(dIn, dW, dB, dOut, in, mean, rstd, w *Tensor) {
	c.mu.Lock()
	defer c.mu.Unlock()
	D := lastDim(in)
	n := sameNumel("LayerNormBack", in, dOut, dIn)
	rows := n / D
	if !(mean.Numel() == rows && rstd.Numel() == rows) {
		panicf("LayerNormBack: mean %v rstd %v for %d rows", mean.Shape, rstd.Shape, rows)
	}
	if dIn != nil {
		a := c.args()
		a.s[0], a.s[1], a.s[2], a.s[3], a.s[4], a.s[5] = f32(dIn), f32(dOut), f32(in), f32(mean), f32(rstd), f32(w)
		a.i[0] = D
		c.pool.For(rows, c.pool.grain(rows, 10*D), layerNormBackRows, a)
	}
	c.normParamGrads(dW, dB, f32(dOut), f32(in), f32(mean), f32(rstd), rows, D)
}

// layerNormBackRows (RMSNorm's too when mu is nil: no centering, no mean(ĝ) term).
func layerNormBackRows(a *opArgs, _, lo, hi int) {
	dx, g, x, mu, rs, ww := a.s[0], a.s[1], a.s[2], a.s[3], a.s[4], a.s[5]
	D := a.i[0]
	for r := lo; r < hi; r++ {
		xr, gr, dr := x[r*D:(r+1)*D], g[r*D:(r+1)*D], dx[r*D:(r+1)*D]
		var m float32
		if mu != nil {
			m = mu[r]
		}
		s := rs[r]
		var sg, sgx float64
		for i, v := range xr {
			gi := gr[i]
			if ww != nil {
				gi *= ww[i]
			}
			sg += float64(gi)
			sgx += float64(gi) * float64((v-m)*s)
		}
		mg, mgx := float32(sg/float64(D)), float32(sgx/float64(D))
		if mu == nil {
			mg = 0
		}
		for i, v := range xr {
			gi := gr[i]
			if ww != nil {
				gi *= ww[i]
			}
			dr[i] += s * (gi - mg - (v-m)*s*mgx)
		}
	}
}

// normParamGrads: dW[d] += Σ_r g[r,d]·(x[r,d]−μ_r)·rstd_r, dB[d] += Σ_r g[r,d], parallel over
// blocks of columns. mu == nil means RMSNorm (no centering).
func (c *cpuDevice) normParamGrads(dW, dB *Tensor, g, x, mu, rs []float32, rows, D int) {
	if dW == nil && dB == nil {
		return
	}
	dw, db := f32(dW), f32(dB)
	if !(dw == nil || len(dw) == D) {
		panicf("norm backward: dW %v for D=%d", shapeOf(dW), D)
	}
	if !(db == nil || len(db) == D) {
		panicf("norm backward: dB %v for D=%d", shapeOf(dB), D)
	}
	a := c.args()
	a.s[0], a.s[1], a.s[2], a.s[3], a.s[4], a.s[5] = dw, db, g, x, mu, rs
	a.i[0], a.i[1] = rows, D
	c.pool.For((D+normCols-1)/normCols, 1, normParamCols, a)
}

const normCols = 64 // columns per task of the parameter-gradient reductions

func normParamCols(a *opArgs, _, lo, hi int) {
	dw, db, g, x, mu, rs := a.s[0], a.s[1], a.s[2], a.s[3], a.s[4], a.s[5]
	rows, D := a.i[0], a.i[1]
	var aw, ab [normCols]float64
	for blk := lo; blk < hi; blk++ {
		d0, d1 := blk*normCols, min(blk*normCols+normCols, D)
		clear(aw[:])
		clear(ab[:])
		for r := 0; r < rows; r++ {
			var m float32
			if mu != nil {
				m = mu[r]
			}
			s := rs[r]
			gr, xr := g[r*D+d0:r*D+d1], x[r*D+d0:r*D+d1]
			for i, gi := range gr {
				aw[i] += float64(gi * (xr[i] - m) * s)
				ab[i] += float64(gi)
			}
		}
		for i := d0; i < d1; i++ {
			if dw != nil {
				dw[i] += float32(aw[i-d0])
			}
			if db != nil {
				db[i] += float32(ab[i-d0])
			}
		}
	}
}

// RMSNorm: out = x·rsqrt(mean(x²)+eps)·w over the last dim (all D channels).
func (c *cpuDevice) RMSNorm(out, rstd, in, w *Tensor, eps float32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	D := lastDim(in)
	n := sameNumel("RMSNorm", out, in)
	rows := n / D
	if !(rstd.Numel() == rows) {
		panicf("RMSNorm: rstd %v for %d rows", rstd.Shape, rows)
	}
	if !(w == nil || w.Numel() == D) {
		panicf("RMSNorm: weight %v for D=%d", shapeOf(w), D)
	}
	a := c.args()
	a.s[0], a.s[1], a.s[2], a.s[3] = f32(out), f32(in), f32(rstd), f32(w)
	a.i[0], a.x[0] = D, eps
	c.pool.For(rows, c.pool.grain(rows, 4*D), rmsNormRows, a)
}

func rmsNormRows(a *opArgs, _, lo, hi int) {
	o, x, rs, ww := a.s[0], a.s[1], a.s[2], a.s[3]
	D, eps := a.i[0], a.x[0]
	for r := lo; r < hi; r++ {
		xr, or := x[r*D:(r+1)*D], o[r*D:(r+1)*D]
		var ss float64
		for _, v := range xr {
			ss += float64(v) * float64(v)
		}
		s := float32(1 / math.Sqrt(ss/float64(D)+float64(eps)))
		rs[r] = s
		if ww != nil {
			for i, v := range xr {
				or[i] = v * s * ww[i]
			}
		} else {
			for i, v := range xr {
				or[i] = v * s
			}
		}
	}
}

// RMSNormBack: dx = rstd·(ĝ − x̂·mean(ĝ·x̂)) with ĝ = dOut·w, x̂ = x·rstd; dW += Σ dOut·x̂.
func (c *cpuDevice) RMSNormBack(dIn, dW, dOut, in, rstd, w *Tensor) {
	c.mu.Lock()
	defer c.mu.Unlock()
	D := lastDim(in)
	n := sameNumel("RMSNormBack", in, dOut, dIn)
	rows := n / D
	if !(rstd.Numel() == rows) {
		panicf("RMSNormBack: rstd %v for %d rows", rstd.Shape, rows)
	}
	if dIn != nil {
		a := c.args()
		a.s[0], a.s[1], a.s[2], a.s[3], a.s[4], a.s[5] = f32(dIn), f32(dOut), f32(in), nil, f32(rstd), f32(w)
		a.i[0] = D
		c.pool.For(rows, c.pool.grain(rows, 8*D), layerNormBackRows, a)
	}
	c.normParamGrads(dW, nil, f32(dOut), f32(in), nil, f32(rstd), rows, D)
}

// modDims reads x [B,N,D] and mod [B,F,K,D] and checks they agree and that 0 ≤ i1, i2 < K.
func modDims(op string, x, mod *Tensor, i1, i2, tokensPerFrame int) (B, N, D, F, K int) {
	if !(len(x.Shape) == 3 && len(mod.Shape) == 4) {
		panicf("%s: x %v mod %v (want [B,N,D], [B,F,K,D])", op, x.Shape, mod.Shape)
	}
	B, N, D = x.Shape[0], x.Shape[1], x.Shape[2]
	F, K = mod.Shape[1], mod.Shape[2]
	if !(mod.Shape[0] == B && mod.Shape[3] == D && tokensPerFrame > 0 && N == F*tokensPerFrame) {
		panicf("%s: x %v mod %v tokensPerFrame %d", op, x.Shape, mod.Shape, tokensPerFrame)
	}
	if !(i1 >= 0 && i1 < K && i2 >= 0 && i2 < K) {
		panicf("%s: mod indices %d, %d of K=%d", op, i1, i2, K)
	}
	return
}

// Modulate: out[b,n,:] = x·(1 + scale) + shift, (shift, scale) = mod[b, n/tpf, iShift|iScale, :].
func (c *cpuDevice) Modulate(out, x, mod *Tensor, iShift, iScale, tokensPerFrame int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	B, N, D, F, K := modDims("Modulate", x, mod, iShift, iScale, tokensPerFrame)
	sameNumel("Modulate", out, x)
	a := c.args()
	a.s[0], a.s[1], a.s[2] = f32(out), f32(x), f32(mod)
	a.i[0], a.i[1], a.i[2], a.i[3], a.i[4], a.i[5] = N, D, F, K, tokensPerFrame, iShift
	a.i[6] = iScale
	c.pool.For(B*N, c.pool.grain(B*N, 2*D), modulateTokens, a)
}

func modulateTokens(a *opArgs, _, lo, hi int) {
	o, xx, mm := a.s[0], a.s[1], a.s[2]
	N, D, F, K, T, iShift, iScale := a.i[0], a.i[1], a.i[2], a.i[3], a.i[4], a.i[5], a.i[6]
	for t := lo; t < hi; t++ {
		b, n := t/N, t%N
		base := (b*F + n/T) * K * D
		sh, sc := mm[base+iShift*D:base+iShift*D+D], mm[base+iScale*D:base+iScale*D+D]
		xr, or := xx[t*D:(t+1)*D], o[t*D:(t+1)*D]
		for i, v := range xr {
			or[i] = v*(1+sc[i]) + sh[i]
		}
	}
}

// ModulateBack: dX += dOut·(1+scale); dMod[shift] += Σ_frame dOut; dMod[scale] += Σ_frame dOut·x.
// Parallel over (b, f, column block) so that no two tasks write the same element.
func (c *cpuDevice) ModulateBack(dX, dMod, dOut, x, mod *Tensor, iShift, iScale, tokensPerFrame int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	B, _, D, F, K := modDims("ModulateBack", x, mod, iShift, iScale, tokensPerFrame)
	sameNumel("ModulateBack", dOut, x, dX)
	sameNumel("ModulateBack", mod, dMod)
	a := c.args()
	a.s[0], a.s[1], a.s[2], a.s[3], a.s[4] = f32(dX), f32(dMod), f32(dOut), f32(x), f32(mod)
	a.i[0], a.i[1], a.i[2], a.i[3], a.i[4] = D, K, tokensPerFrame, iShift, iScale
	tasks := B * F * ((D + normCols - 1) / normCols)
	c.pool.For(tasks, c.pool.grain(tasks, 4*tokensPerFrame*normCols), modulateBackBlocks, a)
}

func modulateBackBlocks(a *opArgs, _, lo, hi int) {
	dx, dm, g, xx, mm := a.s[0], a.s[1], a.s[2], a.s[3], a.s[4]
	D, K, T, iShift, iScale := a.i[0], a.i[1], a.i[2], a.i[3], a.i[4]
	nblk := (D + normCols - 1) / normCols
	var ash, asc [normCols]float64
	for task := lo; task < hi; task++ {
		bf, blk := task/nblk, task%nblk
		d0, d1 := blk*normCols, min(blk*normCols+normCols, D)
		base := bf * K * D
		sc := mm[base+iScale*D+d0 : base+iScale*D+d1]
		clear(ash[:])
		clear(asc[:])
		for n := 0; n < T; n++ {
			off := (bf*T+n)*D + d0
			gr, xr := g[off:off+d1-d0], xx[off:off+d1-d0]
			if dx != nil {
				dr := dx[off : off+d1-d0]
				for i, gi := range gr {
					dr[i] += gi * (1 + sc[i])
				}
			}
			for i, gi := range gr {
				ash[i] += float64(gi)
				asc[i] += float64(gi * xr[i])
			}
		}
		if dm != nil {
			for i := d0; i < d1; i++ {
				dm[base+iShift*D+i] += float32(ash[i-d0])
				dm[base+iScale*D+i] += float32(asc[i-d0])
			}
		}
	}
}

// GateAdd: x += y·gate, gate = mod[b, n/tpf, iGate, :].
func (c *cpuDevice) GateAdd(x, y, mod *Tensor, iGate, tokensPerFrame int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	B, N, D, F, K := modDims("GateAdd", x, mod, iGate, iGate, tokensPerFrame)
	sameNumel("GateAdd", x, y)
	a := c.args()
	a.s[0], a.s[1], a.s[2] = f32(x), f32(y), f32(mod)
	a.i[0], a.i[1], a.i[2], a.i[3], a.i[4], a.i[5] = N, D, F, K, tokensPerFrame, iGate
	c.pool.For(B*N, c.pool.grain(B*N, 2*D), gateAddTokens, a)
}

func gateAddTokens(a *opArgs, _, lo, hi int) {
	xx, yy, mm := a.s[0], a.s[1], a.s[2]
	N, D, F, K, T, iGate := a.i[0], a.i[1], a.i[2], a.i[3], a.i[4], a.i[5]
	for t := lo; t < hi; t++ {
		b, n := t/N, t%N
		base := ((b*F+n/T)*K + iGate) * D
		gt := mm[base : base+D]
		xr, yr := xx[t*D:(t+1)*D], yy[t*D:(t+1)*D]
		for i, v := range yr {
			xr[i] += v * gt[i]
		}
	}
}

// GateAddBack: dY += dX·gate; dMod[gate] += Σ_frame dX·y.
func (c *cpuDevice) GateAddBack(dY, dMod, dX, y, mod *Tensor, iGate, tokensPerFrame int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	B, _, D, F, K := modDims("GateAddBack", y, mod, iGate, iGate, tokensPerFrame)
	sameNumel("GateAddBack", dX, y, dY)
	sameNumel("GateAddBack", mod, dMod)
	a := c.args()
	a.s[0], a.s[1], a.s[2], a.s[3], a.s[4] = f32(dY), f32(dMod), f32(dX), f32(y), f32(mod)
	a.i[0], a.i[1], a.i[2], a.i[3] = D, K, tokensPerFrame, iGate
	tasks := B * F * ((D + normCols - 1) / normCols)
	c.pool.For(tasks, c.pool.grain(tasks, 3*tokensPerFrame*normCols), gateAddBackBlocks, a)
}

func gateAddBackBlocks(a *opArgs, _, lo, hi int) {
	dy, dm, g, yy, mm := a.s[0], a.s[1], a.s[2], a.s[3], a.s[4]
	D, K, T, iGate := a.i[0], a.i[1], a.i[2], a.i[3]
	nblk := (D + normCols - 1) / normCols
	var ag [normCols]float64
	for task := lo; task < hi; task++ {
		bf, blk := task/nblk, task%nblk
		d0, d1 := blk*normCols, min(blk*normCols+normCols, D)
		gate := mm[(bf*K+iGate)*D+d0 : (bf*K+iGate)*D+d1]
		clear(ag[:])
		for n := 0; n < T; n++ {
			off := (bf*T+n)*D + d0
			gr, yr := g[off:off+d1-d0], yy[off:off+d1-d0]
			if dy != nil {
				dr := dy[off : off+d1-d0]
				for i, gi := range gr {
					dr[i] += gi * gate[i]
				}
			}
			for i, gi := range gr {
				ag[i] += float64(gi * yr[i])
			}
		}
		if dm != nil {
			for i := d0; i < d1; i++ {
				dm[(bf*K+iGate)*D+i] += float32(ag[i-d0])
			}
		}
	}
}

// GELU, tanh form: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), with tanh(u) = 1 − 2/(e^{2u} + 1)
// through exp32 (fp32; e^{2u} saturates to +Inf or 0, which the formula maps to ±1 exactly).
// On AVX2 the bulk runs 8 lanes at a time as x·σ(2u), the same function.
const geluC = 0.7978845608028654 // √(2/π)

func tanh32(u float32) float32 { return 1 - 2/(exp32(2*u)+1) }

func (c *cpuDevice) GELU(out, in *Tensor) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := sameNumel("GELU", out, in)
	a := c.args()
	a.s[0], a.s[1] = f32(out), f32(in)
	c.pool.For(n, c.pool.grain(n, 20), geluRows, a)
}

func geluRows(a *opArgs, _, lo, hi int) {
	o, x := a.s[0], a.s[1]
	lo += geluVec(o[lo:hi], x[lo:hi])
	for i := lo; i < hi; i++ {
		v := x[i]
		o[i] = 0.5 * v * (1 + tanh32(geluC*(v+0.044715*v*v*v)))
	}
}

func (c *cpuDevice) GELUBack(dIn, dOut, in *Tensor) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := sameNumel("GELUBack", dIn, dOut, in)
	a := c.args()
	a.s[0], a.s[1], a.s[2] = f32(dIn), f32(dOut), f32(in)
	c.pool.For(n, c.pool.grain(n, 24), geluBackRows, a)
}

func geluBackRows(a *opArgs, _, lo, hi int) {
	dx, g, x := a.s[0], a.s[1], a.s[2]
	lo += geluBackVec(dx[lo:hi], g[lo:hi], x[lo:hi])
	for i := lo; i < hi; i++ {
		v := x[i]
		t := tanh32(geluC * (v + 0.044715*v*v*v))
		d := 0.5*(1+t) + 0.5*v*(1-t*t)*geluC*(1+3*0.044715*v*v)
		dx[i] += g[i] * d
	}
}

// SiLU: x·σ(x), σ(x) = 1/(1 + e^{−x}) through exp32.
func (c *cpuDevice) SiLU(out, in *Tensor) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := sameNumel("SiLU", out, in)
	a := c.args()
	a.s[0], a.s[1] = f32(out), f32(in)
	c.pool.For(n, c.pool.grain(n, 20), siluRows, a)
}

func siluRows(a *opArgs, _, lo, hi int) {
	o, x := a.s[0], a.s[1]
	for i := lo; i < hi; i++ {
		v := x[i]
		o[i] = v / (1 + exp32(-v))
	}
}

func (c *cpuDevice) SiLUBack(dIn, dOut, in *Tensor) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := sameNumel("SiLUBack", dIn, dOut, in)
	a := c.args()
	a.s[0], a.s[1], a.s[2] = f32(dIn), f32(dOut), f32(in)
	c.pool.For(n, c.pool.grain(n, 20), siluBackRows, a)
}

func siluBackRows(a *opArgs, _, lo, hi int) {
	dx, g, x := a.s[0], a.s[1], a.s[2]
	for i := lo; i < hi; i++ {
		v := x[i]
		s := 1 / (1 + exp32(-v))
		dx[i] += g[i] * s * (1 + v*(1-s))
	}
}

func shapeOf(t *Tensor) []int {
	if t == nil {
		return nil
	}
	return t.Shape
}
