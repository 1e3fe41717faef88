package trainer

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/objectives"
)

// nanSource is the toy source with a NaN in the context of the batches listed in bad (0-based).
type nanSource struct {
	*toySource
	bad map[int]bool
}

func (s *nanSource) Next() (*HostBatch, error) {
	i := s.i
	hb, err := s.toySource.Next()
	if err == nil && s.bad[i] {
		hb.Ctx[5] = float32(math.NaN())
	}
	return hb, err
}

func newNaNToy(t *testing.T, job *config.Job, bad map[int]bool) *Trainer {
	t.Helper()
	tr, _ := newToy(t, job)
	tr.opt.Source = &nanSource{toySource: tr.opt.Source.(*toySource), bad: bad}
	return tr
}

// A step whose loss and gradient are NaN updates nothing (weights, AdamW moments and step count,
// EMA bit for bit as before it), is counted in bad_steps, and training goes on; a job with the
// same batch NaN-free and the NaN step's batch left out is not needed: the weights after the skipped
// step are compared with the weights before it.
func TestNonFiniteStepIsSkipped(t *testing.T) {
	dir := t.TempDir()
	job := toyJob(dir, 6)
	job.Train.GradAccum = 1
	job.Train.MaxBadSteps = 1
	tr := newNaNToy(t, job, map[int]bool{3: true}) // batch 3 = step 4
	for tr.Step < 3 {
		if _, err := tr.TrainStep(); err != nil {
			t.Fatal(err)
		}
	}
	st := tr.byName[objectives.Student]
	w, m, v, ema, upd := hostOf(st.W), hostOf(st.m), hostOf(st.v), hostOf(tr.byName[objectives.EMA].W), st.updates
	met, err := tr.TrainStep()
	if err != nil {
		t.Fatalf("step 4 (NaN batch, max_bad_steps 1): %v", err)
	}
	if !math.IsNaN(met["loss"]) || !math.IsNaN(met["grad_norm/student"]) || tr.BadSteps != 1 || tr.Step != 4 {
		t.Fatalf("step 4: loss %v, grad norm %v, bad steps %d, step %d", met["loss"], met["grad_norm/student"], tr.BadSteps, tr.Step)
	}
	for _, c := range []struct {
		name   string
		before []float32
		now    []float32
	}{{"W", w, hostOf(st.W)}, {"m", m, hostOf(st.m)}, {"v", v, hostOf(st.v)}, {"ema", ema, hostOf(tr.byName[objectives.EMA].W)}} {
		for i := range c.before {
			if math.Float32bits(c.before[i]) != math.Float32bits(c.now[i]) {
				t.Fatalf("skipped step changed %s[%d]: %v → %v", c.name, i, c.before[i], c.now[i])
			}
		}
	}
	if st.updates != upd {
		t.Fatalf("skipped step counted an AdamW step: %d → %d", upd, st.updates)
	}
	if _, err := tr.TrainStep(); err != nil || !finite(float64(hostOf(st.W)[0])) {
		t.Fatalf("step 5 after the skip: %v", err)
	}
}

// metrics.jsonl counts the skipped steps, and Run finishes when there are at most max_bad_steps.
func TestBadStepsInMetrics(t *testing.T) {
	dir := t.TempDir()
	job := toyJob(dir, 6)
	job.Train.GradAccum = 1
	job.Train.MaxBadSteps = 2
	tr := newNaNToy(t, job, map[int]bool{1: true, 4: true})
	if err := tr.Run(); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "metrics.jsonl"))
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 6 || !strings.Contains(lines[0], `"bad_steps":0`) || !strings.Contains(lines[1], `"bad_steps":1`) || !strings.Contains(lines[5], `"bad_steps":2`) {
		t.Fatalf("metrics.jsonl:\n%s", b)
	}
	if strings.Contains(string(b), "NaN") {
		t.Fatalf("a skipped step's NaN reached the logged means:\n%s", b)
	}
}

// The divergence test: a learning rate far too high. The run stops with an error naming the step,
// the role and the loss; every checkpoint on disk (one per step) is finite and restores; `latest`
// names the last of them.
func TestDivergenceStops(t *testing.T) {
	dir := t.TempDir()
	job := toyJob(dir, 40)
	job.Train.CkptEvery = 1
	job.Train.ClipNorm = 0
	job.Train.MaxBadSteps = 2
	job.Roles[objectives.Student] = config.Role{LR: 1e36, Betas: []float64{0.9, 0.99}, Eps: 1e-8, Schedule: "constant", WeightDecay: 0.5, EMADecay: 0.9, EMAStart: 3}
	tr, _ := newToy(t, job)
	err := tr.Run()
	if !errors.Is(err, ErrDiverged) {
		t.Fatalf("a diverging run ended with %v, want ErrDiverged", err)
	}
	msg := err.Error()
	for _, want := range []string{"step ", "not finite", "loss", "student", "latest"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %q", msg, want)
		}
	}
	t.Logf("error: %s", msg)
	ckpts, _ := filepath.Glob(filepath.Join(dir, "checkpoints", "step-*"))
	if len(ckpts) == 0 {
		t.Fatal("no checkpoint written before the divergence")
	}
	for _, c := range ckpts {
		if strings.HasSuffix(c, ".tmp") || strings.HasSuffix(c, ".old") {
			t.Fatalf("left behind: %s", c)
		}
		j := toyJob(dir, 40)
		j.Train.Resume = c
		r, _ := newToy(t, j) // Restore refuses non-finite weights
		for _, name := range []string{objectives.Student, objectives.EMA} {
			for i, x := range hostOf(r.byName[name].W) {
				if !finite(float64(x)) {
					t.Fatalf("%s: %s weight %d = %v", c, name, i, x)
				}
			}
		}
	}
	latest, err := ResolveCheckpoint(dir)
	if err != nil || latest != ckpts[len(ckpts)-1] {
		t.Fatalf("latest = %s (%v), newest checkpoint %s", latest, err, ckpts[len(ckpts)-1])
	}
}

