// Package objectives holds the pluggable loss modules of fewstep (docs/objectives.md): flowmatch,
// consistency, dmd (+critic), adversarial, selfforcing, odeinit. A new objective is one file plus a
// config: a type that implements Objective and an init() that calls Register.
//
// The contract between an objective and the trainer:
//
//  1. Construction. The trainer looks the job's `objective:` name up in the registry and calls the
//     constructor with the job's `params:` map. The constructor decodes it strictly with
//     DecodeParams (an unknown key is an error naming the key) and fills in the anchors' defaults.
//
//  2. Roles. Objective.Roles declares the networks it needs (student, teacher, critic, ema,
//     discriminator): each trainable (own optimizer, lr and schedule from `roles.<name>` of the job)
//     or frozen, and where its weights start (RoleSpec.Init). The trainer builds them, loads or copies
//     their weights, and hands them over in Env.Roles. Trainable roles have gradient buffers (G);
//     frozen ones do not, but Backward through a frozen DiT still returns the input gradient.
//
//  3. Setup. Objective.Setup(env) is called once before the first step: allocate the passes and
//     scratch tensors for env.Shape here (the hot loop allocates nothing).
//
//  4. Steps. For every optimizer step n = 1, 2, ... and micro-batch i of Train.GradAccum, the
//     trainer calls Objective.Step(s, b) with s.Step = n, s.Micro = i, s.RNG seeded from
//     (job seed, n, i) — the same on every rank — and one stream per sample, s.Sample(b), seeded
//     from (job seed, n, i, the sample's global index): every draw that belongs to a sample comes
//     from its stream, every draw of the whole batch from s.RNG, so a job on N ranks with batch B/N
//     draws what one rank with batch B draws; all exactly reproducible after a resume. Before
//     micro-batch 0 the trainer zeroes every trainable role's G; the objective's Backward calls
//     accumulate (+=) into them. Step returns the names of the roles whose gradients it produced in
//     this step (Update.Roles) and named metrics (Update.Metrics, "loss" shown in the progress bar).
//     After the last micro-batch the trainer, for each role named by Step (in any micro-batch):
//     scales G by 1/GradAccum, clips it to Train.ClipNorm (global L2 norm of that role), and applies
//     AdamW (lr from the role's schedule at step n; weight decay only on parameters whose table
//     entry has Decay). Roles not named are left untouched (their optimizer step count does not
//     advance): this is how the two time-scale rule works — dmd names "critic" every step and
//     "student" only when n % generator_update_ratio == 0.
//
//     If an objective backpropagates a loss through a trainable network that must NOT update it
//     (e.g. the generator's GAN loss through the critic, docs/objectives.md, adversarial), it must
//     zero that role's G (Env.ZeroGrad) before accumulating the gradients it does want.
//
//  5. EMA. If the job sets roles.student.ema_decay > 0 (or the objective declares an "ema" role),
//     the trainer keeps an "ema" role: a frozen copy of the student updated after each optimizer
//     step of the student, ema = d·ema + (1−d)·w, copied straight from the student before
//     roles.student.ema_start. Objectives read it (consistency's target) and never write it. A role
//     declared with RoleSpec.Follow = d is kept the same way at its own decay d (consistency's
//     target at params.target_decay, beside a slower "ema" that is evaluated).
//
// Objectives never import data/ (docs/architecture.md: cmd → trainer → objectives → models → kernels):
// the trainer converts the loader's batches into a Batch of device tensors.
package objectives

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	"github.com/go-viper/mapstructure/v2"
)

// Role names.
const (
	Student       = "student"
	Teacher       = "teacher"
	Critic        = "critic"
	EMA           = "ema"
	Discriminator = "discriminator"
)

// Init says where a role's weights start. Every role may still be given a checkpoint in the job
// (roles.<name>.weights), which wins over InitScratch/InitTeacher/InitStudent; InitWeights makes that
// checkpoint required.
type Init string

