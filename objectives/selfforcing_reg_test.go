package objectives

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// selfforcing with regression_weight λ: the generator step adds λ times the gradient of odeinit's
// ODE regression to the DMD gradient. From the same weights, batch and draws, the student's G at λ
// minus its G at 0 is that extra gradient D; along u = D/|D| the central difference of the logged
// reg_loss must equal |D|/λ (the regression draws its levels after the rollout, so everything else
// in the step is the same at every λ). Without trajectories in the batch the step says so.
func TestSelfForcingRegression(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	s := testShape
	s.F, s.ChunkFrames = 4, 2
	const lambda = 3.0
	mk := func(w float64) (*Env, Objective, *Batch) {
		o, err := New("selfforcing", map[string]any{"regression_weight": w, "generator_update_ratio": 1,
			"denoising_timesteps": []float64{1000, 500}})
		if err != nil {
			t.Fatal(err)
		}
		env := testEnv(t, o, s, seed)
		rng := rand.New(rand.NewPCG(uint64(seed), 5))
		b := testBatch(env, s, rng)
		odeBatch(env, b, []float32{1, 0.5, 0}, rng)
		return env, o, b
	}
	step := func(env *Env, o Objective, b *Batch) (map[string]float64, []float32) {
		for _, r := range env.Roles {
			if r.G != nil {
				env.Dev.Zero(r.G)
			}
		}
		up, err := o.Step(&Step{Step: 1, Accum: 1, RNG: StepRNG(seed, 1, 0)}, b)
		if err != nil {
			t.Fatal(err)
		}
		return up.Metrics, hostOf(env.Dev, env.Roles[Student].G)
	}
	env0, o0, b0 := mk(0)
	m0, g0 := step(env0, o0, b0)
	if _, ok := m0["reg_loss"]; ok {
		t.Fatal("regression_weight 0 logs a reg_loss")
	}
	env, o, b := mk(lambda)
	m1, g1 := step(env, o, b)
	if m1["gen_loss"] != m0["gen_loss"] {
		t.Fatalf("the DMD loss moved with λ: %g vs %g", m1["gen_loss"], m0["gen_loss"])
	}
	d := make([]float64, len(g1))
	var norm float64
	for i := range d {
		d[i] = float64(g1[i]) - float64(g0[i])
		norm += d[i] * d[i]
	}
	norm = math.Sqrt(norm)
	if !(norm > 0) {
		t.Fatalf("λ = %g adds no gradient (|D| = %g)", lambda, norm)
	}
	student := env.Roles[Student]
	w0 := hostOf(env.Dev, student.W)
	h := 1e-3
	reg := func(a float64) float64 {
		w := make([]float32, len(w0))
		for i := range w {
			w[i] = w0[i] + float32(a*h*d[i]/norm)
		}
		env.Dev.FromHost(student.W, w)
		m, _ := step(env, o, b)
		return m["reg_loss"]
	}
	fd := (reg(1) - reg(-1)) / (2 * h)
	t.Logf("|D|/λ = %.6g, central difference of reg_loss along D = %.6g", norm/lambda, fd)
	if math.Abs(fd-norm/lambda) > 0.01*norm/lambda {
		t.Fatalf("the added gradient is %.6g·λ along itself, reg_loss changes at %.6g", norm/lambda, fd)
	}

	b.TrajX = nil
	env.Dev.FromHost(student.W, w0)
	if _, err := o.Step(&Step{Step: 1, Accum: 1, RNG: StepRNG(seed, 1, 0)}, b); err == nil || !strings.Contains(err.Error(), "ode-pairs") {
		t.Fatalf("regression without trajectories: %v", err)
	}
	if _, err := New("selfforcing", map[string]any{"regression_weight": -1}); err == nil {
		t.Fatal("regression_weight -1: no error")
	}
}
