package objectives

// dmd — distribution matching distillation with a fake-score critic (DMD / DMD2; docs/objectives.md).
//
// Generator step (every generator_update_ratio steps):
//   x      = backward simulation of the student through the denoising list, exiting at a random
//            step s (the graded forward), or with rollout: data the student's x0 on noised data
//   σ      ~ U[sigma_min, sigma_max], shifted; x_σ = (1−σ)·x + σ·ε
//   x0_real = teacher with CFG w;  x0_fake = critic without CFG
//   grad   = (x0_fake − x0_real) / mean_per_sample|x − x0_real|   (a sample whose grad is not finite → 0)
//   loss   = 0.5·mean((x − sg(x − grad))²),  dL/dx = grad/numel, carried through the student's graded step
// Regression (regression_weight λ > 0): on each generator step the student also regresses an x0
//   from a random level σ_l of its list: loss_reg = λ·mean((G(x_l, σ_l) − y)²).
//   regression: data — x_l = the batch's real latents noised to σ_l, y = those latents: it keeps
//     the generator a faithful denoiser at its own levels while DMD sharpens its samples.
//   regression: ode — DMD's own regression on teacher ODE pairs (a dataset from `fewstep data
//     ode-pairs` recorded at the list's levels): x_l = the teacher trajectory's latent at σ_l, y = the
//     trajectory's end (the teacher's sample from the same noise): the student learns the teacher's
//     noise-to-sample map at every level, which keeps DMD from collapsing modes.
//   0 = off, plain DMD.
// Critic step (every step): flow matching of the critic on a fresh no-grad generator sample.
//
// Roles: student (trainable, starts as the teacher), teacher (frozen, weights required),
// critic (trainable, starts as the teacher).

import (
	"fmt"
	"math"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
)

func init() { Register("dmd", newDMD) }

type dmdParams struct {
	DMDParams `mapstructure:",squash"`
	Rollout   string  `mapstructure:"rollout"`           // backward | data
	RegWeight float64 `mapstructure:"regression_weight"` // λ of the regression (0 = off)
	Reg       string  `mapstructure:"regression"`        // data | ode: what the regression targets
}

type dmd struct {
	p   dmdParams
	env *Env

	sigmas       []float32 // the denoising list
	law          SigmaLaw
	student      *Rollout
	teacher      *models.DiT
	critic       *models.DiT
	tPass        *models.Pass // teacher
	cPass        *models.Pass // critic forward in the generator step
	criticStep   *FlowMatch
	sc           scratch
	eps, xs      *kernels.Tensor // [B,C,F,H,W]
	vReal, vu    *kernels.Tensor
	x0Real       *kernels.Tensor
	x0Fake       *kernels.Tensor
	grad, diff   *kernels.Tensor
	sigma        []float32 // [B]
	norm, gsum   []float64 // [B]
	coefA, coefB []float32
}

func newDMD(params map[string]any) (Objective, error) {
	o := &dmd{p: dmdParams{DMDParams: DMDDefaults(1), Rollout: "backward", Reg: "data"}}
	if err := DecodeParams(params, &o.p); err != nil {
		return nil, err
	}
	p := &o.p
	law, err := p.validate()
	if err != nil {
		return nil, err
	}
	o.law = law
	if !(p.RegWeight >= 0) || math.IsInf(p.RegWeight, 0) {
		return nil, fmt.Errorf("params.regression_weight: %v, must be finite and >= 0", p.RegWeight)
	}
	if p.Reg != "data" && p.Reg != "ode" {
		return nil, fmt.Errorf("params.regression: %q is not data or ode", p.Reg)
	}
	if p.Rollout != "backward" && p.Rollout != "data" {
		return nil, fmt.Errorf("params.rollout: %q is not backward or data", p.Rollout)
	}
	o.sigmas = DenoisingList(p.Timesteps, p.Shift)
	return o, nil
}

func (o *dmd) Name() string { return "dmd" }

func (o *dmd) Roles() []RoleSpec {
	return []RoleSpec{
		{Name: Teacher, Init: InitWeights},
		{Name: Student, Trainable: true, Init: InitTeacher},
		{Name: Critic, Trainable: true, Init: InitTeacher},
	}
}