const (
	InitScratch Init = "scratch" // Wan's init (models.DiT.Init) or CustomNet.Init, seeded from the job seed
	InitWeights Init = "weights" // roles.<name>.weights must name a checkpoint
	InitTeacher Init = "teacher" // a copy of the teacher's weights (dmd's critic, distilled students)
	InitStudent Init = "student" // a copy of the student's weights (ema)
)

// RoleSpec is one network an objective needs.
type RoleSpec struct {
	Name      string // Student, Teacher, Critic, EMA, Discriminator (or an objective's own name)
	Trainable bool   // has G, its own AdamW and lr schedule (roles.<name> in the job)
	Init      Init
	// Causal makes the role's DiT block-causal with the job's model.chunk_frames (selfforcing's and
	// odeinit's student); the teacher and critic stay bidirectional.
	Causal bool
	// Follow > 0 makes the role (Init InitStudent, not trainable) an EMA of the student at decay
	// Follow, updated by the trainer as the "ema" role is (rule 5).
	Follow float64
	// Custom, when non-nil, makes the role a network of the objective's own (e.g. a discriminator
	// head) instead of a DiT; the trainer optimizes and checkpoints it through its table.
	Custom *CustomNet
}

// CustomNet is a non-DiT network: a parameter table laid over one buffer (Decay flags honoured by
// AdamW) and its initialization. The objective implements its forward/backward with kernels ops on
// Role.W / Role.G views.
type CustomNet struct {
	Table []models.Param
	Numel int
	Init  func(w []float32, rng *rand.Rand) // host copy of the whole buffer, len Numel
}

// Role is a built network handed to the objective.
type Role struct {
	Spec  RoleSpec
	Net   *models.DiT     // nil for a CustomNet role
	W     *kernels.Tensor // [P] all parameters (Net.W for a DiT)
	G     *kernels.Tensor // [P] gradients (Net.G); nil when frozen
	Table []models.Param
}

// Batch is what an objective sees of one micro-batch: device tensors plus the captions.
type Batch struct {
	X0       *kernels.Tensor // [B,C,F,H,W] data latents, normalized; nil for a text-only dataset
	Ctx      *kernels.Tensor // [B,L,text_dim] text embeddings as loaded: the null embedding where Drop[b]
	Null     *kernels.Tensor // [B,L,text_dim] the null (empty-prompt) embedding, for CFG's uncond branch
	Drop     []bool          // [B] the loader's per-sample CFG dropout (data.cfg_dropout; 0 for distillation)
	Captions []string        // [B]
	IDs      []string        // [B]
	// ODE pairs (odeinit), nil otherwise: TrajX [B,S,C,F,H,W] latents at TrajSigma [S] (descending),
	// and the final clean x0 in X0.
	TrajX     *kernels.Tensor
	TrajSigma []float32
}

// B is the batch size.
func (b *Batch) B() int { return b.Ctx.Shape[0] }

// Env is what an objective is set up with.
type Env struct {
	Dev   kernels.Device
	Cfg   models.Config
	Shape models.Shape // B, F, H, W of the latents, L context tokens, ChunkFrames (0 = bidirectional)
	Roles map[string]*Role
}

// Role returns a declared role or an error naming it.
func (e *Env) Role(name string) (*Role, error) {
	r, ok := e.Roles[name]
	if !ok {
		return nil, fmt.Errorf("objectives: role %q was not built (have %s)", name, strings.Join(e.roleNames(), ", "))
	}
	return r, nil
}

func (e *Env) roleNames() []string {
	var ns []string
	for n := range e.Roles {
		ns = append(ns, n)
	}
	sort.Strings(ns)
	return ns
}

// ZeroGrad zeroes a trainable role's gradients (see the package comment on losses that must not
// update a network they pass through).
func (e *Env) ZeroGrad(name string) {
	if r := e.Roles[name]; r != nil && r.G != nil {
		e.Dev.Zero(r.G)
	}
}

