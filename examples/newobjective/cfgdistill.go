// Package newobjective is the worked example of docs/new-objective.md: guidance distillation
// (Meng et al., "On Distillation of Guided Diffusion Models", stage 1), added to fewstep as an
// objective of its own. A student, started as the teacher, learns to give in one network call the
// velocity the teacher gives with classifier-free guidance in two:
//
//	x_σ = (1−σ)·x0 + σ·ε,  v_T = v_T(x_σ, ∅) + w·(v_T(x_σ, c) − v_T(x_σ, ∅)),  loss = mean((v_S(x_σ, c) − v_T)²)
//
// Importing this package (import _ ".../examples/newobjective") registers it as `objective:
// cfgdistill`; the objectives of objectives/ register themselves the same way.
package newobjective

import (
	"fmt"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/objectives"
)

func init() { objectives.Register("cfgdistill", newCFGDistill) }

// params are the job's `params:` (decoded strictly: an unknown key is an error naming it).
type params struct {
	CFG                 float64                  `mapstructure:"cfg"` // the teacher's guidance w, distilled into the student
	objectives.SigmaLaw `mapstructure:",squash"` // σ law of the training levels (sigma_law, sigma_mean, ..., shift)
}

type cfgDistill struct {
	p       params
	env     *objectives.Env
	student *models.DiT
	teacher *models.DiT
	ps, pt  *models.Pass    // the student's training pass; the teacher's forward-only pass
	eps, xs *kernels.Tensor // [B,C,F,H,W] noise, noised latents
	vu, vT  *kernels.Tensor // [B,C,F,H,W] teacher's unconditional velocity, guided target
	diff    *kernels.Tensor // [B,C,F,H,W] scratch of MSE
	dv      *kernels.Tensor // [B,C,F,H,W] dL/dv_S
	t       *kernels.Tensor // [B,F] timesteps
	th      []float32       // host scratch: [B,F] timesteps, and [B·C·F·H·W] noise
	sigma   []float32       // [B]
}

func newCFGDistill(raw map[string]any) (objectives.Objective, error) {
	o := &cfgDistill{p: params{CFG: 3, SigmaLaw: objectives.SigmaLaw{Law: "logit_normal", Mean: 0, Std: 1, Min: 0, Max: 1, Shift: 1}}}
	if err := objectives.DecodeParams(raw, &o.p); err != nil {
		return nil, err
	}
	if !(o.p.CFG >= 0) {
		return nil, fmt.Errorf("params.cfg: %g, must be ≥ 0", o.p.CFG)
	}
	return o, o.p.SigmaLaw.Validate()
}

func (o *cfgDistill) Name() string { return "cfgdistill" }

// Roles: the teacher frozen (roles.teacher.weights required), the student trained from a copy of it.
func (o *cfgDistill) Roles() []objectives.RoleSpec {
	return []objectives.RoleSpec{
		{Name: objectives.Teacher, Init: objectives.InitWeights},
		{Name: objectives.Student, Trainable: true, Init: objectives.InitTeacher},
	}
}

// Setup allocates everything the steps use, once: the hot loop allocates nothing.
func (o *cfgDistill) Setup(env *objectives.Env) error {
	st, err := env.Role(objectives.Student)
	if err != nil {
		return err
	}
	te, err := env.Role(objectives.Teacher)
	if err != nil {
		return err
	}
	s, C := env.Shape, env.Cfg.InDim
	video := func() *kernels.Tensor { return env.Dev.Alloc(kernels.F32, s.B, C, s.F, s.H, s.W) }
	o.env, o.student, o.teacher = env, st.Net, te.Net
	o.ps, o.pt = st.Net.NewPass(s), te.Net.NewInferencePass(s)
	o.eps, o.xs, o.vu, o.vT, o.diff, o.dv = video(), video(), video(), video(), video(), video()
	o.t = env.Dev.Alloc(kernels.F32, s.B, s.F)
	o.th = make([]float32, s.B*C*s.F*s.H*s.W)
	o.sigma = make([]float32, s.B)
	return nil
}

// Step: one micro-batch. Every random draw comes from s (reproducible after a resume, the same on
// any number of ranks); the student's Backward accumulates into its G, which the trainer clips and
// applies with AdamW because Update.Roles names the student.
func (o *cfgDistill) Step(s *objectives.Step, b *objectives.Batch) (objectives.Update, error) {
	if b.X0 == nil {
		return objectives.Update{}, fmt.Errorf("cfgdistill: the batch has no latents")
	}
	dev, w := o.env.Dev, float32(o.p.CFG)
	o.p.SigmaLaw.DrawSigmas(o.sigma, s)                         // σ       [B]
	objectives.RandnSamples(dev, o.eps, o.th, s)                // ε       [B,C,F,H,W]
	objectives.Noise(dev, o.xs, b.X0, o.eps, o.sigma)           // x_σ     [B,C,F,H,W]
	objectives.SetTimesteps(dev, o.t, o.th, o.sigma)            // t       [B,F]
	dev.Copy(o.vu, o.teacher.Forward(o.pt, o.xs, o.t, b.Null))  // v_T(x_σ, ∅) [B,C,F,H,W]
	vc := o.teacher.Forward(o.pt, o.xs, o.t, b.Ctx)             // v_T(x_σ, c) [B,C,F,H,W]
	dev.Combine(o.vT, o.vu, vc, []float32{1 - w}, []float32{w}) // v_T = v_u + w·(v_c − v_u)
	vs := o.student.Forward(o.ps, o.xs, o.t, b.Ctx)             // v_S(x_σ, c) [B,C,F,H,W]
	loss := objectives.MSE(dev, o.dv, o.diff, vs, o.vT)         // dL/dv_S    [B,C,F,H,W]
	o.student.Backward(o.ps, o.dv)                              // += student.G
	return objectives.Update{Roles: []string{objectives.Student}, Metrics: map[string]float64{"loss": loss}}, nil
}

// Recipe says how the product is sampled (objectives.Sampled; recipe.json beside every checkpoint):
// Euler as the teacher is, but with no guidance, since the guidance w is distilled in.
func (o *cfgDistill) Recipe() objectives.Recipe {
	return objectives.Recipe{Sampler: "euler", CFG: 1, TeacherCFG: o.p.CFG}
}
