package objectives

// adversarial — GAN losses with DMD2's head on the critic's features (docs/objectives.md).
//
// The discriminator D(x) = head(critic's hidden states after block tap_layer on x_σ), x_σ the input
// noised to a random σ (DMD2 reads the fake-score network's bottleneck; the head is a role of its
// own, "discriminator", with its own optimizer). Non-saturating losses:
//
//	generator:      gen_gan_weight · mean_b softplus(−D(x_fake))
//	discriminator:  disc_gan_weight · mean_b [softplus(D(x_fake)) + softplus(−D(x_real))],  x_real = data
//	                + r1_weight · mean_b (D(x_real,σ) − D(x_real,σ + r1_sigma·δ))²   (APT's approximated R1)
//
// The generator's GAN gradient flows through the critic's backbone into x (input gradient) without
// touching the critic's G (a frozen view of the critic is differentiated). The discriminator loss
// trains the head and, with disc_backbone (DMD2), the critic's blocks up to tap_layer.
//
// mode: dmd2 — the DMD2 recipe: DMD's generator gradient (dmd_weight) plus the GAN's, the critic's
// flow-matching step every step, the generator every generator_update_ratio steps.
// mode: standalone — GAN only, on an already-distilled student (Seaweed-APT style): the critic is
// the discriminator's backbone (starting as the teacher), trained by the discriminator loss only
// with disc_backbone, frozen without.
//
// The head reads features from DiT.ForwardTo (blocks 0…tap_layer only) and BackwardHidden starts at
// the tap. Roles: teacher (frozen), student (trainable), critic (trainable in dmd2 or with
// disc_backbone), discriminator (the head, a CustomNet sized by Configure).

import (
	"fmt"
	"math"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
)

func init() { Register("adversarial", newAdversarial) }

type adversarialParams struct {
	DMDParams     `mapstructure:",squash"` // the list, shift, σ law (DMD's and the GAN's), teacher guidance (dmd2), ratio
	Mode          string                   `mapstructure:"mode"`            // dmd2 | standalone
	DMDWeight     float64                  `mapstructure:"dmd_weight"`      // dmd2: weight of DMD's gradient (1)
	GenGANWeight  float64                  `mapstructure:"gen_gan_weight"`  // DMD2: 3e-3…5e-3
	DiscGANWeight float64                  `mapstructure:"disc_gan_weight"` // DMD2: 1e-2
	TapLayer      int                      `mapstructure:"tap_layer"`       // block whose output the head reads (−1 = middle)
	HeadDim       int                      `mapstructure:"head_dim"`        // hidden width of the head (0 = model dim)
	DiscBackbone  bool                     `mapstructure:"disc_backbone"`   // the discriminator loss also trains the critic's blocks
	R1Weight      float64                  `mapstructure:"r1_weight"`       // approximated R1 on the reals (APT): 0 = off
	R1Sigma       float64                  `mapstructure:"r1_sigma"`        // its perturbation std (0.01)
}

// Adversarial is the objective.
type Adversarial struct {
	P adversarialParams

	env        *Env
	head       *CustomNet // the discriminator's table, from Configure
	law        SigmaLaw
	tap        int
	student    *Rollout
	critic     *models.DiT // trainable
	frozen     *models.DiT // the critic's weights, no gradients (the generator's GAN loss)
	dmd        *DMDGrad
	criticStep *FlowMatch
	headG      *DiscHead // generator side: no parameter gradients
	headD      *DiscHead // discriminator side
	pG, pD     *models.Pass
	sc         scratch
	eps, xs    *kernels.Tensor // [B,C,F,H,W]
	xp         *kernels.Tensor // [B,C,F,H,W] x_σ perturbed for R1
	dx         *kernels.Tensor // [B,C,F,H,W] dL/dx of the generator
	sigma      []float32       // [B]
	dLogit     []float32       // [B]
}

