// Package gputest checks the whole DiT on the GPU against the same DiT on the CPU: forward, input
// gradient and every parameter gradient, bidirectional, block-causal, and streaming with the KV cache.
// It skips without a GPU.
package gputest

import (
	"fmt"
	"math"
	"math/rand"
	"testing"
	"time"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/kernels/cuda"
	"github.com/fewstep/fewstep/models"
)

func relErr(got, want []float32) float64 {
	var num, den float64
	for i := range want {
		g, w := float64(got[i]), float64(want[i])
		if math.IsNaN(g) || math.IsInf(g, 0) {
			return math.Inf(1)
		}
		num += (g - w) * (g - w)
		den += w * w
	}
	return math.Sqrt(num / math.Max(den, 1e-30))
}

func host(d kernels.Device, t *kernels.Tensor) []float32 {
	v := make([]float32, t.Numel())
	d.ToHost(v, t)
	return v
}

func upload(d kernels.Device, v []float32, shape ...int) *kernels.Tensor {
	t := d.Alloc(kernels.F32, shape...)
	d.FromHost(t, v)
	return t
}

func randn(r *rand.Rand, n int, lo, hi float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		if hi > lo {
			v[i] = float32(lo + (hi-lo)*r.Float64())
		} else {
			v[i] = float32(r.NormFloat64())
		}
	}
	return v
}

type variant struct {
	name string
	ref  bool // reference attention kernels (exact fp32) instead of the fused bf16 ones
	gemm cuda.GEMMMode
	tol  float64
	// operands: the pass keeps its GEMM-only activations in bf16 (models.Shape.BF16Operands); the
	// same numbers as bf16-gemm's fp32 activations with bf16 copies, checked against that too.
	operands bool
}

// The variants: exact fp32 everywhere (tolerance: fp32 through 2 layers), fused attention (bf16
// tensor cores inside), bf16 GEMMs, and bf16 GEMMs with bf16 GEMM operands in the pass.
var variants = []variant{
	{"fp32", true, cuda.GEMMExact, 1e-4, false},
	{"fused-attention", false, cuda.GEMMExact, 2e-2, false},
	{"bf16-gemm", false, cuda.GEMMBF16, 3e-2, false},
	{"bf16-operands", false, cuda.GEMMBF16, 3e-2, true},
}

func TestDiTAgainstCPU(t *testing.T) {
	g, err := cuda.New(0)
	if err != nil {
		t.Skipf("no GPU: %v", err)
	}
	t.Logf("device: %s", g.Info)
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	cfg, _ := models.Preset("tiny")
	cfg.Dim, cfg.FFNDim, cfg.TextDim = 128, 256, 48 // head_dim 64: the fused attention kernels take it
	for _, chunk := range []int{0, 1} {
		for _, v := range variants {
			t.Run(fmt.Sprintf("chunk=%d/%s", chunk, v.name), func(t *testing.T) {
				testDiT(t, g, cfg, chunk, v, seed)
			})
		}
	}
}

