package objectives

// selfforcing — autoregressive rollouts of the causal student with its KV cache (Self-Forcing;
// docs/objectives.md).
//
// Rollout, chunk j = 0, 1, … of k latent frames, all chunks sharing one random exit step s:
//
//	x ← ε                                                    the chunk's noise, at σ_0
//	for i < s:  x0 = x − σ_i·v(x, σ_i | cache)  (no grad);  x ← (1−σ_{i+1})·x0 + σ_{i+1}·ε'
//	i = s:      x0_j = x − σ_s·v(x, σ_s | cache)             the graded step (its input kept; replayed in Backward)
//	cache ← K/V of v(x0_j noised to σ = context_noise | cache), no grad
//
// No gradient crosses chunks (the cache holds values, not a graph). The video x = [x0_0, x0_1, …]
// gets DMD's gradient from the bidirectional teacher (CFG) and critic; it flows back into each
// chunk's graded step. The critic then takes a flow-matching step on a fresh no-grad rollout, every
// step; the generator is updated every generator_update_ratio steps. With regression_weight λ > 0 the
// generator step adds λ times odeinit's ODE regression on the batch's teacher trajectories (DMD's
// regression loss, as dmd's regression: ode; the job's data are then `fewstep data ode-pairs`).
//
// Roles: student (trainable, block-causal; starts as the teacher unless roles.student.weights names
// the odeinit checkpoint), teacher (frozen), critic (trainable, starts as the teacher).

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
)

func init() { Register("selfforcing", newSelfForcing) }

type selfForcingParams struct {
	DMDParams    `mapstructure:",squash"` // shift 5 (Self-Forcing's); cfg 4 = Self-Forcing's guidance 3.0
	ContextNoise float64                  `mapstructure:"context_noise"`           // σ of the cache refresh (0 = clean)
	SameStep     bool                     `mapstructure:"same_step_across_chunks"` // one exit step for every chunk (true)
	ChunkFrames  int                      `mapstructure:"chunk_frames"`            // 0 = the model's chunk_frames
	KVDType      string                   `mapstructure:"kv_cache_dtype"`          // fp32, or bf16 (half the cache; the same numbers where attention reads bf16)
	RegWeight    float64                  `mapstructure:"regression_weight"`       // λ of DMD's regression on teacher ODE pairs (0 = off)
}

// SelfForcing is the objective.
type SelfForcing struct {
	P selfForcingParams

	env    *Env
	sigmas []float32
	roll   *CausalRollout
	dmd    *DMDGrad
	critic *FlowMatch
	reg    *odeRegression // params.regression_weight > 0
	csigma []float32      // [B] critic σ
	exits  []int
}

func newSelfForcing(params map[string]any) (Objective, error) {
	o := &SelfForcing{P: selfForcingParams{DMDParams: DMDDefaults(5), ContextNoise: 0, SameStep: true, KVDType: "fp32"}}
	if err := DecodeParams(params, &o.P); err != nil {
		return nil, err
	}
	p := &o.P
	if _, err := p.validate(); err != nil {
		return nil, err
	}
	switch {
	case p.ContextNoise < 0 || p.ContextNoise >= 1:
		return nil, fmt.Errorf("params.context_noise: %g, want σ in [0, 1)", p.ContextNoise)
	case p.ChunkFrames < 0:
		return nil, fmt.Errorf("params.chunk_frames: %d, must be ≥ 0", p.ChunkFrames)
	case p.KVDType != "fp32" && p.KVDType != "bf16":
		return nil, fmt.Errorf("params.kv_cache_dtype: %q, want fp32 or bf16", p.KVDType)
	case !(p.RegWeight >= 0) || math.IsInf(p.RegWeight, 0):
		return nil, fmt.Errorf("params.regression_weight: %v, must be finite and >= 0", p.RegWeight)
	}
	o.sigmas = DenoisingList(p.Timesteps, p.Shift)
	return o, nil
}

func (o *SelfForcing) Name() string { return "selfforcing" }

func (o *SelfForcing) Roles() []RoleSpec {
	return []RoleSpec{
		{Name: Teacher, Init: InitWeights},
		{Name: Student, Trainable: true, Init: InitTeacher, Causal: true},
		{Name: Critic, Trainable: true, Init: InitTeacher},
	}
}

