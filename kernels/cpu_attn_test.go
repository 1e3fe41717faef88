package kernels_test

import (
	"fmt"
	"math"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// ropeAngles is WanRef.rope (shared/reference/wan_ref.py) written out: per token of the (f, h, w)
// grid, hd/2 angles = [frame axis, row axis, col axis], axis real dims
// [hd − 4⌊hd/6⌋, 2⌊hd/6⌋, 2⌊hd/6⌋], pair j of an axis with dd real dims turning by pos/10000^(2j/dd).
func ropeAngles(hd, frames, rows, cols, frame0 int) [][]float64 {
	dims := []int{hd - 4*(hd/6), 2 * (hd / 6), 2 * (hd / 6)}
	var out [][]float64
	for f := 0; f < frames; f++ {
		for i := 0; i < rows; i++ {
			for j := 0; j < cols; j++ {
				var a []float64
				for ax, pos := range []int{frame0 + f, i, j} {
					dd := dims[ax]
					for p := 0; p < dd; p += 2 {
						a = append(a, float64(pos)/math.Pow(10000, float64(p)/float64(dd)))
					}
				}
				out = append(out, a)
			}
		}
	}
	return out
}

func TestRoPE(t *testing.T) {
	for _, dev := range devices() {
		for _, hd := range []int{16, 20, 12, 32, 64} { // pair splits (4,2,2), (4,3,3), (2,2,2); tiny (6,5,5), small (12,10,10)
			r := newRand(t)
			B, H, frames, rows, cols, frame0 := 2, 3, 3, 2, 4, 5
			N := frames * rows * cols
			x := randn(r, B*N*H*hd, 1)
			ang := ropeAngles(hd, frames, rows, cols, frame0)

			// out = x ⊙ C + (x·P) ⊙ S: P swaps each pair, C = [cos, cos], S = [−sin, +sin] per pair;
			// cos and sin rounded to fp32 as the reference's tables are.
			R := B * N * H
			C, S, P := make([]float64, R*hd), make([]float64, R*hd), make([]float64, hd*hd)
			for row := 0; row < R; row++ {
				n := (row / H) % N
				for p := 0; p < hd/2; p++ {
					c, s := float64(float32(math.Cos(ang[n][p]))), float64(float32(math.Sin(ang[n][p])))
					C[row*hd+2*p], C[row*hd+2*p+1] = c, c
					S[row*hd+2*p], S[row*hd+2*p+1] = -s, s
				}
			}
			for p := 0; p < hd/2; p++ {
				P[(2*p+1)*hd+2*p], P[(2*p)*hd+2*p+1] = 1, 1
			}
			gr := newGraph(t)
			xn := gr.param(R, hd, x)
			out := gr.add(gr.hmul(xn, gr.mat(R, hd, C)), gr.hmul(gr.mul(xn, gr.mat(hd, hd, P)), gr.mat(R, hd, S)))
			Rr := gr.cotangent(r, out)
			gr.run()

			X := tensorOf(dev, x, B, N, H, hd)
			dev.RoPE(X, frames, rows, cols, frame0)
			checkRel(t, fmt.Sprintf("RoPE hd=%d out", hd), host(dev, X), gr.value(out), 2e-7)
			dX := tensorOf(dev, Rr, B, N, H, hd)
			dev.RoPEBack(dX, frames, rows, cols, frame0)
			checkRel(t, fmt.Sprintf("RoPE hd=%d back", hd), host(dev, dX), gr.grad(0), 2e-7)
		}
	}
}

type attnCase struct {
	name                 string
	B, H, hd, Nq, Nk     int
	chunkTokens, qOffset int
	qScale               float64 // q ~ N(0, qScale²), k, v ~ N(0, 1): scores have std ≈ qScale
	tol, gradTol         float64
}

func TestAttention(t *testing.T) {
	cases := []attnCase{
		{"full", 2, 2, 8, 13, 13, 0, 0, 1, 1e-6, 5e-6},
		{"block-causal", 2, 3, 8, 12, 12, 4, 0, 1, 1e-6, 5e-6},
		{"kv-cache offset", 1, 2, 8, 4, 10, 4, 6, 1, 1e-6, 5e-6},
		{"cross", 2, 2, 6, 11, 7, 0, 0, 1, 1e-6, 5e-6},
		{"sharp", 2, 2, 8, 9, 9, 3, 0, 4, 2e-6, 5e-6},
		// several 64-query blocks (one partial), key panels of 16 with a partial one, chunk edges
		// inside blocks.
		{"multi-block causal", 1, 2, 12, 150, 150, 20, 0, 1, 1e-6, 5e-6},
		{"multi-block cache", 1, 1, 16, 70, 133, 7, 63, 1, 1e-6, 5e-6},
		// Scores up to ~±150: exp overflows fp32 without the max shift. The forward must stay exact;
		// the gradient of a saturated softmax is a small difference of large terms (dP − rowsum(dO⊙O)),
		// ill-conditioned in fp32 for any implementation, so only a loose bound is meaningful there.
		{"huge logits", 1, 2, 8, 9, 9, 3, 0, 40, 5e-6, 1e-2},
	}
	for _, dev := range devices() {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) { testAttention(t, dev, tc) })
		}
	}
}

