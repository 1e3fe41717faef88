package trainer

import (
	"testing"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/objectives"
)

// syncDev counts the calls that bring values to the host (and so wait for the device) that go
// through it: ToHost, Dot, SumAbsGroups, Sync, and the Wait of a ReadAsync.
type syncDev struct {
	kernels.Device
	n *int
}

func (d syncDev) ToHost(dst []float32, src *kernels.Tensor) { *d.n++; d.Device.ToHost(dst, src) }
func (d syncDev) Dot(a, b *kernels.Tensor) float64          { *d.n++; return d.Device.Dot(a, b) }
func (d syncDev) SumAbsGroups(dst []float64, x *kernels.Tensor) {
	*d.n++
	d.Device.SumAbsGroups(dst, x)
}
func (d syncDev) Sync() error { *d.n++; return d.Device.Sync() }

// ReadAsync's Wait waits for the device too (for the copy only, not what was queued after it).
func (d syncDev) ReadAsync(src *kernels.Tensor) kernels.Readback {
	return countedReadback{d.Device.ReadAsync(src), d.n}
}

type countedReadback struct {
	kernels.Readback
	n *int
}

func (r countedReadback) Wait(dst []float32) error { *r.n++; return r.Readback.Wait(dst) }

// TestOneNormReadbackPerStep: the optimizer part of a step (gradient norms for the clip and the
// non-finite guard, clip, AdamW) waits for the device once, however many roles it steps: the
// "test-adamw" objective steps one role on odd steps and two on even ones (its own readbacks go
// to the tensors' device, not through the counting one), and each step makes exactly one
// synchronizing call through the trainer's device: TrainStep's wait for the step's readback
// (optim.go; Run takes it a step later, TestRunPipelined). With a Dot per role it made two on
// even steps.
// The norms are the exact ones (TestAdamWAgainstFloat64 checks them and the clip against float64).
func TestOneNormReadbackPerStep(t *testing.T) {
	job := toyJob(t.TempDir(), 4)
	job.Objective = "test-adamw"
	job.Train.GradAccum = 2
	job.Train.ClipNorm = 1
	job.Roles = map[string]config.Role{
		objectives.Student: {LR: 0.05, Betas: []float64{0.9, 0.99}, Eps: 1e-3},
		objectives.Critic:  {LR: 0.02, Betas: []float64{0.8, 0.9}, Eps: 1e-3},
	}
	tr, _ := newToy(t, job)
	n := 0
	tr.opt.Dev = syncDev{tr.opt.Dev, &n}
	for step := 1; step <= 4; step++ {
		n = 0
		m, err := tr.TrainStep()
		if err != nil {
			t.Fatal(err)
		}
		roles := 1 + (1 - step%2)
		for _, name := range []string{objectives.Student, objectives.Critic}[:roles] {
			if g, ok := m["grad_norm/"+name]; !ok || !(g > 0) {
				t.Fatalf("step %d: grad_norm/%s = %v, %v", step, name, g, ok)
			}
		}
		if n != 1 {
			t.Errorf("step %d (%d roles stepped): %d synchronizing calls through the trainer's device, want 1", step, roles, n)
		}
	}
}

// syncCount is a syncDev that also counts SumAbsGroups apart: DMD's per-sample normalization,
// which the step's math needs on the host (not a logged value).
type syncCount struct {
	syncDev
	sumAbs *int
}

func (d syncCount) SumAbsGroups(dst []float64, x *kernels.Tensor) {
	*d.sumAbs++
	d.syncDev.SumAbsGroups(dst, x)
}

// TestDeferredLosses: with the losses queued on the device (objectives.Step.Defer) a flowmatch
// step waits for the device once (its loss and the gradient norm in one copy; it was a Dot each),
// and a dmd step (generator with regression, and critic) once besides DMD's per-sample
// normalizations (was five: gen_loss, reg_loss, critic_loss and two norms), and so does a
// selfforcing step (gen_loss and critic_loss deferred); and the run gives the
// same metrics and weights, bit for bit, as one whose objective reads each loss at once (on a
// one-thread CPU device: with more, Dot's float64 sum varies in its last bits from run to run, as
// the pool hands chunks to workers in varying order and each worker keeps one partial sum).
func TestDeferredLosses(t *testing.T) {
	for _, obj := range []string{"flowmatch", "dmd", "selfforcing"} {
		var runs [2]struct {
			met []map[string]float64
			w   map[string][]float32
		}
		for i, eager := range []bool{false, true} {
			job := dpJob(obj, t.TempDir(), 3)
			cfg, err := models.Preset("tiny")
			if err != nil {
				t.Fatal(err)
			}
			syncs, sumAbs := 0, 0
			dev := syncCount{syncDev{kernels.NewCPU(1), &syncs}, &sumAbs} // one thread: Dot's partial sums are per worker, whose chunks vary run to run
			shape := models.Shape{B: 2, F: dpF, H: dpH, W: dpW, L: dpL, Recompute: job.Model.Recompute}
			if obj == "selfforcing" {
				shape.ChunkFrames = 1
			}
			tr, err := New(Options{Job: job, Dev: dev, Model: cfg, Shape: shape,
				Null: make([]float32, dpL*cfg.TextDim), RandomInit: true, Source: &globalSource{rank: 0, world: 1, B: 2, cfg: cfg}})
			if err != nil {
				t.Fatal(err)
			}
			tr.eager = eager
			for step := 1; step <= 3; step++ {
				syncs, sumAbs = 0, 0
				m, err := tr.TrainStep()
				if err != nil {
					t.Fatal(err)
				}
				runs[i].met = append(runs[i].met, m)
				if obj != "flowmatch" && !(m["gen_loss"] > 0 && m["critic_loss"] > 0) {
					t.Fatalf("%s step %d: a generator and a critic step each, with their losses: %v", obj, step, m)
				}
				if !eager && syncs-sumAbs != 1 {
					t.Errorf("%s step %d: %d synchronizing calls besides %d SumAbsGroups, want 1 (metrics %v)", obj, step, syncs-sumAbs, sumAbs, m)
				}
			}
			runs[i].w = map[string][]float32{}
			for _, r := range tr.roles {
				runs[i].w[r.Spec.Name] = hostOf(r.W)
			}
		}
		for step := range runs[0].met {
			a, b := runs[0].met[step], runs[1].met[step]
			if len(a) != len(b) {
				t.Errorf("%s step %d: metrics %v deferred, %v at once", obj, step+1, a, b)
			}
			for k, v := range b {
				if a[k] != v && k != "steps_per_s" {
					t.Errorf("%s step %d: %s = %v deferred, %v at once", obj, step+1, k, a[k], v)
				}
			}
		}
		for name, w := range runs[1].w {
			for j := range w {
				if runs[0].w[name][j] != w[j] {
					t.Fatalf("%s: %s weight %d = %v deferred, %v at once", obj, name, j, runs[0].w[name][j], w[j])
				}
			}
		}
	}
}