// Step is one call of Objective.Step.
type Step struct {
	Step  int        // optimizer step, 1-based
	Micro int        // micro-batch index in [0, Accum)
	Accum int        // Train.GradAccum
	RNG   *rand.Rand // seeded from (seed, Step, Micro), the same on every rank: draws of the whole batch (exit steps)
	// Samples [B] are the streams of the micro-batch's samples, seeded from (seed, Step, Micro, the
	// sample's index in the global batch): every draw that belongs to one sample (its noise, σ, level,
	// guidance weight) comes from its stream, so N ranks with batch B/N draw what one rank with batch
	// B draws. nil (objective tests): every draw comes from RNG.
	Samples []*rand.Rand
	// LastBackward, when set (the trainer, on a data-parallel step's last micro-batch), is called
	// through Last by the objective just before the last backward of the micro-batch into a
	// network with gradients: the trainer then averages that network's gradient over the ranks
	// during this backward, block by block as each is final, instead of after the step (see
	// docs/multi-gpu.md). An objective that does not call it is still right, only not overlapped;
	// one that calls it and then runs another backward into the network gets an error.
	LastBackward func(net *models.DiT)
	// Defer, when set (the trainer), takes a squared norm SqNorm is asked for: it queues Σ x² on the
	// device (Device.SumSquares, no synchronization) and calls set with it once the step's queued
	// sums are on the host, all in one copy, before the trainer reads the step's metrics. false:
	// not queued; SqNorm computes it at once. nil (objective tests): every SqNorm is at once.
	Defer func(x *kernels.Tensor, set func(sq float64)) bool
	// Noise is where RandnSamples draws the step's Gaussian noise (the job's train.noise): NoiseHost,
	// NoiseDevice, or NoiseAuto / "" (device on a GPU, host on the CPU). See RandnSamples.
	Noise string

	draws uint64   // RandnSamples calls so far in this step: the Philox counter of the next
	keys  []uint64 // RandnSamples' per-sample keys (scratch)
}

// Where the step's Gaussian noise is drawn (Step.Noise, train.noise).
const (
	NoiseAuto   = "auto"   // NoiseDevice on a GPU, NoiseHost on the CPU (also "")
	NoiseHost   = "host"   // each sample's stream's normals, drawn on the host and uploaded: the CPU-equal mode
	NoiseDevice = "device" // Device.RandnPhilox, keyed by the samples' streams (RandnSamples)
)

// CheckNoise names a bad train.noise.
func CheckNoise(mode string) error {
	switch mode {
	case "", NoiseAuto, NoiseHost, NoiseDevice:
		return nil
	}
	return fmt.Errorf("train.noise: %q, want auto, host or device", mode)
}

// deviceNoise resolves Noise for dev.
func (s *Step) deviceNoise(dev kernels.Device) bool {
	switch s.Noise {
	case NoiseHost:
		return false
	case NoiseDevice:
		return true
	case "", NoiseAuto:
		return dev.Name() != "cpu"
	}
	panic(CheckNoise(s.Noise).Error())
}

// SqNorm calls set(Σ x²) (= dev.Dot(x, x), bit for bit): at once, or under the trainer after the
// step's one readback (Defer). A loss only logged and guarded (not used by the step's math) is
// set this way, so that it costs no synchronization of its own. x may be overwritten after the
// call: the sum is taken in stream order.
func (s *Step) SqNorm(dev kernels.Device, x *kernels.Tensor, set func(sq float64)) {
	if s != nil && s.Defer != nil && s.Defer(x, set) {
		return
	}
	set(dev.Dot(x, x))
}

// Last tells the trainer that the next backward into net is the micro-batch's last (LastBackward).
func (s *Step) Last(net *models.DiT) {
	if s != nil && s.LastBackward != nil && net != nil {
		s.LastBackward(net)
	}
}

// Sample is the stream of local sample b (see Samples).
func (s *Step) Sample(b int) *rand.Rand {
	if s.Samples == nil {
		return s.RNG
	}
	return s.Samples[b]
}

// Update is what a step reports.
type Update struct {
	Roles   []string           // roles whose G this step accumulated into: the trainer steps their optimizers
	Metrics map[string]float64 // named scalars for metrics.jsonl; "loss" is shown in the progress bar
}

