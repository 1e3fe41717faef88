package sampler

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// Independent references for the schedules (issue 15: the schedule checks compared the code with
// itself). The shifted flow-matching schedule is Wan2.1's get_sampling_sigmas
// (wan/utils/fm_solvers.py): σ = linspace(1, 0, N+1)[:N], σ' = s·σ/(1+(s−1)·σ). Here it is written
// in its other algebraic form, σ' = 1/(1 + (1/σ − 1)/s), and as literal numbers worked by hand.

// shiftRef is the shift in the form 1/(1 + (1/σ − 1)/s) (σ > 0), algebraically equal to
// s·σ/(1+(s−1)·σ) but computed by other operations.
func shiftRef(sigma, s float64) float64 {
	if sigma == 0 {
		return 0
	}
	return 1 / (1 + (1/sigma-1)/s)
}

func TestScheduleLiterals(t *testing.T) {
	near := func(what string, got, want []float64) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("%s = %v (%d values), want %v", what, got, len(got), want)
		}
		for i := range want {
			if math.Abs(got[i]-want[i]) > 1e-12 {
				t.Fatalf("%s[%d] = %.15g, want %.15g (all: %v)", what, i, got[i], want[i], got)
			}
		}
	}
	// 4 Euler steps at shift 3: σ = 1, .75, .5, .25, 0 → 3σ/(1+2σ) = 1, 2.25/2.5, 1.5/2, .75/1.5, 0.
	near("EulerSigmas(4, 3)", EulerSigmas(4, 3), []float64{1, 0.9, 0.75, 0.5, 0})
	// Self-Forcing's warped 4-step list at shift 5 (t = 1000, 937.5, 833.33, 625): 5σ/(1+4σ) at
	// σ = 1, .75, .5, .25 = 1, 3.75/4, 2.5/3, 1.25/2.
	near("DenoisingList(4, 5)", DenoisingList(4, 5), []float64{1, 0.9375, 2.5 / 3, 0.625})
	near("DenoisingList(4, 1)", DenoisingList(4, 1), []float64{1, 0.75, 0.5, 0.25})
	near("DenoisingList(1, 5)", DenoisingList(1, 5), []float64{1})
	near("DenoisingList(2, 3)", DenoisingList(2, 3), []float64{1, 0.75})
	// Wan2.1's default: 50 steps at shift 5. Three levels by hand: σ = .98 → 4.9/4.92, σ = .5 → 2.5/3,
	// σ = .02 → .1/1.08.
	e := EulerSigmas(50, 5)
	for _, c := range []struct {
		i    int
		want float64
	}{{0, 1}, {1, 4.9 / 4.92}, {25, 2.5 / 3}, {49, 0.1 / 1.08}, {50, 0}} {
		if math.Abs(e[c.i]-c.want) > 1e-12 {
			t.Fatalf("EulerSigmas(50, 5)[%d] = %.15g, want %.15g", c.i, e[c.i], c.want)
		}
	}
	// every level of several grids against the other form, on σ_i = 1 − i/N computed as (N−i)/N
	for _, c := range []struct {
		n int
		s float64
	}{{1, 1}, {7, 1}, {20, 3}, {50, 5}, {1000, 5}, {9, 0.5}} {
		g := EulerSigmas(c.n, c.s)
		if len(g) != c.n+1 {
			t.Fatalf("EulerSigmas(%d, %g) has %d values, want %d", c.n, c.s, len(g), c.n+1)
		}
		for i := 0; i <= c.n; i++ {
			want := shiftRef(float64(c.n-i)/float64(c.n), c.s)
			if math.Abs(g[i]-want) > 1e-13 {
				t.Fatalf("EulerSigmas(%d, %g)[%d] = %.15g, the other form gives %.15g", c.n, c.s, i, g[i], want)
			}
		}
	}
	r := rand.New(rand.NewPCG(7, 7))
	for k := 0; k < 1000; k++ {
		sigma, s := r.Float64(), 0.2+10*r.Float64()
		if got, want := Shift(sigma, s), shiftRef(sigma, s); math.Abs(got-want) > 1e-13 {
			t.Fatalf("Shift(%g, %g) = %.15g, the other form gives %.15g", sigma, s, got, want)
		}
	}
	// snapping a list to a 50-level shift-3 grid: each level goes to the nearest 3σ/(1+2σ),
	// σ = (50−i)/50, found here by brute force over i on the other form
	list := []float64{0.97, 0.8, 0.33, 0.051}
	snapped := Snap(list, 50, 3)
	for k, l := range list {
		best := 1.0
		for i := 0; i <= 50; i++ {
			if g := shiftRef(float64(50-i)/50, 3); math.Abs(g-l) < math.Abs(best-l) {
				best = g
			}
		}
		if math.Abs(snapped[k]-best) > 1e-13 {
			t.Fatalf("Snap(%g) to 50 levels of shift 3 = %.15g, nearest level is %.15g", l, snapped[k], best)
		}
	}
}