// chunkFrames resolves the chunk length: the param, else the job's model.chunk_frames.
func chunkFrames(param int, s models.Shape) (int, error) {
	k := param
	if k == 0 {
		k = s.ChunkFrames
	}
	if k < 1 {
		return 0, fmt.Errorf("chunk_frames: neither params.chunk_frames nor model.chunk_frames is set (the causal student needs chunks)")
	}
	if s.F%k != 0 {
		return 0, fmt.Errorf("chunk_frames: %d latent frames are not a multiple of chunk_frames %d", s.F, k)
	}
	return k, nil
}

func (o *SelfForcing) Setup(env *Env) error {
	nets, err := dits(env, Student, Teacher, Critic)
	if err != nil {
		return err
	}
	k, err := chunkFrames(o.P.ChunkFrames, env.Shape)
	if err != nil {
		return fmt.Errorf("selfforcing: %w", err)
	}
	o.env = env
	full := env.Shape
	full.ChunkFrames = 0 // teacher and critic are bidirectional
	// GEMM-only activations in bf16 where the GEMMs read bf16 anyway (the same numbers; the critic's
	// pass over the whole video is the step's largest: models.Shape.BF16Operands).
	full.BF16Operands = true
	o.roll = NewCausalRollout(env, nets[0], full, k, o.sigmas, o.P.ContextNoise)
	if o.P.KVDType == "bf16" {
		o.roll.SetCacheDType(kernels.BF16)
	}
	law := SigmaLaw{Law: "uniform", Min: o.P.SigmaMin, Max: o.P.SigmaMax, Shift: o.P.Shift}
	// One pass on the whole video serves the teacher's and critic's forwards of the DMD gradient
	// (nothing of them is kept past Compute) and the critic's training step after it.
	o.critic = NewFlowMatch(env, nets[2], full)
	o.critic.Last = true // the critic's only backward
	o.dmd = NewDMDGradOn(env, nets[1], nets[2], o.critic.Pass, law, o.P.CFG)
	o.csigma = make([]float32, full.B)
	o.exits = make([]int, full.F/k)
	if o.P.RegWeight > 0 { // odeinit's loss on the ODE pairs, with clean context chunks as odeinit's default
		o.reg = newODERegression(env, nets[0], k, true)
	}
	return nil
}

// drawExits picks the exit step of every chunk: one shared step, or one per chunk.
func (o *SelfForcing) drawExits(rng *rand.Rand) []int {
	n := len(o.sigmas)
	s := rng.IntN(n)
	for j := range o.exits {
		o.exits[j] = s
		if !o.P.SameStep && j > 0 {
			o.exits[j] = rng.IntN(n)
		}
	}
	return o.exits
}

func (o *SelfForcing) Step(s *Step, b *Batch) (Update, error) {
	m := map[string]float64{}
	up := Update{Roles: []string{Critic}, Metrics: m}

	if s.Step%o.P.Ratio == 0 {
		// ---- generator: graded rollout, DMD on the whole video ----
		exits := o.drawExits(s.RNG)
		x := o.roll.Run(s, b.Ctx, exits, true) // [B,C,F,H,W]
		gabs := o.dmd.ComputeMetric(s, x, b.Ctx, b.Null, func(loss float64) { m["gen_loss"], m["loss"] = loss, loss })
		if o.reg == nil {
			o.roll.BackwardLast(s, o.dmd.Grad) // into the student's G, chunk by chunk
		} else {
			o.roll.BackwardLast(nil, o.dmd.Grad)
			// DMD's regression (dmd's regression: ode) for the causal student: odeinit's loss on the
			// batch's teacher trajectories, weighted by λ, accumulated onto the DMD gradient. Drawn
			// after the rollout, so the DMD part is the same at every λ.
			if _, err := o.reg.step(s, b, o.P.RegWeight, func(l float64) { m["reg_loss"] = l }); err != nil {
				return up, fmt.Errorf("selfforcing: params.regression_weight: %w", err)
			}
		}
		m["dmd_grad_abs"], m["exit"] = gabs, float64(exits[0])
		up.Roles = append(up.Roles, Student)
	}

	// ---- critic: flow matching on a fresh rollout without gradient ----
	x := o.roll.Run(s, b.Ctx, o.drawExits(s.RNG), false)
	o.dmd.Law.DrawSigmas(o.csigma, s)
	o.critic.StepMetric(s, m, "critic_loss", x, b.Ctx, o.csigma)
	return up, nil
}

