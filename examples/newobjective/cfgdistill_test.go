package newobjective

import (
	"math"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/objectives"
	"github.com/fewstep/fewstep/pipeline"
	"github.com/fewstep/fewstep/trainer"
)

// setup builds the objective on a tiny DiT: the teacher with random weights, the student a copy.
func setup(t *testing.T, cfg float64) (objectives.Objective, *objectives.Env, *objectives.Batch) {
	t.Helper()
	o, err := objectives.New("cfgdistill", map[string]any{"cfg": cfg})
	if err != nil {
		t.Fatal(err)
	}
	dev := kernels.CPU()
	mc, _ := models.Preset("tiny")
	mc.TextLen = 4
	s := models.Shape{B: 2, F: 2, H: 4, W: 4, L: 4}
	te := models.New(dev, mc, false)
	te.Init(7) // Wan's init zeroes the head (every output 0): perturb every weight
	wr := rand.New(rand.NewPCG(7, 8))
	wh := make([]float32, te.W.Numel())
	dev.ToHost(wh, te.W)
	for i := range wh {
		wh[i] += 0.05 * float32(wr.NormFloat64())
	}
	dev.FromHost(te.W, wh)
	st := models.New(dev, mc, true)
	dev.Copy(st.W, te.W) // InitTeacher: the trainer does this copy
	env := &objectives.Env{Dev: dev, Cfg: mc, Shape: s, Roles: map[string]*objectives.Role{
		objectives.Teacher: {Spec: o.Roles()[0], Net: te, W: te.W, Table: te.Table},
		objectives.Student: {Spec: o.Roles()[1], Net: st, W: st.W, G: st.G, Table: st.Table},
	}}
	if err := o.Setup(env); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	rnd := func(shape ...int) *kernels.Tensor {
		x := dev.Alloc(kernels.F32, shape...)
		h := make([]float32, x.Numel())
		for i := range h {
			h[i] = float32(r.NormFloat64())
		}
		dev.FromHost(x, h)
		return x
	}
	b := &objectives.Batch{X0: rnd(2, mc.InDim, 2, 4, 4), Ctx: rnd(2, 4, mc.TextDim),
		Null: dev.Alloc(kernels.F32, 2, 4, mc.TextDim)}
	return o, env, b
}

// With w = 1 the guided teacher is the conditional teacher, which the student (a copy) already is:
// the loss is 0 exactly. With w = 3 it is not, and the student gets a gradient.
func TestCFGDistillStep(t *testing.T) {
	for _, w := range []float64{1, 3} {
		o, env, b := setup(t, w)
		st := env.Roles[objectives.Student].Net
		st.ZeroGrad()
		u, err := o.Step(&objectives.Step{Step: 1, Accum: 1, RNG: rand.New(rand.NewPCG(3, 4))}, b)
		if err != nil {
			t.Fatal(err)
		}
		g := make([]float32, st.G.Numel())
		env.Dev.ToHost(g, st.G)
		var gn float64
		for _, v := range g {
			gn += float64(v) * float64(v)
		}
		loss := u.Metrics["loss"]
		switch {
		case len(u.Roles) != 1 || u.Roles[0] != objectives.Student:
			t.Errorf("w %g: update names %v", w, u.Roles)
		case w == 1 && (loss != 0 || gn != 0):
			t.Errorf("w = 1: loss %g, |G|² %g, want 0 (the student is the teacher)", loss, gn)
		case w == 3 && !(loss > 1e-4 && gn > 0 && !math.IsNaN(gn)):
			t.Errorf("w = 3: loss %g, |G|² %g, want both > 0", loss, gn)
		}
		t.Logf("w %g: loss %.4g, |G| %.4g", w, loss, math.Sqrt(gn))
	}
	if _, err := objectives.New("cfgdistill", map[string]any{"cfgg": 3}); err == nil || !strings.Contains(err.Error(), "cfgg") {
		t.Errorf("unknown param: %v", err)
	}
}

// The example's job (cfgdistill.yaml, loaded from another working directory: its paths are relative
// to its folder) trains through the trainer on the shipped teacher, shortened to 2 steps: the loss
// is positive and finite (w = 3: the student starts as the conditional teacher), and the checkpoint
// carries the objective's recipe (Euler, no guidance, teacher_cfg 3).
func TestCFGDistillJob(t *testing.T) {
	yaml, err := filepath.Abs("cfgdistill.yaml")
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	t.Chdir(t.TempDir())
	job, err := config.Load(yaml, []string{"out_dir=" + out, "train.steps=2", "train.ckpt_every=0", "train.sample_every=0",
		"data.synth={count: 8, heldout_count: 4, frames: 4, size: 16, text_dim: 32, seed: 0}", "data.batch_size=2"})
	if err != nil {
		t.Fatal(err)
	}
	tr, loader, err := trainer.FromJob(job, kernels.CPU(), nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer loader.Close()
	for i := 0; i < 2; i++ {
		m, err := tr.TrainStep()
		if err != nil {
			t.Fatal(err)
		}
		if l := m["loss"]; !(l > 0) || math.IsInf(l, 0) {
			t.Fatalf("step %d: loss %g, want positive and finite", i+1, l)
		}
	}
	dir, err := tr.Save()
	if err != nil {
		t.Fatal(err)
	}
	rec, err := pipeline.LoadRecipe(dir)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Objective != "cfgdistill" || rec.Sampler != "euler" || rec.CFG != 1 || rec.TeacherCFG != 3 {
		t.Errorf("recipe.json %+v, want cfgdistill sampled by euler at cfg 1, teacher_cfg 3", rec)
	}
}
