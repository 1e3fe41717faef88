package kernels_test

import (
	"math"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

func TestPatchify(t *testing.T) {
	for _, dev := range devices() {
		r := newRand(t)
		B, C, F, H, W := 2, 3, 2, 4, 6
		h, w := H/2, W/2
		N := F * h * w
		x := randn(r, B*C*F*H*W, 1)

		// x [B,C,F,H,W] → [B,C,F,h,2,w,2] → (b, f, h, w, c, ph, pw) → [B·N, 4C].
		gr := newGraph(t)
		xn := gr.tensorParam([]int{B, C, F, H, W}, x)
		out := gr.reshape(gr.transpose(gr.reshape(xn, B, C, F, h, 2, w, 2), 0, 2, 3, 5, 1, 4, 6), B*N, 4*C)
		Rr := gr.cotangent(r, out)
		gr.run()

		X, O := tensorOf(dev, x, B, C, F, H, W), dev.Alloc(kernels.F32, B, N, 4*C)
		dev.Fill(O, float32(math.NaN()))
		dev.Patchify(O, X, B, C, F, H, W)
		checkRel(t, "Patchify out", host(dev, O), gr.value(out), 0)
		dX, dx0 := grad0(dev, r, B, C, F, H, W)
		dev.PatchifyBack(dX, tensorOf(dev, Rr, B, N, 4*C), B, C, F, H, W)
		checkRel(t, "Patchify dX", accumulated(dev, dX, dx0), gr.grad(0), 1e-7)
	}
}

func TestUnpatchify(t *testing.T) {
	for _, dev := range devices() {
		r := newRand(t)
		B, C, F, H, W := 2, 3, 3, 6, 4
		h, w := H/2, W/2
		N := F * h * w
		x := randn(r, B*N*4*C, 1)

		// in [B,N,4C] = [B,F,h,w,ph,pw,C] → (b, c, f, h, ph, w, pw) → [B·C·F·H, W].
		gr := newGraph(t)
		xn := gr.tensorParam([]int{B, N, 4 * C}, x)
		out := gr.reshape(gr.transpose(gr.reshape(xn, B, F, h, w, 2, 2, C), 0, 6, 1, 2, 4, 3, 5), B*C*F*H, W)
		Rr := gr.cotangent(r, out)
		gr.run()

		X, O := tensorOf(dev, x, B, N, 4*C), dev.Alloc(kernels.F32, B, C, F, H, W)
		dev.Fill(O, float32(math.NaN()))
		dev.Unpatchify(O, X, B, C, F, H, W)
		checkRel(t, "Unpatchify out", host(dev, O), gr.value(out), 0)
		dX, dx0 := grad0(dev, r, B, N, 4*C)
		dev.UnpatchifyBack(dX, tensorOf(dev, Rr, B, C, F, H, W), B, C, F, H, W)
		checkRel(t, "Unpatchify dIn", accumulated(dev, dX, dx0), gr.grad(0), 1e-7)
	}
}

func TestAddBroadcastAndMeanTokens(t *testing.T) {
	for _, dev := range devices() {
		r := newRand(t)
		M, K, D := 5, 6, 70
		a, b := randn(r, K*D, 1), randn(r, M*K*D, 1)
		gr := newGraph(t)
		an, bn := gr.param(1, K*D, a), gr.param(M, K*D, b)
		out := gr.add(gr.colBroadcast(an, M), bn)
		Rr := gr.cotangent(r, out)
		gr.run()
		A, Bt, O := tensorOf(dev, a, K, D), tensorOf(dev, b, M, K, D), dev.Alloc(kernels.F32, M, K, D)
		dev.AddBroadcast(O, A, Bt)
		checkRel(t, "AddBroadcast out", host(dev, O), gr.value(out), 1e-7)
		dA, da0 := grad0(dev, r, K, D)
		dB, db0 := grad0(dev, r, M, K, D)
		dev.AddBroadcastBack(dA, dB, tensorOf(dev, Rr, M, K, D))
		checkRel(t, "AddBroadcast dA", accumulated(dev, dA, da0), gr.grad(0), 1e-6)
		checkRel(t, "AddBroadcast dB", accumulated(dev, dB, db0), gr.grad(1), 1e-7)

		// MeanTokens: out = Avg·x with Avg[b, b·N + n] = 1/N.
		B, N := 3, 17
		x := randn(r, B*N*D, 1)
		avg := make([]float64, B*B*N)
		for bb := 0; bb < B; bb++ {
			for n := 0; n < N; n++ {
				avg[bb*B*N+bb*N+n] = 1 / float64(N)
			}
		}
		gr = newGraph(t)
		xn := gr.param(B*N, D, x)
		mean := gr.mul(gr.mat(B, B*N, avg), xn)
		Rr = gr.cotangent(r, mean)
		gr.run()
		X, Om := tensorOf(dev, x, B, N, D), dev.Alloc(kernels.F32, B, D)
		dev.MeanTokens(Om, X)
		checkRel(t, "MeanTokens out", host(dev, Om), gr.value(mean), 1e-7)
		dX, dx0 := grad0(dev, r, B, N, D)
		dev.MeanTokensBack(dX, tensorOf(dev, Rr, B, D))
		checkRel(t, "MeanTokens dIn", accumulated(dev, dX, dx0), gr.grad(0), 1e-6) // small grads (R/N) over start values of 0.5
	}
}

// Forward-only ops against float64 loops.

func TestSinusoid(t *testing.T) {
	dev := kernels.CPU()
	r := newRand(t)
	M, half := 7, 128
	ts := make([]float32, M)
	for i := range ts {
		ts[i] = float32(r.Float64() * 1000)
	}
	ts[0], ts[1] = 0, 1000
	want := make([]float64, M*2*half)
	for m, tv := range ts {
		for i := 0; i < half; i++ { // wan_ref.py: outer(t, 10000^(−arange(half)/half)), [cos, sin]
			a := float64(tv) * math.Pow(10000, -float64(i)/float64(half))
			want[m*2*half+i], want[m*2*half+half+i] = math.Cos(a), math.Sin(a)
		}
	}
	O := dev.Alloc(kernels.F32, M, 2*half)
	dev.Sinusoid(O, tensorOf(dev, ts, M), half)
	checkRel(t, "Sinusoid", host(dev, O), want, 1e-7)
}

func TestElementwise(t *testing.T) {
	for _, dev := range devices() {
		r := newRand(t)
		B, C, F, HW := 2, 3, 4, 50
		n := B * C * F * HW
		x, y := randn(r, n, 1), randn(r, n, 1)
		X, Y, O := tensorOf(dev, x, n), tensorOf(dev, y, n), dev.Alloc(kernels.F32, n)
		want := make([]float64, n)

		dev.Add(O, X, Y)
		for i := range want {
			want[i] = float64(x[i]) + float64(y[i])
		}
		checkRel(t, "Add", host(dev, O), want, 1e-7)

		dev.Copy(O, Y)
		dev.Axpy(O, 0.37, X)
		for i := range want {
			want[i] = float64(y[i]) + float64(float32(0.37))*float64(x[i])
		}
		checkRel(t, "Axpy", host(dev, O), want, 1e-7)

		dev.Scale(O, -1.5)
		for i := range want {
			want[i] *= -1.5
		}
		checkRel(t, "Scale", host(dev, O), want, 1e-7)

		a, b := []float32{0.3, -1.2}, []float32{2, 0.5}
		dev.Combine(O, X, Y, a, b)
		for i := range want {
			g := i / (n / 2)
			want[i] = float64(a[g])*float64(x[i]) + float64(b[g])*float64(y[i])
		}
		checkRel(t, "Combine", host(dev, O), want, 1e-7)

		af, bf := randn(r, B*F, 1), randn(r, B*F, 1)
		dev.CombineFrames(O, X, Y, af, bf, B, C, F, HW)
		for bb := 0; bb < B; bb++ {
			for c := 0; c < C; c++ {
				for f := 0; f < F; f++ {
					for p := 0; p < HW; p++ {
						i := ((bb*C+c)*F+f)*HW + p
						want[i] = float64(af[bb*F+f])*float64(x[i]) + float64(bf[bb*F+f])*float64(y[i])
					}
				}
			}
		}
		checkRel(t, "CombineFrames", host(dev, O), want, 1e-7)

		var dot float64
		for i := range x {
			dot += float64(x[i]) * float64(y[i])
		}
		if got := dev.Dot(X, Y); math.Abs(got-dot) > 1e-12*math.Sqrt(float64(n)) {
			t.Errorf("Dot = %.15g, want %.15g", got, dot)
		}
		G := 6
		sums := make([]float64, G)
		dev.SumAbsGroups(sums, X)
		for g := 0; g < G; g++ {
			var s float64
			for _, v := range x[g*n/G : (g+1)*n/G] {
				s += math.Abs(float64(v))
			}
			if math.Abs(sums[g]-s) > 1e-12*s {
				t.Errorf("SumAbsGroups[%d] = %.15g, want %.15g", g, sums[g], s)
			}
		}

		dev.Fill(O, 2.5)
		dev.Zero(O.View(0, 10))
		got := host(dev, O)
		if got[9] != 0 || got[10] != 2.5 {
			t.Errorf("Fill/Zero of a view: %v", got[8:12])
		}
	}
}

// TestAdamW runs several steps against PyTorch's AdamW formula in float64 (decoupled decay
// w −= lr·wd·w, then w −= lr·m̂/(√v̂ + eps)), then EMA against its formula.
func TestAdamWAndEMA(t *testing.T) {
	for _, dev := range devices() {
		r := newRand(t)
		n := 1000
		const lr, b1, b2, eps, wd = 0.05, 0.9, 0.999, 1e-8, 0.1
		w := randn(r, n, 1)
		W, Mt, Vt, Gt := tensorOf(dev, w, n), dev.Alloc(kernels.F32, n), dev.Alloc(kernels.F32, n), dev.Alloc(kernels.F32, n)
		w64, m64, v64 := to64(w), make([]float64, n), make([]float64, n)
		for step := 1; step <= 5; step++ {
			g := randn(r, n, 0.1)
			if step == 3 {
				g[0] = 0 // a zero gradient: only decay moves w
			}
			dev.FromHost(Gt, g)
			dev.AdamW(W, Gt, Mt, Vt, lr, b1, b2, eps, wd, step)
			// the fp32 hyper-parameters as the op receives them
			l, bb1, bb2, e, d := float64(float32(lr)), float64(float32(b1)), float64(float32(b2)), float64(float32(eps)), float64(float32(wd))
			for i := range w64 {
				gi := float64(g[i])
				w64[i] -= l * d * w64[i]
				m64[i] = bb1*m64[i] + (1-bb1)*gi
				v64[i] = bb2*v64[i] + (1-bb2)*gi*gi
				mh := m64[i] / (1 - math.Pow(bb1, float64(step)))
				vh := v64[i] / (1 - math.Pow(bb2, float64(step)))
				w64[i] -= l * mh / (math.Sqrt(vh) + e)
			}
		}
		dw, wantDw := host(dev, W), make([]float64, n)
		for i := range dw {
			dw[i] -= w[i]
			wantDw[i] = w64[i] - float64(w[i])
		}
		checkRel(t, "AdamW Δw", dw, wantDw, 5e-6)
		checkRel(t, "AdamW m", host(dev, Mt), m64, 1e-6)
		checkRel(t, "AdamW v", host(dev, Vt), v64, 1e-6)

		ema := randn(r, n, 1)
		E := tensorOf(dev, ema, n)
		const decay = 0.99
		dev.EMA(E, W, decay)
		want := make([]float64, n)
		wf := host(dev, W)
		dd := float64(float32(decay))
		for i := range want {
			want[i] = dd*float64(ema[i]) + (1-dd)*float64(wf[i])
		}
		checkRel(t, "EMA", host(dev, E), want, 1e-7)
	}
}