// CausalRollout is Self-Forcing's training rollout of a block-causal student with its KV cache
// (see the file comment). The DMD gradient of the video is known only after the last chunk, so the
// graded steps are differentiated afterwards, in Backward. What is kept per chunk is only the graded
// step's input x at σ_s ([B,C,k,H,W], the chunk's latent size); Backward replays each chunk's graded
// forward (models.ForwardChunkAt) against the first frames of the final cache, which are the frames
// that chunk attended to, then backpropagates it: one training pass serves every chunk. The rollout's
// forwards (graded steps included) and cache refreshes run on one inference pass. Both passes share
// one block's K/V between their blocks (the refresh writes each layer's K/V into the cache as it
// goes: ForwardChunkCommit). Cost: one more chunk forward per graded chunk; the saving: Chunks−1
// training passes, their gathered K/V, and 2·(Layers−1) blocks' K/V.
type CausalRollout struct {
	Net          *models.DiT
	Sigmas       []float32 // descending denoising list
	ContextNoise float32   // σ of the cache refresh
	K, Chunks    int       // frames per chunk, chunks per video

	dev     kernels.Device
	cache   *models.Cache
	pStep   *models.Pass      // forward only: every rollout step and cache refresh
	pGrad   *models.Pass      // the graded step of one chunk, replayed by Backward
	xGrad   []*kernels.Tensor // [B,C,k,H,W] per chunk: its graded step's input
	ctx     *kernels.Tensor   // the context of the last graded Run
	used    []bool            // xGrad[j] holds chunk j's graded input of the last Run
	t       *kernels.Tensor
	th, sig []float32
	x, x0   *kernels.Tensor // [B,C,k,H,W]
	eps, dv *kernels.Tensor
	Video   *kernels.Tensor // [B,C,F,H,W] the rollout
	host    []float32
	copiers []frameCopier // chunk j ↔ video frames (x0 / gradient)
	exitSig []float32     // σ of each chunk's exit step
	full    models.Shape
}

// NewCausalRollout allocates a rollout of videos of shape full (F frames) in chunks of k frames.
func NewCausalRollout(env *Env, net *models.DiT, full models.Shape, k int, sigmas []float32, contextNoise float64) *CausalRollout {
	dev, C := env.Dev, env.Cfg.InDim
	cs := models.Shape{B: full.B, F: k, H: full.H, W: full.W, L: full.L, ChunkFrames: k, Recompute: full.Recompute, BF16Operands: full.BF16Operands}
	r := &CausalRollout{Net: net, Sigmas: sigmas, ContextNoise: float32(contextNoise), K: k, Chunks: full.F / k, dev: dev, full: full}
	r.SetCacheDType(kernels.F32)
	r.pStep = net.NewInferencePass(cs)
	r.pStep.ShareChunkKV() // it commits with ForwardChunkCommit, layer by layer
	r.pGrad = net.NewPass(cs)
	r.pGrad.ShareChunkKV() // never committed (with Recompute: one block's K/V instead of Layers')
	r.used = make([]bool, r.Chunks)
	r.t = dev.Alloc(kernels.F32, full.B, k)
	r.th, r.sig = make([]float32, full.B*k), make([]float32, full.B)
	r.x, r.x0 = video(dev, cs, C), video(dev, cs, C)
	r.eps, r.dv = video(dev, cs, C), video(dev, cs, C)
	for j := 0; j < r.Chunks; j++ {
		r.xGrad = append(r.xGrad, video(dev, cs, C))
	}
	r.Video = video(dev, full, C)
	r.host = make([]float32, r.x.Numel())
	for j := 0; j < r.Chunks; j++ {
		r.copiers = append(r.copiers, newFrameCopier(dev, r.Video, r.x0, j*k))
	}
	r.exitSig = make([]float32, r.Chunks)
	return r
}

// SetCacheDType remakes the KV cache with K and V stored as dt, sized to the frames a rollout
// commits ((Chunks−1)·k: nothing attends to the last chunk). BF16 halves it and changes nothing on a
// device whose attention reads bf16 copies of K and V anyway (models.NewCacheDType).
func (r *CausalRollout) SetCacheDType(dt kernels.DType) {
	if r.cache != nil {
		r.cache.Free()
	}
	r.cache = r.Net.NewCacheDType(dt, r.full.B, r.full.H, r.full.W, 0, 0)
	r.cache.Reserve((r.Chunks - 1) * r.K)
	for j := range r.used {
		r.used[j] = false
	}
}

