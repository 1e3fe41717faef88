package objectives

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// The regression term of dmd (params.regression_weight λ) adds exactly the gradient of
// λ·reg_loss to the student: G(λ) − G(0) of one generator step, same seed, is checked against the
// central difference of λ·reg_loss along it (the term's noise and level are drawn after the DMD
// part, so they are the same in both runs and a function of the seed only). Both targets: real
// latents (regression: data) and teacher ODE pairs (regression: ode).
func TestDMDRegressionGradient(t *testing.T) {
	for _, mode := range []string{"data", "ode"} {
		t.Run(mode, func(t *testing.T) { testDMDRegressionGradient(t, mode) })
	}
}

func testDMDRegressionGradient(t *testing.T, mode string) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	const lam = 0.7
	type run struct {
		o   Objective
		env *Env
		b   *Batch
	}
	mk := func(l float64) run {
		o, err := New("dmd", map[string]any{"regression_weight": l, "regression": mode, "cfg": 2, "generator_update_ratio": 1})
		if err != nil {
			t.Fatal(err)
		}
		env := testEnv(t, o, testShape, seed)
		rng := rand.New(rand.NewPCG(uint64(seed), 2))
		b := testBatch(env, testShape, rng)
		if mode == "ode" { // the levels of dmd's default list, then the end
			odeBatch(env, b, []float32{1, 0.75, 0.5, 0.25, 0}, rng)
		}
		return run{o, env, b}
	}
	step := func(r run) ([]float32, map[string]float64) {
		for _, rr := range r.env.Roles {
			if rr.G != nil {
				r.env.Dev.Zero(rr.G)
			}
		}
		up, err := r.o.Step(&Step{Step: 0, Accum: 1, RNG: StepRNG(11, 0, 0)}, r.b)
		if err != nil {
			t.Fatal(err)
		}
		g := r.env.Roles[Student].G
		h := make([]float32, g.Numel())
		r.env.Dev.ToHost(h, g)
		return h, up.Metrics
	}
	with, without := mk(lam), mk(0)
	g1, m1 := step(with)
	g0, m0 := step(without)
	if _, ok := m0["reg_loss"]; ok {
		t.Fatal("regression_weight 0 reported a reg_loss")
	}
	if !(m1["reg_loss"] > 0) {
		t.Fatalf("reg_loss %v", m1["reg_loss"])
	}
	greg := make([]float64, len(g1)) // the regression term's gradient
	var norm float64
	for i := range g1 {
		greg[i] = float64(g1[i]) - float64(g0[i])
		norm += greg[i] * greg[i]
	}
	norm = math.Sqrt(norm)
	if norm == 0 || math.IsNaN(norm) {
		t.Fatalf("regression gradient norm %v", norm)
	}
	W := with.env.Roles[Student].W
	w0 := make([]float32, W.Numel())
	with.env.Dev.ToHost(w0, W)
	h := 2e-3 * math.Min(1, 10/norm)
	shifted := func(a float64) float64 {
		w := make([]float32, len(w0))
		for i := range w {
			w[i] = w0[i] + float32(a*h*greg[i]/norm)
		}
		with.env.Dev.FromHost(W, w)
		_, m := step(with)
		return lam * m["reg_loss"]
	}
	fd := (shifted(1) - shifted(-1)) / (2 * h)
	t.Logf("|G(λ) − G(0)| = %.6g, central difference of λ·reg_loss along it = %.6g", norm, fd)
	if math.Abs(fd-norm) > 0.01*norm {
		t.Fatalf("regression gradient norm %.6g but λ·reg_loss changes at %.6g along it", norm, fd)
	}
}

func TestDMDRegressionWeightErrors(t *testing.T) {
	for _, l := range []float64{-1, math.Inf(1), math.NaN()} {
		if _, err := New("dmd", map[string]any{"regression_weight": l}); err == nil {
			t.Errorf("regression_weight %v: no error", l)
		}
	}
	if _, err := New("dmd", map[string]any{"regression": "teacher"}); err == nil || !strings.Contains(err.Error(), "params.regression") {
		t.Errorf("regression: teacher: %v, want an error naming params.regression", err)
	}
	// regression: ode on a batch without trajectories, and on trajectories that miss a level
	o, err := New("dmd", map[string]any{"regression_weight": 1, "regression": "ode", "generator_update_ratio": 1})
	if err != nil {
		t.Fatal(err)
	}
	env := testEnv(t, o, testShape, 3)
	rng := rand.New(rand.NewPCG(3, 4))
	b := testBatch(env, testShape, rng)
	if _, err := o.Step(&Step{Step: 0, Accum: 1, RNG: StepRNG(1, 0, 0)}, b); err == nil || !strings.Contains(err.Error(), "ode-pairs") {
		t.Errorf("no trajectories: %v, want an error pointing at fewstep data ode-pairs", err)
	}
	odeBatch(env, b, []float32{1, 0.7, 0.4, 0.1, 0}, rng)
	for seed := int64(0); seed < 8; seed++ { // some draw of the level hits one the trajectories lack
		if _, err = o.Step(&Step{Step: 0, Accum: 1, RNG: StepRNG(seed, 0, 0)}, b); err != nil {
			break
		}
	}
	if err == nil || !strings.Contains(err.Error(), "lack σ") {
		t.Errorf("trajectory levels 1/0.7/0.4/0.1: %v, want an error naming the missing level", err)
	}
}
