package objectives

// flowmatch — teacher pretraining and fine-tuning (docs/objectives.md).
//
// σ from a shifted logit-normal or uniform law; x_σ = (1−σ)·x0 + σ·ε; the student predicts
// v = ε − x0 at t = 1000·σ; loss = MSE. Classifier-free guidance needs an unconditional branch:
// samples the loader marked as dropped (Batch.Drop, decided per sample from the seed by
// data.cfg_dropout, 0.1 by default) see the null embedding instead of their caption's.
//
// Roles: student (trainable; Wan init, or roles.student.weights to fine-tune).

import (
	"fmt"

	"github.com/fewstep/fewstep/kernels"
)

func init() { Register("flowmatch", newFlowmatch) }

type flowmatchParams struct {
	SigmaLaw `mapstructure:",squash"`
}

type flowmatch struct {
	p     flowmatchParams
	env   *Env
	fm    *FlowMatch
	ctx   *kernels.Tensor // [B,L,text_dim] the batch's context with dropped samples nulled
	sigma []float32       // [B]
}

func newFlowmatch(params map[string]any) (Objective, error) {
	o := &flowmatch{p: flowmatchParams{SigmaLaw{Law: "logit_normal", Mean: 0, Std: 1, Min: 0, Max: 1, Shift: 1}}}
	if err := DecodeParams(params, &o.p); err != nil {
		return nil, err
	}
	if err := o.p.SigmaLaw.Validate(); err != nil {
		return nil, err
	}
	return o, nil
}

func (o *flowmatch) Name() string { return "flowmatch" }

func (o *flowmatch) Roles() []RoleSpec {
	return []RoleSpec{{Name: Student, Trainable: true, Init: InitScratch}}
}

func (o *flowmatch) Setup(env *Env) error {
	st, err := env.Role(Student)
	if err != nil {
		return err
	}
	o.env = env
	o.fm = NewFlowMatch(env, st.Net, env.Shape)
	o.fm.Last = true // the student's only backward
	o.ctx = env.Dev.Alloc(kernels.F32, env.Shape.B, env.Shape.L, env.Cfg.TextDim)
	o.sigma = make([]float32, env.Shape.B)
	return nil
}

func (o *flowmatch) Step(s *Step, b *Batch) (Update, error) {
	if b.X0 == nil {
		return Update{}, fmt.Errorf("flowmatch: the batch has no latents (a text-only dataset cannot pretrain)")
	}
	dev := o.env.Dev
	B := b.B()
	dev.Copy(o.ctx, b.Ctx) // ctx [B,L,text_dim]
	per := o.ctx.Numel() / B
	for i := 0; i < B; i++ {
		if i < len(b.Drop) && b.Drop[i] {
			dev.Copy(o.ctx.View(i*per, per), b.Null.View(i*per, per)) // CFG dropout → null embedding
		}
	}
	o.p.SigmaLaw.DrawSigmas(o.sigma, s)
	m := map[string]float64{}
	o.fm.StepMetric(s, m, "loss", b.X0, o.ctx, o.sigma)
	return Update{Roles: []string{Student}, Metrics: m}, nil
}