// Save never writes a non-finite weight: the save fails naming the role and the weight, `latest` and
// the previous checkpoint stay, and no temporary folder is left.
func TestSaveRefusesNonFinite(t *testing.T) {
	dir := t.TempDir()
	tr, _ := newToy(t, toyJob(dir, 4))
	if _, err := tr.TrainStep(); err != nil {
		t.Fatal(err)
	}
	first, err := tr.Save()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tr.TrainStep(); err != nil {
		t.Fatal(err)
	}
	w := hostOf(tr.byName[objectives.Student].W)
	w[3] = float32(math.Inf(1))
	tr.opt.Dev.FromHost(tr.byName[objectives.Student].W, w)
	_, err = tr.Save()
	if !errors.Is(err, ErrNonFinite) || !strings.Contains(err.Error(), "student") || !strings.Contains(err.Error(), "w[3]") {
		t.Fatalf("save of an Inf weight: %v", err)
	}
	if got, _ := ResolveCheckpoint(dir); got != first {
		t.Fatalf("latest = %s, want %s", got, first)
	}
	if ents, _ := filepath.Glob(filepath.Join(dir, "checkpoints", "step-*")); len(ents) != 1 {
		t.Fatalf("checkpoints folder: %v", ents)
	}
	// A checkpoint edited to hold a NaN is refused on restore, naming the key.
	p := filepath.Join(first, "student.safetensors")
	b, _ := os.ReadFile(p)
	copy(b[len(b)-4:], []byte{0, 0, 0xc0, 0x7f}) // the last float32: NaN
	os.WriteFile(p, b, 0o644)
	j := toyJob(dir, 4)
	j.Train.Resume = dir
	src := newToySource()
	_, err = New(Options{Job: j, Dev: tr.opt.Dev, Model: tr.opt.Model, Shape: tr.opt.Shape, Null: tr.opt.Null, Source: src})
	if err == nil || !strings.Contains(err.Error(), "not finite") || !strings.Contains(err.Error(), "key b") {
		t.Fatalf("restore of a NaN weight: %v", err)
	}
}

// One bad step more than train.max_bad_steps stops Run with an error naming the step and the
// non-finite loss and gradient norm (with the role); the run's checkpoints stay finite.
func TestTooManyBadStepsStop(t *testing.T) {
	dir := t.TempDir()
	job := toyJob(dir, 8)
	job.Train.GradAccum = 1
	job.Train.CkptEvery = 2
	job.Train.MaxBadSteps = 1
	tr := newNaNToy(t, job, map[int]bool{2: true, 4: true})
	err := tr.Run()
	if !errors.Is(err, ErrDiverged) {
		t.Fatalf("Run: %v, want ErrDiverged", err)
	}
	for _, want := range []string{"step 5:", "loss = NaN", "gradient norm of role student = NaN", "max_bad_steps = 1", "step-000004"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if got, _ := ResolveCheckpoint(dir); filepath.Base(got) != "step-000004" {
		t.Fatalf("latest = %s, want step-000004", got)
	}
}

// A model far larger than the machine is refused before anything is allocated, saying how much its
// weights and optimizer states would need.
func TestHugeModelRefused(t *testing.T) {
	job := toyJob(t.TempDir(), 1)
	job.Objective = "flowmatch"
	job.Roles = map[string]config.Role{objectives.Student: {LR: 1e-4, Betas: []float64{0.9, 0.999}, Eps: 1e-8, Schedule: "constant"}}
	cfg := models.Config{Dim: 8192, FFNDim: 32768, FreqDim: 256, Heads: 64, Layers: 1024, InDim: 16, OutDim: 16, TextDim: 4096, TextLen: 512, Eps: 1e-6}
	_, err := New(Options{Job: job, Dev: kernels.CPU(), Model: cfg, Shape: models.Shape{B: 1, F: 1, H: 2, W: 2, L: 512},
		Null: make([]float32, 512*4096), Source: newToySource()})
	if err == nil || !strings.Contains(err.Error(), "GiB") || !strings.Contains(err.Error(), "student") {
		t.Fatalf("a %d-parameter model on the CPU: %v", cfg.NumParams(), err)
	}
}
