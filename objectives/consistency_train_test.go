package objectives_test

import (
	"math"
	"testing"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/objectives"
	"github.com/fewstep/fewstep/trainer"
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

// params.target_decay moves the consistency target into a role of its own, so that the "ema" that
// is sampled from may average more slowly. With μ = ema_decay the run is the default one step for
// step (the same losses, the target equal to the default's ema); with a slower ema the losses stay
// the same (the ema is read by nothing in the step) and the ema is the recurrence
// e = d·e + (1−d)·w of the student's weights taken after every step, computed here on the host.
func TestConsistencyTargetDecay(t *testing.T) {
	m := newModes(tinyCfg(t))
	const steps, mu = 6, 0.9
	seed := freshSeed(t)
	build := func(target, emaDecay float64) *trainer.Trainer {
		job := baseJob(t.TempDir(), "consistency", steps)
		job.Seed = seed
		job.Params = map[string]any{"grid_n": 10, "skip": 2, "cfg": 1.5}
		if target > 0 {
			job.Params["target_decay"] = target
		}
		st := adam(1e-2)
		st.EMADecay = emaDecay
		job.Roles["student"] = st
		tr, err := trainer.New(trainer.Options{
			Job: job, Dev: kernels.CPU(), Model: m.cfg, Shape: models.Shape{B: mB, F: mF, H: mH, W: mW, L: mL},
			Null: make([]float32, mL*m.cfg.TextDim), Source: &source{m: m, noDrop: true}, RandomInit: true,
		})
		if err != nil {
			t.Fatal(err)
		}
		return tr
	}
	host := func(tr *trainer.Trainer, role string) []float32 {
		net := tr.Net(role)
		if net == nil {
			t.Fatalf("no role %s", role)
		}
		w := make([]float32, net.W.Numel())
		net.Dev.ToHost(w, net.W)
		return w
	}
	ref, same, slow := build(0, mu), build(mu, mu), build(mu, 0.5)
	e := host(slow, "student") // the slow ema's recurrence, from the student's start
	for n := 0; n < steps; n++ {
		var loss [3]float64
		for i, tr := range []*trainer.Trainer{ref, same, slow} {
			mt, err := tr.TrainStep()
			if err != nil {
				t.Fatal(err)
			}
			loss[i] = mt["loss"]
		}
		if loss[1] != loss[0] || loss[2] != loss[0] || loss[0] == 0 {
			t.Fatalf("step %d: loss %v (default, target_decay = ema_decay, slower ema): want the same nonzero loss", n+1, loss)
		}
		for i, w := range host(slow, "student") {
			e[i] = 0.5*e[i] + 0.5*w
		}
	}
	if d := maxAbsDiff(host(same, objectives.Target), host(ref, "ema")); d != 0 {
		t.Errorf("target_decay = ema_decay: the target differs from the default's ema by %g", d)
	}
	if d := maxAbsDiff(host(slow, objectives.Target), host(ref, "ema")); d != 0 {
		t.Errorf("slower ema: the target differs from the default's ema by %g", d)
	}
	got := host(slow, "ema")
	if d, moved := maxAbsDiff(got, e), maxAbsDiff(got, host(slow, objectives.Target)); d > 1e-6 || moved < 1e-4 {
		t.Errorf("the ema at 0.5 is %g from the host recurrence (want ≤ 1e-6) and %g from the target (want it to differ)", d, moved)
	}
	if _, err := objectives.New("consistency", map[string]any{"target_decay": 1.0}); err == nil {
		t.Error("target_decay 1 accepted")
	}
}

func maxAbsDiff(a, b []float32) float64 {
	var d float64
	for i := range a {
		d = math.Max(d, math.Abs(float64(a[i]-b[i])))
	}
	return d
}
