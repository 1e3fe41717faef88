// Package trainer is the training loop: it builds the roles an objective declares (each a network
// with, when trainable, its own AdamW, learning rate and schedule), feeds the objective micro-batches,
// steps the optimizers of the roles the objective reports (objectives/objective.go has the
// contract), keeps the EMA, clips, accumulates, logs metrics as JSON lines, shows a progress bar,
// draws validation samples on schedule and writes checkpoints that resume exactly.
package trainer

import (
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/dist"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/objectives"
)

// HostBatch is one micro-batch as a loader gives it, on the host.
type HostBatch struct {
	X0       []float32 // [B,C,F,H,W] normalized latents; nil for a text-only dataset
	Ctx      []float32 // [B,L,text_dim] conditional text embeddings, padded to L
	Drop     []bool    // [B] CFG dropout decided by the loader
	Captions []string
	IDs      []string
	// ODE pairs (odeinit), nil otherwise: TrajX [B,S,C,F,H,W] latents at TrajSigma [S] (σ = t/1000).
	TrajX     []float32
	TrajSigma []float32
}

// Source is the trainer's view of a loader: batches in a deterministic order and a cursor that a
// checkpoint saves and Restore puts back exactly.
type Source interface {
	Next() (*HostBatch, error)
	Cursor() ([]byte, error)
	Restore(cursor []byte) error
}

// Options is everything a Trainer is built from.
type Options struct {
	Job    *config.Job
	Dev    kernels.Device
	Model  models.Config
	Shape  models.Shape // one micro-batch: B, F, H, W of the latents, L; ChunkFrames for causal roles
	Null   []float32    // [L, text_dim] the null (empty-prompt) embedding
	Source Source
	// Progress receives the progress bar (nil: none). Log receives one line per event (nil: none).
	Progress io.Writer
	Log      io.Writer
	// Validate is called after step n when train.sample_every divides n, and after the last step
	// (nil: no validation). It may sample from tr.Net("ema") or tr.Net("student").
	Validate func(step int, tr *Trainer) error
	// RandomInit: roles that need a checkpoint and have none start from random weights (benchmarks;
	// gpu_device.go).
	RandomInit bool
	// Stop, when closed, ends Run after the step in flight: it writes a checkpoint of that step
	// (unless the schedule just wrote one) and returns an error wrapping ErrInterrupted. The CLI
	// closes it on SIGINT/SIGTERM, so a killed job loses no steps and resumes exactly from there.
	Stop <-chan struct{}
	// Comm makes this trainer one rank of a data-parallel job (dist.go): nil is a single rank. Every
	// rank runs its own trainer with its own Dev and Source (the loader's shard of the rank) and the
	// same Job; Shape.B is the batch of one rank (data.batch_size).
	Comm dist.Comm
}

// ErrInterrupted is wrapped by Run's error when Options.Stop ended the run early.
var ErrInterrupted = errors.New("interrupted")

// ErrDiverged is wrapped by TrainStep's and Run's error when more than train.max_bad_steps steps had
// a NaN or Inf loss or gradient norm (Run finds it when it settles the step, after launching the
// next one: optim.go launchGated).
var ErrDiverged = errors.New("training diverged")

// ErrNonFinite is wrapped by Save's error when a weight or optimizer moment is NaN or Inf: such a
// checkpoint is never written.
var ErrNonFinite = errors.New("not finite")

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

// lossesOf lists a step's losses and gradient norms for an error.
func lossesOf(m map[string]float64) string {
	var parts []string
	for _, k := range sortedKeys(m) {
		if strings.Contains(k, "loss") || strings.HasPrefix(k, "grad_norm/") {
			parts = append(parts, fmt.Sprintf("%s = %g", k, m[k]))
		}
	}
	return strings.Join(parts, ", ")
}

func sortedKeys(m map[string]float64) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// Trainer runs one job.
type Trainer struct {
	Job  *config.Job
	Obj  objectives.Objective
	Env  *objectives.Env
	Step int    // optimizer steps done
	Dir  string // the run folder (job.out_dir)
	// BadSteps counts the steps of this process that were skipped for a NaN or Inf loss or gradient
	// norm (metrics.jsonl: bad_steps).
	BadSteps int

	skipped  bool // the last settled step was skipped
	inflight int  // steps launched and not settled (optim.go launchGated, settle)

	opt       Options
	roles     []*role // build order
	byName    map[string]*role
	batch     objectives.Batch
	x0        *kernels.Tensor // [B,C,F,H,W] the latents' device buffer (batch.X0 is nil for text-only batches)
	trajX     *kernels.Tensor // [B,S,C,F,H,W] ODE pairs' device buffer (odeinit), made by the first such batch
	ema       *role           // nil without EMA
	emaOf     *role           // the student, when any role follows it
	followers []follower      // the EMAs of the student: ema (roles.student.ema_decay) and RoleSpec.Follow roles
	metrics   *metricsLog
	last      map[string]float64     // the last logged values (progress bar)
	started   time.Time              // start of Run
	comm      dist.Comm              // nil: a single rank
	whole     map[string]*models.DiT // train.shard full: whole copies on rank 0 (validation, after Run)
	wholeHost map[string][]float32   // train.shard full: rank 0's host copies after Run (keepWhole)
	scalars   *kernels.Tensor        // device scratch of the metrics' all-reduce
	sq        *kernels.Tensor        // the step's float64 accumulators (kernels.F64Acc): the roles' Σ g², then deferred losses (optim.go)
	sqPending []*role                // roles whose gnorm waits in sq for readBack
	deferred  []func(float64)        // setters of the losses queued in sq after the roles' slots (deferSq)
	eager     bool                   // tests: the objective reads its losses at once (no Step.Defer)
	gate      *kernels.Tensor        // the step's gate (kernels.GateLen(len(roles)) F32, after sq's accumulators in one buffer; optim.go)
	sqBuf     *kernels.Tensor        // sq and gate, one buffer: one readback
	gateHost  bool                   // the roles' AdamW step counts must be written into gate (New, Restore)
}