func (o *dmd) Setup(env *Env) error {
	st, err := env.Role(Student)
	if err != nil {
		return err
	}
	te, err := env.Role(Teacher)
	if err != nil {
		return err
	}
	cr, err := env.Role(Critic)
	if err != nil {
		return err
	}
	o.env = env
	s, C, dev := env.Shape, env.Cfg.InDim, env.Dev
	s.ChunkFrames = 0 // dmd's student, teacher and critic are bidirectional
	o.student = NewRollout(env, st.Net, s, o.sigmas)
	o.teacher, o.critic = te.Net, cr.Net
	o.tPass, o.cPass = te.Net.NewPass(s), cr.Net.NewPass(s)
	o.criticStep = NewFlowMatch(env, cr.Net, s)
	o.criticStep.Last = true // the critic's only backward
	o.sc = newScratch(dev, s, C)
	for _, t := range []**kernels.Tensor{&o.eps, &o.xs, &o.vReal, &o.vu, &o.x0Real, &o.x0Fake, &o.grad, &o.diff} {
		*t = video(dev, s, C)
	}
	o.sigma = make([]float32, s.B)
	o.norm, o.gsum = make([]float64, s.B), make([]float64, s.B)
	o.coefA, o.coefB = make([]float32, s.B), make([]float32, s.B)
	return nil
}

// generate runs the student's generator: backward simulation or, with rollout: data, its x0 on data
// noised to a random level of the list. The result's graded activations sit in o.student.Pass.
func (o *dmd) generate(s *Step, b *Batch) (*kernels.Tensor, error) {
	exit := s.RNG.IntN(len(o.sigmas))
	if o.p.Rollout == "backward" {
		return o.student.Run(s, b.Ctx, exit), nil
	}
	if b.X0 == nil {
		return nil, fmt.Errorf("dmd: rollout: data needs latents, the batch has none")
	}
	return o.student.RunFrom(s, b.X0, b.Ctx, exit), nil
}

// regress runs the student's graded x0 prediction for the regression at a random level l of the
// list: from the real latents noised to σ_l (regression: data), or from the teacher trajectory's
// latent at σ_l (regression: ode; b.X0 is then the trajectory's end).
func (o *dmd) regress(s *Step, b *Batch) (*kernels.Tensor, error) {
	if b.X0 == nil {
		return nil, fmt.Errorf("dmd: params.regression_weight needs latents, the batch has none")
	}
	level := s.RNG.IntN(len(o.sigmas))
	if o.p.Reg == "data" {
		return o.student.RunFrom(s, b.X0, b.Ctx, level), nil
	}
	if b.TrajX == nil {
		return nil, fmt.Errorf("dmd: params.regression: ode needs teacher trajectories (trajectory_latents; make the dataset with `fewstep data ode-pairs`), the batch has none")
	}
	S, B := len(b.TrajSigma), b.B()
	idx := -1
	for i, sg := range b.TrajSigma {
		if math.Abs(float64(sg-o.sigmas[level])) < 1e-4 {
			idx = i
		}
	}
	if idx < 0 {
		return nil, fmt.Errorf("dmd: regression: ode: the trajectories' levels %v lack σ = %g of the denoising list %v", b.TrajSigma, o.sigmas[level], o.sigmas)
	}
	item := b.X0.Shape[1:] // [C,F,H,W]
	per := kernels.Numel(item)
	if b.TrajX.Numel() != B*S*per {
		return nil, fmt.Errorf("dmd: regression: ode: trajectory_latents %v, want [B=%d, S=%d, %v]", b.TrajX.Shape, B, S, item)
	}
	for i := 0; i < B; i++ { // x_l of sample i: TrajX[i, idx] [C,F,H,W]
		o.env.Dev.Copy(o.xs.View(i*per, item...), b.TrajX.View((i*S+idx)*per, item...))
	}
	return o.student.RunAt(o.xs, b.Ctx, level), nil
}

