package trainer

import (
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/objectives"
)

// A toy objective over a CustomNet (no DiT): the student is a linear map out = x·Wᵀ + b of noisy
// context rows x = ctx + 0.1·ε (ε from the step RNG) regressed onto the latents. It exercises every
// part of the trainer — roles, AdamW with a decay mask, accumulation, clipping, schedules, EMA,
// checkpoints, the step RNG and the loader cursor — in milliseconds.
const (
	tB, tL, tD, tOut = 4, 2, 8, 2 // batch, context tokens, text_dim, outputs per token
	tC               = tL * tOut  // latent channels (F = H = W = 1)
)

type toy struct {
	env                             *objectives.Env
	st                              *objectives.Role
	x, out, dOut, diff, target, eps *kernels.Tensor
	host                            []float32
}

func init() {
	objectives.Register("test-toy", func(params map[string]any) (objectives.Objective, error) {
		var p struct{}
		if err := objectives.DecodeParams(params, &p); err != nil {
			return nil, err
		}
		return &toy{}, nil
	})
}

func (o *toy) Name() string { return "test-toy" }

func (o *toy) Roles() []objectives.RoleSpec {
	return []objectives.RoleSpec{{Name: objectives.Student, Trainable: true, Init: objectives.InitScratch,
		Custom: &objectives.CustomNet{
			Table: []models.Param{
				{Name: "w", Shape: []int{tOut, tD}, Offset: 0, Decay: true},
				{Name: "b", Shape: []int{tOut}, Offset: tOut * tD, Decay: false},
			},
			Numel: tOut*tD + tOut,
			Init: func(w []float32, rng *rand.Rand) {
				for i := 0; i < tOut*tD; i++ {
					w[i] = float32(rng.NormFloat64() * 0.1)
				}
			},
		}}}
}

func (o *toy) Setup(env *objectives.Env) error {
	o.env = env
	o.st = env.Roles[objectives.Student]
	d := env.Dev
	o.x, o.eps = d.Alloc(kernels.F32, tB*tL, tD), d.Alloc(kernels.F32, tB*tL, tD)
	o.out, o.dOut, o.diff, o.target = d.Alloc(kernels.F32, tB*tL, tOut), d.Alloc(kernels.F32, tB*tL, tOut), d.Alloc(kernels.F32, tB*tL, tOut), d.Alloc(kernels.F32, tB*tL, tOut)
	o.host = make([]float32, tB*tL*tD)
	return nil
}

func (o *toy) Step(s *objectives.Step, b *objectives.Batch) (objectives.Update, error) {
	d := o.env.Dev
	W, B := o.st.W.View(0, tOut, tD), o.st.W.View(tOut*tD, tOut)
	dW, dB := o.st.G.View(0, tOut, tD), o.st.G.View(tOut*tD, tOut)
	objectives.Randn(d, o.eps, o.host, s.RNG)
	d.Combine(o.x, b.Ctx.Reshape(tB*tL, tD), o.eps, []float32{1}, []float32{0.1})
	d.Linear(o.out, o.x, W, B)
	d.Copy(o.target, b.X0.Reshape(tB*tL, tOut))
	loss := objectives.MSE(d, o.dOut, o.diff, o.out, o.target)
	d.LinearBack(nil, dW, dB, o.dOut, o.x, W)
	return objectives.Update{Roles: []string{objectives.Student}, Metrics: map[string]float64{"loss": loss}}, nil
}

// toySource: batch i is a pure function of i; the cursor is i.
type toySource struct {
	i int
	A []float32 // [tOut, tD] the map to learn
}

func newToySource() *toySource {
	r := rand.New(rand.NewPCG(7, 7))
	A := make([]float32, tOut*tD)
	for i := range A {
		A[i] = float32(r.NormFloat64())
	}
	return &toySource{A: A}
}