// role is a built network and its optimizer state.
type role struct {
	*objectives.Role
	cfg     config.Role
	m, v    *kernels.Tensor // AdamW moments, same layout as W (trainable roles; m nil when β1 = 0: optim.go)
	updates int             // AdamW steps taken (bias correction)
	runs    []run           // weight-decay mask as contiguous runs of the table
	lr      float64         // the lr of the last update
	gnorm   float64         // the gradient norm before clipping of the last update
	sh      *shard          // train.shard: optimizer: m, v hold this rank's slice (dist.go)
	master  *kernels.Tensor // train.shard optimizer, a DiT: the fp32 master weights of the slice, laid out as m, v
	ov      overlap         // the gradient reduction launched during the last backward (dist.go)
}

// New builds the objective, its roles and their optimizers, and restores job.train.resume if set.
func New(opt Options) (*Trainer, error) {
	job := opt.Job
	obj, err := objectives.New(job.Objective, job.Params)
	if err != nil {
		return nil, err
	}
	t := &Trainer{Job: job, Obj: obj, Dir: job.OutDir, opt: opt, byName: map[string]*role{}, comm: opt.Comm}
	switch job.Train.Shard {
	case "", "none", "optimizer", "full":
	default:
		return nil, fmt.Errorf("train.shard: %q, want none, optimizer or full", job.Train.Shard)
	}
	if err := objectives.CheckNoise(job.Train.Noise); err != nil {
		return nil, err
	}
	t.Env = &objectives.Env{Dev: opt.Dev, Cfg: opt.Model, Shape: opt.Shape, Roles: map[string]*objectives.Role{}}

	if c, ok := obj.(objectives.Configurable); ok { // roles sized by the model (adversarial's head)
		if err := c.Configure(opt.Model); err != nil {
			return nil, fmt.Errorf("objective %s: %w", obj.Name(), err)
		}
	}
	specs := obj.Roles()
	declared := map[string]bool{}
	var studentSpec objectives.RoleSpec
	for _, s := range specs {
		declared[s.Name] = true
		if s.Name == objectives.Student {
			studentSpec = s
		}
	}
	// The EMA of the student: declared by the objective, or asked for by roles.student.ema_decay.
	if st, ok := job.Roles[objectives.Student]; ok && st.EMADecay > 0 && declared[objectives.Student] && !declared[objectives.EMA] {
		specs = append(specs, objectives.RoleSpec{Name: objectives.EMA, Init: objectives.InitStudent,
			Causal: studentSpec.Causal, Custom: studentSpec.Custom})
		declared[objectives.EMA] = true
	}
	for name := range job.Roles {
		if !declared[name] {
			return nil, fmt.Errorf("roles.%s: objective %s has no role %s (its roles: %s)", name, obj.Name(), name, strings.Join(specNames(specs), ", "))
		}
	}
	// Build order: sources of copies first.
	rank := map[objectives.Init]int{objectives.InitWeights: 0, objectives.InitScratch: 0, objectives.InitTeacher: 1, objectives.InitStudent: 2}
	sort.SliceStable(specs, func(i, j int) bool { return rank[specs[i].Init] < rank[specs[j].Init] })
	if err := checkMemory(opt.Dev, opt.Model, specs); err != nil {
		return nil, err
	}
	for _, s := range specs {
		r, err := t.build(s)
		if err != nil {
			return nil, err
		}
		t.roles = append(t.roles, r)
		t.byName[s.Name] = r
		t.Env.Roles[s.Name] = r.Role
	}
	for _, r := range t.roles {
		d := r.Spec.Follow
		if r.Spec.Name == objectives.EMA {
			t.ema, d = r, job.Roles[objectives.Student].EMADecay
		} else if d == 0 {
			continue
		}
		t.emaOf = t.byName[objectives.Student]
		if t.emaOf == nil || t.emaOf.G == nil {
			return nil, fmt.Errorf("objective %s: its %s role follows the student, which it needs trainable", obj.Name(), r.Spec.Name)
		}
		if r.Spec.Name != objectives.EMA && (r.Spec.Trainable || r.Spec.Init != objectives.InitStudent || !(d > 0 && d < 1)) {
			return nil, fmt.Errorf("objective %s: role %s follows the student at decay %g; it must start as the student, not be trained, and 0 < decay < 1", obj.Name(), r.Spec.Name, d)
		}
		t.followers = append(t.followers, follower{r, float32(d)})
	}

	// Device tensors of one micro-batch.
	s, C, dev := opt.Shape, opt.Model.InDim, opt.Dev
	t.x0 = dev.Alloc(kernels.F32, s.B, C, s.F, s.H, s.W)
	t.batch.Ctx = dev.Alloc(kernels.F32, s.B, s.L, opt.Model.TextDim)
	t.batch.Null = dev.Alloc(kernels.F32, s.B, s.L, opt.Model.TextDim)
	if len(opt.Null) != s.L*opt.Model.TextDim {
		return nil, fmt.Errorf("trainer: null embedding has %d values, want text_len·text_dim = %d·%d", len(opt.Null), s.L, opt.Model.TextDim)
	}
	null := make([]float32, 0, s.B*len(opt.Null))
	for b := 0; b < s.B; b++ {
		null = append(null, opt.Null...)
	}
	dev.FromHost(t.batch.Null, null)

	if err := obj.Setup(t.Env); err != nil {
		return nil, fmt.Errorf("objective %s: setup: %w", obj.Name(), err)
	}
	if job.Train.Resume != "" {
		if err := t.Restore(job.Train.Resume); err != nil {
			return nil, err
		}
	}
	return t, nil
}

