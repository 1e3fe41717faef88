package objectives

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// DMDGrad (selfforcing's DMD on the whole video): a sample whose gradient is not finite (a NaN
// prompt embedding) gets a zero gradient, the others keep the host formula
// (x0_fake − x0_real)·per / Σ|x − x0_real| / numel, and the loss stays finite.
func TestDMDGradNonFiniteSampleZeroed(t *testing.T) {
	o, err := New("dmd", map[string]any{"regression_weight": 0, "cfg": 2})
	if err != nil {
		t.Fatal(err)
	}
	env := testEnv(t, o, testShape, 7)
	dev := env.Dev
	b := testBatch(env, testShape, rand.New(rand.NewPCG(7, 2)))
	B := testShape.B
	ctx := make([]float32, b.Ctx.Numel())
	dev.ToHost(ctx, b.Ctx)
	bad := B - 1
	lt := len(ctx) / B
	for i := bad * lt; i < (bad+1)*lt; i++ {
		ctx[i] = float32(math.NaN())
	}
	dev.FromHost(b.Ctx, ctx)
	teacher, critic := env.Roles[Teacher].Net, env.Roles[Critic].Net
	g := NewDMDGradOn(env, teacher, critic, critic.NewPass(testShape), SigmaLaw{Law: "uniform", Min: 0.02, Max: 0.98, Shift: 1}, 2)
	x := b.X0 // the generator's sample: any video [B,C,F,H,W]
	loss, _ := g.Compute(&Step{Step: 0, Accum: 1, RNG: StepRNG(11, 0, 0)}, x, b.Ctx, b.Null)
	if math.IsNaN(loss) || math.IsInf(loss, 0) || !(loss > 0) {
		t.Fatalf("loss %g with one NaN sample, want finite and > 0", loss)
	}
	host := func(x *kernels.Tensor) []float32 {
		h := make([]float32, x.Numel())
		dev.ToHost(h, x)
		return h
	}
	xh, x0r, x0f, gr := host(x), host(g.x0Real), host(g.x0Fake), host(g.Grad)
	checkDMDGradSampleZeroed(t, gr, xh, x0r, x0f, B, bad)
}

// Env.ZeroGrad zeroes a trainable role's gradients and leaves a frozen role (no G) and an unknown
// name alone.
func TestEnvZeroGrad(t *testing.T) {
	o, err := New("dmd", map[string]any{"regression_weight": 0})
	if err != nil {
		t.Fatal(err)
	}
	env := testEnv(t, o, testShape, 7)
	st := env.Roles[Student]
	g := make([]float32, st.G.Numel())
	for i := range g {
		g[i] = 1
	}
	env.Dev.FromHost(st.G, g)
	env.ZeroGrad(Student)
	env.Dev.ToHost(g, st.G)
	for i, v := range g {
		if v != 0 {
			t.Fatalf("ZeroGrad(student): G[%d] = %g", i, v)
		}
	}
	if env.Roles[Teacher].G != nil {
		t.Fatal("the teacher is trainable in this env: the test needs a frozen role")
	}
	env.ZeroGrad(Teacher) // frozen: nothing to zero
	env.ZeroGrad("nobody")
}