// linearNet is v = x (the same at every t): it records the timestep of every call (row 0, frame 0).
func linearNet(dev kernels.Device, ts *[]float64) *hostNet {
	return &hostNet{dev: dev, f: func(v, x, t, ctx []float32, B int) {
		*ts = append(*ts, float64(t[0]))
		copy(v, x)
	}}
}

// The samplers call the network at the schedule's timesteps and take the steps the formulas say:
// with v = x an Euler step multiplies x by 1 + (σ_{i+1} − σ_i), so N steps from the noise give
// ε·Π(1 + Δσ); the timesteps and the product are written out by hand.
func TestSamplersVisitTheSchedule(t *testing.T) {
	dev := kernels.CPU()
	cases := []struct {
		o      Options
		ts     []float64 // the network's timesteps, 1000·σ
		factor float64   // latents / first noise
	}{
		// Euler, 4 steps, shift 3: σ = 1, .9, .75, .5, 0
		{Options{Method: Euler, Steps: 4, Shift: 3}, []float64{1000, 900, 750, 500}, 0.9 * 0.85 * 0.75 * 0.5},
		// Euler, 2 steps, no shift: σ = 1, .5, 0
		{Options{Method: Euler, Steps: 2}, []float64{1000, 500}, 0.5 * 0.5},
		// fewstep-ode on the shift-5 list 1, .9375, 5/6, .625: x ← x·(1 + Δσ), then x0 = x·(1 − σ_last)
		{Options{Method: FewStepODE, Steps: 4, Shift: 5}, []float64{1000, 937.5, 2500.0 / 3, 625},
			(1 - 0.0625) * (1 - (0.9375 - 2.5/3)) * (1 - (2.5/3 - 0.625)) * (1 - 0.625)},
		// fewstep, one step: x0 = x − 1·v = 0
		{Options{Method: FewStep, Steps: 1, Shift: 5}, []float64{1000}, 0},
		// fewstep, 4 steps at shift 5: only the timesteps (fresh noise between the steps); the last
		// x0 = x·(1 − .625)
		{Options{Method: FewStep, Steps: 4, Shift: 5}, []float64{1000, 937.5, 2500.0 / 3, 625}, math.NaN()},
		// consistency, 4 steps at shift 3 snapped to a 50-level grid: the list 1, .9, .75, .5 (3σ/(1+2σ)
		// at 1, .75, .5, .25); on the grid's u = (50−i)/50, .9 lies between u = .76 (19/21 ≈ .90476)
		// and u = .74 (.895161) and goes to the nearer 19/21; .75 is u = .5; .5 lies between u = .26
		// (.78/1.52 = 39/76 ≈ .51316) and u = .24 (.72/1.48 ≈ .48649) and goes to 39/76
		{Options{Method: Consistency, Steps: 4, Shift: 3, GridN: 50}, []float64{1000, 19000.0 / 21, 750, 39000.0 / 76}, math.NaN()},
	}
	for _, c := range cases {
		var ts []float64
		b := testBatch(2, 1, 2, []float32{0, 0}, 0)
		o := c.o
		r, err := Sample(linearNet(dev, &ts), b, o)
		if err != nil {
			t.Fatal(err)
		}
		if len(ts) != len(c.ts) {
			t.Fatalf("%s %d steps shift %g: network called at t = %v, want %v", o.Method, o.Steps, o.Shift, ts, c.ts)
		}
		for i := range ts {
			if math.Abs(ts[i]-c.ts[i]) > 1e-3 {
				t.Fatalf("%s %d steps shift %g: network called at t = %v, want %v", o.Method, o.Steps, o.Shift, ts, c.ts)
			}
		}
		if math.IsNaN(c.factor) {
			continue
		}
		noise := make([]float32, len(r.Latents))
		drawNoise(noise, b.Seeds, 0, 0)
		for i, v := range r.Latents {
			want := c.factor * float64(noise[i])
			if math.Abs(float64(v)-want) > 1e-5*(1+math.Abs(want)) {
				t.Fatalf("%s %d steps shift %g: latent %d = %g, want %g (ε·%g)", o.Method, o.Steps, o.Shift, i, v, want, c.factor)
			}
		}
	}
}
