package objectives

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// dmd's default rollout is backward simulation: the generator's sample comes from noise and the
// prompts alone, so it is the same bit for bit whatever the batch's latents are, and a text-only
// batch (X0 nil, objective.go's Batch) works; rollout: data starts from the latents instead.
func TestDMDBackwardRolloutIgnoresLatents(t *testing.T) {
	hosts := func(env *Env, x *kernels.Tensor) []float32 {
		h := make([]float32, x.Numel())
		env.Dev.ToHost(h, x)
		return h
	}
	for _, rollout := range []string{"backward", "data"} {
		o, err := New("dmd", map[string]any{"regression_weight": 0, "generator_update_ratio": 1, "rollout": rollout})
		if err != nil {
			t.Fatal(err)
		}
		env := testEnv(t, o, testShape, 3)
		b := testBatch(env, testShape, rand.New(rand.NewPCG(3, 2)))
		d := o.(*dmd)
		other := *b // other latents: 3·x0 + 1
		other.X0 = env.Dev.Alloc(kernels.F32, b.X0.Shape...)
		h := hosts(env, b.X0)
		for i := range h {
			h[i] = 3*h[i] + 1
		}
		env.Dev.FromHost(other.X0, h)
		// several steps: the random exit level differs (rollout data from σ = 1 is noise alone)
		differ := 0
		var first []float32
		for n := 0; n < 6; n++ {
			step := func() *Step { return &Step{Step: n, Accum: 1, RNG: StepRNG(11, n, 0)} }
			x, err := d.generate(step(), b)
			if err != nil {
				t.Fatal(err)
			}
			one := hosts(env, x)
			if n == 0 {
				first = one
			}
			x, err = d.generate(step(), &other)
			if err != nil {
				t.Fatal(err)
			}
			for i, v := range hosts(env, x) {
				if v != one[i] {
					differ++
					break
				}
			}
		}
		switch {
		case rollout == "backward" && differ > 0:
			t.Fatalf("rollout backward: the generator's sample changed with the batch's latents at %d of 6 steps", differ)
		case rollout == "data" && differ == 0:
			t.Fatal("rollout data: the generator's sample never changed with the batch's latents in 6 steps")
		}
		step := func() *Step { return &Step{Step: 0, Accum: 1, RNG: StepRNG(11, 0, 0)} }
		if rollout == "backward" {
			textOnly := *b
			textOnly.X0 = nil
			x, err := d.generate(step(), &textOnly)
			if err != nil {
				t.Fatalf("rollout backward on a text-only batch: %v", err)
			}
			for i, v := range hosts(env, x) {
				if v != first[i] {
					t.Fatalf("rollout backward on a text-only batch: element %d = %g, with latents %g", i, v, first[i])
				}
			}
		}
	}
}

// A sample whose DMD gradient is not finite (here a NaN prompt embedding) gets a zero gradient;
// the other samples' gradients are untouched and still equal the host formula
// (x0_fake − x0_real)·per / Σ|x − x0_real| / numel, and the generator loss stays finite.
func TestDMDNonFiniteSampleZeroed(t *testing.T) {
	o, err := New("dmd", map[string]any{"regression_weight": 0, "cfg": 2, "generator_update_ratio": 1})
	if err != nil {
		t.Fatal(err)
	}
	env := testEnv(t, o, testShape, 5)
	b := testBatch(env, testShape, rand.New(rand.NewPCG(5, 2)))
	B := testShape.B
	ctx := make([]float32, b.Ctx.Numel())
	env.Dev.ToHost(ctx, b.Ctx)
	bad := B - 1 // the last sample's prompt is NaN
	lt := len(ctx) / B
	for i := bad * lt; i < (bad+1)*lt; i++ {
		ctx[i] = float32(math.NaN())
	}
	env.Dev.FromHost(b.Ctx, ctx)
	d := o.(*dmd)
	step := func() *Step { return &Step{Step: 0, Accum: 1, RNG: StepRNG(11, 0, 0)} }
	x, err := d.generate(step(), b)
	if err != nil {
		t.Fatal(err)
	}
	host := func(x *kernels.Tensor) []float32 {
		h := make([]float32, x.Numel())
		env.Dev.ToHost(h, x)
		return h
	}
	xh := host(x)
	up, err := o.Step(step(), b)
	if err != nil {
		t.Fatal(err)
	}
	if l := up.Metrics["gen_loss"]; math.IsNaN(l) || math.IsInf(l, 0) || !(l > 0) {
		t.Fatalf("gen_loss %g with one NaN sample, want finite and > 0", l)
	}
	x0r, x0f, g := host(d.x0Real), host(d.x0Fake), host(d.grad)
	checkDMDGradSampleZeroed(t, g, xh, x0r, x0f, B, bad)
}
