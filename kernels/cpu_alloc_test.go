package kernels_test

import (
	"math/rand"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// TestNoAllocs: after a first call (scratch grows), every op allocates nothing, on the sequential
// and the split paths.
func TestNoAllocs(t *testing.T) {
	for _, dev := range devices() {
		r := rand.New(rand.NewSource(1))
		B, F, T, D, H, L, C := 1, 2, 16, 32, 2, 8, 4
		N, hd := F*T, D/H
		x, y, o := rnd(dev, r, 1, B, N, D), rnd(dev, r, 1, B, N, D), dev.Alloc(kernels.F32, B, N, D)
		w, bias := rnd(dev, r, 1, D, D), rnd(dev, r, 1, D)
		mean, rstd := dev.Alloc(kernels.F32, B*N), dev.Alloc(kernels.F32, B*N)
		mod, dmod := rnd(dev, r, 1, B, F, 6, D), dev.Alloc(kernels.F32, B, F, 6, D)
		q, k, v := rnd(dev, r, 1, B, N, H, hd), rnd(dev, r, 1, B, N, H, hd), rnd(dev, r, 1, B, N, H, hd)
		kc, vc := rnd(dev, r, 1, B, L, H, hd), rnd(dev, r, 1, B, L, H, hd)
		ao, lse, dq, dk, dv := dev.Alloc(kernels.F32, B, N, H, hd), dev.Alloc(kernels.F32, B, H, N), dev.Alloc(kernels.F32, B, N, H, hd), dev.Alloc(kernels.F32, B, N, H, hd), dev.Alloc(kernels.F32, B, N, H, hd)
		dkc, dvc := dev.Alloc(kernels.F32, B, L, H, hd), dev.Alloc(kernels.F32, B, L, H, hd)
		vid, tok := rnd(dev, r, 1, B, C, F, 8, 8), dev.Alloc(kernels.F32, B, F*16, 4*C)
		ts, emb := rnd(dev, r, 100, 3), dev.Alloc(kernels.F32, 3, 16)
		mt := dev.Alloc(kernels.F32, B, D)
		coef := []float32{0.5, 2}
		sums := make([]float64, 2)
		keys := []uint64{7, 8} // RandnPhilox: two equal slabs of o
		ops := map[string]func(){
			"Linear":         func() { dev.Linear(o, x, w, bias) },
			"LinearBack":     func() { dev.LinearBack(y, w, bias, o, x, w) },
			"LayerNorm":      func() { dev.LayerNorm(o, mean, rstd, x, bias, bias, 1e-6) },
			"LayerNormBack":  func() { dev.LayerNormBack(y, bias, bias, o, x, mean, rstd, bias) },
			"RMSNorm":        func() { dev.RMSNorm(o, rstd, x, bias, 1e-6) },
			"RMSNormBack":    func() { dev.RMSNormBack(y, bias, o, x, rstd, bias) },
			"Modulate":       func() { dev.Modulate(o, x, mod, 0, 1, T) },
			"ModulateBack":   func() { dev.ModulateBack(y, dmod, o, x, mod, 0, 1, T) },
			"GateAdd":        func() { dev.GateAdd(o, x, mod, 2, T) },
			"GateAddBack":    func() { dev.GateAddBack(y, dmod, o, x, mod, 2, T) },
			"GELU":           func() { dev.GELU(o, x) },
			"GELUBack":       func() { dev.GELUBack(y, o, x) },
			"SiLU":           func() { dev.SiLU(o, x) },
			"SiLUBack":       func() { dev.SiLUBack(y, o, x) },
			"RoPE":           func() { dev.RoPE(q, F, 4, 4, 3); dev.RoPEBack(q, F, 4, 4, 3) },
			"Attention":      func() { dev.Attention(ao, lse, q, k, v, T, 0) },
			"AttentionBack":  func() { dev.AttentionBack(dq, dk, dv, ao, ao, lse, q, k, v, T, 0) },
			"CrossAttention": func() { dev.Attention(ao, lse, q, kc, vc, 0, 0) },
			"CrossAttnBack":  func() { dev.AttentionBack(dq, dkc, dvc, ao, ao, lse, q, kc, vc, 0, 0) },
			"Patchify":       func() { dev.Patchify(tok, vid, B, C, F, 8, 8); dev.PatchifyBack(vid, tok, B, C, F, 8, 8) },
			"Unpatchify":     func() { dev.Unpatchify(vid, tok, B, C, F, 8, 8); dev.UnpatchifyBack(tok, vid, B, C, F, 8, 8) },
			"Sinusoid":       func() { dev.Sinusoid(emb, ts, 8) },
			"AddBroadcast":   func() { dev.AddBroadcast(mod, bias, mod); dev.AddBroadcastBack(bias, dmod, mod) },
			"MeanTokens":     func() { dev.MeanTokens(mt, x); dev.MeanTokensBack(y, mt) },
			"Elementwise":    func() { dev.Add(o, x, y); dev.Axpy(o, 2, x); dev.Scale(o, 0.5); dev.Combine(o, x, y, coef, coef) },
			"CombineFrames":  func() { dev.CombineFrames(vid, vid, vid, coef, coef, B, C, F, 64) },
			"Reductions":     func() { _ = dev.Dot(x, y); dev.SumAbsGroups(sums, x) },
			"AdamW+EMA":      func() { dev.AdamW(w, w, w, w, 1e-3, 0.9, 0.99, 1e-8, 0.01, 1); dev.EMA(bias, bias, 0.9) },
			"RandnPhilox":    func() { dev.RandnPhilox(o, keys, 3) },
			"Copy/Fill/Zero": func() { dev.Copy(o, x); dev.Fill(o, 1); dev.Zero(o) },
		}
		for name, fn := range ops {
			fn()
			if n := testing.AllocsPerRun(5, fn); n != 0 {
				t.Errorf("%s: %v allocations per call", name, n)
			}
		}
	}
}

// TestConcurrentUse: two goroutines sharing one device get the results they get alone (ops are
// serialized by the device's lock; run with -race to see the shared scratch stays private).
func TestConcurrentUse(t *testing.T) {
	dev := kernels.NewCPUFine(3)
	r := rand.New(rand.NewSource(2))
	B, N, H, hd := 1, 40, 2, 8
	D := H * hd
	type work struct{ x, w, q, k, v, o, ao, lse, mean, rstd *kernels.Tensor }
	mk := func() work {
		return work{rnd(dev, r, 1, B, N, D), rnd(dev, r, 1, D, D), rnd(dev, r, 1, B, N, H, hd), rnd(dev, r, 1, B, N, H, hd),
			rnd(dev, r, 1, B, N, H, hd), dev.Alloc(kernels.F32, B, N, D), dev.Alloc(kernels.F32, B, N, H, hd),
			dev.Alloc(kernels.F32, B, H, N), dev.Alloc(kernels.F32, B*N), dev.Alloc(kernels.F32, B*N)}
	}
	step := func(u work) {
		dev.Linear(u.o, u.x, u.w, nil)
		dev.LayerNorm(u.o, u.mean, u.rstd, u.o, nil, nil, 1e-6)
		dev.Attention(u.ao, u.lse, u.q, u.k, u.v, 8, 0)
		_ = dev.Dot(u.o, u.o)
	}
	ws := []work{mk(), mk()}
	want := make([][]float32, 2)
	for i, u := range ws {
		step(u)
		want[i] = append(host(dev, u.o), host(dev, u.ao)...)
	}
	done := make(chan struct{})
	for _, u := range ws {
		go func(u work) {
			for it := 0; it < 20; it++ {
				step(u)
			}
			done <- struct{}{}
		}(u)
	}
	<-done
	<-done
	for i, u := range ws {
		got := append(host(dev, u.o), host(dev, u.ao)...)
		for j := range got {
			if got[j] != want[i][j] {
				t.Fatalf("stream %d: element %d = %g, alone %g", i, j, got[j], want[i][j])
			}
		}
	}
}
