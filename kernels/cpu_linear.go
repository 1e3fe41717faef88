package kernels

// Linear: out[M,N] = in[M,K]·w[N,K]ᵀ + b[N], through the packed GEMM split across the pool.
func (c *cpuDevice) Linear(out, in, w, b *Tensor) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !(len(w.Shape) == 2) {
		panicf("Linear: weight %v is not [N,K]", w.Shape)
	}
	N, K := w.Shape[0], w.Shape[1]
	if !(K > 0 && in.Numel()%K == 0) {
		panicf("Linear: input %v with weight %v", in.Shape, w.Shape)
	}
	M := in.Numel() / K
	if !(out.Numel() == M*N) {
		panicf("Linear: out %v for in %v and weight %v", out.Shape, in.Shape, w.Shape)
	}
	if !(b == nil || b.Numel() == N) {
		panicf("Linear: bias %v for N=%d", shapeOf(b), N)
	}
	o := f32(out)
	if b != nil {
		bb := f32(b)
		for m := 0; m < M; m++ {
			copy(o[m*N:(m+1)*N], bb)
		}
	} else {
		clear(o)
	}
	c.pgemm(M, N, K, 1, mat{f32(in), K, 1}, mat{f32(w), 1, K}, o, N)
}

// LinearBack: dIn += dOut·w, dW += dOutᵀ·in, dB += Σ_m dOut.
func (c *cpuDevice) LinearBack(dIn, dW, dB, dOut, in, w *Tensor) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !(len(w.Shape) == 2) {
		panicf("LinearBack: weight %v is not [N,K]", w.Shape)
	}
	N, K := w.Shape[0], w.Shape[1]
	if !(K > 0 && in.Numel()%K == 0) {
		panicf("LinearBack: input %v with weight %v", in.Shape, w.Shape)
	}
	M := in.Numel() / K
	if !(dOut.Numel() == M*N) {
		panicf("LinearBack: dOut %v for in %v and weight %v", dOut.Shape, in.Shape, w.Shape)
	}
	g := f32(dOut)
	if dIn != nil {
		sameNumel("LinearBack", in, dIn)
		c.pgemm(M, K, N, 1, mat{g, N, 1}, mat{f32(w), K, 1}, f32(dIn), K)
	}
	if dW != nil {
		sameNumel("LinearBack", w, dW)
		c.pgemm(N, K, M, 1, mat{g, 1, N}, mat{f32(in), K, 1}, f32(dW), K)
	}
	if dB != nil {
		if !(dB.Numel() == N) {
			panicf("LinearBack: dB %v for N=%d", dB.Shape, N)
		}
		a := c.args()
		a.s[0], a.s[1], a.i[0], a.i[1] = f32(dB), g, M, N
		c.pool.For(N, c.pool.grain(N, M), biasGradCols, a)
	}
}

// biasGradCols: dB[n] += Σ_m dOut[m, n] for the columns n in [lo, hi).
func biasGradCols(a *opArgs, _, lo, hi int) {
	db, g, M, N := a.s[0], a.s[1], a.i[0], a.i[1]
	for n := lo; n < hi; n++ {
		var s float64
		for m := 0; m < M; m++ {
			s += float64(g[m*N+n])
		}
		db[n] += float32(s)
	}
}