// Objective is one training method.
type Objective interface {
	Name() string
	Roles() []RoleSpec
	Setup(env *Env) error
	Step(s *Step, b *Batch) (Update, error)
}

// Constructor builds an objective from the job's params map (decode it with DecodeParams).
type Constructor func(params map[string]any) (Objective, error)

var (
	regMu    sync.Mutex
	registry = map[string]Constructor{}
)

// Register makes an objective available by name; call it from the objective file's init().
// Registering a name twice panics (a programming error).
func Register(name string, c Constructor) {
	regMu.Lock()
	defer regMu.Unlock()
	if _, dup := registry[name]; dup {
		panic("objectives: " + name + " registered twice")
	}
	registry[name] = c
}

// howToRegister is what New's error for an unknown name tells: an objective registers itself from its
// package's init(), so the binary must import that package (docs/new-objective.md, section 8).
const howToRegister = `a custom objective registers itself in its package's init() once the binary imports that package: ` +
	`add import _ "example.com/you/yourobjective" to a file of cmd/fewstep (or of your own main package); ` +
	`docs/new-objective.md, section 8`

// New builds the objective named in a job.
func New(name string, params map[string]any) (Objective, error) {
	regMu.Lock()
	c, ok := registry[name]
	regMu.Unlock()
	if !ok {
		return nil, fmt.Errorf("objective: %q is not registered (have %s); %s", name, strings.Join(Names(), ", "), howToRegister)
	}
	o, err := c(params)
	if err != nil {
		return nil, fmt.Errorf("objective %s: %w", name, err)
	}
	return o, nil
}

// Names lists the registered objectives.
func Names() []string {
	regMu.Lock()
	defer regMu.Unlock()
	var ns []string
	for n := range registry {
		ns = append(ns, n)
	}
	sort.Strings(ns)
	return ns
}

// DecodeParams decodes a params map into dst (a pointer to a struct with mapstructure tags, already
// holding the defaults) strictly: an unknown key is an error naming it ("params.foo"), and so is a
// value of the wrong type. Numbers convert between int and float kinds.
func DecodeParams(params map[string]any, dst any) error {
	var md mapstructure.Metadata
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
		Result:   dst,
		Metadata: &md,
	})
	if err != nil {
		return err
	}
	if err := dec.Decode(params); err != nil {
		return fmt.Errorf("params: %w", err)
	}
	if len(md.Unused) > 0 {
		sort.Strings(md.Unused)
		for i, k := range md.Unused {
			md.Unused[i] = "params." + k
		}
		return fmt.Errorf("unknown key(s) %s", strings.Join(md.Unused, ", "))
	}
	return nil
}

// StepRNG is the RNG of one micro-batch: PCG seeded from (seed, step, micro). Ranks that share the
// seed draw the same choices.
func StepRNG(seed int64, step, micro int) *rand.Rand {
	return rand.New(rand.NewPCG(uint64(seed)^0x9e3779b97f4a7c15, uint64(step)<<16|uint64(micro)))
}

// SampleRNG is the stream of the sample at index global of the global batch of micro-batch micro of
// step: PCG seeded from (seed, step, micro, global), independent of the rank that holds the sample.
// With the loader's sharding (rank r of N takes every N-th sample of the order from r), local sample
// j of rank r is global sample j·N + r.
func SampleRNG(seed int64, step, micro, global int) *rand.Rand {
	return rand.New(rand.NewPCG(mix(uint64(seed)^0x5851f42d4c957f2d, uint64(global)), uint64(step)<<16|uint64(micro)))
}

// StepSamples returns the B streams of rank's samples in a world of ranks (SampleRNG).
func StepSamples(seed int64, step, micro, B, rank, world int) []*rand.Rand {
	rs := make([]*rand.Rand, B)
	for j := range rs {
		rs[j] = SampleRNG(seed, step, micro, j*world+rank)
	}
	return rs
}

// mix is splitmix64's finalizer of a ^ b·golden: distinct (a, b) give unrelated seeds.
func mix(a, b uint64) uint64 {
	x := a ^ (b+1)*0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}
