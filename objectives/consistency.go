package objectives

// consistency — LCM-style discrete consistency distillation (docs/objectives.md).
//
// The teacher's ODE grid has N shifted σ-levels σ(n) = shift(n/N), n = 0..N (σ(0) = 0, σ(N) = 1:
// the sampler's Euler grid). One step, per sample b:
//
//	n ~ U{1..N}, m = max(n − k, 0)
//	x_n = (1−σ_n)·x0 + σ_n·ε                                     data noised to level n
//	x_m = x_n + (σ_m − σ_n)·v_teacher^w(x_n, σ_n)                  one teacher Euler step with CFG w
//	      (solver: heun — x̃ that Euler step, x_m = x_n + (σ_m − σ_n)·(v^w(x_n, σ_n) + v^w(x̃, σ_m))/2
//	      where σ_m > 0, the Consistency Models paper's solver for CD; Euler into σ = 0, as EDM)
//	f(x, σ) = c_skip(σ)·x + c_out(σ)·(x − σ·v(x, σ))               LCM's boundary: f(x, 0) = x
//	loss = d(f_student(x_n, σ_n), stopgrad f_ema(x_m, σ_m))        pseudo-Huber (c) or L2
//
// The target network f_ema is the trainer's EMA of the student (roles.student.ema_decay, LCM: 0.95),
// or, with params.target_decay μ > 0, a role "target" of its own that follows the student at μ,
// so that the "ema" the samplers read can average more slowly (the Consistency Models paper's
// separate target μ = 0.95 and evaluated EMA 0.9999).

import (
	"fmt"
	"math"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
)

func init() { Register("consistency", newConsistency) }

// LCMScalings are LCM's boundary conditions (σ_data 0.5, timestep scaling 10) at the network
// timestep t = 1000·σ: c_skip = σd²/((10t)² + σd²), c_out = 10t/√((10t)² + σd²). At σ = 0:
// c_skip = 1, c_out = 0, so f(x, 0) = x exactly.
func LCMScalings(sigma float64) (cSkip, cOut float64) {
	const sigmaData, scale = 0.5, 10.0
	st := scale * 1000 * sigma
	d := st*st + sigmaData*sigmaData
	return sigmaData * sigmaData / d, st / math.Sqrt(d)
}

type consistencyParams struct {
	GridN  int     `mapstructure:"grid_n"`  // N: levels of the teacher's ODE grid (50)
	Skip   int     `mapstructure:"skip"`    // k: the teacher steps from level n to n−k (1)
	Shift  float64 `mapstructure:"shift"`   // grid shift (Wan: 3–5; 1 = none)
	CFG    float64 `mapstructure:"cfg"`     // fixed teacher guidance w (used when cfg_min = cfg_max = 0)
	CFGMin float64 `mapstructure:"cfg_min"` // else w ~ U[cfg_min, cfg_max] per sample
	CFGMax float64 `mapstructure:"cfg_max"`
	Solver string  `mapstructure:"solver"`  // the teacher's step n → m: euler (LCM's DDIM) | heun
	Loss   string  `mapstructure:"loss"`    // huber | l2
	HuberC float64 `mapstructure:"huber_c"` // pseudo-Huber c (LCM: 0.001)
	// TargetDecay μ > 0: the target is role "target", an EMA of the student at μ (0: the "ema" role)
	TargetDecay float64 `mapstructure:"target_decay"`
}

// Target is consistency's own target network (params.target_decay > 0).
const Target = "target"

// Consistency is the objective.
type Consistency struct {
	P consistencyParams

	env                   *Env
	student, teacher, ema *models.DiT
	ps, pt, pe            *models.Pass
	sc                    scratch
	eps, xn, xm, vt, diff *kernels.Tensor // [B,C,F,H,W]
	target, fs, dF, dv    *kernels.Tensor
	v2                    *kernels.Tensor // [B,C,F,H,W] Heun's second velocity (solver: heun)
	sn, sm                []float32       // [B] σ_n, σ_m of the last step
	grid                  []float64       // σ(n), n = 0..N
	diffH, gradH          []float32       // host copies for the pseudo-Huber
}

