package objectives

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
)

// hostVideo reads a tensor to the host.
func hostOf(dev kernels.Device, x *kernels.Tensor) []float32 {
	h := make([]float32, x.Numel())
	dev.ToHost(h, x)
	return h
}

// chunkOf cuts frames [f0, f0+k) of a host video [B,C,F,H,W] into a chunk [B,C,k,H,W].
func chunkOf(v []float32, B, C, F, HW, f0, k int) []float32 {
	out := make([]float32, 0, B*C*k*HW)
	for bc := 0; bc < B*C; bc++ {
		out = append(out, v[(bc*F+f0)*HW:(bc*F+f0+k)*HW]...)
	}
	return out
}

// The causal rollout against a reference written with the model's streaming API directly: for a
// one-level list (the exit is the first and only step) chunk j's input is the next draw of noise,
// the cache holds the earlier chunks of the rollout's own video re-noised to σ = context_noise
// (with the draws that follow each chunk's, none when it is 0) at t = 1000·σ, and chunk j's x0 is its
// input minus the velocity. The video must match, and so must the student's gradient for a random
// cotangent R: Σ_j (x0_j's vjp with R_j), with no gradient through the cache. The rollout's passes
// with activation recomputation (Shape.Recompute) must give the same, against plain reference passes.
func TestCausalRolloutMatchesStreaming(t *testing.T) {
	for _, c := range []struct {
		cn        float64
		recompute bool
	}{{0, false}, {0.2, false}, {0.2, true}} {
		testRolloutStreaming(t, c.cn, c.recompute)
	}
}

func testRolloutStreaming(t *testing.T, contextNoise float64, recompute bool) {
	seed := time.Now().UnixNano()
	t.Logf("context noise %g, recompute %v, seed %d", contextNoise, recompute, seed)
	s := models.Shape{B: 2, F: 6, H: 4, W: 4, L: 3, ChunkFrames: 2}
	k, chunks := 2, 3
	o, err := New("selfforcing", map[string]any{"denoising_timesteps": []float64{1000}, "shift": 1})
	if err != nil {
		t.Fatal(err)
	}
	env := testEnv(t, o, s, seed)
	dev, cfg := env.Dev, env.Cfg
	C, HW := cfg.InDim, s.H*s.W
	student := env.Roles[Student].Net
	b := testBatch(env, s, rand.New(rand.NewPCG(uint64(seed), 2)))
	full := s
	full.ChunkFrames = 0
	full.Recompute = recompute
	r := NewCausalRollout(env, student, full, k, []float32{1}, contextNoise)

	video := hostOf(dev, r.Run(&Step{RNG: rand.New(rand.NewPCG(uint64(seed), 9))}, b.Ctx, make([]int, chunks), true))
	R := dev.Alloc(kernels.F32, s.B, C, s.F, s.H, s.W)
	Rh := make([]float32, R.Numel())
	rr := rand.New(rand.NewPCG(uint64(seed), 10))
	for i := range Rh {
		Rh[i] = float32(rr.NormFloat64())
	}
	dev.FromHost(R, Rh)
	dev.Zero(student.G)
	r.Backward(R)
	gRoll := hostOf(dev, student.G)

	// Reference: a second student with the same weights and its own gradient buffer.
	ref := models.New(dev, cfg, true)
	dev.Copy(ref.W, student.W)
	noise := rand.New(rand.NewPCG(uint64(seed), 9)) // the rollout's draws, in order
	draw := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(noise.NormFloat64())
		}
		return v
	}
	cs := models.Shape{B: s.B, F: k, H: s.H, W: s.W, L: s.L, ChunkFrames: k}
	n := s.B * C * k * HW
	tt := dev.Alloc(kernels.F32, s.B, k)
	xin, cot := dev.Alloc(kernels.F32, s.B, C, k, s.H, s.W), dev.Alloc(kernels.F32, s.B, C, k, s.H, s.W)
	var ctxNoise [][]float32
	sc := float32(contextNoise)
	for j := 0; j < chunks; j++ {
		in := draw(n)
		if j < chunks-1 && contextNoise > 0 {
			ctxNoise = append(ctxNoise, draw(n))
		}
		cache := ref.NewCache(s.B, s.H, s.W, 0, 0)
		pc := ref.NewPass(cs)
		for i := 0; i < j; i++ { // earlier chunks at the context noise level
			c := chunkOf(video, s.B, C, s.F, HW, i*k, k)
			if contextNoise > 0 {
				for q := range c {
					c[q] = (1-sc)*c[q] + sc*ctxNoise[i][q]
				}
			}
			dev.FromHost(xin, c)
			dev.Fill(tt, 1000*sc)
			ref.ForwardChunk(pc, cache, xin, tt, b.Ctx)
			ref.Commit(cache, pc)
		}
		dev.FromHost(xin, in)
		dev.Fill(tt, 1000)
		p := ref.NewPass(cs)
		v := hostOf(dev, ref.ForwardChunk(p, cache, xin, tt, b.Ctx))
		got := chunkOf(video, s.B, C, s.F, HW, j*k, k)
		for i := range v {
			want := in[i] - v[i]
			if math.Abs(float64(got[i]-want)) > 1e-5*(1+math.Abs(float64(want))) {
				t.Fatalf("context noise %g, chunk %d element %d: rollout %g, streaming reference %g", contextNoise, j, i, got[i], want)
			}
		}
		c := chunkOf(Rh, s.B, C, s.F, HW, j*k, k)
		for i := range c {
			c[i] = -c[i] // dv = −σ·dx0, σ = 1
		}
		dev.FromHost(cot, c)
		ref.Backward(p, cot)
	}
	gRef := hostOf(dev, ref.G)
	var num, den float64
	for i := range gRef {
		d := float64(gRoll[i] - gRef[i])
		num += d * d
		den += float64(gRef[i]) * float64(gRef[i])
	}
	rel := math.Sqrt(num / den)
	t.Logf("student gradient: relative difference %.2g (|G| = %.4g)", rel, math.Sqrt(den))
	if !(rel < 1e-5) || den == 0 {
		t.Fatalf("rollout gradient differs from the per-chunk reference: relative %g", rel)
	}
}

