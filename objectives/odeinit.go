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

	env               *Env
	net               *models.DiT
	pass              *models.Pass
	s                 models.Shape
	k                 int
	x, x0, dx0, dv    *kernels.Tensor // [B,C,F,H,W]
	diff              *kernels.Tensor
	t                 *kernels.Tensor // [B,F]
	th, sigF, negSigF []float32       // [B·F]
	onesF, zerosF     []float32
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
	o.env, o.net, o.k = env, nets[0], k
	o.s = env.Shape
	o.s.ChunkFrames = k // block-causal
	o.pass = o.net.NewPass(o.s)
	C, dev := env.Cfg.InDim, env.Dev
	for _, t := range []**kernels.Tensor{&o.x, &o.x0, &o.dx0, &o.dv, &o.diff} {
		*t = video(dev, o.s, C)
	}
	BF := o.s.B * o.s.F
	o.t = dev.Alloc(kernels.F32, o.s.B, o.s.F)
	o.th, o.sigF, o.negSigF = make([]float32, BF), make([]float32, BF), make([]float32, BF)
	o.onesF, o.zerosF = ones(BF), make([]float32, BF)
	return nil
}

func (o *ODEInit) Step(st *Step, b *Batch) (Update, error) {
	if b.TrajX == nil || b.X0 == nil {
		return Update{}, fmt.Errorf("odeinit: the batch has no trajectory_latents/vae_latent (make the dataset with `fewstep data ode-pairs`)")
	}
	dev, s := o.env.Dev, o.s
	B, C, F, HW := s.B, o.env.Cfg.InDim, s.F, s.H*s.W
	S := len(b.TrajSigma)
	if want := []int{B, S, C, F, s.H, s.W}; !slices.Equal(b.TrajX.Shape, want) {
		return Update{}, fmt.Errorf("odeinit: trajectory_latents %v, want %v (B, S, C, F, H, W) with S = len(trajectory_timesteps) = %d", b.TrajX.Shape, want, S)
	}
	var levels []int // the noisy levels a chunk may start from
	for i, sg := range b.TrajSigma {
		if sg > 0 {
			levels = append(levels, i)
		}
	}
	if len(levels) == 0 {
		return Update{}, fmt.Errorf("odeinit: trajectory_timesteps %v has no level with σ > 0", b.TrajSigma)
	}

	choices := len(levels)
	if o.P.CleanContext {
		choices++ // the last choice: the clean end x0 at σ = 0
	}

	// Input video: chunk j of sample b from trajectory level s(b, j).
	run := o.k * HW
	var sMean float64
	for bi := 0; bi < B; bi++ {
		for j := 0; j < F/o.k; j++ {
			ch := st.Sample(bi).IntN(choices)
			var sg float32
			if ch < len(levels) {
				lv := levels[ch]
				sg = b.TrajSigma[lv]
				for c := 0; c < C; c++ {
					src := (((bi*S+lv)*C+c)*F + j*o.k) * HW
					dst := ((bi*C+c)*F + j*o.k) * HW
					dev.Copy(o.x.View(dst, run), b.TrajX.View(src, run)) // [k,H,W]
				}
			} else {
				for c := 0; c < C; c++ {
					off := ((bi*C+c)*F + j*o.k) * HW
					dev.Copy(o.x.View(off, run), b.X0.View(off, run)) // [k,H,W] clean context
				}
			}
			sMean += float64(sg)
			for f := j * o.k; f < (j+1)*o.k; f++ {
				o.sigF[bi*F+f], o.negSigF[bi*F+f], o.th[bi*F+f] = sg, -sg, 1000*sg
			}
		}
	}
	dev.FromHost(o.t, o.th) // t [B,F] per frame

	v := o.net.Forward(o.pass, o.x, o.t, b.Ctx)                      // v  [B,C,F,H,W], block-causal
	dev.CombineFrames(o.x0, o.x, v, o.onesF, o.negSigF, B, C, F, HW) // x0 = x − σ_f·v
	loss := MSE(dev, o.dx0, o.diff, o.x0, b.X0)                      // dL/dx0, mean over every chunk
	// A clean chunk's x0 is its input (error 0); to weigh the noisy chunks as a mean over them, the
	// loss and gradient are scaled by choices/noisy levels, the inverse of the expected noisy share
	// (a constant, so N ranks of B/N samples average to what one rank of B gives); −σ_f·(…) below
	// is 0 on the clean chunks.
	scale := float32(choices) / float32(len(levels))
	loss *= float64(scale)
	for i := range o.negSigF {
		o.negSigF[i] *= scale
	}
	dev.CombineFrames(o.dv, o.dx0, o.dx0, o.negSigF, o.zerosF, B, C, F, HW) // dL/dv = −σ_f·dL/dx0 (scaled)
	st.Last(o.net)                                                          // the student's only backward
	o.net.Backward(o.pass, o.dv)

	return Update{Roles: []string{Student}, Metrics: map[string]float64{
		"loss": loss, "sigma": sMean / float64(B*(F/o.k)),
	}}, nil
}
