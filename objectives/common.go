package objectives

// The shared pieces of the objectives (docs/objectives.md), in Wan's flow-matching convention (docs/architecture.md):
// x_σ = (1−σ)·x0 + σ·ε, the network predicts v = ε − x0 at timestep t = 1000·σ, x0 = x_σ − σ·v,
// shifted σ' = s·σ/(1+(s−1)·σ), CFG v = v_u + w·(v_c − v_u).

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
)

// ShiftSigma warps σ ∈ [0,1] by the shift s: σ' = s·σ/(1+(s−1)·σ) (s = 1: identity; s > 1 spends
// more time at high noise).
func ShiftSigma(sigma, shift float64) float64 {
	return shift * sigma / (1 + (shift-1)*sigma)
}

// SigmaLaw is how a training step draws σ: "logit_normal" (σ = sigmoid(N(Mean, Std))) or "uniform"
// (σ ~ U[Min, Max]), then shifted by Shift. Embed it in an objective's params.
type SigmaLaw struct {
	Law   string  `mapstructure:"sigma_law"`  // logit_normal | uniform
	Mean  float64 `mapstructure:"sigma_mean"` // logit-normal location (0)
	Std   float64 `mapstructure:"sigma_std"`  // logit-normal scale (1)
	Min   float64 `mapstructure:"sigma_min"`  // uniform bounds
	Max   float64 `mapstructure:"sigma_max"`
	Shift float64 `mapstructure:"shift"` // s of ShiftSigma (1 = none)
}

// Validate names the bad key.
func (l *SigmaLaw) Validate() error {
	switch l.Law {
	case "logit_normal":
		if l.Std <= 0 {
			return fmt.Errorf("params.sigma_std: %g, must be > 0", l.Std)
		}
	case "uniform":
		if !(0 <= l.Min && l.Min < l.Max && l.Max <= 1) {
			return fmt.Errorf("params.sigma_min/sigma_max: [%g, %g] is not a range inside [0, 1]", l.Min, l.Max)
		}
	default:
		return fmt.Errorf("params.sigma_law: %q is not logit_normal or uniform", l.Law)
	}
	if l.Shift <= 0 {
		return fmt.Errorf("params.shift: %g, must be > 0", l.Shift)
	}
	return nil
}

// Draw returns one shifted σ.
func (l *SigmaLaw) Draw(rng *rand.Rand) float64 {
	var s float64
	if l.Law == "uniform" {
		s = l.Min + (l.Max-l.Min)*rng.Float64()
	} else {
		s = 1 / (1 + math.Exp(-(l.Mean + l.Std*rng.NormFloat64())))
	}
	return ShiftSigma(s, l.Shift)
}

// DenoisingList turns timesteps in [0, 1000] (e.g. [1000, 750, 500, 250]) into the σ levels of a
// few-step generator, warped by the shift.
func DenoisingList(timesteps []float64, shift float64) []float32 {
	s := make([]float32, len(timesteps))
	for i, t := range timesteps {
		s[i] = float32(ShiftSigma(t/1000, shift))
	}
	return s
}

// Fill draws host values into a device tensor. host is a scratch slice of at least t.Numel().
func fill(dev kernels.Device, t *kernels.Tensor, host []float32, draw func() float32) {
	h := host[:t.Numel()]
	for i := range h {
		h[i] = draw()
	}
	dev.FromHost(t, h)
}

// Randn fills t with N(0, 1) from rng (host draws, copied to the device).
func Randn(dev kernels.Device, t *kernels.Tensor, host []float32, rng *rand.Rand) {
	fill(dev, t, host, func() float32 { return float32(rng.NormFloat64()) })
}

