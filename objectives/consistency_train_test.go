package objectives_test

import (
	"math"
	"testing"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/models"
)

// odeError is the mean relative squared error ‖x − x_ode‖²/‖x_ode‖² of net's few-step samples
// against the teacher's 20-step Euler ODE solution (CFG w) from the same noise.
func odeError(net, teacher *models.DiT, m *modes, steps int, w float32) float64 {
	var e float64
	for c := 0; c < kClasses; c++ {
		ref := sample(teacher, m, c, 8, 20, false, w, 99)
		got := sample(net, m, c, 8, steps, true, 1, 99)
		for b := range ref {
			var num, den float64
			for i := range ref[b] {
				d := float64(got[b][i] - ref[b][i])
				num += d * d
				den += float64(ref[b][i]) * float64(ref[b][i])
			}
			e += num / den / float64(len(ref)*kClasses)
		}
	}
	return e
}

// Consistency distillation moves the one-step sample (f(x, σ=1) ≈ x − v) from the teacher's
// one-step guess toward the end of the teacher's ODE trajectory from the same noise.
func TestConsistencyTrains(t *testing.T) {
	if testing.Short() {
		t.Skip("trains for real (-short)")
	}
	path, teacher, m := trainTeacher(t)
	const w = 1.5
	e0 := odeError(teacher, teacher, m, 1, w)
	d0, a0 := evalNet(teacher, m, 1, true, 1)
	job := baseJob(t.TempDir(), "consistency", 150)
	job.Params = map[string]any{"grid_n": 20, "skip": 2, "loss": "l2", "cfg": w}
	job.Roles["teacher"] = config.Role{Weights: path}
	st := adam(1e-3)
	st.EMADecay = 0.95 // LCM's target network
	job.Roles["student"] = st
	tr, ms := trainSteps(t, job, m, models.Shape{B: mB, F: mF, H: mH, W: mW, L: mL})
	e1 := odeError(tr.Net("student"), teacher, m, 1, w)
	d1, a1 := evalNet(tr.Net("student"), m, 1, true, 1)
	t.Logf("1-step vs the teacher's ODE (cfg %.1f): relative error %.3f → %.3f; 1-step dist %.3f acc %.2f → %.3f %.2f; loss %.4f → %.4f",
		w, e0, e1, d0, a0, d1, a1, meanOf(ms, "loss", 0, 20), meanOf(ms, "loss", len(ms)-20, len(ms)))
	if !(e1 < 0.7*e0 && d1 < d0 && a1 >= 0.9) || math.IsNaN(e1) {
		t.Fatalf("consistency: 1-step ODE error %.3f (teacher's one step %.3f), dist %.3f acc %.2f (teacher %.3f %.2f)", e1, e0, d1, a1, d0, a0)
	}
}
