package objectives_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/kernels/cuda"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/objectives"
)

// TestGPURolloutBF16Cache: on the CUDA device with bf16 GEMMs the fused attention reads bf16 copies
// of the fp32 gathered K/V, so a KV cache stored in bf16 (params.kv_cache_dtype: bf16) must give the
// same rollout: the video bit for bit, the student's gradient equal up to the run-to-run spread of
// the attention backward's atomics (measured: the fp32-cache rollout run twice). Head dim 128 (the
// fused kernels' case, as Wan's). The other order of magnitude, a cache whose values really changed
// by bf16 rounding, would show ≈ 1e-3. Skips without a GPU.
func TestGPURolloutBF16Cache(t *testing.T) {
	g, err := cuda.New(0)
	if err != nil {
		t.Skipf("no GPU: %v", err)
	}
	g.GEMM = cuda.GEMMBF16
	cfg, _ := models.Preset("tiny")
	cfg.Dim, cfg.Heads, cfg.FFNDim = 256, 2, 512 // head dim 128
	s := models.Shape{B: 1, F: 6, H: 8, W: 8, L: 4}
	k := 2
	net := models.New(g, cfg, true)
	net.InitRandom(5, 0.2)
	env := &objectives.Env{Dev: g, Cfg: cfg, Shape: s}
	sig := objectives.DenoisingList([]float64{1000, 750, 500, 250}, 5)
	ctx := g.Alloc(kernels.F32, s.B, s.L, cfg.TextDim)
	objectives.Randn(g, ctx, make([]float32, ctx.Numel()), rand.New(rand.NewPCG(1, 1)))
	R := g.Alloc(kernels.F32, s.B, cfg.InDim, s.F, s.H, s.W)
	objectives.Randn(g, R, make([]float32, R.Numel()), rand.New(rand.NewPCG(1, 2)))
	run := func(dt kernels.DType) (video, grad []float32) {
		r := objectives.NewCausalRollout(env, net, s, k, sig, 0.1)
		r.SetCacheDType(dt)
		v := r.Run(&objectives.Step{RNG: rand.New(rand.NewPCG(7, 9))}, ctx, []int{3, 1, 2}, true)
		video = make([]float32, v.Numel())
		g.ToHost(video, v)
		g.Zero(net.G)
		r.Backward(R)
		grad = make([]float32, net.G.Numel())
		g.ToHost(grad, net.G)
		if err := g.Sync(); err != nil {
			t.Fatal(err)
		}
		return video, grad
	}
	v32, g32 := run(kernels.F32)
	_, g32b := run(kernels.F32)
	v16, g16 := run(kernels.BF16)
	for i := range v32 {
		if math.Float32bits(v32[i]) != math.Float32bits(v16[i]) {
			t.Fatalf("video element %d: fp32 cache %v, bf16 cache %v", i, v32[i], v16[i])
		}
	}
	rel := func(a, b []float32) float64 {
		var num, den float64
		for i := range a {
			d := float64(a[i] - b[i])
			num += d * d
			den += float64(b[i]) * float64(b[i])
		}
		return math.Sqrt(num / den)
	}
	spread, diff := rel(g32b, g32), rel(g16, g32)
	t.Logf("student gradient: bf16 vs fp32 cache %.2g, fp32 run to run %.2g", diff, spread)
	if diff > max(4*spread, 1e-6) {
		t.Errorf("bf16 cache changes the gradient by %.2g (run-to-run %.2g)", diff, spread)
	}
}
