package kernels

import (
	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"
)

// Linear: out[M,N] = in[M,K]·w[N,K]ᵀ + b[N], through gonum's Sgemm.
func (c *cpuDevice) Linear(out, in, w, b *Tensor) {
	must(len(w.Shape) == 2, "Linear: weight %v is not [N,K]", w.Shape)
	N, K := w.Shape[0], w.Shape[1]
	must(in.Numel()%K == 0, "Linear: input %v with weight %v", in.Shape, w.Shape)
	M := in.Numel() / K
	must(out.Numel() == M*N, "Linear: out %v for in %v and weight %v", out.Shape, in.Shape, w.Shape)
	must(b == nil || b.Numel() == N, "Linear: bias %v for N=%d", shapeOf(b), N)
	o := f32(out)
	var beta float32
	if b != nil {
		bb := f32(b)
		for m := 0; m < M; m++ {
			copy(o[m*N:(m+1)*N], bb)
		}
		beta = 1
	}
	if M == 0 || N == 0 || K == 0 {
		return
	}
	blas32.Gemm(blas.NoTrans, blas.Trans, 1,
		blas32.General{Rows: M, Cols: K, Stride: K, Data: f32(in)},
		blas32.General{Rows: N, Cols: K, Stride: K, Data: f32(w)},
		beta, blas32.General{Rows: M, Cols: N, Stride: N, Data: o})
}

// LinearBack: dIn += dOut·w, dW += dOutᵀ·in, dB += Σ_m dOut.
func (c *cpuDevice) LinearBack(dIn, dW, dB, dOut, in, w *Tensor) {
	must(len(w.Shape) == 2, "LinearBack: weight %v is not [N,K]", w.Shape)
	N, K := w.Shape[0], w.Shape[1]
	must(in.Numel()%K == 0, "LinearBack: input %v with weight %v", in.Shape, w.Shape)
	M := in.Numel() / K
	must(dOut.Numel() == M*N, "LinearBack: dOut %v for in %v and weight %v", dOut.Shape, in.Shape, w.Shape)
	if M == 0 || N == 0 || K == 0 {
		return
	}
	g := blas32.General{Rows: M, Cols: N, Stride: N, Data: f32(dOut)}
	if dIn != nil {
		sameNumel("LinearBack", in, dIn)
		blas32.Gemm(blas.NoTrans, blas.NoTrans, 1, g,
			blas32.General{Rows: N, Cols: K, Stride: K, Data: f32(w)},
			1, blas32.General{Rows: M, Cols: K, Stride: K, Data: f32(dIn)})
	}
	if dW != nil {
		sameNumel("LinearBack", w, dW)
		blas32.Gemm(blas.Trans, blas.NoTrans, 1, g,
			blas32.General{Rows: M, Cols: K, Stride: K, Data: f32(in)},
			1, blas32.General{Rows: N, Cols: K, Stride: K, Data: f32(dW)})
	}
	if dB != nil {
		must(dB.Numel() == N, "LinearBack: dB %v for N=%d", dB.Shape, N)
		db, gg := f32(dB), f32(dOut)
		c.pool.For(N, c.pool.grain(N, M), func(_, lo, hi int) {
			for n := lo; n < hi; n++ {
				var s float64
				for m := 0; m < M; m++ {
					s += float64(gg[m*N+n])
				}
				db[n] += float32(s)
			}
		})
	}
}
