package objectives

// The DMD generator gradient as a reusable piece (docs/objectives.md, dmd), for objectives that build
// their generator sample differently (selfforcing's causal rollout) or add other gradients to it
// (adversarial's DMD2 recipe):
//
//	σ ~ law;  x_σ = (1−σ)·x + σ·ε
//	x0_real = teacher(x_σ) with CFG w,  x0_fake = critic(x_σ) without CFG
//	grad    = (x0_fake − x0_real) / mean_per_sample|x − x0_real|   (a non-finite sample → 0)
//	loss    = 0.5·mean((x − sg(x − grad))²) = 0.5·mean(grad²),  dL/dx = grad / numel

import (
	"math"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
)

// DMDGrad computes the DMD generator gradient for samples of one shape. Neither network is
// differentiated: the critic's and the teacher's G are left untouched.
type DMDGrad struct {
	Teacher, Critic *models.DiT
	Law             SigmaLaw
	CFG             float32
	Grad            *kernels.Tensor // [B,C,F,H,W] dL/dx of the last Compute

	dev                                kernels.Device
	tPass, cPass                       *models.Pass
	sc                                 scratch
	eps, xs, vReal, vu, x0Real, x0Fake *kernels.Tensor // [B,C,F,H,W]
	diff                               *kernels.Tensor
	sigma                              []float32 // [B]
	norm, gsum                         []float64 // [B]
	coefA, coefB                       []float32 // [B]
}

// NewDMDGrad allocates the gradient's scratch for bidirectional shape s.
func NewDMDGrad(env *Env, teacher, critic *models.DiT, s models.Shape, law SigmaLaw, cfg float64) *DMDGrad {
	return newDMDGrad(env, teacher, critic, teacher.NewPass(s), critic.NewPass(s), law, cfg)
}

// NewDMDGradOn is NewDMDGrad with both forwards on pass p (of the bidirectional shape; teacher and
// critic share an architecture), e.g. the critic's training pass: Compute leaves nothing in it that
// it needs afterwards, and the pass is the size of the whole video.
func NewDMDGradOn(env *Env, teacher, critic *models.DiT, p *models.Pass, law SigmaLaw, cfg float64) *DMDGrad {
	return newDMDGrad(env, teacher, critic, p, p, law, cfg)
}

func newDMDGrad(env *Env, teacher, critic *models.DiT, tPass, cPass *models.Pass, law SigmaLaw, cfg float64) *DMDGrad {
	C, dev, s := env.Cfg.InDim, env.Dev, tPass.S
	g := &DMDGrad{Teacher: teacher, Critic: critic, Law: law, CFG: float32(cfg), dev: dev,
		tPass: tPass, cPass: cPass, sc: newScratch(dev, s, C)}
	for _, t := range []**kernels.Tensor{&g.Grad, &g.eps, &g.xs, &g.vReal, &g.vu, &g.x0Real, &g.x0Fake, &g.diff} {
		*t = video(dev, s, C)
	}
	g.sigma = make([]float32, s.B)
	g.norm, g.gsum = make([]float64, s.B), make([]float64, s.B)
	g.coefA, g.coefB = make([]float32, s.B), make([]float32, s.B)
	return g
}

// Compute writes dL/dx into g.Grad for the generator sample x [B,C,F,H,W] and returns the
// generator loss 0.5·mean(grad²) and mean|grad| (before the 1/numel).
func (g *DMDGrad) Compute(s *Step, x, ctx, null *kernels.Tensor) (loss, gradAbs float64) {
	gradAbs = g.compute(s, x, ctx, null, nil, func(l float64) { loss = l })
	return loss, gradAbs
}

// ComputeMetric is Compute with the loss given to set through s.SqNorm: under the trainer after the
// step's one readback (Step.Defer), so the logged loss costs no synchronization of its own.
func (g *DMDGrad) ComputeMetric(s *Step, x, ctx, null *kernels.Tensor, set func(loss float64)) (gradAbs float64) {
	return g.compute(s, x, ctx, null, s, set)
}

