package kernels_test

import (
	"math/rand"
	"syscall"
	"testing"
	"time"

	"github.com/fewstep/fewstep/kernels"
)

// Benchmarks per op at the preset shapes (models.Preset): small = D 384, 6 heads (hd 64), FFN 1536,
// 2048 video tokens (e.g. 8 latent frames of 32×32 → 8·16·16), 512 context tokens; tiny = D 64,
// 2 heads (hd 32), FFN 256, 256 tokens, 64 context tokens. Run:
//
//	go test ./kernels/ -run '^$' -bench . -benchmem
type preset struct {
	name                    string
	D, H, FFN, N, L, frames int
}

var presets = []preset{
	{"tiny", 64, 2, 256, 256, 64, 4},
	{"small", 384, 6, 1536, 2048, 512, 8},
}

func rnd(dev kernels.Device, r *rand.Rand, scale float64, shape ...int) *kernels.Tensor {
	return tensorOf(dev, randn(r, kernels.Numel(shape), scale), shape...)
}

// bench reports, besides wall time, the process CPU time per op (user+sys of every thread, from
// getrusage): on a shared, oversubscribed machine wall time swings with other people's load, CPU
// time much less. GFLOP/s is per wall second.
func bench(b *testing.B, flops float64, fn func()) {
	fn() // warm up (scratch buffers grow here)
	b.ReportAllocs()
	b.ResetTimer()
	c0 := cpuTime()
	for i := 0; i < b.N; i++ {
		fn()
	}
	b.ReportMetric((cpuTime()-c0).Seconds()*1e3/float64(b.N), "cpu-ms/op")
	if flops > 0 {
		b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func BenchmarkOps(b *testing.B) {
	dev := kernels.CPU()
	r := rand.New(rand.NewSource(1))
	for _, p := range presets {
		D, H, N, L, FFN := p.D, p.H, p.N, p.L, p.FFN
		hd := D / H
		x, y := rnd(dev, r, 1, 1, N, D), rnd(dev, r, 1, 1, N, D)
		w, bias := rnd(dev, r, 0.05, D, D), rnd(dev, r, 1, D)
		wUp, hUp := rnd(dev, r, 0.05, FFN, D), rnd(dev, r, 1, 1, N, FFN)
		hAct, hAct2 := dev.Alloc(kernels.F32, 1, N, FFN), rnd(dev, r, 1, 1, N, FFN)
		dx, dw, db := dev.Alloc(kernels.F32, 1, N, D), dev.Alloc(kernels.F32, D, D), dev.Alloc(kernels.F32, D)
		dwUp := dev.Alloc(kernels.F32, FFN, D)
		mean, rstd := dev.Alloc(kernels.F32, N), dev.Alloc(kernels.F32, N)
		mod := rnd(dev, r, 0.3, 1, p.frames, 6, D)
		dmod := dev.Alloc(kernels.F32, 1, p.frames, 6, D)
		tpf := N / p.frames
		q, k, v := rnd(dev, r, 1, 1, N, H, hd), rnd(dev, r, 1, 1, N, H, hd), rnd(dev, r, 1, 1, N, H, hd)
		o, lse := dev.Alloc(kernels.F32, 1, N, H, hd), dev.Alloc(kernels.F32, 1, H, N)
		dq, dk, dv := dev.Alloc(kernels.F32, 1, N, H, hd), dev.Alloc(kernels.F32, 1, N, H, hd), dev.Alloc(kernels.F32, 1, N, H, hd)
		kc, vc := rnd(dev, r, 1, 1, L, H, hd), rnd(dev, r, 1, 1, L, H, hd)
		oc, lsec := dev.Alloc(kernels.F32, 1, N, H, hd), dev.Alloc(kernels.F32, 1, H, N)
		dkc, dvc := dev.Alloc(kernels.F32, 1, L, H, hd), dev.Alloc(kernels.F32, 1, L, H, hd)
		side := 1
		for side*side*4*p.frames < N {
			side++
		}
		rows, cols := side, N/p.frames/side
		attnFlops := 4 * float64(N) * float64(N) * float64(D)

		b.Run(p.name+"/Linear", func(b *testing.B) {
			bench(b, 2*float64(N*D*D), func() { dev.Linear(y, x, w, bias) })
		})
		b.Run(p.name+"/LinearBack", func(b *testing.B) {
			bench(b, 4*float64(N*D*D), func() { dev.LinearBack(dx, dw, db, y, x, w) })
		})
		b.Run(p.name+"/LinearFFNUp", func(b *testing.B) {
			bench(b, 2*float64(N*D*FFN), func() { dev.Linear(hUp, x, wUp, nil) })
		})
		b.Run(p.name+"/LinearFFNUpBack", func(b *testing.B) {
			bench(b, 4*float64(N*D*FFN), func() { dev.LinearBack(dx, dwUp, nil, hUp, x, wUp) })
		})
		b.Run(p.name+"/LayerNorm", func(b *testing.B) {
			bench(b, 0, func() { dev.LayerNorm(y, mean, rstd, x, nil, nil, 1e-6) })
		})
		b.Run(p.name+"/LayerNormBack", func(b *testing.B) {
			dwD := dw.View(0, D)
			bench(b, 0, func() { dev.LayerNormBack(dx, dwD, db, y, x, mean, rstd, bias) })
		})
		b.Run(p.name+"/RMSNorm", func(b *testing.B) {
			bench(b, 0, func() { dev.RMSNorm(y, rstd, x, bias, 1e-6) })
		})
		b.Run(p.name+"/RMSNormBack", func(b *testing.B) {
			bench(b, 0, func() { dev.RMSNormBack(dx, db, y, x, rstd, bias) })
		})
		b.Run(p.name+"/Modulate", func(b *testing.B) {
			bench(b, 0, func() { dev.Modulate(y, x, mod, 0, 1, tpf) })
		})
		b.Run(p.name+"/ModulateBack", func(b *testing.B) {
			bench(b, 0, func() { dev.ModulateBack(dx, dmod, y, x, mod, 0, 1, tpf) })
		})
		b.Run(p.name+"/GateAdd", func(b *testing.B) {
			bench(b, 0, func() { dev.GateAdd(y, x, mod, 2, tpf) })
		})
		b.Run(p.name+"/GateAddBack", func(b *testing.B) {
			bench(b, 0, func() { dev.GateAddBack(dx, dmod, y, x, mod, 2, tpf) })
		})
		b.Run(p.name+"/GELU", func(b *testing.B) {
			bench(b, 0, func() { dev.GELU(hAct, hUp) })
		})
		b.Run(p.name+"/SiLU", func(b *testing.B) {
			bench(b, 0, func() { dev.SiLU(hAct, hUp) })
		})
		b.Run(p.name+"/GELUBack", func(b *testing.B) {
			bench(b, 0, func() { dev.GELUBack(hAct, hAct2, hUp) })
		})
		b.Run(p.name+"/RoPE", func(b *testing.B) {
			bench(b, 0, func() { dev.RoPE(q, p.frames, rows, cols, 0) })
		})
		b.Run(p.name+"/Attention", func(b *testing.B) {
			bench(b, attnFlops, func() { dev.Attention(o, lse, q, k, v, 0, 0) })
		})
		b.Run(p.name+"/AttentionBlockCausal", func(b *testing.B) {
			bench(b, 0, func() { dev.Attention(o, lse, q, k, v, 3*tpf, 0) })
		})
		b.Run(p.name+"/AttentionBack", func(b *testing.B) {
			dev.Attention(o, lse, q, k, v, 0, 0)
			bench(b, 2.5*attnFlops, func() { dev.AttentionBack(dq, dk, dv, o, o, lse, q, k, v, 0, 0) })
		})
		b.Run(p.name+"/CrossAttention", func(b *testing.B) {
			bench(b, 4*float64(N)*float64(L)*float64(D), func() { dev.Attention(oc, lsec, q, kc, vc, 0, 0) })
		})
		b.Run(p.name+"/CrossAttentionBack", func(b *testing.B) {
			dev.Attention(oc, lsec, q, kc, vc, 0, 0)
			bench(b, 10*float64(N)*float64(L)*float64(D), func() { dev.AttentionBack(dq, dkc, dvc, oc, oc, lsec, q, kc, vc, 0, 0) })
		})
		b.Run(p.name+"/AdamW", func(b *testing.B) {
			n := 1 << 20
			W, G, M, V := rnd(dev, r, 1, n), rnd(dev, r, 1, n), dev.Alloc(kernels.F32, n), dev.Alloc(kernels.F32, n)
			step := 0
			bench(b, 0, func() { step++; dev.AdamW(W, G, M, V, 1e-4, 0.9, 0.999, 1e-8, 0.01, step) })
		})
	}
}