func newConsistency(params map[string]any) (Objective, error) {
	o := &Consistency{P: consistencyParams{GridN: 50, Skip: 1, Shift: 1, CFG: 1, Solver: "euler", Loss: "huber", HuberC: 0.001}}
	if err := DecodeParams(params, &o.P); err != nil {
		return nil, err
	}
	p := &o.P
	switch {
	case p.GridN < 1:
		return nil, fmt.Errorf("params.grid_n: %d, need ≥ 1", p.GridN)
	case p.Skip < 1 || p.Skip > p.GridN:
		return nil, fmt.Errorf("params.skip: %d, need 1 ≤ skip ≤ grid_n (%d)", p.Skip, p.GridN)
	case p.Shift <= 0:
		return nil, fmt.Errorf("params.shift: %g, must be > 0", p.Shift)
	case p.CFGMin > p.CFGMax || p.CFGMin < 0:
		return nil, fmt.Errorf("params.cfg_min/cfg_max: [%g, %g] is not a range of guidance weights ≥ 0", p.CFGMin, p.CFGMax)
	case p.Solver != "euler" && p.Solver != "heun":
		return nil, fmt.Errorf("params.solver: %q is not euler or heun", p.Solver)
	case p.Loss != "huber" && p.Loss != "l2":
		return nil, fmt.Errorf("params.loss: %q is not huber or l2", p.Loss)
	case !(p.TargetDecay >= 0 && p.TargetDecay < 1):
		return nil, fmt.Errorf("params.target_decay: %g, need 0 ≤ μ < 1 (0: the target is the ema role)", p.TargetDecay)
	case p.Loss == "huber" && p.HuberC <= 0:
		return nil, fmt.Errorf("params.huber_c: %g, must be > 0", p.HuberC)
	}
	o.grid = make([]float64, p.GridN+1)
	for n := range o.grid {
		o.grid[n] = ShiftSigma(float64(n)/float64(p.GridN), p.Shift)
	}
	return o, nil
}

func (o *Consistency) Name() string { return "consistency" }

// targetRole is the role of the consistency target f_ema: the trainer's "ema", or with
// params.target_decay its own "target" (the trainer keeps it at that decay, RoleSpec.Follow).
func (o *Consistency) targetRole() string {
	if o.P.TargetDecay > 0 {
		return Target
	}
	return EMA
}

func (o *Consistency) Roles() []RoleSpec {
	return []RoleSpec{
		{Name: Student, Trainable: true, Init: InitTeacher},
		{Name: Teacher, Init: InitWeights},
		{Name: o.targetRole(), Init: InitStudent, Follow: o.P.TargetDecay}, // Follow 0 for "ema": roles.student.ema_decay
	}
}

func (o *Consistency) Setup(env *Env) error {
	nets, err := dits(env, Student, Teacher, o.targetRole())
	if err != nil {
		return err
	}
	o.env, o.student, o.teacher, o.ema = env, nets[0], nets[1], nets[2]
	s := env.Shape
	s.ChunkFrames = 0 // bidirectional
	C := env.Cfg.InDim
	o.ps, o.pt, o.pe = o.student.NewPass(s), o.teacher.NewPass(s), o.ema.NewPass(s)
	o.sc = newScratch(env.Dev, s, C)
	for _, t := range []**kernels.Tensor{&o.eps, &o.xn, &o.xm, &o.vt, &o.diff, &o.target, &o.fs, &o.dF, &o.dv} {
		*t = video(env.Dev, s, C)
	}
	if o.P.Solver == "heun" {
		o.v2 = video(env.Dev, s, C)
	}
	n := o.xn.Numel()
	o.diffH, o.gradH = make([]float32, n), make([]float32, n)
	return nil
}

// dits returns the DiTs of the named roles, or an error naming a missing or non-DiT role.
func dits(env *Env, names ...string) ([]*models.DiT, error) {
	out := make([]*models.DiT, len(names))
	for i, n := range names {
		r, err := env.Role(n)
		if err != nil {
			return nil, err
		}
		if r.Net == nil {
			return nil, fmt.Errorf("objectives: role %q is not a DiT", n)
		}
		out[i] = r.Net
	}
	return out, nil
}