func (s *toySource) Next() (*HostBatch, error) {
	r := rand.New(rand.NewPCG(11, uint64(s.i)))
	s.i++
	ctx := make([]float32, tB*tL*tD)
	for i := range ctx {
		ctx[i] = float32(r.NormFloat64())
	}
	x0 := make([]float32, tB*tL*tOut)
	for row := 0; row < tB*tL; row++ {
		for o := 0; o < tOut; o++ {
			var acc float32 = 0.5
			for k := 0; k < tD; k++ {
				acc += s.A[o*tD+k] * ctx[row*tD+k]
			}
			x0[row*tOut+o] = acc
		}
	}
	return &HostBatch{X0: x0, Ctx: ctx}, nil
}

func (s *toySource) Cursor() ([]byte, error) { return []byte(strconv.Itoa(s.i)), nil }
func (s *toySource) Restore(c []byte) error {
	i, err := strconv.Atoi(string(c))
	s.i = i
	return err
}

func toyJob(dir string, steps int) *config.Job {
	j := config.Defaults()
	j.Objective = "test-toy"
	j.OutDir = dir
	j.Seed = 3
	j.Train.Steps = steps
	j.Train.GradAccum = 2
	j.Train.ClipNorm = 5
	j.Train.CkptEvery = 0
	j.Train.LogEvery = 1
	j.Roles = map[string]config.Role{objectives.Student: {
		LR: 0.05, Betas: []float64{0.9, 0.99}, Eps: 1e-8, WeightDecay: 0.01, Warmup: 2, Schedule: "cosine",
		EMADecay: 0.9, EMAStart: 3,
	}}
	return &j
}

func newToy(t *testing.T, job *config.Job) (*Trainer, *toySource) {
	t.Helper()
	src := newToySource()
	tr, err := New(Options{
		Job: job, Dev: kernels.CPU(), Model: models.Config{InDim: tC, TextDim: tD},
		Shape: models.Shape{B: tB, F: 1, H: 1, W: 1, L: tL}, Null: make([]float32, tL*tD), Source: src,
	})
	if err != nil {
		t.Fatal(err)
	}
	return tr, src
}

func hostOf(x *kernels.Tensor) []float32 {
	h := make([]float32, x.Numel())
	x.Dev.ToHost(h, x)
	return h
}

func TestToyLearns(t *testing.T) {
	job := toyJob(t.TempDir(), 150)
	job.Train.GradAccum = 1
	job.Roles[objectives.Student] = config.Role{LR: 0.05, Betas: []float64{0.9, 0.99}, Eps: 1e-8, Schedule: "constant"}
	tr, _ := newToy(t, job)
	first, err := tr.TrainStep()
	if err != nil {
		t.Fatal(err)
	}
	var last map[string]float64
	for tr.Step < job.Train.Steps {
		if last, err = tr.TrainStep(); err != nil {
			t.Fatal(err)
		}
	}
	// The noise floor: 0.01·|A|² per output (input noise 0.1 passed through A).
	if !(last["loss"] < first["loss"]/20) {
		t.Fatalf("loss %.4f → %.4f: did not learn", first["loss"], last["loss"])
	}
}

// sameWeights fails unless the student and EMA weights of b equal those of straight bit for bit.
func sameWeights(t *testing.T, straight, b *Trainer, how string) {
	t.Helper()
	for _, name := range []string{objectives.Student, objectives.EMA} {
		x, y := hostOf(straight.byName[name].W), hostOf(b.byName[name].W)
		for i := range x {
			if math.Float32bits(x[i]) != math.Float32bits(y[i]) {
				t.Fatalf("%s weight %d: straight %v, %s %v", name, i, x[i], how, y[i])
			}
		}
	}
}