// RandnSamples fills t [B, ...] with N(0, 1): sample b's slab from its stream s.Sample(b), in one of
// two ways (Step.Noise, the job's train.noise):
//   - on the host (NoiseHost; the default on the CPU, where the README's tables were drawn): the
//     stream's NormFloat64s, written into host (scratch of at least t.Numel()) and uploaded;
//   - on the device (NoiseDevice; the default on a GPU): Device.RandnPhilox with slab b's key the
//     next Uint64 of sample b's stream and the counter the number of earlier calls in this step.
//     The key is a function of (job seed, step, micro-batch, the sample's global index, the draws
//     before it in that stream), so N ranks with batch B/N draw what one rank with batch B draws,
//     a resumed step draws what it drew, and every call of a step draws new values (a new key, and
//     a new counter besides). host is not touched.
func RandnSamples(dev kernels.Device, t *kernels.Tensor, host []float32, s *Step) {
	B := t.Shape[0]
	if s.deviceNoise(dev) {
		s.keys = s.keys[:0]
		for b := 0; b < B; b++ {
			s.keys = append(s.keys, s.Sample(b).Uint64())
		}
		dev.RandnPhilox(t, s.keys, s.draws) // t [B, ...]
		s.draws++
		return
	}
	per := t.Numel() / B
	h := host[:t.Numel()]
	for b := 0; b < B; b++ {
		rng := s.Sample(b)
		for i := b * per; i < (b+1)*per; i++ {
			h[i] = float32(rng.NormFloat64())
		}
	}
	dev.FromHost(t, h)
}

// DrawSigmas draws one σ per sample from its stream.
func (l *SigmaLaw) DrawSigmas(sigma []float32, s *Step) {
	for i := range sigma {
		sigma[i] = float32(l.Draw(s.Sample(i)))
	}
}

// SetTimesteps writes t [B,F] = 1000·σ_b for every frame of sample b.
func SetTimesteps(dev kernels.Device, t *kernels.Tensor, host []float32, sigma []float32) {
	B, F := t.Shape[0], t.Shape[1]
	h := host[:B*F]
	for b := 0; b < B; b++ {
		for f := 0; f < F; f++ {
			h[b*F+f] = 1000 * sigma[b]
		}
	}
	dev.FromHost(t, h)
}

// Noise: xs = (1−σ_b)·x0 + σ_b·ε, per sample b.
func Noise(dev kernels.Device, xs, x0, eps *kernels.Tensor, sigma []float32) {
	a := make([]float32, len(sigma))
	for i, s := range sigma {
		a[i] = 1 - s
	}
	dev.Combine(xs, x0, eps, a, sigma)
}

// X0FromV: x0 = xs − σ_b·v, per sample b.
func X0FromV(dev kernels.Device, x0, xs, v *kernels.Tensor, sigma []float32) {
	a := make([]float32, len(sigma))
	b := make([]float32, len(sigma))
	for i, s := range sigma {
		a[i], b[i] = 1, -s
	}
	dev.Combine(x0, xs, v, a, b)
}

// CFG: out = v_u + w·(v_c − v_u) = (1−w)·v_u + w·v_c.
func CFG(dev kernels.Device, out, vu, vc *kernels.Tensor, w float32) {
	dev.Combine(out, vu, vc, []float32{1 - w}, []float32{w})
}

// MSE returns mean((pred − target)²) and, when dPred != nil, writes dPred = 2·(pred − target)/n
// (overwrites). diff is scratch of pred's size.
func MSE(dev kernels.Device, dPred, diff, pred, target *kernels.Tensor) float64 {
	var loss float64
	mse(dev, nil, dPred, diff, pred, target, func(l float64) { loss = l })
	return loss
}

// mse is MSE with the loss given to set through s.SqNorm (s nil: at once; under the trainer:
// after the step's one readback).
func mse(dev kernels.Device, s *Step, dPred, diff, pred, target *kernels.Tensor, set func(loss float64)) {
	dev.Combine(diff, pred, target, []float32{1}, []float32{-1})
	n := float64(pred.Numel())
	s.SqNorm(dev, diff, func(sq float64) { set(sq / n) })
	if dPred != nil {
		dev.Combine(dPred, diff, diff, []float32{float32(2 / n)}, []float32{0})
	}
}

// scratch is a set of device tensors shaped like one video batch, plus host buffers.
type scratch struct {
	dev  kernels.Device
	host []float32 // ≥ one video batch
	t    *kernels.Tensor
	th   []float32 // [B·F]
}

func newScratch(dev kernels.Device, s models.Shape, C int) scratch {
	return scratch{
		dev:  dev,
		host: make([]float32, s.B*C*s.F*s.H*s.W),
		t:    dev.Alloc(kernels.F32, s.B, s.F),
		th:   make([]float32, s.B*s.F),
	}
}

func video(dev kernels.Device, s models.Shape, C int) *kernels.Tensor {
	return dev.Alloc(kernels.F32, s.B, C, s.F, s.H, s.W)
}