func specNames(specs []objectives.RoleSpec) []string {
	var ns []string
	for _, s := range specs {
		ns = append(ns, s.Name)
	}
	return ns
}

// roleSeed is the init seed of a role: the job seed mixed with the role's name.
func roleSeed(seed int64, name string) int64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return seed ^ int64(h.Sum64()>>1)
}

func (t *Trainer) build(s objectives.RoleSpec) (*role, error) {
	job, dev := t.Job, t.opt.Dev
	cfg, hasCfg := job.Roles[s.Name]
	if s.Trainable && !hasCfg {
		return nil, fmt.Errorf("roles.%s: objective %s trains a %s; give it an optimizer (roles.%s.lr, ...)", s.Name, t.Obj.Name(), s.Name, s.Name)
	}
	r := &role{Role: &objectives.Role{Spec: s}, cfg: cfg}
	if s.Custom != nil {
		r.Table = s.Custom.Table
		r.W = dev.Alloc(kernels.F32, s.Custom.Numel)
		if s.Trainable {
			r.G = dev.Alloc(kernels.F32, s.Custom.Numel)
		}
	} else if !s.Trainable && !follows(s) && bf16Weights(dev) && !t.fullShard() {
		// A frozen network (the teacher) on a device whose GEMMs read bf16 copies of the weights
		// anyway: its weights in bf16 only, no fp32 master (gpu_device.go). Under train.shard full
		// it is sharded instead, as every DiT role (1/N of its blocks in fp32: less than the whole
		// in bf16 from 3 ranks on).
		r.Net = models.NewFrozen(dev, t.opt.Model, kernels.BF16)
		r.W, r.Table = r.Net.W, r.Net.Table
	} else {
		switch {
		case t.fullShard(): // blocks sharded over the ranks (models/fsdp.go), gathered in bf16 where the GEMMs read bf16
			gdt := kernels.F32
			if bf16Weights(dev) {
				gdt = kernels.BF16
			}
			r.Net = models.NewShardedGather(dev, t.opt.Model, s.Trainable, t.comm, gdt)
		case s.Trainable && t.sharded() && bf16Weights(dev):
			// train.shard optimizer on a device whose GEMMs read bf16 weights: the network computes
			// from bf16 weights, the fp32 master weights are this rank's slice (r.master, dist.go)
			r.Net = models.NewWithWeights(dev, t.opt.Model, true, kernels.BF16)
		default:
			r.Net = models.New(dev, t.opt.Model, s.Trainable)
		}
		r.W, r.G, r.Table = r.Net.W, r.Net.G, r.Net.Table
	}
	switch {
	case cfg.Weights != "":
		if err := r.load(cfg.Weights); err != nil {
			return nil, fmt.Errorf("roles.%s.weights: %w", s.Name, err)
		}
	case s.Init == objectives.InitWeights && t.opt.RandomInit:
		if _, dry := dev.(*models.DryDevice); r.Net != nil && r.Net.Sharded() && !dry {
			r.Net.SetFull(randomHost(r.Net.FullNumel(), roleSeed(job.Seed, s.Name), 0.02)) // the whole model's values, sliced
		} else {
			RandomWeights(dev, r.W, roleSeed(job.Seed, s.Name), 0.02)
		}
	case s.Init == objectives.InitWeights:
		return nil, fmt.Errorf("roles.%s.weights: objective %s needs a checkpoint for its %s", s.Name, t.Obj.Name(), s.Name)
	case s.Init == objectives.InitTeacher || s.Init == objectives.InitStudent:
		from := objectives.Teacher
		if s.Init == objectives.InitStudent {
			from = objectives.Student
		}
		src := t.byName[from]
		if src == nil {
			return nil, fmt.Errorf("roles.%s: starts as a copy of the %s, which objective %s does not have; set roles.%s.weights", s.Name, from, t.Obj.Name(), s.Name)
		}
		if src.W.Numel() != r.W.Numel() {
			return nil, fmt.Errorf("roles.%s: cannot copy the %s (%d parameters into %d)", s.Name, from, src.W.Numel(), r.W.Numel())
		}
		if src.master != nil { // the fp32 master's values, not its bf16 compute copy
			if err := t.copyMaster(r.W, src, true); err != nil {
				return nil, fmt.Errorf("roles.%s: copying the %s: %w", s.Name, from, err)
			}
		} else {
			dev.Copy(r.W, src.W) // sharded roles: the same slices of the same layout
		}
		if r.Net != nil {
			r.Net.Invalidate()
		}
	default: // scratch
		seed := roleSeed(job.Seed, s.Name)
		if s.Custom != nil {
			host := make([]float32, s.Custom.Numel)
			if s.Custom.Init != nil {
				s.Custom.Init(host, rand.New(rand.NewPCG(uint64(seed), 1)))
			}
			dev.FromHost(r.W, host)
		} else {
			r.Net.Init(seed)
		}
	}
	if r.Net != nil && r.Net.Sharded() && !s.Trainable && !follows(s) && bf16Weights(dev) {
		// The frozen teacher under train.shard full keeps fp32 slices; without sharding it is a
		// bf16-only NewFrozen copy. Its values are rounded to bf16 here so that both modes compute
		// with the same teacher, and the roles that start as its copy (dmd's student and critic)
		// start from the same values (gpu_device.go roundBF16).
		roundBF16(dev, r.W)
	}
	if r.W.DType == kernels.F32 {
		markWeights(dev, r.W) // bf16 shadows cached between GEMMs on a GPU (gpu_device.go)
	}
	if r.Net != nil && r.Net.Sharded() {
		sw, _ := r.Net.Slots()
		for _, w := range sw {
			if w.DType == kernels.F32 {
				markWeights(dev, w) // the gathered blocks the GEMMs read
			}
		}
	}
	if s.Trainable {
		n := r.W.Numel()
		if t.sharded() {
			r.sh = newShard(n, t.rank(), t.world())
			n = r.sh.size()
			if r.Net != nil { // a DiT's fp32 master weights: this rank's slice (dist.go)
				var host []float32
				_, dry := dev.(*models.DryDevice)
				switch {
				case cfg.Weights != "" && !dry: // the file's fp32 values (W may be bf16)
					h, err := r.Net.LoadHost(cfg.Weights)
					if err != nil {
						return nil, fmt.Errorf("roles.%s.weights: %w", s.Name, err)
					}
					host = h
				case cfg.Weights == "" && s.Init == objectives.InitWeights && t.opt.RandomInit && !dry:
					host = randomHost(r.W.Numel(), roleSeed(job.Seed, s.Name), 0.02)
				}
				r.master = dev.Alloc(kernels.F32, n)
				r.setMaster(host)
			}
		}
		if firstMoment(cfg) {
			r.m = dev.Alloc(kernels.F32, n)
		}
		r.v = dev.Alloc(kernels.F32, n)
		r.runs = decayRuns(r.Table, r.W.Numel())
		if r.Net != nil && r.Net.Sharded() {
			r.runs = localRuns(r.Table, r.Net.FullNumel(), r.Net.LocalRanges())
		}
	}
	return r, nil
}