func newAdversarial(params map[string]any) (Objective, error) {
	o := &Adversarial{P: adversarialParams{
		DMDParams: DMDDefaults(1), Mode: "dmd2", DMDWeight: 1, GenGANWeight: 3e-3, DiscGANWeight: 1e-2, TapLayer: -1, DiscBackbone: true,
		R1Sigma: 0.01,
	}}
	if err := DecodeParams(params, &o.P); err != nil {
		return nil, err
	}
	p := &o.P
	law, err := p.validate()
	if err != nil {
		return nil, err
	}
	o.law = law
	switch {
	case p.Mode != "dmd2" && p.Mode != "standalone":
		return nil, fmt.Errorf("params.mode: %q is not dmd2 or standalone", p.Mode)
	case p.GenGANWeight < 0 || p.DiscGANWeight <= 0 || p.DMDWeight < 0:
		return nil, fmt.Errorf("params: gen_gan_weight %g, dmd_weight %g must be ≥ 0 and disc_gan_weight %g > 0", p.GenGANWeight, p.DMDWeight, p.DiscGANWeight)
	case p.R1Weight < 0 || p.R1Sigma <= 0:
		return nil, fmt.Errorf("params: r1_weight %g must be ≥ 0 and r1_sigma %g > 0", p.R1Weight, p.R1Sigma)
	case p.HeadDim < 0:
		return nil, fmt.Errorf("params.head_dim: %d, must be ≥ 0", p.HeadDim)
	case p.TapLayer < -1:
		return nil, fmt.Errorf("params.tap_layer: %d, want a block index or −1 (the middle block)", p.TapLayer)
	}
	return o, nil
}

func (o *Adversarial) Name() string { return "adversarial" }

// Configurable is implemented by objectives whose roles depend on the model (the adversarial head
// is sized by the model width): the trainer calls Configure before Roles.
type Configurable interface {
	Configure(cfg models.Config) error
}

// Configure sizes the discriminator head for the model.
func (o *Adversarial) Configure(cfg models.Config) error {
	if o.P.TapLayer >= cfg.Layers {
		return fmt.Errorf("params.tap_layer: %d, the model has %d blocks", o.P.TapLayer, cfg.Layers)
	}
	dh := o.P.HeadDim
	if dh == 0 {
		dh = cfg.Dim
	}
	o.head = DiscHeadNet(cfg.Dim, dh)
	return nil
}

// Roles: the discriminator is the head (its table comes from Configure; without it the role is
// empty and Setup fails saying so).
func (o *Adversarial) Roles() []RoleSpec {
	head := o.head
	if head == nil {
		head = &CustomNet{}
	}
	return []RoleSpec{
		{Name: Teacher, Init: InitWeights},
		{Name: Student, Trainable: true, Init: InitTeacher},
		// The critic learns in dmd2 (flow matching) and, with disc_backbone, from the discriminator
		// loss; a standalone head on frozen features leaves it a frozen copy of the teacher.
		{Name: Critic, Trainable: o.P.Mode == "dmd2" || o.P.DiscBackbone, Init: InitTeacher},
		{Name: Discriminator, Trainable: true, Init: InitScratch, Custom: head},
	}
}

func (o *Adversarial) Setup(env *Env) error {
	nets, err := dits(env, Student, Teacher, Critic)
	if err != nil {
		return err
	}
	dr, err := env.Role(Discriminator)
	if err != nil {
		return err
	}
	if dr.G == nil || len(dr.Table) == 0 {
		return fmt.Errorf("adversarial: the discriminator role has no parameters or gradients (the trainer must call Configure before Roles)")
	}
	o.env = env
	o.tap = o.P.TapLayer
	if o.tap < 0 {
		o.tap = max(env.Cfg.Layers/2-1, 0)
	}
	if o.tap >= env.Cfg.Layers {
		return fmt.Errorf("params.tap_layer: %d, the model has %d blocks", o.tap, env.Cfg.Layers)
	}
	s := env.Shape
	s.ChunkFrames = 0
	C, dev := env.Cfg.InDim, env.Dev
	sigmas := DenoisingList(o.P.Timesteps, o.P.Shift)
	o.student = NewRollout(env, nets[0], s, sigmas)
	o.critic = nets[2]
	o.frozen = o.critic.Frozen()
	o.dmd = NewDMDGrad(env, nets[1], o.frozen, s, o.law, o.P.CFG)
	if o.P.Mode == "dmd2" {
		o.criticStep = NewFlowMatch(env, o.critic, s)
		o.criticStep.Last = !o.P.DiscBackbone // else the discriminator's backwards follow it
	}
	N := s.F * (s.H / 2) * (s.W / 2)
	o.headG = NewDiscHead(dev, dr.Table, dr.W, nil, s.B, N, env.Cfg.Dim)
	o.headD = NewDiscHead(dev, dr.Table, dr.W, dr.G, s.B, N, env.Cfg.Dim)
	o.pG = o.frozen.NewPass(s)
	if o.P.DiscBackbone {
		o.pD = o.critic.NewPass(s)
	} else {
		o.pD = o.frozen.NewPass(s)
	}
	o.sc = newScratch(dev, s, C)
	o.eps, o.xs, o.dx, o.xp = video(dev, s, C), video(dev, s, C), video(dev, s, C), video(dev, s, C)
	o.sigma, o.dLogit = make([]float32, s.B), make([]float32, s.B)
	return nil
}