// CFGForward runs a network twice (uncond on null, cond on ctx) and writes the guided velocity into
// out; w == 1 runs the conditional branch only. vu is scratch shaped like out.
func CFGForward(dev kernels.Device, net *models.DiT, p *models.Pass, out, vu, x, t, ctx, null *kernels.Tensor, w float32) {
	if w == 1 {
		dev.Copy(out, net.Forward(p, x, t, ctx))
		return
	}
	dev.Copy(vu, net.Forward(p, x, t, null))
	vc := net.Forward(p, x, t, ctx)
	CFG(dev, out, vu, vc, w)
}

// FlowMatch is one flow-matching training step of a network on given clean latents (flowmatch's
// whole loss, and the critic step of dmd/selfforcing): ε ~ N(0,1), x_σ, v = net(x_σ, 1000σ, ctx),
// loss = mean((v − (ε − x0))²), backward into net.G.
type FlowMatch struct {
	Net  *models.DiT
	Pass *models.Pass
	// Last: Step's backward is the micro-batch's last into Net (Step.Last); set by an objective
	// whose Net gets no other backward after it (flowmatch's student, dmd's and selfforcing's
	// critic; not adversarial's critic, which its discriminator's backward may follow).
	Last                      bool
	sc                        scratch
	eps, xs, target, diff, dv *kernels.Tensor
}

// NewFlowMatch allocates the step's tensors for shape s.
func NewFlowMatch(env *Env, net *models.DiT, s models.Shape) *FlowMatch {
	C := env.Cfg.InDim
	return &FlowMatch{
		Net: net, Pass: net.NewPass(s), sc: newScratch(env.Dev, s, C),
		eps: video(env.Dev, s, C), xs: video(env.Dev, s, C), target: video(env.Dev, s, C),
		diff: video(env.Dev, s, C), dv: video(env.Dev, s, C),
	}
}

// Step runs forward and backward for x0 [B,C,F,H,W] at per-sample σ and returns the loss.
func (f *FlowMatch) Step(s *Step, x0, ctx *kernels.Tensor, sigma []float32) float64 {
	var loss float64
	f.step(s, x0, ctx, sigma, nil, func(l float64) { loss = l })
	return loss
}

// StepMetric is Step with the loss written to m[key] through s.SqNorm: under the trainer, after the
// step's one readback (Step.Defer), so the loss costs no synchronization of its own.
func (f *FlowMatch) StepMetric(s *Step, m map[string]float64, key string, x0, ctx *kernels.Tensor, sigma []float32) {
	f.step(s, x0, ctx, sigma, s, func(l float64) { m[key] = l })
}

// step is Step with the loss given to set, through lossStep.SqNorm (nil: at once).
func (f *FlowMatch) step(s *Step, x0, ctx *kernels.Tensor, sigma []float32, lossStep *Step, set func(loss float64)) {
	dev := f.sc.dev
	RandnSamples(dev, f.eps, f.sc.host, s)                        // ε     [B,C,F,H,W]
	Noise(dev, f.xs, x0, f.eps, sigma)                            // x_σ   [B,C,F,H,W]
	dev.Combine(f.target, f.eps, x0, []float32{1}, []float32{-1}) // ε−x0  [B,C,F,H,W]
	SetTimesteps(dev, f.sc.t, f.sc.th, sigma)                     // t     [B,F]
	v := f.Net.Forward(f.Pass, f.xs, f.sc.t, ctx)                 // v     [B,C,F,H,W]
	mse(dev, lossStep, f.dv, f.diff, v, f.target, set)            // dL/dv [B,C,F,H,W]
	if f.Last {
		s.Last(f.Net)
	}
	f.Net.Backward(f.Pass, f.dv) // += net.G
}

// Rollout is the few-step generator's "backward simulation" (docs/objectives.md, dmd): start from pure
// noise at Sigmas[0]; at each level i before the exit step predict x0 = x − σ_i·v without
// gradients and re-noise it to Sigmas[i+1] with fresh noise; at the exit step s run the student on
// its pass (the graded forward) and return that x0. Backward then carries dL/dx0 through the graded
// step: dv = −σ_s·dL/dx0.
type Rollout struct {
	Net            *models.DiT
	Pass           *models.Pass
	Sigmas         []float32 // descending denoising list
	sc             scratch
	x, eps, x0, dv *kernels.Tensor
	sigma          []float32 // [B] σ of the exit step
}