// load reads a role's weights from a safetensors file (Wan layout for a DiT, its table's names
// for a custom network).
func (r *role) load(path string) error {
	if r.Net != nil {
		return r.Net.Load(path)
	}
	ts, _, err := models.ReadSafetensors(path)
	if err != nil {
		return err
	}
	host := make([]float32, r.W.Numel())
	for _, p := range r.Table {
		nt, ok := ts[p.Name]
		if !ok {
			return fmt.Errorf("%s: missing key %s", path, p.Name)
		}
		if kernels.Numel(nt.Shape) != kernels.Numel(p.Shape) {
			return fmt.Errorf("%s: key %s has shape %v, want %v", path, p.Name, nt.Shape, p.Shape)
		}
		if i := models.NonFinite(nt.Data); i >= 0 {
			return fmt.Errorf("%s: key %s holds %g at flat index %d: the weights are not finite", path, p.Name, nt.Data[i], i)
		}
		copy(host[p.Offset:], nt.Data)
	}
	r.W.Dev.FromHost(r.W, host)
	return nil
}

// save writes a role's weights in dtype dt; host, when set, holds them whole (a sharded DiT's,
// gathered by fullHost). A NaN or Inf weight is an error wrapping ErrNonFinite and nothing is
// written.
func (r *role) save(path string, dt kernels.DType, host []float32) error {
	var ts []models.NamedTensor
	var meta map[string]string
	switch {
	case host != nil:
		ts, meta = r.Net.NamedTensors(host, ""), map[string]string{"format": "pt"}
	case r.Net != nil:
		ts, meta = r.Net.Tensors(r.W, ""), map[string]string{"format": "pt"}
	default:
		host := make([]float32, r.W.Numel())
		r.W.Dev.ToHost(host, r.W)
		ts = make([]models.NamedTensor, len(r.Table))
		for i, p := range r.Table {
			n := kernels.Numel(p.Shape)
			ts[i] = models.NamedTensor{Name: p.Name, Shape: p.Shape, Data: host[p.Offset : p.Offset+n]}
		}
	}
	for _, nt := range ts {
		if i := models.NonFinite(nt.Data); i >= 0 {
			return fmt.Errorf("role %s: weight %s[%d] = %g: %w", r.Spec.Name, nt.Name, i, nt.Data[i], ErrNonFinite)
		}
	}
	return models.WriteSafetensors(path, ts, dt, meta)
}