// softplus(x) = log(1 + eˣ), stably; sigmoid is its derivative.
func softplus(x float64) float64 { return math.Max(x, 0) + math.Log1p(math.Exp(-math.Abs(x))) }
func sigmoid(x float64) float64  { return 1 / (1 + math.Exp(-x)) }

// logits noises x to a fresh σ per sample and runs net to the tap and the head.
func (o *Adversarial) logits(st *Step, net *models.DiT, p *models.Pass, head *DiscHead, x, ctx *kernels.Tensor) []float32 {
	dev := o.env.Dev
	o.law.DrawSigmas(o.sigma, st)
	RandnSamples(dev, o.eps, o.sc.host, st)         // ε   [B,C,F,H,W]
	Noise(dev, o.xs, x, o.eps, o.sigma)             // x_σ [B,C,F,H,W]
	SetTimesteps(dev, o.sc.t, o.sc.th, o.sigma)     // t   [B,F]
	h := net.ForwardTo(p, o.xs, o.sc.t, ctx, o.tap) // [B,N,D] features after block tap
	return head.Forward(h)                          // [B]
}

// discSide runs one side of the discriminator loss: weight·mean softplus(sign·D(x)) (sign +1 for
// fakes, −1 for reals), backpropagated into the head and, with disc_backbone, the critic.
// It returns the loss and mean sigmoid(D(x)). last: this backward is the micro-batch's last into
// the critic (Step.Last; with disc_backbone).
func (o *Adversarial) discSide(st *Step, x, ctx *kernels.Tensor, sign float64, last bool) (loss, prob float64) {
	net := o.frozen
	if o.P.DiscBackbone {
		net = o.critic
	}
	lg := o.logits(st, net, o.pD, o.headD, x, ctx)
	B := float64(len(lg))
	w := o.P.DiscGANWeight
	for i, l := range lg {
		z := sign * float64(l)
		loss += w * softplus(z) / B
		prob += sigmoid(float64(l)) / B
		o.dLogit[i] = float32(w * sign * sigmoid(z) / B) // d softplus(s·l)/dl = s·σ(s·l)
	}
	dh := o.headD.Backward(o.dLogit, true)
	if last && o.P.DiscBackbone {
		st.Last(net)
	}
	net.BackwardHidden(o.pD, nil, o.tap, dh)
	return loss, prob
}

// r1 is APT's approximated R1 penalty on the noised reals x_σ (o.xs, o.sc.t from the real side):
// r1_weight·mean_b (D(x_σ) − D(x_σ + r1_sigma·δ))², δ ~ N(0, I), backpropagated into the head and,
// with disc_backbone, the critic. The head keeps one set of activations, so the perturbed input is
// run twice (forward for its logit, then again for its backward).
func (o *Adversarial) r1(st *Step, ctx *kernels.Tensor) float64 {
	dev := o.env.Dev
	net := o.frozen
	if o.P.DiscBackbone {
		net = o.critic
	}
	B := len(o.dLogit)
	RandnSamples(dev, o.eps, o.sc.host, st)                                    // δ [B,C,F,H,W]
	dev.Combine(o.xp, o.xs, o.eps, ones(B), constant(B, float32(o.P.R1Sigma))) // x_σ + r1_sigma·δ
	l2 := append([]float32(nil), o.headD.Forward(net.ForwardTo(o.pD, o.xp, o.sc.t, ctx, o.tap))...)
	l1 := o.headD.Forward(net.ForwardTo(o.pD, o.xs, o.sc.t, ctx, o.tap))
	w := o.P.R1Weight
	var loss float64
	diff := make([]float32, B)
	for i := range l1 {
		d := float64(l1[i] - l2[i])
		loss += w * d * d / float64(B)
		diff[i] = float32(2 * w * d / float64(B))
		o.dLogit[i] = diff[i] // d/dl1
	}
	net.BackwardHidden(o.pD, nil, o.tap, o.headD.Backward(o.dLogit, true))
	o.headD.Forward(net.ForwardTo(o.pD, o.xp, o.sc.t, ctx, o.tap))
	for i := range diff {
		o.dLogit[i] = -diff[i] // d/dl2
	}
	if o.P.DiscBackbone {
		st.Last(net) // the critic's last backward of the micro-batch
	}
	net.BackwardHidden(o.pD, nil, o.tap, o.headD.Backward(o.dLogit, true))
	return loss
}

