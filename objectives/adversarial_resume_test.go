package objectives_test

import (
	"math"
	"path/filepath"
	"testing"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/trainer"
)

// N steps straight equal N/2, a checkpoint, a new trainer resumed from it, and N/2 more, bit for bit,
// for every trained role: adversarial (dmd2 + R1: student, critic, the discriminator head, EMA),
// selfforcing (the causal student with its KV-cache rollouts, critic, EMA) and consistency (student
// and its EMA target).
func TestResumeExactAdversarialSelfForcingConsistency(t *testing.T) {
	m := newModes(tinyCfg(t))
	teacher := models.New(kernels.CPU(), m.cfg, false)
	teacher.InitRandom(3, 0.1)
	tpath := filepath.Join(t.TempDir(), "teacher.safetensors")
	if err := teacher.Save(tpath, kernels.F32); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		objective string
		params    map[string]any
		roles     []string
		chunk     int
	}{
		{"adversarial", map[string]any{"mode": "dmd2", "cfg": 2, "generator_update_ratio": 2, "r1_weight": 1.0,
			"gen_gan_weight": 0.1, "disc_gan_weight": 0.1}, []string{"student", "critic", "discriminator", "ema"}, 0},
		{"selfforcing", map[string]any{"cfg": 2, "generator_update_ratio": 2, "context_noise": 0.1},
			[]string{"student", "critic", "ema"}, 1},
		{"consistency", map[string]any{"grid_n": 10, "skip": 2, "cfg_min": 1, "cfg_max": 3}, []string{"student", "ema"}, 0},
	} {
		job := func(dir string) *config.Job {
			j := baseJob(dir, c.objective, 6)
			j.Params = c.params
			j.Roles["teacher"] = config.Role{Weights: tpath}
			st := adam(1e-3, 0, 0.999)
			st.EMADecay, st.EMAStart = 0.9, 2
			j.Roles["student"] = st
			if c.objective != "consistency" {
				j.Roles["critic"] = adam(1e-3, 0, 0.999)
			}
			if c.objective == "adversarial" {
				j.Roles["discriminator"] = adam(1e-3, 0, 0.999)
			}
			j.Train.ClipNorm = 0.05
			j.Train.LogEvery = 1
			return j
		}
		build := func(j *config.Job) *trainer.Trainer {
			tr, err := trainer.New(trainer.Options{Job: j, Dev: kernels.CPU(), Model: m.cfg,
				Shape: models.Shape{B: mB, F: mF, H: mH, W: mW, L: mL, ChunkFrames: c.chunk},
				Null:  make([]float32, mL*m.cfg.TextDim), Source: &source{m: m, noDrop: true}})
			if err != nil {
				t.Fatal(err)
			}
			return tr
		}
		straight, a, b := resumeRuns(t, job, build, 3)
		for _, role := range c.roles {
			x, y := straight.Env.Roles[role].W.F32, b.Env.Roles[role].W.F32
			moved := false
			for i := range x {
				if math.Float32bits(x[i]) != math.Float32bits(y[i]) {
					t.Fatalf("%s: %s weight %d: straight %v, resumed %v", c.objective, role, i, x[i], y[i])
				}
			}
			x0 := a.Env.Roles[role].W.F32 // after 3 steps: the last 3 must have changed the weights
			for i := range x {
				moved = moved || x[i] != x0[i]
			}
			if !moved {
				t.Fatalf("%s: %s did not change in steps 4–6", c.objective, role)
			}
		}
	}
}
