package trainer

import (
	"testing"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/objectives"
)

// syncDev counts the calls that bring values to the host (and so wait for the device) that go
// through it: ToHost, Dot, SumAbsGroups, Sync.
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

// TestOneNormReadbackPerStep: the optimizer part of a step (gradient norms for the clip and the
// non-finite guard, clip, AdamW) waits for the device once, however many roles it steps: the
// "test-adamw" objective steps one role on odd steps and two on even ones (its own readbacks go
// to the tensors' device, not through the counting one), and each step makes exactly one
// synchronizing call through the trainer's device. With a Dot per role it made two on even steps.
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