func constant(n int, v float32) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = v
	}
	return s
}

func (o *Adversarial) Step(st *Step, b *Batch) (Update, error) {
	if b.X0 == nil {
		return Update{}, fmt.Errorf("adversarial: the batch has no latents: the discriminator's real samples are data latents")
	}
	dev := o.env.Dev
	B := b.B()
	m := map[string]float64{}
	up := Update{Roles: []string{Discriminator}, Metrics: m}
	if o.P.Mode == "dmd2" || o.P.DiscBackbone {
		up.Roles = append(up.Roles, Critic)
	}
	dmd2 := o.P.Mode == "dmd2"

	if st.Step%o.P.Ratio == 0 {
		// ---- generator ----
		x := o.student.Run(st, b.Ctx, st.RNG.IntN(len(o.student.Sigmas))) // [B,C,F,H,W] graded
		dev.Zero(o.dx)
		if dmd2 && o.P.DMDWeight > 0 {
			loss, gabs := o.dmd.Compute(st, x, b.Ctx, b.Null)
			dev.Axpy(o.dx, float32(o.P.DMDWeight), o.dmd.Grad)
			m["gen_loss"], m["dmd_grad_abs"] = loss, gabs
		}
		lg := o.logits(st, o.frozen, o.pG, o.headG, x, b.Ctx)
		var gan float64
		w := o.P.GenGANWeight
		for i, l := range lg {
			gan += w * softplus(-float64(l)) / float64(B)
			o.dLogit[i] = float32(-w * sigmoid(-float64(l)) / float64(B))
		}
		dh := o.headG.Backward(o.dLogit, false)
		dxs := o.frozen.BackwardHidden(o.pG, nil, o.tap, dh) // dL/dx_σ, no parameter gradients
		a := make([]float32, B)
		for i, s := range o.sigma {
			a[i] = 1 - s // x_σ = (1−σ)·x + σ·ε
		}
		dev.Combine(o.dx, o.dx, dxs, ones(B), a) // dL/dx += (1−σ)·dL/dx_σ
		st.Last(o.student.Net)                   // the student's only backward
		o.student.Backward(o.dx)
		m["gen_gan"] = gan
		m["loss"] = m["gen_loss"] + gan
		up.Roles = append(up.Roles, Student)
	}

	// ---- critic (dmd2) and discriminator, on a fresh generator sample ----
	xf := o.student.Run(st, b.Ctx, st.RNG.IntN(len(o.student.Sigmas))) // no backward follows
	if dmd2 {
		o.law.DrawSigmas(o.sigma, st)
		o.criticStep.StepMetric(st, m, "critic_loss", xf, b.Ctx, o.sigma)
	}
	lf, pf := o.discSide(st, xf, b.Ctx, +1, false)
	lr, pr := o.discSide(st, b.X0, b.Ctx, -1, o.P.R1Weight <= 0) // the last unless R1 follows
	m["disc_loss"], m["d_fake"], m["d_real"] = lf+lr, pf, pr
	if o.P.R1Weight > 0 {
		r1 := o.r1(st, b.Ctx) // on the reals just noised into o.xs
		m["r1"] = r1
		m["disc_loss"] += r1
	}
	if _, ok := m["loss"]; !ok {
		m["loss"] = lf + lr
	}
	return up, nil
}
