package objectives

// odeinit — ODE regression, the stage before selfforcing (CausVid; docs/objectives.md).
//
// The dataset holds teacher trajectories (`fewstep data ode-pairs`): latents x_s [S,C,F,H,W] at the
// levels σ_s of the denoising list and the final clean x0. One step, per sample b and chunk j of k
// frames: a random level s(b, j) among the noisy levels (σ > 0) and, with clean_context (CausVid's
// list 1000, 757, 522, 0), the clean level σ = 0; the input video takes chunk j's frames from
// x_{s(b,j)} (x0 itself at σ = 0), with per-frame timesteps t = 1000·σ_{s(b,j)}. The block-causal
// student predicts v; its x0 prediction x − σ·v (per frame) regresses the final x0 with MSE over the
// noisy chunks, in expectation (a clean chunk's prediction is its input, so it adds nothing; CausVid
// masks t = 0 out of the mean). The clean chunks are the point: later chunks attend to clean earlier ones, as
// they do when the student streams with its KV cache refreshed at σ = 0; without them the student
// only ever sees noisy context in training (docs/objectives-diagnosis.md).
//
// Roles: student (trainable, block-causal; roles.student.weights names the teacher checkpoint it
// starts from).

import (
	"fmt"
	"slices"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
)

func init() { Register("odeinit", newODEInit) }

type odeInitParams struct {
	ChunkFrames  int  `mapstructure:"chunk_frames"`  // 0 = the model's chunk_frames
	CleanContext bool `mapstructure:"clean_context"` // draw the clean level σ = 0 too (CausVid; true)
}

// ODEInit is the objective.
type ODEInit struct {
	P odeInitParams

	reg *odeRegression
}

func newODEInit(params map[string]any) (Objective, error) {
	o := &ODEInit{P: odeInitParams{CleanContext: true}}
	if err := DecodeParams(params, &o.P); err != nil {
		return nil, err
	}
	if o.P.ChunkFrames < 0 {
		return nil, fmt.Errorf("params.chunk_frames: %d, must be ≥ 0", o.P.ChunkFrames)
	}
	return o, nil
}

func (o *ODEInit) Name() string { return "odeinit" }

func (o *ODEInit) Roles() []RoleSpec {
	return []RoleSpec{{Name: Student, Trainable: true, Init: InitWeights, Causal: true}}
}

func (o *ODEInit) Setup(env *Env) error {
	nets, err := dits(env, Student)
	if err != nil {
		return err
	}
	k, err := chunkFrames(o.P.ChunkFrames, env.Shape)
	if err != nil {
		return fmt.Errorf("odeinit: %w", err)
	}
	o.reg = newODERegression(env, nets[0], k, o.P.CleanContext)
	return nil
}

func (o *ODEInit) Step(st *Step, b *Batch) (Update, error) {
	m := map[string]float64{}
	sMean, err := o.reg.step(st, b, 1, func(loss float64) { m["loss"] = loss })
	if err != nil {
		return Update{}, fmt.Errorf("odeinit: %w", err)
	}
	m["sigma"] = sMean
	return Update{Roles: []string{Student}, Metrics: m}, nil
}

// odeRegression is the ODE regression of a block-causal student on teacher trajectories (the file
// comment): odeinit's whole loss, and selfforcing's regression term (DMD's regression for the
// causal student, params.regression_weight).
type odeRegression struct {
	env               *Env
	net               *models.DiT
	pass              *models.Pass
	s                 models.Shape
	k                 int
	clean             bool
	x, x0, dx0, dv    *kernels.Tensor // [B,C,F,H,W]
	diff              *kernels.Tensor
	t                 *kernels.Tensor // [B,F]
	th, sigF, negSigF []float32       // [B·F]
	onesF, zerosF     []float32
}

// newODERegression allocates the regression of net (block-causal in chunks of k frames) on a
// training pass of its own; clean draws the clean level σ = 0 as well (clean_context).
func newODERegression(env *Env, net *models.DiT, k int, clean bool) *odeRegression {
	r := &odeRegression{env: env, net: net, k: k, clean: clean, s: env.Shape}
	r.s.ChunkFrames = k // block-causal
	r.pass = net.NewPass(r.s)
	C, dev := env.Cfg.InDim, env.Dev
	for _, t := range []**kernels.Tensor{&r.x, &r.x0, &r.dx0, &r.dv, &r.diff} {
		*t = video(dev, r.s, C)
	}
	BF := r.s.B * r.s.F
	r.t = dev.Alloc(kernels.F32, r.s.B, r.s.F)
	r.th, r.sigF, r.negSigF = make([]float32, BF), make([]float32, BF), make([]float32, BF)
	r.onesF, r.zerosF = ones(BF), make([]float32, BF)
	return r
}

