package objectives

import (
	"math"
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
// per-chunk levels, clean context chunks among them).
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

// clean_context (CausVid): some chunks are the clean end x0 at t = 0 — the context the streaming
// sampler gives later chunks — and the loss is the squared x0 error of the noisy chunks summed over
// every chunk's elements, scaled by the inverse expected noisy share (5 choices / 4 noisy levels):
// their mean in expectation (host reference). Without it no chunk is ever clean.
func TestODEInitCleanContext(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	s := testShape
	s.B, s.F, s.ChunkFrames = 3, 4, 1
	for _, clean := range []bool{true, false} {
		o, err := New("odeinit", map[string]any{"clean_context": clean})
		if err != nil {
			t.Fatal(err)
		}
		env := testEnv(t, o, s, seed)
		rng := rand.New(rand.NewPCG(uint64(seed), 7))
		b := testBatch(env, s, rng)
		odeBatch(env, b, []float32{1, 0.75, 0.5, 0.25}, rng)
		oi := o.(*ODEInit)
		dev := env.Dev
		C, HW := env.Cfg.InDim, s.H*s.W
		per := C * s.F * HW
		nClean := 0
		for step := 1; step <= 8; step++ {
			st := &Step{Step: step, Accum: 1, RNG: StepRNG(seed, step, 0)}
			up, err := o.Step(st, b)
			if err != nil {
				t.Fatal(err)
			}
			x, x0, X0 := make([]float32, s.B*per), make([]float32, s.B*per), make([]float32, s.B*per)
			dev.ToHost(x, oi.reg.x)
			dev.ToHost(x0, oi.reg.x0)
			dev.ToHost(X0, b.X0)
			var sum float64
			n, noisy := 0, 0
			for bi := 0; bi < s.B; bi++ {
				for f := 0; f < s.F; f++ {
					tf := oi.reg.th[bi*s.F+f]
					for c := 0; c < C; c++ {
						off := ((bi*C+c)*s.F + f) * HW
						for i := off; i < off+HW; i++ {
							if tf == 0 {
								if x[i] != X0[i] {
									t.Fatalf("clean chunk (sample %d, frame %d) is not x0", bi, f)
								}
								continue
							}
							d := float64(x0[i] - X0[i])
							sum += d * d
							noisy++
						}
					}
					if tf == 0 {
						nClean++
					}
					n += C * HW
				}
			}
			if noisy == 0 {
				continue
			}
			want := sum / float64(n)
			if clean {
				want *= 5.0 / 4
			}
			if got := up.Metrics["loss"]; math.Abs(got-want) > 1e-4*want {
				t.Fatalf("clean_context %v step %d: loss %g, mean over the noisy chunks %g", clean, step, got, want)
			}
		}
		if clean && nClean == 0 || !clean && nClean > 0 {
			t.Fatalf("clean_context %v: %d clean chunks in 8 steps of %d chunks", clean, nClean, s.B*s.F)
		}
	}
}