// Net returns a role's DiT (nil if the job has no such role or it is not a DiT). Under
// train.shard full, rank 0 gets whole copies: of the ema and student during validation, of the
// teacher, student and ema after Run.
func (t *Trainer) Net(name string) *models.DiT {
	if m := t.whole[name]; m != nil {
		return m
	}
	if host := t.wholeHost[name]; host != nil { // after Run under train.shard full (keepWhole)
		m := models.New(t.opt.Dev, t.opt.Model, false)
		m.SetFull(host)
		markWeights(t.opt.Dev, m.W)
		if t.whole == nil {
			t.whole = map[string]*models.DiT{}
		}
		t.whole[name] = m
		return m
	}
	if r := t.byName[name]; r != nil {
		return r.Net
	}
	return nil
}

// WholeWeights returns a role's weights in its table's layout on the host. Under train.shard full
// it is a collective (every rank calls it) for a DiT role.
func (t *Trainer) WholeWeights(name string) ([]float32, error) {
	r := t.byName[name]
	if r == nil {
		return nil, fmt.Errorf("trainer: no role %q (have %s)", name, strings.Join(t.RoleNames(), ", "))
	}
	if h, err := t.fullHost(r, r.W); h != nil || err != nil {
		return h, err
	}
	h := make([]float32, r.W.Numel())
	r.W.Dev.ToHost(h, r.W)
	return h, nil
}

// RoleNames lists the built roles.
func (t *Trainer) RoleNames() []string {
	var ns []string
	for _, r := range t.roles {
		ns = append(ns, r.Spec.Name)
	}
	return ns
}

// nextBatch loads one micro-batch onto the device.
func (t *Trainer) nextBatch() error {
	hb, err := t.opt.Source.Next()
	if err != nil {
		return fmt.Errorf("step %d: loading a batch: %w", t.Step+1, err)
	}
	dev, b := t.opt.Dev, &t.batch
	if want := b.Ctx.Numel(); len(hb.Ctx) != want {
		return fmt.Errorf("step %d: batch text embeddings have %d values, want %v", t.Step+1, len(hb.Ctx), b.Ctx.Shape)
	}
	dev.FromHost(b.Ctx, hb.Ctx)
	b.X0 = nil
	if hb.X0 != nil {
		if want := t.x0.Numel(); len(hb.X0) != want {
			return fmt.Errorf("step %d: batch latents have %d values, want %v", t.Step+1, len(hb.X0), t.x0.Shape)
		}
		dev.FromHost(t.x0, hb.X0)
		b.X0 = t.x0
	}
	b.Drop, b.Captions, b.IDs = hb.Drop, hb.Captions, hb.IDs
	b.TrajX, b.TrajSigma = nil, nil
	if hb.TrajX != nil {
		S := len(hb.TrajSigma)
		if t.trajX == nil || t.trajX.Shape[1] != S { // the first batch of ODE pairs sizes the buffer
			if t.trajX != nil {
				dev.Free(t.trajX)
			}
			t.trajX = dev.Alloc(kernels.F32, append([]int{t.x0.Shape[0], S}, t.x0.Shape[1:]...)...)
		}
		if want := t.trajX.Numel(); len(hb.TrajX) != want {
			return fmt.Errorf("step %d: batch trajectories have %d values, want %v", t.Step+1, len(hb.TrajX), t.trajX.Shape)
		}
		dev.FromHost(t.trajX, hb.TrajX)
		b.TrajX, b.TrajSigma = t.trajX, hb.TrajSigma
	}
	return nil
}

// TrainStep runs one optimizer step (all micro-batches) and returns its metrics: it launches the
// step and waits for its readback (launch and settle, optim.go).
func (t *Trainer) TrainStep() (map[string]float64, error) {
	p, err := t.launch()
	if err != nil {
		return nil, err
	}
	return t.settle(p)
}