func (o *Consistency) Step(st *Step, b *Batch) (Update, error) {
	if b.X0 == nil {
		return Update{}, fmt.Errorf("consistency: the batch has no latents (a text-only dataset); consistency distillation noises data latents")
	}
	dev, p := o.env.Dev, &o.P
	B := b.B()
	N := p.GridN

	// Per-sample levels, guidance and coefficients.
	o.sn, o.sm = make([]float32, B), make([]float32, B)
	sn, sm := o.sn, o.sm
	one, zero := ones(B), make([]float32, B)
	uW, cW := make([]float32, B), make([]float32, B) // CFG: (1−w), w
	eulA := make([]float32, B)                       // σ_m − σ_n
	fsA, fsB := make([]float32, B), make([]float32, B)
	fmA, fmB := make([]float32, B), make([]float32, B)
	for i := 0; i < B; i++ {
		rng := st.Sample(i)
		n := 1 + rng.IntN(N)
		m := max(n-p.Skip, 0)
		sn[i], sm[i] = float32(o.grid[n]), float32(o.grid[m])
		w := p.CFG
		if p.CFGMax > 0 {
			w = p.CFGMin + (p.CFGMax-p.CFGMin)*rng.Float64()
		}
		uW[i], cW[i] = float32(1-w), float32(w)
		eulA[i] = sm[i] - sn[i]
		cs, co := LCMScalings(o.grid[n])
		fsA[i], fsB[i] = float32(cs+co), float32(-co*o.grid[n]) // f = (c_skip + c_out)·x − c_out·σ·v
		cs, co = LCMScalings(o.grid[m])
		fmA[i], fmB[i] = float32(cs+co), float32(-co*o.grid[m])
	}
	guided := false
	for i := range cW {
		guided = guided || cW[i] != 1
	}

	RandnSamples(dev, o.eps, o.sc.host, st)   // ε   [B,C,F,H,W]
	Noise(dev, o.xn, b.X0, o.eps, sn)         // x_n [B,C,F,H,W]
	SetTimesteps(dev, o.sc.t, o.sc.th, sn)    // t_n [B,F]
	o.teacherV(o.vt, o.xn, b, guided, uW, cW) // v = v^w(x_n, σ_n) [B,C,F,H,W]
	dev.Combine(o.xm, o.xn, o.vt, one, eulA)  // x_m = x_n + (σ_m − σ_n)·v  [B,C,F,H,W]
	if p.Solver == "heun" {
		heunA, heunB := make([]float32, B), make([]float32, B) // x_m = x_n + a·v1 + b·v2
		for i := range heunA {
			heunA[i] = eulA[i]
			if sm[i] > 0 {
				heunA[i], heunB[i] = eulA[i]/2, eulA[i]/2
			}
		}
		SetTimesteps(dev, o.sc.t, o.sc.th, sm)    // t_m [B,F]
		o.teacherV(o.v2, o.xm, b, guided, uW, cW) // v2 = v^w(x̃, σ_m) at the Euler point
		dev.Combine(o.xm, o.xn, o.vt, one, heunA) // x_n + a·v1
		dev.Combine(o.xm, o.xm, o.v2, one, heunB) // + b·v2  [B,C,F,H,W]
	}

	// Target: f_ema(x_m, σ_m), no gradient.
	SetTimesteps(dev, o.sc.t, o.sc.th, sm)
	ve := o.ema.Forward(o.pe, o.xm, o.sc.t, b.Ctx) // [B,C,F,H,W]
	dev.Combine(o.target, o.xm, ve, fmA, fmB)      // f_ema [B,C,F,H,W]

	// Student: f_s(x_n, σ_n) with gradient.
	SetTimesteps(dev, o.sc.t, o.sc.th, sn)
	vs := o.student.Forward(o.ps, o.xn, o.sc.t, b.Ctx) // [B,C,F,H,W]
	dev.Combine(o.fs, o.xn, vs, fsA, fsB)              // f_s [B,C,F,H,W]

	var loss float64
	if p.Loss == "l2" {
		loss = MSE(dev, o.dF, o.diff, o.fs, o.target)
	} else {
		dev.Combine(o.dF, o.fs, o.target, []float32{1}, []float32{-1}) // d = f_s − f_ema
		dev.ToHost(o.diffH, o.dF)
		loss = PseudoHuber(o.gradH, o.diffH, p.HuberC)
		dev.FromHost(o.dF, o.gradH)
	}
	dev.Combine(o.dv, o.dF, o.dF, fsB, zero) // dL/dv = −c_out·σ_n·dL/df
	st.Last(o.student)                       // the student's only backward
	o.student.Backward(o.ps, o.dv)

	var sMean float64
	for _, s := range sn {
		sMean += float64(s) / float64(B)
	}
	return Update{Roles: []string{Student}, Metrics: map[string]float64{"loss": loss, "sigma": sMean}}, nil
}

// teacherV writes the teacher's velocity with CFG per sample, (1−w)·v_u + w·v_c, at x and the
// timesteps in o.sc.t into out [B,C,F,H,W] (v_c alone when no sample is guided).
func (o *Consistency) teacherV(out, x *kernels.Tensor, b *Batch, guided bool, uW, cW []float32) {
	dev := o.env.Dev
	vc := o.teacher.Forward(o.pt, x, o.sc.t, b.Ctx) // v_c [B,C,F,H,W]
	dev.Copy(out, vc)
	if guided {
		vu := o.teacher.Forward(o.pt, x, o.sc.t, b.Null) // v_u [B,C,F,H,W]
		dev.Combine(out, vu, out, uW, cW)                // (1−w)·v_u + w·v_c
	}
}

// PseudoHuber returns mean(√(d² + c²) − c) over d and writes its gradient grad = d/√(d² + c²)/n.
func PseudoHuber(grad, d []float32, c float64) float64 {
	var sum float64
	n := float64(len(d))
	for i, x := range d {
		r := math.Sqrt(float64(x)*float64(x) + c*c)
		sum += r - c
		grad[i] = float32(float64(x) / r / n)
	}
	return sum / n
}

func ones(n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = 1
	}
	return s
}