// The resume test: N steps straight == N/2, checkpoint, a fresh process restoring it, N/2 more —
// bit for bit, for the weights, the AdamW moments and the EMA (with accumulation, clipping, warmup,
// cosine decay, weight decay and an EMA start inside the run).
func TestResumeExact(t *testing.T) {
	const N = 8
	straight, _ := newToy(t, toyJob(t.TempDir(), N))
	if err := straight.Run(); err != nil {
		t.Fatal(err)
	}

	// The first process: the same job, killed after its checkpoint at N/2.
	dir := t.TempDir()
	first := toyJob(dir, N)
	first.Train.CkptEvery = N / 2
	first.Train.SampleEvery = N / 2
	a, _ := newToy(t, first)
	a.opt.Validate = func(step int, _ *Trainer) error {
		if step == N/2 {
			return errKilled
		}
		return nil
	}
	if err := a.Run(); !errors.Is(err, errKilled) {
		t.Fatalf("first half: %v", err)
	}
	job := toyJob(dir, N)
	job.Train.Resume = dir // the run folder: checkpoints/latest
	b, src := newToy(t, job)
	if b.Step != N/2 || src.i != 2*N/2 {
		t.Fatalf("restored at step %d cursor %d, want %d and %d", b.Step, src.i, N/2, N)
	}
	if err := b.Run(); err != nil {
		t.Fatal(err)
	}
	sameWeights(t, straight, b, "resumed")
	for _, pair := range [][2]*kernels.Tensor{{straight.byName["student"].m, b.byName["student"].m}, {straight.byName["student"].v, b.byName["student"].v}} {
		x, y := hostOf(pair[0]), hostOf(pair[1])
		for i := range x {
			if math.Float32bits(x[i]) != math.Float32bits(y[i]) {
				t.Fatalf("AdamW moment %d differs: %v vs %v", i, x[i], y[i])
			}
		}
	}
	// The resumed run's metrics.jsonl has each step once.
	lines := countLines(t, filepath.Join(dir, "metrics.jsonl"))
	if lines != N {
		t.Fatalf("metrics.jsonl has %d lines after resume, want %d", lines, N)
	}
}

var errKilled = errors.New("killed")