// launch runs one optimizer step's micro-batches and queues its optimizer updates; the step's
// metrics come with settle. With the gate on the device (t.gated) nothing here waits for the
// device (but what the objective itself reads back): the gradient norms, the deferred losses and
// the gate stay on the device and one asynchronous readback of them is started. Otherwise (several
// ranks) they are read back and the guard and the updates run from the host, as before the gate.
func (t *Trainer) launch() (*pendingStep, error) {
	if t.inflight > 0 && !t.gated() {
		return nil, fmt.Errorf("trainer: step %d launched while a step is in flight on several ranks (internal)", t.Step+1)
	}
	n := t.Step + 1
	job := t.Job
	accum := max(job.Train.GradAccum, 1)
	for _, r := range t.roles {
		if r.G != nil {
			if err := t.settleOverlap(r); err != nil { // a role armed but not reported updated
				return nil, err
			}
			if r.Net != nil {
				if err := r.Net.SettleGrads(); err != nil { // a sharded DiT's scatters still in flight
					return nil, fmt.Errorf("step %d: role %s: %w", n, r.Spec.Name, err)
				}
			}
			t.opt.Dev.Zero(r.G)
		}
	}
	p := &pendingStep{n: n, updated: map[string]bool{}, lr: map[string]float64{}}
	t.startReadback()
	for micro := 0; micro < accum; micro++ {
		if err := t.nextBatch(); err != nil {
			return nil, err
		}
		s := &objectives.Step{Step: n, Micro: micro, Accum: accum, RNG: objectives.StepRNG(job.Seed, n, micro),
			Samples: objectives.StepSamples(job.Seed, n, micro, t.opt.Shape.B, t.rank(), t.world()), Noise: job.Train.Noise}
		if micro == accum-1 && t.overlaps() {
			s.LastBackward = t.lastBackward
		}
		if !t.eager {
			s.Defer = t.deferSq
		}
		up, err := t.Obj.Step(s, &t.batch)
		if err == nil {
			err = t.shardErr()
		}
		if err != nil {
			return nil, fmt.Errorf("step %d: %s: %w", n, t.Obj.Name(), err)
		}
		for _, name := range up.Roles {
			r := t.byName[name]
			if r == nil || r.G == nil {
				return nil, fmt.Errorf("step %d: %s reported gradients for %q, which is not a trainable role", n, t.Obj.Name(), name)
			}
			p.updated[name] = true
		}
		p.micros = append(p.micros, up.Metrics) // deferred losses land in them at the readback
	}
	for _, r := range t.roles {
		if p.updated[r.Spec.Name] {
			if err := t.gradNorm(r, accum); err != nil {
				return nil, err
			}
		}
	}
	if t.gated() {
		t.launchGated(p)
		t.Step = n // the batch and the step's RNG are used up, whatever the gate decides
		return p, nil
	}
	t.readBack() // one copy to the host: every role's Σ g² and the losses the objective deferred
	metrics := meanMetrics(p.micros)
	if t.comm != nil {
		if err := t.reduceMetrics(metrics); err != nil {
			return nil, err
		}
	}
	bad := t.badOf(metrics, p)
	p.metrics, p.skipped = metrics, len(bad) > 0
	t.Step = n // the batch and the step's RNG are used up: a resumed run skips them too
	if p.skipped {
		p.err = t.countBad(p, bad)
		return p, nil
	}
	for _, r := range t.roles { // build order: deterministic
		if !p.updated[r.Spec.Name] {
			continue
		}
		if err := t.update(r, n); err != nil {
			return nil, err
		}
		metrics["lr/"+r.Spec.Name] = r.lr
		if r == t.emaOf {
			for _, f := range t.followers {
				if err := t.updateEMA(f, r, n < job.Roles[objectives.Student].EMAStart); err != nil {
					return nil, err
				}
				if f.r.Net != nil {
					f.r.Net.Invalidate()
				}
			}
		}
	}
	return p, nil
}

// meanMetrics is a step's metrics once its losses are on the host: the mean over the
// micro-batches.
func meanMetrics(micros []map[string]float64) map[string]float64 {
	metrics := map[string]float64{}
	counts := map[string]int{}
	for _, um := range micros {
		for k, v := range um {
			metrics[k] += v
			counts[k]++
		}
	}
	for k := range metrics {
		metrics[k] /= float64(counts[k])
	}
	return metrics
}

// badOf is the non-finite guard's test: the step's losses (every metric) and every updated role's
// gradient norm (the norm is the clip's too), which it also records in metrics.
func (t *Trainer) badOf(metrics map[string]float64, p *pendingStep) []string {
	var bad []string
	for _, k := range sortedKeys(metrics) {
		if v := metrics[k]; !finite(v) {
			bad = append(bad, fmt.Sprintf("%s = %g", k, v))
		}
	}
	for _, r := range t.roles {
		if p.updated[r.Spec.Name] {
			metrics["grad_norm/"+r.Spec.Name] = r.gnorm
			if !finite(r.gnorm) {
				bad = append(bad, fmt.Sprintf("gradient norm of role %s = %g", r.Spec.Name, r.gnorm))
			}
		}
	}
	return bad
}