// NewRollout allocates a rollout for shape s.
func NewRollout(env *Env, net *models.DiT, s models.Shape, sigmas []float32) *Rollout {
	C := env.Cfg.InDim
	return &Rollout{
		Net: net, Pass: net.NewPass(s), Sigmas: sigmas, sc: newScratch(env.Dev, s, C),
		x: video(env.Dev, s, C), eps: video(env.Dev, s, C), x0: video(env.Dev, s, C), dv: video(env.Dev, s, C),
		sigma: make([]float32, s.B),
	}
}

// Run generates x0 [B,C,F,H,W] (owned by r, valid until the next Run) conditioned on ctx, exiting
// at step exit ∈ [0, len(Sigmas)). The exit step's activations stay in r.Pass for Backward.
func (r *Rollout) Run(s *Step, ctx *kernels.Tensor, exit int) *kernels.Tensor {
	if exit < 0 || exit >= len(r.Sigmas) {
		panic(fmt.Sprintf("objectives: rollout exit step %d outside the %d-level denoising list", exit, len(r.Sigmas)))
	}
	dev := r.sc.dev
	B := len(r.sigma)
	RandnSamples(dev, r.x, r.sc.host, s) // x at σ_0 = pure noise (σ_0 = 1 for t = 1000)
	for i := 0; ; i++ {
		for b := 0; b < B; b++ {
			r.sigma[b] = r.Sigmas[i]
		}
		SetTimesteps(dev, r.sc.t, r.sc.th, r.sigma)
		v := r.Net.Forward(r.Pass, r.x, r.sc.t, ctx) // v  [B,C,F,H,W]
		X0FromV(dev, r.x0, r.x, v, r.sigma)          // x0 [B,C,F,H,W]
		if i == exit {
			return r.x0
		}
		for b := 0; b < B; b++ {
			r.sigma[b] = r.Sigmas[i+1]
		}
		RandnSamples(dev, r.eps, r.sc.host, s)
		Noise(dev, r.x, r.x0, r.eps, r.sigma) // x at σ_{i+1}, fresh noise
	}
}

// Backward accumulates the student's parameter gradients for dL/dx0 of the last Run.
func (r *Rollout) Backward(dX0 *kernels.Tensor) {
	a := make([]float32, len(r.sigma))
	for i, s := range r.sigma {
		a[i] = -s
	}
	r.sc.dev.Combine(r.dv, dX0, dX0, a, make([]float32, len(a))) // dv = −σ_s·dx0
	r.Net.Backward(r.Pass, r.dv)
}

// RunFrom is the rollout: data variant (CausVid): the clean latents x0data noised to Sigmas[level]
// with fresh noise, and the student's graded x0 prediction from there.
func (r *Rollout) RunFrom(s *Step, x0data, ctx *kernels.Tensor, level int) *kernels.Tensor {
	dev := r.sc.dev
	for b := range r.sigma {
		r.sigma[b] = r.Sigmas[level]
	}
	RandnSamples(dev, r.eps, r.sc.host, s)
	Noise(dev, r.x, x0data, r.eps, r.sigma) // x at σ_level [B,C,F,H,W]
	SetTimesteps(dev, r.sc.t, r.sc.th, r.sigma)
	v := r.Net.Forward(r.Pass, r.x, r.sc.t, ctx) // v  [B,C,F,H,W]
	X0FromV(dev, r.x0, r.x, v, r.sigma)          // x0 [B,C,F,H,W]
	return r.x0
}

// RunAt is the student's graded x0 prediction from a given input xIn [B,C,F,H,W] at Sigmas[level]
// (e.g. a teacher trajectory's latent at that level); xIn is copied, not kept.
func (r *Rollout) RunAt(xIn, ctx *kernels.Tensor, level int) *kernels.Tensor {
	dev := r.sc.dev
	for b := range r.sigma {
		r.sigma[b] = r.Sigmas[level]
	}
	dev.Copy(r.x, xIn) // x at σ_level [B,C,F,H,W]
	SetTimesteps(dev, r.sc.t, r.sc.th, r.sigma)
	v := r.Net.Forward(r.Pass, r.x, r.sc.t, ctx) // v  [B,C,F,H,W]
	X0FromV(dev, r.x0, r.x, v, r.sigma)          // x0 [B,C,F,H,W]
	return r.x0
}
