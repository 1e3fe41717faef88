package objectives_test

import (
	"math"
	"testing"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/models"
)

// odeErrors are the relative squared errors ‖x − x_ode‖²/‖x_ode‖² of net's few-step samples
// against the teacher's 20-step Euler ODE solution (CFG w) from the same noise, 64 noises per class
// (a sample that lands on the other mode costs ≈ 4: the measure needs many noises).
func odeErrors(net, teacher *models.DiT, m *modes, steps int, w float32) []float64 {
	var e []float64
	for c := 0; c < kClasses; c++ {
		ref := sample(teacher, m, c, 64, 20, false, w, 99)
		got := sample(net, m, c, 64, steps, true, 1, 99)
		for b := range ref {
			var num, den float64
			for i := range ref[b] {
				d := float64(got[b][i] - ref[b][i])
				num += d * d
				den += float64(ref[b][i]) * float64(ref[b][i])
			}
			e = append(e, num/den)
		}
	}
	return e
}

func mean(x []float64) float64 {
	var s float64
	for _, v := range x {
		s += v / float64(len(x))
	}
	return s
}

// Consistency distillation moves the one-step sample (f(x, σ=1) ≈ x − v) from the teacher's
// one-step guess toward the end of the teacher's ODE trajectory from the same noise.
func TestConsistencyTrains(t *testing.T) {
	if testing.Short() {
		t.Skip("trains for real (-short)")
	}
	path, teacher, m := trainTeacher(t)
	const w = 1.5
	e0 := odeErrors(teacher, teacher, m, 1, w)
	d0 := dists(teacher, m, 16, 1, true, 1)
	job := baseJob(t.TempDir(), "consistency", 300)
	job.Seed = freshSeed(t)
	job.Params = map[string]any{"grid_n": 20, "skip": 2, "loss": "l2", "cfg": w}
	job.Roles["teacher"] = config.Role{Weights: path}
	st := adam(2e-3)
	st.Schedule, st.Warmup = "cosine", 20
	st.EMADecay = 0.95 // LCM's target network
	job.Roles["student"] = st
	tr, ms := trainSteps(t, job, m, models.Shape{B: mB, F: mF, H: mH, W: mW, L: mL})
	e1 := odeErrors(tr.Net("student"), teacher, m, 1, w)
	d1 := dists(tr.Net("student"), m, 16, 1, true, 1)
	ge, se := pairedGain(e0, e1)
	gd, sd := pairedGain(d0, d1)
	t.Logf("1-step vs the teacher's ODE (cfg %.1f), %d noises: relative error %.3f → %.3f (gain %.3f ± %.3f); 1-step mode distance %.3f → %.3f (gain %.3f ± %.3f); loss %.4f → %.4f",
		w, len(e0), mean(e0), mean(e1), ge, se, mean(d0), mean(d1), gd, sd, meanOf(ms, "loss", 0, 20), meanOf(ms, "loss", len(ms)-20, len(ms)))
	if !(ge > 2*se && gd > 3*sd) || math.IsNaN(ge) {
		t.Fatalf("consistency: the 1-step gains (ODE error %.3f ± %.3f, mode distance %.3f ± %.3f) are not 2 and 3 standard errors above 0", ge, se, gd, sd)
	}
}