func TestSelfForcingParamErrors(t *testing.T) {
	for _, p := range []map[string]any{
		{"denoising_timesteps": []float64{}}, {"denoising_timesteps": []float64{500, 750}},
		{"generator_update_ratio": 0}, {"context_noise": 1.0}, {"sigma_min": 0.9, "sigma_max": 0.1}, {"x": 1},
	} {
		if _, err := New("selfforcing", p); err == nil {
			t.Fatalf("params %v: no error", p)
		}
	}
	// Frames that are not a whole number of chunks.
	o, _ := New("selfforcing", map[string]any{"chunk_frames": 3})
	cfg, _ := models.Preset("tiny")
	dev := kernels.CPU()
	env := &Env{Dev: dev, Cfg: cfg, Shape: testShape, Roles: map[string]*Role{}}
	for _, n := range []string{Student, Teacher, Critic} {
		m := models.New(dev, cfg, false)
		env.Roles[n] = &Role{Net: m, W: m.W}
	}
	if err := o.Setup(env); err == nil {
		t.Fatal("4 frames in chunks of 3: no error")
	}
}

// One exit step for every chunk with same_step_across_chunks (Self-Forcing's default), independent
// steps without; every level of the list gets drawn.
func TestSelfForcingExitSteps(t *testing.T) {
	for _, same := range []bool{true, false} {
		o, err := New("selfforcing", map[string]any{"same_step_across_chunks": same})
		if err != nil {
			t.Fatal(err)
		}
		sf := o.(*SelfForcing)
		sf.exits = make([]int, 5)
		rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
		seen := map[int]bool{}
		mixed := false
		for k := 0; k < 200; k++ {
			ex := sf.drawExits(rng)
			for _, e := range ex {
				seen[e] = true
				if e != ex[0] {
					mixed = true
				}
			}
		}
		if mixed == same || len(seen) != len(sf.sigmas) {
			t.Fatalf("same_step_across_chunks %v: chunks with different exits %v, levels drawn %v of %d", same, mixed, seen, len(sf.sigmas))
		}
	}
}
