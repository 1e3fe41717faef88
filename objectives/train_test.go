package objectives_test

// Objectives trained for real, through the trainer, on the tiny preset at a tiny latent size, on a
// data set whose answer is known: K classes (a caption embedding each), every class two mirror-image
// modes x0 = ±P_c (+ a little noise). A good conditional generator puts its samples on the modes of
// the prompted class; the teacher's one-step sample is the conditional mean (≈ 0, between the modes);
// DMD's mode-seeking gradient must pull its one-step student onto a mode.

import (
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	_ "github.com/fewstep/fewstep/objectives" // registers flowmatch and dmd
	"github.com/fewstep/fewstep/trainer"
	_ "go4.org/unsafe/assume-no-moving-gc"
)

const (
	kClasses       = 3
	mB, mF, mH, mW = 8, 2, 4, 4
	mL             = 2
	modeNoise      = 0.05
)

// modes is the data set: patterns P_c [C·F·H·W], constant per channel, and class embeddings E_c [L·text_dim].
type modes struct {
	cfg models.Config
	P   [][]float32
	E   [][]float32
}

func newModes(cfg models.Config) *modes {
	r := rand.New(rand.NewPCG(1, 2))
	m := &modes{cfg: cfg}
	n := cfg.InDim * mF * mH * mW
	for c := 0; c < kClasses; c++ {
		// Constant per channel (like a colour): 16 numbers a class.
		a := make([]float32, cfg.InDim)
		for i := range a {
			a[i] = float32(r.NormFloat64())
		}
		p := make([]float32, n)
		for i := range p {
			p[i] = a[i/(n/cfg.InDim)]
		}
		e := make([]float32, mL*cfg.TextDim)
		for i := range e {
			e[i] = float32(r.NormFloat64())
		}
		m.P, m.E = append(m.P, p), append(m.E, e)
	}
	return m
}

// source: batch i is a pure function of i (the cursor).
type source struct {
	m      *modes
	i      int
	noDrop bool // no CFG dropout (distillation)
}

func (s *source) Next() (*trainer.HostBatch, error) {
	r := rand.New(rand.NewPCG(3, uint64(s.i)))
	s.i++
	n := len(s.m.P[0])
	hb := &trainer.HostBatch{X0: make([]float32, 0, mB*n), Drop: make([]bool, mB)}
	for b := 0; b < mB; b++ {
		c := r.IntN(kClasses)
		sign := float32(1)
		if r.IntN(2) == 0 {
			sign = -1
		}
		for _, v := range s.m.P[c] {
			hb.X0 = append(hb.X0, sign*v+modeNoise*float32(r.NormFloat64()))
		}
		hb.Ctx = append(hb.Ctx, s.m.E[c]...)
		hb.Drop[b] = r.Float64() < 0.1 && !s.noDrop
		hb.Captions = append(hb.Captions, "class "+strconv.Itoa(c))
	}
	return hb, nil
}

func (s *source) Cursor() ([]byte, error) { return []byte(strconv.Itoa(s.i)), nil }
func (s *source) Restore(c []byte) (err error) {
	s.i, err = strconv.Atoi(string(c))
	return err
}