// An interrupt (Options.Stop closed, as the CLI does on SIGINT/SIGTERM) ends the run after the step
// in flight with a checkpoint of that step, off the checkpoint schedule; resuming from it gives the
// straight run's weights bit for bit.
func TestInterruptCheckpointsAndResumes(t *testing.T) {
	const N, at = 8, 3
	straight, _ := newToy(t, toyJob(t.TempDir(), N))
	if err := straight.Run(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	first := toyJob(dir, N)
	first.Train.CkptEvery = 0 // only the interrupt writes one
	first.Train.SampleEvery = 1
	a, _ := newToy(t, first)
	stop := make(chan struct{})
	a.StopOn(stop)
	a.opt.Validate = func(step int, _ *Trainer) error {
		if step == at {
			close(stop) // the signal arrives during step at+1's work
		}
		return nil
	}
	err := a.Run()
	if !errors.Is(err, ErrInterrupted) {
		t.Fatalf("interrupted run: %v", err)
	}
	if a.Step != at+1 {
		t.Fatalf("stopped at step %d, want %d", a.Step, at+1)
	}
	job := toyJob(dir, N)
	job.Train.Resume = dir
	b, _ := newToy(t, job)
	if b.Step != at+1 {
		t.Fatalf("resumed at step %d, want %d (err was %v)", b.Step, at+1, err)
	}
	if err := b.Run(); err != nil {
		t.Fatal(err)
	}
	sameWeights(t, straight, b, "interrupted+resumed")
}

func countLines(t *testing.T, path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, c := range b {
		if c == '\n' {
			n++
		}
	}
	return n
}

// A crash in the middle of writing a checkpoint leaves the previous one loadable and `latest`
// pointing at it.
func TestCrashDuringSaveKeepsPrevious(t *testing.T) {
	dir := t.TempDir()
	job := toyJob(dir, 6)
	tr, _ := newToy(t, job)
	for tr.Step < 3 {
		if _, err := tr.TrainStep(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tr.Save(); err != nil {
		t.Fatal(err)
	}
	want := hostOf(tr.byName["student"].W)
	for tr.Step < 5 {
		if _, err := tr.TrainStep(); err != nil {
			t.Fatal(err)
		}
	}
	// Crash after the first file of step 5's checkpoint.
	crash := errors.New("simulated crash")
	saveHook = func(file string) error {
		if file == "optim.student.safetensors" {
			return crash
		}
		return nil
	}
	_, err := tr.Save()
	saveHook = nil
	if !errors.Is(err, crash) {
		t.Fatalf("save returned %v, want the simulated crash", err)
	}
	if _, err := os.Stat(tr.CheckpointDir(5)); !os.IsNotExist(err) {
		t.Fatalf("a half-written checkpoint is visible at %s", tr.CheckpointDir(5))
	}
	got, err := ResolveCheckpoint(dir)
	if err != nil || got != tr.CheckpointDir(3) {
		t.Fatalf("latest = %q (%v), want %s", got, err, tr.CheckpointDir(3))
	}
	job2 := toyJob(dir, 6)
	job2.Train.Resume = dir
	tr2, _ := newToy(t, job2)
	if tr2.Step != 3 {
		t.Fatalf("resumed at %d, want 3", tr2.Step)
	}
	have := hostOf(tr2.byName["student"].W)
	for i := range want {
		if want[i] != have[i] {
			t.Fatalf("restored weight %d = %v, saved %v", i, have[i], want[i])
		}
	}
	// A later good save replaces the stale temporary folder.
	if _, err := tr2.Save(); err != nil {
		t.Fatal(err)
	}
}

func TestDecayRunsCoalesce(t *testing.T) {
	cfg, _ := models.Preset("tiny")
	table, P := cfg.Params()
	runs := decayRuns(table, P)
	// Independent check: walk every element and compare with the table's flag.
	flag := make([]int, P) // 0 unset, 1 decay, 2 no decay
	for i, p := range table {
		end := P
		if i+1 < len(table) {
			end = table[i+1].Offset
		}
		for j := p.Offset; j < end; j++ {
			flag[j] = 2
			if p.Decay {
				flag[j] = 1
			}
		}
	}
	covered := 0
	for k, r := range runs {
		if k > 0 && runs[k-1].Decay == r.Decay {
			t.Fatalf("runs %d and %d both decay=%v: not coalesced", k-1, k, r.Decay)
		}
		if r.Off != covered {
			t.Fatalf("run %d starts at %d, want %d", k, r.Off, covered)
		}
		for j := r.Off; j < r.Off+r.N; j++ {
			if (flag[j] == 1) != r.Decay {
				t.Fatalf("element %d: run decay %v, table says %v", j, r.Decay, flag[j] == 1)
			}
		}
		covered += r.N
	}
	if covered != P {
		t.Fatalf("runs cover %d of %d", covered, P)
	}
	if len(runs) >= len(table) {
		t.Fatalf("%d runs for %d params", len(runs), len(table))
	}
}

func TestSchedules(t *testing.T) {
	for _, c := range []struct {
		sched        string
		warm, n, tot int
		want         float64
	}{
		{"constant", 0, 5, 10, 1},
		{"constant", 4, 1, 10, 0.25},
		{"constant", 4, 4, 10, 1},
		{"cosine", 0, 10, 10, 0},
		{"cosine", 2, 6, 10, 0.5},
		{"cosine", 0, 0, 10, 1},
	} {
		if got := lrAt(1, c.sched, c.warm, c.n, c.tot); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("%s warmup %d step %d/%d: lr %v, want %v", c.sched, c.warm, c.n, c.tot, got, c.want)
		}
	}
}

func TestRoleErrors(t *testing.T) {
	job := toyJob(t.TempDir(), 2)
	job.Roles["critic"] = config.Role{LR: 1, Betas: []float64{0.9, 0.99}, Eps: 1e-8, Schedule: "constant"}
	src := newToySource()
	_, err := New(Options{Job: job, Dev: kernels.CPU(), Model: models.Config{InDim: tC, TextDim: tD},
		Shape: models.Shape{B: tB, F: 1, H: 1, W: 1, L: tL}, Null: make([]float32, tL*tD), Source: src})
	if err == nil || !contains(err.Error(), "roles.critic") {
		t.Fatalf("unknown role: err = %v", err)
	}
	job = toyJob(t.TempDir(), 2)
	job.Params = map[string]any{"bogus": 1}
	_, err = New(Options{Job: job, Dev: kernels.CPU(), Model: models.Config{InDim: tC, TextDim: tD},
		Shape: models.Shape{B: tB, F: 1, H: 1, W: 1, L: tL}, Null: make([]float32, tL*tD), Source: src})
	if err == nil || !contains(err.Error(), "params.bogus") {
		t.Fatalf("unknown param: err = %v", err)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// With β1 = 0 the role keeps no first moment (optim.go firstMoment): the gradient buffer serves as
// m. The weights equal those of a run whose m buffer is a separate tensor, bit for bit (m forced
// on after build); the checkpoint holds v only and resumes exactly; a job with β1 > 0 refuses it.
func TestNoFirstMomentAtBeta1Zero(t *testing.T) {
	const N = 6
	job0 := func(dir string) *config.Job {
		job := toyJob(dir, N)
		r := job.Roles[objectives.Student]
		r.Betas = []float64{0, 0.99}
		job.Roles[objectives.Student] = r
		return job
	}
	a, _ := newToy(t, job0(t.TempDir()))
	if a.byName[objectives.Student].m != nil {
		t.Fatal("β1 = 0: the student has a first-moment buffer")
	}
	if err := a.Run(); err != nil {
		t.Fatal(err)
	}
	ref, _ := newToy(t, job0(t.TempDir()))
	st := ref.byName[objectives.Student]
	st.m = ref.opt.Dev.Alloc(kernels.F32, st.W.Numel()) // the old layout: a separate m
	ref.opt.Dev.FromHost(st.m, randHost(st.W.Numel()))  // whatever it held: β1 = 0 ignores it
	if err := ref.Run(); err != nil {
		t.Fatal(err)
	}
	sameWeights(t, ref, a, "m = G")

	dir := t.TempDir()
	first := job0(dir)
	first.Train.CkptEvery = N / 2
	first.Train.SampleEvery = N / 2
	b, _ := newToy(t, first)
	b.opt.Validate = func(step int, _ *Trainer) error {
		if step == N/2 {
			return errKilled
		}
		return nil
	}
	if err := b.Run(); !errors.Is(err, errKilled) {
		t.Fatalf("first half: %v", err)
	}
	job := job0(dir)
	job.Train.Resume = dir
	c, _ := newToy(t, job)
	if err := c.Run(); err != nil {
		t.Fatal(err)
	}
	sameWeights(t, a, c, "resumed without m")

	job = toyJob(dir, N) // β1 = 0.9 needs an m the checkpoint does not have
	job.Train.Resume = dir
	if _, err := New(Options{Job: job, Dev: kernels.CPU(), Model: models.Config{InDim: tC, TextDim: tD},
		Shape: models.Shape{B: tB, F: 1, H: 1, W: 1, L: tL}, Null: make([]float32, tL*tD), Source: newToySource()}); err == nil || !strings.Contains(err.Error(), "no first moment") {
		t.Fatalf("β1 > 0 resuming a β1 = 0 checkpoint: err %v, want one naming the missing first moment", err)
	}
}

func randHost(n int) []float32 {
	r := rand.New(rand.NewPCG(3, 4))
	h := make([]float32, n)
	for i := range h {
		h[i] = float32(r.NormFloat64())
	}
	return h
}
