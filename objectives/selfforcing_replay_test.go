package objectives

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
)

// TestRolloutReplayEqualsKeptPasses: CausalRollout keeps only each chunk's graded input and replays
// the graded forward in Backward against the final cache (one training pass for every chunk, the
// rollout itself on an inference pass, a cache sized to the rollout). The reference is the design
// it replaced, written here with the models API: the rollout on a plain training pass, each chunk's
// graded step on its own plain pass, kept until the video's gradient is known, a cache that grows
// by doubling. Four levels, a different exit step per chunk, context noise: the video and the
// student's gradient must agree bit for bit (the CPU is deterministic), with the rollout's passes
// plain or recomputing, its cache fp32 or bf16-labelled (the CPU stores fp32 either way).
func TestRolloutReplayEqualsKeptPasses(t *testing.T) {
	for _, c := range []struct {
		recompute bool
		dt        kernels.DType
	}{{false, kernels.F32}, {true, kernels.F32}, {true, kernels.BF16}} {
		seed := time.Now().UnixNano()
		t.Logf("recompute %v, cache %v, seed %d", c.recompute, c.dt, seed)
		testReplay(t, seed, c.recompute, c.dt)
	}
}

func testReplay(t *testing.T, seed int64, recompute bool, dt kernels.DType) {
	s := models.Shape{B: 2, F: 6, H: 4, W: 4, L: 3, ChunkFrames: 2}
	k, chunks, cn := 2, 3, float32(0.1)
	exits := []int{2, 0, 3}
	o, err := New("selfforcing", map[string]any{})
	if err != nil {
		t.Fatal(err)
	}
	env := testEnv(t, o, s, seed)
	dev, cfg := env.Dev, env.Cfg
	C := cfg.InDim
	net := env.Roles[Student].Net
	b := testBatch(env, s, rand.New(rand.NewPCG(uint64(seed), 2)))
	sig := DenoisingList([]float64{1000, 750, 500, 250}, 5)
	full := s
	full.ChunkFrames, full.Recompute = 0, recompute
	cs := models.Shape{B: s.B, F: k, H: s.H, W: s.W, L: s.L, ChunkFrames: k}
	R := dev.Alloc(kernels.F32, s.B, C, s.F, s.H, s.W)
	Randn(dev, R, make([]float32, R.Numel()), rand.New(rand.NewPCG(uint64(seed), 10)))

	r := NewCausalRollout(env, net, full, k, sig, float64(cn))
	r.SetCacheDType(dt)
	video := hostOf(dev, r.Run(&Step{RNG: rand.New(rand.NewPCG(uint64(seed), 9))}, b.Ctx, exits, true))
	dev.Zero(net.G)
	r.Backward(R)
	gRoll := hostOf(dev, net.G)

	// Reference: the previous design.
	rng := rand.New(rand.NewPCG(uint64(seed), 9))
	cache := net.NewCache(s.B, s.H, s.W, 0, 0)
	pStep := net.NewPass(cs)
	var keep []*models.Pass
	n := s.B * C * k * s.H * s.W
	host := make([]float32, n)
	th := make([]float32, s.B*k)
	tt := dev.Alloc(kernels.F32, s.B, k)
	x, x0, eps := dev.Alloc(kernels.F32, cs.B, C, k, s.H, s.W), dev.Alloc(kernels.F32, cs.B, C, k, s.H, s.W), dev.Alloc(kernels.F32, cs.B, C, k, s.H, s.W)
	sigma := make([]float32, s.B)
	setSigma := func(v float32) {
		for i := range sigma {
			sigma[i] = v
		}
		SetTimesteps(dev, tt, th, sigma)
	}
	var want []float32
	for j := 0; j < chunks; j++ {
		Randn(dev, x, host, rng)
		for i := 0; ; i++ {
			setSigma(sig[i])
			p := pStep
			if i == exits[j] {
				p = net.NewPass(cs)
				keep = append(keep, p)
			}
			X0FromV(dev, x0, x, net.ForwardChunk(p, cache, x, tt, b.Ctx), sigma)
			if i == exits[j] {
				break
			}
			Randn(dev, eps, host, rng)
			setSigma(sig[i+1])
			Noise(dev, x, x0, eps, sigma)
		}
		want = append(want, hostOf(dev, x0)...)
		if j == chunks-1 {
			break
		}
		Randn(dev, eps, host, rng)
		setSigma(cn)
		Noise(dev, x, x0, eps, sigma)
		net.ForwardChunk(pStep, cache, x, tt, b.Ctx)
		net.Commit(cache, pStep)
	}
	Rh := hostOf(dev, R)
	dev.Zero(net.G)
	for j := 0; j < chunks; j++ {
		c := chunkOf(Rh, s.B, C, s.F, s.H*s.W, j*k, k)
		for i := range c {
			c[i] *= -sig[exits[j]] // dv = −σ_s·dx0
		}
		dv := dev.Alloc(kernels.F32, cs.B, C, k, s.H, s.W)
		dev.FromHost(dv, c)
		net.Backward(keep[j], dv)
	}
	gRef := hostOf(dev, net.G)

	for j := 0; j < chunks; j++ {
		got := chunkOf(video, s.B, C, s.F, s.H*s.W, j*k, k)
		for i, w := range want[j*n : (j+1)*n] {
			if math.Float32bits(got[i]) != math.Float32bits(w) {
				t.Fatalf("chunk %d element %d: rollout %v, reference %v", j, i, got[i], w)
			}
		}
	}
	var norm float64
	for i := range gRef {
		if math.Float32bits(gRoll[i]) != math.Float32bits(gRef[i]) {
			t.Fatalf("student gradient %d: replayed %v, kept passes %v", i, gRoll[i], gRef[i])
		}
		norm += float64(gRef[i]) * float64(gRef[i])
	}
	if norm == 0 {
		t.Fatalf("zero gradient: the test compares nothing")
	}
	t.Logf("video and student gradient (|G| %.4g) bit-identical", math.Sqrt(norm))
}