func tinyCfg(t testing.TB) models.Config {
	cfg, err := models.Preset("tiny")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func run(t testing.TB, job *config.Job, m *modes) *trainer.Trainer {
	t.Helper()
	tr, err := trainer.New(trainer.Options{
		Job: job, Dev: kernels.CPU(), Model: m.cfg,
		Shape: models.Shape{B: mB, F: mF, H: mH, W: mW, L: mL},
		Null:  make([]float32, mL*m.cfg.TextDim), Source: &source{m: m, noDrop: job.Objective != "flowmatch"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Run(); err != nil {
		t.Fatal(err)
	}
	return tr
}

func baseJob(dir, objective string, steps int) *config.Job {
	j := config.Defaults()
	j.Name, j.OutDir, j.Objective, j.Seed = objective, dir, objective, 5
	j.Train.Steps, j.Train.LogEvery, j.Train.CkptEvery, j.Train.ClipNorm = steps, 50, 0, 1
	j.Params = map[string]any{}
	j.Roles = map[string]config.Role{}
	return &j
}

func adam(lr float64, betas ...float64) config.Role {
	if betas == nil {
		betas = []float64{0.9, 0.999}
	}
	return config.Role{LR: lr, Betas: betas, Eps: 1e-8, Schedule: "constant"}
}

// sample draws n videos per class from net with a hand-written sampler (independent of the
// objectives' helpers): Euler over `steps` uniform σ levels (teacher) or, few-step, x0 = x − σv
// re-noised along the list 1, 1−1/k, ... (student); CFG weight w.
func sample(net *models.DiT, m *modes, class, n, steps int, fewstep bool, w float32, seed uint64) [][]float32 {
	dev := net.Dev
	B := n
	p := net.NewPass(models.Shape{B: B, F: mF, H: mH, W: mW, L: mL})
	C := m.cfg.InDim
	size := C * mF * mH * mW
	r := rand.New(rand.NewPCG(seed, uint64(class)))
	x := make([]float32, B*size)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	ctx, null := make([]float32, 0, B*mL*m.cfg.TextDim), make([]float32, B*mL*m.cfg.TextDim)
	for b := 0; b < B; b++ {
		ctx = append(ctx, m.E[class]...)
	}
	xt, tt := dev.Alloc(kernels.F32, B, C, mF, mH, mW), dev.Alloc(kernels.F32, B, mF)
	ct, nt := dev.Alloc(kernels.F32, B, mL, m.cfg.TextDim), dev.Alloc(kernels.F32, B, mL, m.cfg.TextDim)
	dev.FromHost(ct, ctx)
	dev.FromHost(nt, null)
	vc, vu := make([]float32, len(x)), make([]float32, len(x))
	velocity := func(sig float32) []float32 {
		ts := make([]float32, B*mF)
		for i := range ts {
			ts[i] = 1000 * sig
		}
		dev.FromHost(tt, ts)
		dev.FromHost(xt, x)
		dev.ToHost(vc, net.Forward(p, xt, tt, ct))
		if w != 1 {
			dev.ToHost(vu, net.Forward(p, xt, tt, nt))
			for i := range vc {
				vc[i] = vu[i] + w*(vc[i]-vu[i])
			}
		}
		return vc
	}
	for i := 0; i < steps; i++ {
		s := 1 - float32(i)/float32(steps)
		v := velocity(s)
		if !fewstep {
			next := 1 - float32(i+1)/float32(steps)
			for j := range x {
				x[j] += (next - s) * v[j]
			}
			continue
		}
		next := 1 - float32(i+1)/float32(steps)
		for j := range x {
			x0 := x[j] - s*v[j]
			if i == steps-1 {
				x[j] = x0
			} else {
				x[j] = (1-next)*x0 + next*float32(r.NormFloat64())
			}
		}
	}
	out := make([][]float32, B)
	for b := range out {
		out[b] = x[b*size : (b+1)*size]
	}
	return out
}

// score: for samples of class c, the mean relative distance to the nearest of its modes ±P_c
// (0 = on a mode; ≈ 1 for the conditional mean 0), and the fraction whose nearest mode among all
// classes' modes is one of class c's.
func score(m *modes, class int, xs [][]float32) (dist, acc float64) {
	for _, x := range xs {
		best, bestC := math.Inf(1), -1
		var own float64 = math.Inf(1)
		for c := range m.P {
			for _, sgn := range []float32{1, -1} {
				var d, nn float64
				for i, v := range x {
					e := float64(v - sgn*m.P[c][i])
					d += e * e
					nn += float64(m.P[c][i]) * float64(m.P[c][i])
				}
				d = math.Sqrt(d / nn)
				if d < best {
					best, bestC = d, c
				}
				if c == class && d < own {
					own = d
				}
			}
		}
		dist += own
		if bestC == class {
			acc++
		}
	}
	return dist / float64(len(xs)), acc / float64(len(xs))
}

func evalNet(net *models.DiT, m *modes, steps int, fewstep bool, w float32) (dist, acc float64) {
	for c := 0; c < kClasses; c++ {
		d, a := score(m, c, sample(net, m, c, 8, steps, fewstep, w, 99))
		dist += d / kClasses
		acc += a / kClasses
	}
	return dist, acc
}

var (
	teacherOnce sync.Once
	teacherDir  string
	teacherNet  *models.DiT
)

// trainTeacher pretrains the tiny teacher with flowmatch once per test binary.
func trainTeacher(t *testing.T) (string, *models.DiT, *modes) {
	m := newModes(tinyCfg(t))
	teacherOnce.Do(func() {
		dir, err := os.MkdirTemp("", "fewstep-teacher-")
		if err != nil {
			t.Fatal(err)
		}
		job := baseJob(dir, "flowmatch", 1200)
		job.Params = map[string]any{"sigma_law": "logit_normal", "shift": 1}
		job.Roles["student"] = adam(1e-2)
		r := job.Roles["student"]
		r.Schedule, r.Warmup = "cosine", 50
		job.Roles["student"] = r
		tr := run(t, job, m)
		teacherDir, teacherNet = dir, tr.Net("student")
	})
	if teacherNet == nil {
		t.Fatal("teacher training failed earlier")
	}
	return filepath.Join(teacherDir, "checkpoints", "step-001200", "student.safetensors"), teacherNet, m
}

func TestFlowmatchLearnsModes(t *testing.T) {
	m := newModes(tinyCfg(t))
	untrained := models.New(kernels.CPU(), m.cfg, false)
	untrained.Init(1)
	d0, a0 := evalNet(untrained, m, 20, false, 1)
	_, teacher, _ := trainTeacher(t)
	d, a := evalNet(teacher, m, 20, false, 1)
	t.Logf("20-step Euler samples: untrained dist %.3f acc %.2f → flowmatch dist %.3f acc %.2f", d0, a0, d, a)
	// Margins leave room for the training's sensitivity to kernel numerics (seen: dist 0.34 and 0.39).
	if !(a >= 0.85 && d < d0/3) {
		t.Fatalf("flowmatch teacher: dist %.3f acc %.2f (untrained %.3f %.2f): not on its class's modes", d, a, d0, a0)
	}
}

func TestDMDMakesOneStepSharp(t *testing.T) {
	path, teacher, m := trainTeacher(t)
	dT, aT := evalNet(teacher, m, 1, true, 1)
	job := baseJob(t.TempDir(), "dmd", 300)
	job.Seed = freshSeed(t)
	job.Params = map[string]any{"cfg": 1.5, "generator_update_ratio": 2, "denoising_timesteps": []any{1000}}
	job.Roles["teacher"] = config.Role{Weights: path}
	job.Roles["student"] = adam(5e-4, 0, 0.999)
	job.Roles["critic"] = adam(1e-3, 0, 0.999)
	tr := run(t, job, m)
	dS, aS := evalNet(tr.Net("student"), m, 1, true, 1)
	dE, _ := evalNet(teacher, m, 20, false, 1) // what the teacher reaches with 20 Euler steps
	t.Logf("1 step: teacher dist %.3f acc %.2f, dmd student dist %.3f acc %.2f (teacher at 20 Euler steps: %.3f)", dT, aT, dS, aS, dE)
	// The student must close at least a third of the gap between the teacher's one-step sample
	// (the conditional mean, between the modes) and the teacher's 20-step samples (on the modes),
	// and put 80% of its samples nearest a mode of the prompted class (seen across kernel
	// revisions: 48-71% of the gap closed, accuracy 0.83-0.96).
	if closed := (dT - dS) / (dT - dE); !(closed >= 1.0/3 && aS >= 0.8) {
		t.Fatalf("dmd: 1-step student dist %.3f acc %.2f closes %.0f%% of the gap from the teacher's 1 step (%.3f) to its 20 steps (%.3f)",
			dS, aS, 100*closed, dT, dE)
	}
}

// The exact-resume test on a real objective and the real DiT: dmd (student, critic, frozen
// teacher; generator every 2nd step; clipping) for 6 steps straight equals 3 steps, a checkpoint, a
// fresh trainer restoring it and 3 more — bit for bit in every trainable role's weights.
func TestDMDResumeExact(t *testing.T) {
	m := newModes(tinyCfg(t))
	teacher := models.New(kernels.CPU(), m.cfg, false)
	teacher.Init(3)
	tpath := filepath.Join(t.TempDir(), "teacher.safetensors")
	if err := teacher.Save(tpath, kernels.F32); err != nil {
		t.Fatal(err)
	}
	job := func(dir string) *config.Job {
		j := baseJob(dir, "dmd", 6)
		j.Params = map[string]any{"cfg": 2, "generator_update_ratio": 2}
		j.Roles["teacher"] = config.Role{Weights: tpath}
		j.Roles["student"] = adam(1e-3, 0, 0.999)
		j.Roles["critic"] = adam(1e-3, 0, 0.999)
		j.Train.ClipNorm = 0.05 // clipping active
		j.Train.LogEvery = 1
		return j
	}
	build := func(j *config.Job) *trainer.Trainer {
		tr, err := trainer.New(trainer.Options{Job: j, Dev: kernels.CPU(), Model: m.cfg,
			Shape: models.Shape{B: mB, F: mF, H: mH, W: mW, L: mL}, Null: make([]float32, mL*m.cfg.TextDim),
			Source: &source{m: m, noDrop: true}})
		if err != nil {
			t.Fatal(err)
		}
		return tr
	}
	straight, _, b := resumeRuns(t, job, build, 3)
	for _, role := range []string{"student", "critic"} {
		x, y := straight.Net(role).W.F32, b.Net(role).W.F32
		for i := range x {
			if math.Float32bits(x[i]) != math.Float32bits(y[i]) {
				t.Fatalf("%s weight %d: straight %v, resumed %v", role, i, x[i], y[i])
			}
		}
	}
}

// resumeRuns trains the same job twice: straight through, and for half steps, a checkpoint, then a
// new trainer resumed from it for the rest. It returns the straight run, the half run and the
// resumed run, whose weights the exact-resume tests compare bit for bit.
func resumeRuns(t *testing.T, job func(dir string) *config.Job, build func(*config.Job) *trainer.Trainer, half int) (straight, a, b *trainer.Trainer) {
	t.Helper()
	straight = build(job(t.TempDir()))
	if err := straight.Run(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	a = build(job(dir))
	for a.Step < half {
		if _, err := a.TrainStep(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Save(); err != nil {
		t.Fatal(err)
	}
	j := job(dir)
	j.Train.Resume = dir
	b = build(j)
	if err := b.Run(); err != nil {
		t.Fatal(err)
	}
	return straight, a, b
}