func (o *dmd) Step(s *Step, b *Batch) (Update, error) {
	dev := o.env.Dev
	B := b.B()
	for i, d := range b.Drop {
		if d {
			return Update{}, fmt.Errorf("dmd: sample %d of the batch had its caption dropped by the loader (data.cfg_dropout > 0); distillation conditions the teacher and critic on every caption: set data.cfg_dropout: 0", i)
		}
	}
	m := map[string]float64{}
	up := Update{Roles: []string{Critic}, Metrics: m}

	if s.Step%o.p.Ratio == 0 {
		// ---- generator step ----
		x, err := o.generate(s, b) // x [B,C,F,H,W], graded
		if err != nil {
			return up, err
		}
		o.law.DrawSigmas(o.sigma, s)
		RandnSamples(dev, o.eps, o.sc.host, s)                                                            // ε        [B,C,F,H,W]
		Noise(dev, o.xs, x, o.eps, o.sigma)                                                               // x_σ      [B,C,F,H,W]
		SetTimesteps(dev, o.sc.t, o.sc.th, o.sigma)                                                       // t        [B,F]
		CFGForward(dev, o.teacher, o.tPass, o.vReal, o.vu, o.xs, o.sc.t, b.Ctx, b.Null, float32(o.p.CFG)) // v_real
		X0FromV(dev, o.x0Real, o.xs, o.vReal, o.sigma)                                                    // x0_real  [B,C,F,H,W]
		vFake := o.critic.Forward(o.cPass, o.xs, o.sc.t, b.Ctx)                                           // v_fake   (no CFG)
		X0FromV(dev, o.x0Fake, o.xs, vFake, o.sigma)                                                      // x0_fake  [B,C,F,H,W]

		// grad = (x0_fake − x0_real) / mean|x − x0_real| per sample.
		dev.Combine(o.diff, x, o.x0Real, []float32{1}, []float32{-1}) // x − x0_real
		dev.SumAbsGroups(o.norm, o.diff)
		per := float64(x.Numel() / B)
		for i := range o.coefA {
			c := float32(per / o.norm[i]) // 1/mean|x − x0_real|
			if math.IsNaN(float64(c)) || math.IsInf(float64(c), 0) {
				c = 0
			}
			o.coefA[i], o.coefB[i] = c, -c
		}
		dev.Combine(o.grad, o.x0Fake, o.x0Real, o.coefA, o.coefB) // grad [B,C,F,H,W]
		dev.SumAbsGroups(o.gsum, o.grad)
		for i := 0; i < B; i++ { // NaN → 0, per sample
			if v := o.gsum[i]; math.IsNaN(v) || math.IsInf(v, 0) {
				dev.Zero(o.grad.View(i*int(per), o.grad.Shape[1:]...))
				o.gsum[i] = 0
			}
		}
		n := float64(x.Numel())
		s.SqNorm(dev, o.grad, func(sq float64) { // 0.5·mean((x − sg(x − grad))²)
			m["gen_loss"] = 0.5 * sq / n
			m["loss"] = m["gen_loss"]
		})
		var g float64
		for _, v := range o.gsum {
			g += v
		}
		m["dmd_grad_abs"] = g / n
		dev.Scale(o.grad, float32(1/n)) // dL/dx = grad/numel
		if o.p.RegWeight <= 0 {
			s.Last(o.student.Net)
		}
		o.student.Backward(o.grad)
		if o.p.RegWeight > 0 {
			x0, err := o.regress(s, b) // G(x_l, σ_l) [B,C,F,H,W]; target b.X0
			if err != nil {
				return up, err
			}
			dev.Combine(o.diff, x0, b.X0, []float32{1}, []float32{-1})         // G − y    [B,C,F,H,W]
			s.SqNorm(dev, o.diff, func(sq float64) { m["reg_loss"] = sq / n }) // mean((G − y)²)
			dev.Scale(o.diff, float32(2*o.p.RegWeight/n))                      // dL_reg/dG
			s.Last(o.student.Net)
			o.student.Backward(o.diff) // accumulates onto the DMD gradient
		}
		up.Roles = append(up.Roles, Student)
	}

	// ---- critic step: flow matching on a fresh generator sample, no gradient to the student ----
	x, err := o.generate(s, b)
	if err != nil {
		return up, err
	}
	o.law.DrawSigmas(o.sigma, s)
	o.criticStep.StepMetric(s, m, "critic_loss", x, b.Ctx, o.sigma)
	return up, nil
}