func testDiT(t *testing.T, g *cuda.Device, cfg models.Config, chunk int, v variant, seed int64) {
	g.ResetError()
	r := rand.New(rand.NewSource(seed))
	cpu := kernels.NewCPU(2)
	s := models.Shape{B: 2, F: 3, H: 4, W: 6, L: 7, ChunkFrames: chunk, BF16Operands: v.operands}
	mc, mg := models.New(cpu, cfg, true), models.New(g, cfg, true)
	defer func() { g.GEMM = cuda.GEMMExact; setRef(g, false) }()
	mc.InitRandom(seed, 0.15)
	g.FromHost(mg.W, host(cpu, mc.W))
	g.MarkWeights(mg.W)
	g.GEMM = v.gemm
	setRef(g, v.ref)
	x := randn(r, s.B*cfg.InDim*s.F*s.H*s.W, 0, 0)
	ts := randn(r, s.B*s.F, 0, 1000)
	ctx := randn(r, s.B*s.L*cfg.TextDim, 0, 0)
	pc, pg := mc.NewPass(s), mg.NewPass(s)
	xs := []int{s.B, cfg.InDim, s.F, s.H, s.W}
	oc := mc.Forward(pc, upload(cpu, x, xs...), upload(cpu, ts, s.B, s.F), upload(cpu, ctx, s.B, s.L, cfg.TextDim))
	og := mg.Forward(pg, upload(g, x, xs...), upload(g, ts, s.B, s.F), upload(g, ctx, s.B, s.L, cfg.TextDim))
	full := host(g, og) // the block-causal forward on the GPU, for the streaming check below
	check(t, g, "out", full, host(cpu, oc), v.tol)
	cot := randn(r, oc.Numel(), 0, 0)
	dxc := mc.Backward(pc, upload(cpu, cot, xs...))
	dxg := mg.Backward(pg, upload(g, cot, xs...))
	dxB := host(g, dxg) // the pass's dx (the next backward on pg overwrites it)
	check(t, g, "grad.x", dxB, host(cpu, dxc), v.tol)
	gc, gg := host(cpu, mc.G), host(g, mg.G)
	check(t, g, "grad (all parameters)", gg, gc, v.tol)
	{
		// the batched Linears (q, k, v and cross k, v as strided-batched GEMMs, kernels/cuda/batched.go)
		// against one GEMM each (FEWSTEP_QKV=0): the same function
		cuda.SetBatchedLinears(g, false)
		gSave := host(g, mg.G)
		mg.ZeroGrad()
		o1 := host(g, mg.Forward(pg, upload(g, x, xs...), upload(g, ts, s.B, s.F), upload(g, ctx, s.B, s.L, cfg.TextDim)))
		dx1 := host(g, mg.Backward(pg, upload(g, cot, xs...)))
		g1 := host(g, mg.G)
		cuda.SetBatchedLinears(g, true)
		g.FromHost(mg.G, gSave)
		check(t, g, "out, one GEMM each vs batched Linears (GPU)", o1, full, v.tol/10)
		check(t, g, "grad.x, one GEMM each vs batched Linears (GPU)", dx1, dxB, v.tol/10)
		check(t, g, "grad (all parameters), one GEMM each vs batched Linears (GPU)", g1, gg, v.tol/10)
	}
	if v.operands {
		// Without the GELU epilogues (their bf16 pre-activation), the same numbers as fp32
		// activations with bf16 copies (bf16-gemm); with them (pg above), within bf16 rounding.
		cuda.SetGELUEpilogues(g, false)
		po := mg.NewPass(s)
		so := s
		so.BF16Operands = false
		pf := mg.NewPass(so)
		cuda.SetGELUEpilogues(g, true)
		gSave := host(g, mg.G)
		run := func(p *models.Pass) (out, dx, grad []float32) {
			mg.ZeroGrad()
			out = host(g, mg.Forward(p, upload(g, x, xs...), upload(g, ts, s.B, s.F), upload(g, ctx, s.B, s.L, cfg.TextDim)))
			dx = host(g, mg.Backward(p, upload(g, cot, xs...)))
			return out, dx, host(g, mg.G)
		}
		oo, dxo, go_ := run(po)
		of, dxf, gf := run(pf)
		check(t, g, "out vs fp32 activations (GPU, no GELU epilogues)", oo, of, 1e-6)
		check(t, g, "grad.x vs fp32 activations (GPU, no GELU epilogues)", dxo, dxf, 1e-5)
		check(t, g, "grad (all parameters) vs fp32 activations (GPU, no GELU epilogues)", go_, gf, 1e-5)
		check(t, g, "out, GELU epilogues vs none (GPU)", full, oo, v.tol/3)
		check(t, g, "grad.x, GELU epilogues vs none (GPU)", dxB, dxo, v.tol/3)
		check(t, g, "grad (all parameters), GELU epilogues vs none (GPU)", gg, go_, v.tol/3)
		po.Free()
		pf.Free()
		g.FromHost(mg.G, gSave)
		// A frozen model with its weights in bf16 only (trainer: the teacher), on the same pass.
		mf := models.NewFrozen(g, cfg, kernels.BF16)
		g.FromHost(mf.W, host(cpu, mc.W))
		g.MarkWeights(mf.W)
		check(t, g, "out of a bf16-weight frozen model", host(g, mf.Forward(pg, upload(g, x, xs...), upload(g, ts, s.B, s.F),
			upload(g, ctx, s.B, s.L, cfg.TextDim))), host(cpu, oc), v.tol)
		g.Free(mf.W)
	}
	worst, wname := 0.0, ""
	for _, p := range mc.Table {
		n := 1
		for _, d := range p.Shape {
			n *= d
		}
		if e := relErr(gg[p.Offset:p.Offset+n], gc[p.Offset:p.Offset+n]); e > worst {
			worst, wname = e, p.Name
		}
	}
	t.Logf("worst parameter gradient: %s rel error %.3g", wname, worst)
	if !(worst < 10*v.tol) {
		t.Errorf("grad.%s: rel error %.3g > %.1g", wname, worst, 10*v.tol)
	}
	if v.gemm == cuda.GEMMBF16 { // bf16 copies must not go stale: a second forward on new inputs, then a graph replay on others
		xg, tg, cg := upload(g, x, xs...), upload(g, ts, s.B, s.F), upload(g, ctx, s.B, s.L, cfg.TextDim)
		for round := 0; round < 2; round++ {
			x2, t2 := randn(r, len(x), 0, 0), randn(r, len(ts), 0, 1000)
			want := host(cpu, mc.Forward(pc, upload(cpu, x2, xs...), upload(cpu, t2, s.B, s.F), upload(cpu, ctx, s.B, s.L, cfg.TextDim)))
			g.FromHost(xg, x2)
			g.FromHost(tg, t2)
			var got []float32
			if round == 0 {
				got = host(g, mg.Forward(pg, xg, tg, cg))
				// and this pass's backward: the bf16 copies of activations live from the forward
				// into the backward; none of the first pass's may be read here.
				cot2 := randn(r, oc.Numel(), 0, 0)
				mc.ZeroGrad()
				mg.ZeroGrad()
				dc := mc.Backward(pc, upload(cpu, cot2, xs...))
				dg := mg.Backward(pg, upload(g, cot2, xs...))
				check(t, g, "grad.x on new inputs", host(g, dg), host(cpu, dc), v.tol)
				check(t, g, "grad (all parameters) on new inputs", host(g, mg.G), host(cpu, mc.G), v.tol)
			} else {
				var outT *kernels.Tensor // Forward's output tensor, the same on every replay
				gr, err := g.Capture(func() { outT = mg.Forward(pg, xg, tg, cg) })
				if err != nil {
					t.Fatalf("capture: %v", err)
				}
				g.FromHost(xg, randn(r, len(x), 0, 0)) // replay on other inputs first
				if err := gr.Launch(); err != nil {
					t.Fatal(err)
				}
				g.FromHost(xg, x2)
				if err := gr.Launch(); err != nil {
					t.Fatal(err)
				}
				got = host(g, outT)
				gr.Destroy()
			}
			check(t, g, fmt.Sprintf("out on new inputs (%s)", map[int]string{0: "eager", 1: "graph replay"}[round]), got, want, v.tol)
		}
	}
	if chunk > 0 { // streaming: chunk by chunk with the KV cache equals the block-causal forward
		cc := mg.NewCache(s.B, s.H, s.W, 0, 0)
		ps := mg.NewPass(models.Shape{B: s.B, F: chunk, H: s.H, W: s.W, L: s.L, ChunkFrames: chunk, BF16Operands: v.operands})
		hw := s.H * s.W
		got := make([]float32, len(full))
		ctxG := upload(g, ctx, s.B, s.L, cfg.TextDim)
		for f0 := 0; f0 < s.F; f0 += chunk {
			xc := make([]float32, s.B*cfg.InDim*chunk*hw)
			tc := make([]float32, s.B*chunk)
			for b := 0; b < s.B; b++ {
				for c := 0; c < cfg.InDim; c++ {
					copy(xc[((b*cfg.InDim+c)*chunk)*hw:((b*cfg.InDim+c)*chunk+chunk)*hw], x[((b*cfg.InDim+c)*s.F+f0)*hw:((b*cfg.InDim+c)*s.F+f0+chunk)*hw])
				}
				copy(tc[b*chunk:(b+1)*chunk], ts[b*s.F+f0:b*s.F+f0+chunk])
			}
			o := host(g, mg.ForwardChunk(ps, cc, upload(g, xc, s.B, cfg.InDim, chunk, s.H, s.W), upload(g, tc, s.B, chunk), ctxG))
			mg.Commit(cc, ps)
			for b := 0; b < s.B; b++ {
				for c := 0; c < cfg.OutDim; c++ {
					copy(got[((b*cfg.OutDim+c)*s.F+f0)*hw:((b*cfg.OutDim+c)*s.F+f0+chunk)*hw], o[((b*cfg.OutDim+c)*chunk)*hw:((b*cfg.OutDim+c)*chunk+chunk)*hw])
				}
			}
		}
		check(t, g, "streaming out vs block-causal (GPU)", got, full, 1e-5+v.tol/10)
	}
}

func setRef(g *cuda.Device, on bool) { cuda.SetReferenceAttention(g, on) }

func check(t *testing.T, g *cuda.Device, what string, got, want []float32, tol float64) {
	t.Helper()
	if err := g.Sync(); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	e := relErr(got, want)
	if !(e <= tol) {
		t.Errorf("%s: rel error %.3g > %.1g", what, e, tol)
	} else {
		t.Logf("%s: rel error %.3g (tol %.0e)", what, e, tol)
	}
}