// step draws each chunk's level from the sample's stream, runs the student and accumulates
// weight·dL/dW into its G, the micro-batch's last backward into it. The loss (unweighted) goes to
// set through st.SqNorm (after the step's one readback under the trainer); it returns the mean σ
// of the chunks.
func (r *odeRegression) step(st *Step, b *Batch, weight float64, set func(loss float64)) (sigmaMean float64, err error) {
	if b.TrajX == nil || b.X0 == nil {
		return 0, fmt.Errorf("the batch has no trajectory_latents/vae_latent (make the dataset with `fewstep data ode-pairs`)")
	}
	dev, s := r.env.Dev, r.s
	B, C, F, HW := s.B, r.env.Cfg.InDim, s.F, s.H*s.W
	S := len(b.TrajSigma)
	if want := []int{B, S, C, F, s.H, s.W}; !slices.Equal(b.TrajX.Shape, want) {
		return 0, fmt.Errorf("trajectory_latents %v, want %v (B, S, C, F, H, W) with S = len(trajectory_timesteps) = %d", b.TrajX.Shape, want, S)
	}
	var levels []int // the noisy levels a chunk may start from
	for i, sg := range b.TrajSigma {
		if sg > 0 {
			levels = append(levels, i)
		}
	}
	if len(levels) == 0 {
		return 0, fmt.Errorf("trajectory_timesteps %v has no level with σ > 0", b.TrajSigma)
	}

	choices := len(levels)
	if r.clean {
		choices++ // the last choice: the clean end x0 at σ = 0
	}

	// Input video: chunk j of sample b from trajectory level s(b, j).
	run := r.k * HW
	var sMean float64
	for bi := 0; bi < B; bi++ {
		for j := 0; j < F/r.k; j++ {
			ch := st.Sample(bi).IntN(choices)
			var sg float32
			if ch < len(levels) {
				lv := levels[ch]
				sg = b.TrajSigma[lv]
				for c := 0; c < C; c++ {
					src := (((bi*S+lv)*C+c)*F + j*r.k) * HW
					dst := ((bi*C+c)*F + j*r.k) * HW
					dev.Copy(r.x.View(dst, run), b.TrajX.View(src, run)) // [k,H,W]
				}
			} else {
				for c := 0; c < C; c++ {
					off := ((bi*C+c)*F + j*r.k) * HW
					dev.Copy(r.x.View(off, run), b.X0.View(off, run)) // [k,H,W] clean context
				}
			}
			sMean += float64(sg)
			for f := j * r.k; f < (j+1)*r.k; f++ {
				r.sigF[bi*F+f], r.negSigF[bi*F+f], r.th[bi*F+f] = sg, -sg, 1000*sg
			}
		}
	}
	dev.FromHost(r.t, r.th) // t [B,F] per frame

	v := r.net.Forward(r.pass, r.x, r.t, b.Ctx)                      // v  [B,C,F,H,W], block-causal
	dev.CombineFrames(r.x0, r.x, v, r.onesF, r.negSigF, B, C, F, HW) // x0 = x − σ_f·v
	// A clean chunk's x0 is its input (error 0); to weigh the noisy chunks as a mean over them, the
	// loss and gradient are scaled by choices/noisy levels, the inverse of the expected noisy share
	// (a constant, so N ranks of B/N samples average to what one rank of B gives); −σ_f·(…) below
	// is 0 on the clean chunks.
	scale := float32(choices) / float32(len(levels))
	mse(dev, st, r.dx0, r.diff, r.x0, b.X0, func(l float64) { set(l * float64(scale)) }) // dL/dx0, mean over every chunk
	for i := range r.negSigF {
		r.negSigF[i] *= scale * float32(weight)
	}
	dev.CombineFrames(r.dv, r.dx0, r.dx0, r.negSigF, r.zerosF, B, C, F, HW) // dL/dv = −weight·σ_f·dL/dx0 (scaled)
	st.Last(r.net)
	r.net.Backward(r.pass, r.dv)
	return sMean / float64(B*(F/r.k)), nil
}
