package kernels_test

import (
	"math"
	"math/rand"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// Every forward is compared with gorgonia's float64 forward and every backward with gorgonia's
// symbolic gradient of Σ out ⊙ R for a random cotangent R, on fresh random inputs. Gradients start
// from random values so that "accumulate, don't overwrite" is checked too. The tolerances are
// relative L2 errors of fp32 kernels against a float64 reference: a few ulps of fp32 (6e-8) times
// the depth of the sums involved.

// devices under test: one worker (sequential paths) and three workers splitting every op into the
// smallest chunks (the parallel paths, uneven on purpose).
func devices() []kernels.Device { return []kernels.Device{kernels.NewCPU(1), kernels.NewCPUFine(3)} }

// grad0 allocates a gradient tensor pre-filled with random values; returns it and the start values.
func grad0(dev kernels.Device, r *rand.Rand, shape ...int) (*kernels.Tensor, []float32) {
	g0 := randn(r, kernels.Numel(shape), 0.5)
	return tensorOf(dev, g0, shape...), g0
}

func TestLinear(t *testing.T) {
	for _, dev := range devices() {
		for _, bias := range []bool{true, false} {
			r := newRand(t)
			M, K, N := 37, 29, 23
			x, w, b := randn(r, M*K, 1), randn(r, N*K, 0.3), randn(r, N, 1)

			gr := newGraph(t)
			xn, wn := gr.param(M, K, x), gr.param(N, K, w)
			out := gr.mul(xn, gr.must(G_T(wn)))
			var bn = xn
			if bias {
				bn = gr.param(1, N, b)
				out = gr.add(out, gr.colBroadcast(bn, M))
			}
			R := gr.cotangent(r, out)
			gr.run()

			X, W := tensorOf(dev, x, M, K), tensorOf(dev, w, N, K)
			var B *kernels.Tensor
			if bias {
				B = tensorOf(dev, b, N)
			}
			O := dev.Alloc(kernels.F32, M, N)
			dev.Fill(O, float32(math.NaN())) // every element must be written
			dev.Linear(O, X, W, B)
			checkRel(t, "Linear out", host(dev, O), gr.value(out), 1e-6)

			dX, dx0 := grad0(dev, r, M, K)
			dW, dw0 := grad0(dev, r, N, K)
			dB, db0 := grad0(dev, r, N)
			if !bias {
				dB = nil
			}
			dev.LinearBack(dX, dW, dB, tensorOf(dev, R, M, N), X, W)
			checkRel(t, "Linear dIn", accumulated(dev, dX, dx0), gr.grad(0), 1e-6)
			checkRel(t, "Linear dW", accumulated(dev, dW, dw0), gr.grad(1), 1e-6)
			if bias {
				checkRel(t, "Linear dB", accumulated(dev, dB, db0), gr.grad(2), 1e-6)
			}
		}
	}
}

func TestLayerNorm(t *testing.T) {
	for _, dev := range devices() {
		for _, affine := range []bool{true, false} {
			r := newRand(t)
			R, D := 19, 70
			const eps = 1e-6
			x := randn(r, R*D, 2)
			for i := range x {
				x[i] += 3 // a mean far from 0: the centering matters
			}
			w, b := randn(r, D, 1), randn(r, D, 1)

			gr := newGraph(t)
			xn := gr.param(R, D, x)
			mu := gr.rowMean(xn, D)                                  // [R,1]
			xc := gr.sub(xn, gr.rowBroadcast(mu, D))                 // [R,D]
			v := gr.rowMean(gr.unary(G_Square, xc), D)               // [R,1]
			rs := gr.unary(G_InvSqrt, gr.add(v, gr.fill(R, 1, eps))) // [R,1]
			out := gr.hmul(xc, gr.rowBroadcast(rs, D))               // [R,D]
			if affine {
				wn, bn := gr.param(1, D, w), gr.param(1, D, b)
				out = gr.add(gr.hmul(out, gr.colBroadcast(wn, R)), gr.colBroadcast(bn, R))
			}
			gr.watch(mu)
			gr.watch(rs)
			Rr := gr.cotangent(r, out)
			gr.run()

			X := tensorOf(dev, x, R, D)
			var W, B *kernels.Tensor
			if affine {
				W, B = tensorOf(dev, w, D), tensorOf(dev, b, D)
			}
			O, M, S := dev.Alloc(kernels.F32, R, D), dev.Alloc(kernels.F32, R), dev.Alloc(kernels.F32, R)
			dev.LayerNorm(O, M, S, X, W, B, eps)
			checkRel(t, "LayerNorm out", host(dev, O), gr.value(out), 1e-6)
			checkRel(t, "LayerNorm mean", host(dev, M), gr.value(mu), 2e-7)
			checkRel(t, "LayerNorm rstd", host(dev, S), gr.value(rs), 2e-7)

			dX, dx0 := grad0(dev, r, R, D)
			dW, dw0 := grad0(dev, r, D)
			dB, db0 := grad0(dev, r, D)
			if !affine {
				dW, dB = nil, nil
			}
			dev.LayerNormBack(dX, dW, dB, tensorOf(dev, Rr, R, D), X, M, S, W)
			checkRel(t, "LayerNorm dIn", accumulated(dev, dX, dx0), gr.grad(0), 1e-6)
			if affine {
				checkRel(t, "LayerNorm dW", accumulated(dev, dW, dw0), gr.grad(1), 1e-6)
				checkRel(t, "LayerNorm dB", accumulated(dev, dB, db0), gr.grad(2), 1e-6)
			}
		}
	}
}

func TestRMSNorm(t *testing.T) {
	for _, dev := range devices() {
		for _, affine := range []bool{true, false} {
			r := newRand(t)
			R, D := 21, 70
			const eps = 1e-6
			x, w := randn(r, R*D, 2), randn(r, D, 1)

			gr := newGraph(t)
			xn := gr.param(R, D, x)
			rs := gr.unary(G_InvSqrt, gr.add(gr.rowMean(gr.unary(G_Square, xn), D), gr.fill(R, 1, eps))) // [R,1]
			out := gr.hmul(xn, gr.rowBroadcast(rs, D))                                                   // [R,D]
			if affine {
				out = gr.hmul(out, gr.colBroadcast(gr.param(1, D, w), R))
			}
			gr.watch(rs)
			Rr := gr.cotangent(r, out)
			gr.run()

			X := tensorOf(dev, x, R, D)
			var W *kernels.Tensor
			if affine {
				W = tensorOf(dev, w, D)
			}
			O, S := dev.Alloc(kernels.F32, R, D), dev.Alloc(kernels.F32, R)
			dev.RMSNorm(O, S, X, W, eps)
			checkRel(t, "RMSNorm out", host(dev, O), gr.value(out), 1e-6)
			checkRel(t, "RMSNorm rstd", host(dev, S), gr.value(rs), 2e-7)

			dX, dx0 := grad0(dev, r, R, D)
			dW, dw0 := grad0(dev, r, D)
			if !affine {
				dW = nil
			}
			dev.RMSNormBack(dX, dW, tensorOf(dev, Rr, R, D), X, S, W)
			checkRel(t, "RMSNorm dIn", accumulated(dev, dX, dx0), gr.grad(0), 1e-6)
			if affine {
				checkRel(t, "RMSNorm dW", accumulated(dev, dW, dw0), gr.grad(1), 1e-6)
			}
		}
	}
}

// modRow is the row of mod [B,F,K,D] (as a [B·F·K, D] matrix) that token t of x [B·N, D] uses.
func modRow(t, N, F, K, T, idx int) int {
	b, n := t/N, t%N
	return (b*F+n/T)*K + idx
}

func TestModulate(t *testing.T) {
	for _, dev := range devices() {
		r := newRand(t)
		B, F, T, K, D := 2, 3, 5, 6, 70
		N := F * T
		iShift, iScale := 3, 4
		x, mod := randn(r, B*N*D, 1), randn(r, B*F*K*D, 0.5)

		gr := newGraph(t)
		xn, mn := gr.param(B*N, D, x), gr.param(B*F*K, D, mod)
		shift := gr.mul(gr.sel(B*N, B*F*K, func(t int) int { return modRow(t, N, F, K, T, iShift) }), mn) // [B·N, D]
		scale := gr.mul(gr.sel(B*N, B*F*K, func(t int) int { return modRow(t, N, F, K, T, iScale) }), mn) // [B·N, D]
		out := gr.add(gr.hmul(xn, gr.add(gr.fill(B*N, D, 1), scale)), shift)
		Rr := gr.cotangent(r, out)
		gr.run()

		X, Mo := tensorOf(dev, x, B, N, D), tensorOf(dev, mod, B, F, K, D)
		O := dev.Alloc(kernels.F32, B, N, D)
		dev.Modulate(O, X, Mo, iShift, iScale, T)
		checkRel(t, "Modulate out", host(dev, O), gr.value(out), 2e-7)

		dX, dx0 := grad0(dev, r, B, N, D)
		dM, dm0 := grad0(dev, r, B, F, K, D)
		dev.ModulateBack(dX, dM, tensorOf(dev, Rr, B, N, D), X, Mo, iShift, iScale, T)
		checkRel(t, "Modulate dX", accumulated(dev, dX, dx0), gr.grad(0), 2e-7)
		checkRel(t, "Modulate dMod", accumulated(dev, dM, dm0), gr.grad(1), 1e-6)
	}
}

func TestGateAdd(t *testing.T) {
	for _, dev := range devices() {
		r := newRand(t)
		B, F, T, K, D := 2, 3, 4, 6, 70
		N := F * T
		iGate := 5
		x, y, mod := randn(r, B*N*D, 1), randn(r, B*N*D, 1), randn(r, B*F*K*D, 0.5)

		gr := newGraph(t)
		yn, mn := gr.param(B*N, D, y), gr.param(B*F*K, D, mod)
		gate := gr.mul(gr.sel(B*N, B*F*K, func(t int) int { return modRow(t, N, F, K, T, iGate) }), mn)
		out := gr.add(gr.mat(B*N, D, to64(x)), gr.hmul(yn, gate))
		Rr := gr.cotangent(r, out)
		gr.run()

		X, Y, Mo := tensorOf(dev, x, B, N, D), tensorOf(dev, y, B, N, D), tensorOf(dev, mod, B, F, K, D)
		dev.GateAdd(X, Y, Mo, iGate, T)
		checkRel(t, "GateAdd x", host(dev, X), gr.value(out), 2e-7)

		dY, dy0 := grad0(dev, r, B, N, D)
		dM, dm0 := grad0(dev, r, B, F, K, D)
		dev.GateAddBack(dY, dM, tensorOf(dev, Rr, B, N, D), Y, Mo, iGate, T)
		checkRel(t, "GateAdd dY", accumulated(dev, dY, dy0), gr.grad(0), 2e-7)
		checkRel(t, "GateAdd dMod", accumulated(dev, dM, dm0), gr.grad(1), 1e-6)
	}
}

func TestActivations(t *testing.T) {
	for _, dev := range devices() {
		for _, name := range []string{"GELU", "SiLU"} {
			r := newRand(t)
			R, C := 33, 50
			x := randn(r, R*C, 2.5)

			gr := newGraph(t)
			xn := gr.param(R, C, x)
			var out = xn
			if name == "GELU" { // 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
				inner := gr.hmul(gr.fill(R, C, math.Sqrt(2/math.Pi)), gr.add(xn, gr.hmul(gr.fill(R, C, 0.044715), gr.unary(G_Cube, xn))))
				out = gr.hmul(gr.hmul(gr.fill(R, C, 0.5), xn), gr.add(gr.fill(R, C, 1), gr.unary(G_Tanh, inner)))
			} else {
				out = gr.hmul(xn, gr.unary(G_Sigmoid, xn))
			}
			Rr := gr.cotangent(r, out)
			gr.run()

			X, O := tensorOf(dev, x, R, C), dev.Alloc(kernels.F32, R, C)
			dX, dx0 := grad0(dev, r, R, C)
			if name == "GELU" {
				dev.GELU(O, X)
				dev.GELUBack(dX, tensorOf(dev, Rr, R, C), X)
			} else {
				dev.SiLU(O, X)
				dev.SiLUBack(dX, tensorOf(dev, Rr, R, C), X)
			}
			checkRel(t, name+" out", host(dev, O), gr.value(out), 2e-7)
			checkRel(t, name+" dIn", accumulated(dev, dX, dx0), gr.grad(0), 1e-6)

			// out may alias in.
			if name == "GELU" {
				dev.GELU(X, X)
			} else {
				dev.SiLU(X, X)
			}
			checkRel(t, name+" in place", host(dev, X), gr.value(out), 2e-7)
		}
	}
}
