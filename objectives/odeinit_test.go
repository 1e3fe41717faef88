package objectives

import (
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/fewstep/fewstep/kernels"
)

// odeBatch adds random trajectories [B,S,C,F,H,W] at levels sig to a batch.
func odeBatch(env *Env, b *Batch, sig []float32, rng *rand.Rand) {
	s, C := env.Shape, env.Cfg.InDim
	b.TrajX = env.Dev.Alloc(kernels.F32, s.B, len(sig), C, s.F, s.H, s.W)
	h := make([]float32, b.TrajX.Numel())
	for i := range h {
		h[i] = float32(rng.NormFloat64())
	}
	env.Dev.FromHost(b.TrajX, h)
	b.TrajSigma = sig
}

// The odeinit step's gradient is the derivative of its regression loss (block-causal student,
// per-chunk levels, the σ = 0 level never drawn).
func TestODEInitGradient(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	s := testShape
	s.ChunkFrames = 1
	o, err := New("odeinit", nil)
	if err != nil {
		t.Fatal(err)
	}
	env := testEnv(t, o, s, seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 5))
	b := testBatch(env, s, rng)
	odeBatch(env, b, []float32{1, 0.75, 0.5, 0.25, 0}, rng)
	directional(t, env, o, b, Student, "loss", 1, 0.01)
}

func TestODEInitErrors(t *testing.T) {
	s := testShape
	s.ChunkFrames = 1
	o, _ := New("odeinit", nil)
	env := testEnv(t, o, s, 1)
	rng := rand.New(rand.NewPCG(1, 5))
	b := testBatch(env, s, rng)
	st := &Step{Step: 1, Accum: 1, RNG: StepRNG(1, 1, 0)}
	if _, err := o.Step(st, b); err == nil || !strings.Contains(err.Error(), "ode-pairs") {
		t.Fatalf("no trajectories: %v", err)
	}
	odeBatch(env, b, []float32{0}, rng)
	if _, err := o.Step(st, b); err == nil || !strings.Contains(err.Error(), "σ > 0") {
		t.Fatalf("only clean levels: %v", err)
	}
	b.TrajX = b.TrajX.Reshape(s.B*1, 1, env.Cfg.InDim, s.F, s.H*s.W, 1)
	if _, err := o.Step(st, b); err == nil || !strings.Contains(err.Error(), "trajectory_latents") {
		t.Fatalf("mis-shaped trajectories: %v", err)
	}
	// A bidirectional job without chunk_frames cannot set up the causal student.
	o2, _ := New("odeinit", nil)
	env2 := &Env{Dev: env.Dev, Cfg: env.Cfg, Shape: testShape, Roles: env.Roles}
	if err := o2.Setup(env2); err == nil || !strings.Contains(err.Error(), "chunk_frames") {
		t.Fatalf("no chunk_frames: %v", err)
	}
}