func testAttention(t *testing.T, dev kernels.Device, tc attnCase) {
	r := newRand(t)
	B, H, hd, Nq, Nk := tc.B, tc.H, tc.hd, tc.Nq, tc.Nk
	q, k, v := randn(r, B*Nq*H*hd, tc.qScale), randn(r, B*Nk*H*hd, 1), randn(r, B*Nk*H*hd, 1)
	// head (b, h) of a [B, N, H, hd] tensor as an [N, hd] matrix, and back.
	head := func(x []float32, N, b, h int) []float32 {
		m := make([]float32, N*hd)
		for n := 0; n < N; n++ {
			copy(m[n*hd:(n+1)*hd], x[((b*N+n)*H+h)*hd:])
		}
		return m
	}
	put := func(dst []float64, m []float64, N, b, h int) {
		for n := 0; n < N; n++ {
			copy(dst[((b*N+n)*H+h)*hd:((b*N+n)*H+h+1)*hd], m[n*hd:(n+1)*hd])
		}
	}
	// mask bias: 0 where key j is visible to query i, −1e9 elsewhere (docs/architecture.md / the contract:
	// chunk(j) ≤ chunk(qOffset + i)).
	bias := make([]float64, Nq*Nk)
	if tc.chunkTokens > 0 {
		for i := 0; i < Nq; i++ {
			for j := 0; j < Nk; j++ {
				if j/tc.chunkTokens > (tc.qOffset+i)/tc.chunkTokens {
					bias[i*Nk+j] = -1e9
				}
			}
		}
	}
	gr := newGraph(t)
	outs, lses := make([]any, B*H), make([]any, B*H)
	for b := 0; b < B; b++ {
		for h := 0; h < H; h++ {
			Q, K, V := gr.param(Nq, hd, head(q, Nq, b, h)), gr.param(Nk, hd, head(k, Nk, b, h)), gr.param(Nk, hd, head(v, Nk, b, h))
			s := gr.add(gr.hmul(gr.mul(Q, gr.must(G_T(K))), gr.fill(Nq, Nk, 1/math.Sqrt(float64(hd)))), gr.mat(Nq, Nk, bias)) // [Nq,Nk]
			// scores reach ~±150 in the huge-logits case: exp is still finite in float64.
			e := gr.unary(G_Exp, s)                                      // [Nq,Nk]
			z := gr.mul(e, gr.fill(Nk, 1, 1))                            // [Nq,1]
			p := gr.hmul(e, gr.rowBroadcast(gr.unary(G_Inverse, z), Nk)) // [Nq,Nk]
			o := gr.mul(p, V)                                            // [Nq,hd]
			lse := gr.unary(G_Log, z)                                    // [Nq,1]
			gr.watch(lse)
			outs[b*H+h], lses[b*H+h] = o, lse
		}
	}
	var Rs [][]float32
	for _, o := range outs {
		Rs = append(Rs, gr.cotangent(r, o.(*gNode)))
	}
	gr.run()

	wantO, wantL := make([]float64, B*Nq*H*hd), make([]float64, B*H*Nq)
	wantQ, wantK, wantV := make([]float64, len(q)), make([]float64, len(k)), make([]float64, len(v))
	R := make([]float32, len(q))
	for b := 0; b < B; b++ {
		for h := 0; h < H; h++ {
			i := b*H + h
			put(wantO, gr.value(outs[i].(*gNode)), Nq, b, h)
			copy(wantL[i*Nq:(i+1)*Nq], gr.value(lses[i].(*gNode)))
			put(wantQ, gr.grad(3*i), Nq, b, h)
			put(wantK, gr.grad(3*i+1), Nk, b, h)
			put(wantV, gr.grad(3*i+2), Nk, b, h)
			r64 := to64(Rs[i])
			rr := make([]float64, len(R))
			put(rr, r64, Nq, b, h)
			for n := 0; n < Nq; n++ {
				for e := 0; e < hd; e++ {
					R[((b*Nq+n)*H+h)*hd+e] = float32(rr[((b*Nq+n)*H+h)*hd+e])
				}
			}
		}
	}

	Q, K, V := tensorOf(dev, q, B, Nq, H, hd), tensorOf(dev, k, B, Nk, H, hd), tensorOf(dev, v, B, Nk, H, hd)
	O, L := dev.Alloc(kernels.F32, B, Nq, H, hd), dev.Alloc(kernels.F32, B, H, Nq)
	dev.Fill(O, float32(math.NaN()))
	dev.Fill(L, float32(math.NaN()))
	dev.Attention(O, L, Q, K, V, tc.chunkTokens, tc.qOffset)
	checkRel(t, "Attention out", host(dev, O), wantO, tc.tol)
	checkRel(t, "Attention lse", host(dev, L), wantL, tc.tol)

	dQ, dq0 := grad0(dev, r, B, Nq, H, hd)
	dK, dk0 := grad0(dev, r, B, Nk, H, hd)
	dV, dv0 := grad0(dev, r, B, Nk, H, hd)
	dev.AttentionBack(dQ, dK, dV, tensorOf(dev, R, B, Nq, H, hd), O, L, Q, K, V, tc.chunkTokens, tc.qOffset)
	checkRel(t, "Attention dQ", accumulated(dev, dQ, dq0), wantQ, tc.gradTol)
	checkRel(t, "Attention dK", accumulated(dev, dK, dk0), wantK, tc.gradTol)
	checkRel(t, "Attention dV", accumulated(dev, dV, dv0), wantV, tc.gradTol)

	// nil gradients are skipped.
	dev.AttentionBack(nil, nil, dV, tensorOf(dev, R, B, Nq, H, hd), O, L, Q, K, V, tc.chunkTokens, tc.qOffset)
}