// compute is Compute with the loss given to set through lossStep.SqNorm (nil: at once).
func (g *DMDGrad) compute(s *Step, x, ctx, null *kernels.Tensor, lossStep *Step, set func(loss float64)) (gradAbs float64) {
	dev := g.dev
	B := len(g.sigma)
	g.Law.DrawSigmas(g.sigma, s)
	RandnSamples(dev, g.eps, g.sc.host, s)                                             // ε       [B,C,F,H,W]
	Noise(dev, g.xs, x, g.eps, g.sigma)                                                // x_σ     [B,C,F,H,W]
	SetTimesteps(dev, g.sc.t, g.sc.th, g.sigma)                                        // t       [B,F]
	CFGForward(dev, g.Teacher, g.tPass, g.vReal, g.vu, g.xs, g.sc.t, ctx, null, g.CFG) // v_real  [B,C,F,H,W]
	X0FromV(dev, g.x0Real, g.xs, g.vReal, g.sigma)                                     // x0_real [B,C,F,H,W]
	vFake := g.Critic.Forward(g.cPass, g.xs, g.sc.t, ctx)                              // v_fake  [B,C,F,H,W]
	X0FromV(dev, g.x0Fake, g.xs, vFake, g.sigma)                                       // x0_fake [B,C,F,H,W]

	dev.Combine(g.diff, x, g.x0Real, []float32{1}, []float32{-1}) // x − x0_real
	dev.SumAbsGroups(g.norm, g.diff)
	per := x.Numel() / B
	for i := range g.coefA {
		c := float32(float64(per) / g.norm[i]) // 1/mean|x − x0_real|
		if math.IsNaN(float64(c)) || math.IsInf(float64(c), 0) {
			c = 0
		}
		g.coefA[i], g.coefB[i] = c, -c
	}
	dev.Combine(g.Grad, g.x0Fake, g.x0Real, g.coefA, g.coefB) // grad [B,C,F,H,W]
	dev.SumAbsGroups(g.gsum, g.Grad)
	for i := 0; i < B; i++ {
		if v := g.gsum[i]; math.IsNaN(v) || math.IsInf(v, 0) {
			dev.Zero(g.Grad.View(i*per, per))
			g.gsum[i] = 0
		}
	}
	n := float64(x.Numel())
	lossStep.SqNorm(dev, g.Grad, func(sq float64) { set(0.5 * sq / n) })
	for _, v := range g.gsum {
		gradAbs += v / n
	}
	dev.Scale(g.Grad, float32(1/n)) // dL/dx = grad/numel
	return gradAbs
}

// frameCopier moves frames [f0, f0+k) between videos [B,C,F,H,W] and chunks [B,C,k,H,W]: one
// contiguous k·H·W run per (b, c) plane, the views made once.
type frameCopier struct {
	dev          kernels.Device
	video, chunk []*kernels.Tensor // [B·C] views of the runs
}

func newFrameCopier(dev kernels.Device, video, chunk *kernels.Tensor, f0 int) frameCopier {
	B, C, F, H, W := video.Shape[0], video.Shape[1], video.Shape[2], video.Shape[3], video.Shape[4]
	k := chunk.Shape[2]
	fc := frameCopier{dev: dev}
	for bc := 0; bc < B*C; bc++ {
		fc.video = append(fc.video, video.View((bc*F+f0)*H*W, k*H*W))
		fc.chunk = append(fc.chunk, chunk.View(bc*k*H*W, k*H*W))
	}
	return fc
}

// toVideo copies the chunk into its frames of the video; fromVideo the other way.
func (fc *frameCopier) toVideo() {
	for i := range fc.video {
		fc.dev.Copy(fc.video[i], fc.chunk[i])
	}
}

func (fc *frameCopier) fromVideo() {
	for i := range fc.video {
		fc.dev.Copy(fc.chunk[i], fc.video[i])
	}
}