func (r *CausalRollout) setSigma(s float32) {
	for i := range r.sig {
		r.sig[i] = s
	}
	SetTimesteps(r.dev, r.t, r.th, r.sig)
}

// Run rolls out one video conditioned on ctx, chunk j exiting at step exits[j]. With grad, each
// chunk's graded input is kept for Backward. Returns r.Video [B,C,F,H,W], valid until the next Run.
func (r *CausalRollout) Run(st *Step, ctx *kernels.Tensor, exits []int, grad bool) *kernels.Tensor {
	if len(exits) != r.Chunks {
		panic(fmt.Sprintf("objectives: causal rollout of %d chunks got %d exit steps", r.Chunks, len(exits)))
	}
	dev := r.dev
	r.cache.Reset()
	r.ctx = ctx
	for j := 0; j < r.Chunks; j++ {
		s := exits[j]
		if s < 0 || s >= len(r.Sigmas) {
			panic(fmt.Sprintf("objectives: causal rollout exit step %d outside the %d-level denoising list", s, len(r.Sigmas)))
		}
		RandnSamples(dev, r.x, r.host, st) // x at σ_0 [B,C,k,H,W]
		for i := 0; ; i++ {
			r.setSigma(r.Sigmas[i])
			if i == s && grad {
				dev.Copy(r.xGrad[j], r.x) // the graded step's input, replayed by Backward
			}
			v := r.Net.ForwardChunk(r.pStep, r.cache, r.x, r.t, ctx) // v  [B,C,k,H,W]
			X0FromV(dev, r.x0, r.x, v, r.sig)                        // x0 [B,C,k,H,W]
			if i == s {
				break
			}
			RandnSamples(dev, r.eps, r.host, st)
			r.setSigma(r.Sigmas[i+1])
			Noise(dev, r.x, r.x0, r.eps, r.sig) // x at σ_{i+1}, fresh noise
		}
		r.exitSig[j], r.used[j] = r.Sigmas[s], grad
		r.copiers[j].toVideo() // video frames of chunk j ← x0
		if j == r.Chunks-1 {
			break // nothing attends to the last chunk
		}
		// Refresh the cache with the finished chunk at σ = context_noise, no gradient.
		cn := r.ContextNoise
		if cn > 0 {
			RandnSamples(dev, r.eps, r.host, st)
			r.setSigma(cn)
			Noise(dev, r.x, r.x0, r.eps, r.sig)
		} else {
			r.setSigma(0)
			dev.Copy(r.x, r.x0)
		}
		r.Net.ForwardChunkCommit(r.pStep, r.cache, r.x, r.t, ctx) // each layer's K/V into the cache
	}
	return r.Video
}

// Backward carries dL/dvideo [B,C,F,H,W] into the student's G through each chunk's graded step
// (dv = −σ_s·dx0), replayed on the training pass against the cache's first j·k frames (the cache
// still holds the graded Run's frames); nothing crosses chunks. Run must have been called with
// grad, and no other Run since; the replays read Run's ctx again, so it must be unchanged.
func (r *CausalRollout) Backward(dVideo *kernels.Tensor) { r.BackwardLast(nil, dVideo) }

// BackwardLast is Backward whose last chunk's backward is the micro-batch's last into the student
// (Step.Last; s may be nil).
func (r *CausalRollout) BackwardLast(s *Step, dVideo *kernels.Tensor) {
	zero := make([]float32, len(r.sig))
	for j := 0; j < r.Chunks; j++ {
		if !r.used[j] {
			panic("objectives: causal rollout Backward without a graded Run")
		}
		fc := newFrameCopier(r.dev, dVideo, r.x0, j*r.K) // reuses x0 as the chunk's gradient scratch
		fc.fromVideo()                                   // dx0 [B,C,k,H,W]
		for i := range r.sig {
			r.sig[i] = -r.exitSig[j]
		}
		r.dev.Combine(r.dv, r.x0, r.x0, r.sig, zero)                          // dv = −σ_s·dx0
		r.setSigma(r.exitSig[j])                                              // t of the graded step
		r.Net.ForwardChunkAt(r.pGrad, r.cache, j*r.K, r.xGrad[j], r.t, r.ctx) // the graded forward again
		if j == r.Chunks-1 {
			s.Last(r.Net)
		}
		r.Net.Backward(r.pGrad, r.dv)
		r.used[j] = false
	}
}