// countBad counts a skipped step (the non-finite guard: a step with a NaN or Inf loss or gradient
// norm updates nothing, no AdamW, no EMA); one more than train.max_bad_steps is ErrDiverged.
func (t *Trainer) countBad(p *pendingStep, bad []string) error {
	t.BadSteps++
	job := t.Job
	msg := fmt.Sprintf("step %d: not finite: %s (this step: %s)", p.n, strings.Join(bad, ", "), lossesOf(p.metrics))
	if t.BadSteps > job.Train.MaxBadSteps {
		return fmt.Errorf("%s; %d non-finite steps, more than train.max_bad_steps = %d: %w", msg, t.BadSteps, job.Train.MaxBadSteps, ErrDiverged)
	}
	t.logf("%s: skipped (no update; %d of train.max_bad_steps = %d)", msg, t.BadSteps, job.Train.MaxBadSteps)
	return nil
}

// settle waits for a launched step's readback (gated) and returns its metrics, counting it when
// it was skipped; steps settle in launch order.
func (t *Trainer) settle(p *pendingStep) (map[string]float64, error) {
	if p.rb != nil {
		if err := t.settleGated(p); err != nil {
			return nil, err
		}
	}
	t.skipped = p.skipped
	return p.metrics, p.err
}

// Run trains to train.steps, logging, validating and checkpointing on schedule; the last step is
// always checkpointed and validated.
func (t *Trainer) Run() error {
	job := t.Job
	lead := t.lead()
	var ml *metricsLog
	if lead { // rank 0 writes the run's files
		if err := os.MkdirAll(t.Dir, 0o755); err != nil {
			return err
		}
		if _, err := os.Stat(filepath.Join(t.Dir, "job.yaml")); err != nil || t.Step == 0 {
			if err := config.Save(job, filepath.Join(t.Dir, "job.yaml")); err != nil {
				return err
			}
		}
		var err error
		if ml, err = openMetrics(filepath.Join(t.Dir, "metrics.jsonl"), t.Step); err != nil {
			return err
		}
		defer ml.Close()
		t.metrics = ml
		if err := t.openTensorBoard(ml); err != nil {
			return err
		}
	}
	global := t.opt.Shape.B * t.world() * max(job.Train.GradAccum, 1)
	if t.comm != nil {
		t.logf("training on %d ranks: batch %d per rank, global batch %d (× grad_accum %d), train.shard %s",
			t.world(), t.opt.Shape.B, global, max(job.Train.GradAccum, 1), shardName(job.Train.Shard))
	}
	progress := t.opt.Progress
	if !lead {
		progress = nil
	}
	bar := newBar(progress, job.Train.Steps, t.Step, job.Name)
	start, startStep := time.Now(), t.Step
	t.started = start
	logEvery := max(job.Train.LogEvery, 1)
	var acc meanAcc
	// record settles a launched step and logs it: progress bar, metrics.jsonl, the bad-step count.
	record := func(p *pendingStep) (map[string]float64, error) {
		m, err := t.settle(p)
		if err != nil {
			if errors.Is(err, ErrDiverged) {
				err = fmt.Errorf("%w; checkpoints/latest is the last finite checkpoint (%s)", err, t.latestName())
			}
			return nil, err
		}
		if !p.skipped {
			acc.add(m)
		}
		n := p.n
		rate := float64(n-startStep) / time.Since(start).Seconds()
		bar.update(n, m, rate)
		if n%logEvery == 0 || n == job.Train.Steps {
			rec := acc.mean()
			rec["steps_per_s"] = rate
			rec["global_batch"], rec["world"] = float64(global), float64(t.world())
			rec["bad_steps"] = float64(t.BadSteps)
			if ml != nil {
				if err := ml.write(n, time.Since(start).Seconds(), rec); err != nil {
					return nil, err
				}
			}
			acc = meanAcc{}
		}
		return m, nil
	}
	// The pipeline (trainer/GPU_NOTES.md, optim.go launchGated): step n is launched before step
	// n−1 is settled, so the host never waits for the step it just queued; n−1's readback finished
	// long before. So the bad-step count and ErrDiverged come one step late. A step that
	// checkpoints, validates, stops or ends the run is settled at once, before all of that.
	var prev *pendingStep
	for t.Step < job.Train.Steps {
		p, err := t.launch()
		if err != nil {
			if prev != nil {
				t.settle(prev) // its metrics are lost with the run; the error is launch's
			}
			return err
		}
		if prev != nil {
			if _, err := record(prev); err != nil {
				return err
			}
			prev = nil
		}
		n := p.n
		last := n == job.Train.Steps
		ckpt := (job.Train.CkptEvery > 0 && n%job.Train.CkptEvery == 0) || last
		val := (t.opt.Validate != nil || t.fullShard()) && ((job.Train.SampleEvery > 0 && n%job.Train.SampleEvery == 0) || last)
		stop, err := t.anyStopped()
		if err != nil {
			return err
		}
		if !ckpt && !val && !stop {
			prev = p
			continue
		}
		m, err := record(p)
		if err != nil {
			return err
		}
		saved := ""
		if ckpt {
			if saved, err = t.Save(); err != nil {
				if errors.Is(err, ErrNonFinite) { // the step's update overflowed the weights
					return fmt.Errorf("step %d (%s): the update made the weights not finite: %w; no checkpoint written, checkpoints/latest is the last finite one (%s): %w",
						n, lossesOf(m), err, t.latestName(), ErrDiverged)
				}
				return err
			}
			t.logf("step %d: checkpoint %s", n, saved)
			t.plot() // RUN/plots/*.png (plots.go)
		}
		if stop {
			if saved == "" {
				if saved, err = t.Save(); err != nil {
					return err
				}
			}
			bar.stop()
			return fmt.Errorf("step %d: %w; checkpoint %s (continue with --resume %s)", n, ErrInterrupted, saved, t.Dir)
		}
		if val {
			if err := t.validate(n); err != nil {
				return fmt.Errorf("step %d: validation: %w", n, err)
			}
			t.plot()
		}
	}
	if prev != nil { // not reached: the last step settles at once
		if _, err := record(prev); err != nil {
			return err
		}
	}
	bar.finish()
	return t.keepWhole()
}

// keepWhole: at the end of a run under train.shard full, while the ranks are still connected,
// every rank gathers the teacher's, student's and EMA's weights and rank 0 keeps them on the host,
// so that Net gives whole networks after Run (an evaluation on rank 0 alone, as `fewstep demo`
// makes, cannot gather anymore).
func (t *Trainer) keepWhole() error {
	if !t.fullShard() {
		return nil
	}
	for _, name := range []string{objectives.Teacher, objectives.Student, objectives.EMA} {
		r := t.byName[name]
		if r == nil || r.Net == nil {
			continue
		}
		host, err := t.fullHost(r, r.W)
		if err != nil {
			return fmt.Errorf("after the last step: %w", err)
		}
		if t.lead() {
			if t.wholeHost == nil {
				t.wholeHost = map[string][]float32{}
			}
			t.wholeHost[name] = host
		}
	}
	return nil
}

// validate runs Options.Validate on rank 0. Under train.shard full every rank first gathers the
// weights of the ema and student roles (the networks a validator samples from), and rank 0 holds
// them whole, unsharded, while it validates (Net returns them); the other ranks go on to the next
// step and wait for it there.
func (t *Trainer) validate(n int) error {
	if t.fullShard() {
		// Only rank 0 validates, and only it may have a validator: the ranks agree on whether
		// there is one before they gather for it.
		has := []float64{0}
		if t.lead() && t.opt.Validate != nil {
			has[0] = 1
		}
		if err := t.sumHost(has, dist.Sum); err != nil {
			return err
		}
		if has[0] == 0 {
			return nil
		}
		t.whole = map[string]*models.DiT{}
		defer func() {
			for _, m := range t.whole {
				t.opt.Dev.Free(m.W)
			}
			t.whole = nil
		}()
		for _, name := range []string{objectives.EMA, objectives.Student} {
			r := t.byName[name]
			if r == nil || r.Net == nil {
				continue
			}
			host, err := t.fullHost(r, r.W)
			if err != nil {
				return err
			}
			if t.lead() {
				m := models.New(t.opt.Dev, t.opt.Model, false)
				m.SetFull(host)
				markWeights(t.opt.Dev, m.W)
				t.whole[name] = m
			}
		}
	}
	if !t.lead() || t.opt.Validate == nil {
		return nil
	}
	return t.opt.Validate(n, t)
}

func shardName(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// StopOn sets Options.Stop (for trainers built by FromJob).
func (t *Trainer) StopOn(stop <-chan struct{}) { t.opt.Stop = stop }

// stopped reports whether Options.Stop has been closed.
func (t *Trainer) stopped() bool {
	select {
	case <-t.opt.Stop:
		return true
	default:
		return false
	}
}

func (t *Trainer) logf(format string, a ...any) {
	if t.opt.Log != nil && t.lead() {
		fmt.Fprintf(t.opt.Log, format+"\n", a...)
	}
}

// LogMetrics appends a line of extra metrics (e.g. validation scores) for step to metrics.jsonl and
// the log. Only during Run.
func (t *Trainer) LogMetrics(step int, m map[string]float64) error {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	line := fmt.Sprintf("step %d:", step)
	for _, k := range keys {
		line += fmt.Sprintf(" %s %.4g", k, m[k])
	}
	t.logf("%s", line)
	if !t.lead() {
		return nil // rank 0 writes the run's metrics
	}
	if t.metrics == nil {
		return fmt.Errorf("trainer: LogMetrics outside Run")
	}
	return t.metrics.write(step, time.Since(t.started).Seconds(), m)
}
