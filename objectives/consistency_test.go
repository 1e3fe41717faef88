package objectives

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
)

func TestLCMScalings(t *testing.T) {
	// f(x, 0) = x: c_skip(0) = 1, c_out(0) = 0.
	if cs, co := LCMScalings(0); cs != 1 || co != 0 {
		t.Fatalf("LCMScalings(0) = %g, %g; want 1, 0", cs, co)
	}
	// LCM's numbers at the first discrete timestep t = 1 (σ = 0.001): scaled 10, σ_data 0.5.
	cs, co := LCMScalings(0.001)
	if math.Abs(cs-0.25/100.25) > 1e-12 || math.Abs(co-10/math.Sqrt(100.25)) > 1e-12 {
		t.Fatalf("LCMScalings(0.001) = %g, %g; want %g, %g", cs, co, 0.25/100.25, 10/math.Sqrt(100.25))
	}
	// c_skip + c_out² = 1 for every σ, c_skip falls and c_out rises with σ.
	prevS, prevO := 1.0, 0.0
	for _, s := range []float64{1e-5, 1e-4, 1e-3, 0.01, 0.1, 0.5, 1} {
		cs, co := LCMScalings(s)
		if math.Abs(cs+co*co-1) > 1e-12 || cs >= prevS || co <= prevO {
			t.Fatalf("LCMScalings(%g) = %g, %g (previous %g, %g)", s, cs, co, prevS, prevO)
		}
		prevS, prevO = cs, co
	}
}

func TestPseudoHuber(t *testing.T) {
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	d := make([]float32, 50)
	for i := range d {
		d[i] = float32(rng.NormFloat64())
	}
	c := 0.3
	g := make([]float32, len(d))
	loss := PseudoHuber(g, d, c)
	var ref float64
	for _, x := range d {
		ref += (math.Sqrt(float64(x)*float64(x)+c*c) - c) / float64(len(d))
	}
	if math.Abs(loss-ref) > 1e-12 {
		t.Fatalf("pseudo-Huber %g, reference %g", loss, ref)
	}
	for i, x := range d {
		h := 1e-4
		up := (math.Sqrt((float64(x)+h)*(float64(x)+h)+c*c) - c) / float64(len(d))
		dn := (math.Sqrt((float64(x)-h)*(float64(x)-h)+c*c) - c) / float64(len(d))
		if fd := (up - dn) / (2 * h); math.Abs(float64(g[i])-fd) > 1e-6 {
			t.Fatalf("pseudo-Huber gradient %d: %g, finite difference %g", i, g[i], fd)
		}
	}
}

// testShape is the small size of the gradient checks: 2 frames of 4×4 latents.
var testShape = models.Shape{B: 2, F: 2, H: 4, W: 4, L: 3}

// testEnv builds an objective's roles by hand (no trainer): DiTs with non-degenerate random
// weights (every role the same, like a student that starts as the teacher), custom roles from their
// Init. Trainable roles get G.
func testEnv(t testing.TB, o Objective, s models.Shape, seed int64) *Env {
	t.Helper()
	cfg, err := models.Preset("tiny")
	if err != nil {
		t.Fatal(err)
	}
	return testEnvCfg(t, o, cfg, s, seed)
}

func testEnvCfg(t testing.TB, o Objective, cfg models.Config, s models.Shape, seed int64) *Env {
	t.Helper()
	dev := kernels.CPU()
	env := &Env{Dev: dev, Cfg: cfg, Shape: s, Roles: map[string]*Role{}}
	if c, ok := o.(Configurable); ok {
		if err := c.Configure(cfg); err != nil {
			t.Fatal(err)
		}
	}
	for _, sp := range o.Roles() {
		r := &Role{Spec: sp}
		if sp.Custom != nil {
			r.Table = sp.Custom.Table
			r.W = dev.Alloc(kernels.F32, sp.Custom.Numel)
			if sp.Trainable {
				r.G = dev.Alloc(kernels.F32, sp.Custom.Numel)
			}
			host := make([]float32, sp.Custom.Numel)
			sp.Custom.Init(host, rand.New(rand.NewPCG(uint64(seed), 3)))
			dev.FromHost(r.W, host)
		} else {
			r.Net = models.New(dev, cfg, sp.Trainable)
			r.Net.InitRandom(seed, 0.2)
			r.W, r.G, r.Table = r.Net.W, r.Net.G, r.Net.Table
		}
		env.Roles[sp.Name] = r
	}
	if err := o.Setup(env); err != nil {
		t.Fatal(err)
	}
	return env
}

// testBatch is a batch of random latents and contexts for shape s.
func testBatch(env *Env, s models.Shape, rng *rand.Rand) *Batch {
	dev, cfg := env.Dev, env.Cfg
	b := &Batch{
		X0:   dev.Alloc(kernels.F32, s.B, cfg.InDim, s.F, s.H, s.W),
		Ctx:  dev.Alloc(kernels.F32, s.B, s.L, cfg.TextDim),
		Null: dev.Alloc(kernels.F32, s.B, s.L, cfg.TextDim),
	}
	for _, x := range []*kernels.Tensor{b.X0, b.Ctx, b.Null} {
		h := make([]float32, x.Numel())
		for i := range h {
			h[i] = float32(rng.NormFloat64())
		}
		dev.FromHost(x, h)
	}
	return b
}

// directional checks that a step's gradient (G of role, after one Step) is the derivative of the
// step's metric: along u = G/|G| the central difference of the metric equals |G|. The step draws
// the same random numbers each call (same seed), so the metric is a function of the weights.
func directional(t *testing.T, env *Env, o Objective, b *Batch, role, metric string, stepN int, tol float64) {
	t.Helper()
	dev := env.Dev
	r := env.Roles[role]
	eval := func() float64 {
		for _, rr := range env.Roles {
			if rr.G != nil {
				dev.Zero(rr.G)
			}
		}
		up, err := o.Step(&Step{Step: stepN, Accum: 1, RNG: StepRNG(11, stepN, 0)}, b)
		if err != nil {
			t.Fatal(err)
		}
		v, ok := up.Metrics[metric]
		if !ok {
			t.Fatalf("metric %q not reported (have %v)", metric, up.Metrics)
		}
		return v
	}
	eval()
	g := make([]float32, r.G.Numel())
	dev.ToHost(g, r.G)
	var norm float64
	for _, v := range g {
		norm += float64(v) * float64(v)
	}
	norm = math.Sqrt(norm)
	if norm == 0 || math.IsNaN(norm) {
		t.Fatalf("%s: gradient of %s is %g", role, metric, norm)
	}
	w0 := make([]float32, r.W.Numel())
	dev.ToHost(w0, r.W)
	h := 2e-3 * math.Min(1, 10/norm) // a step in weight space along u, shorter where the metric is steep
	shifted := func(a float64) float64 {
		w := make([]float32, len(w0))
		for i := range w {
			w[i] = w0[i] + float32(a*h*float64(g[i])/norm)
		}
		dev.FromHost(r.W, w)
		return eval()
	}
	fd := (shifted(1) - shifted(-1)) / (2 * h)
	dev.FromHost(r.W, w0)
	t.Logf("%s / %s: |G| = %.6g, central difference along G = %.6g", metric, role, norm, fd)
	if math.Abs(fd-norm) > tol*norm {
		t.Fatalf("%s / %s: gradient norm %.6g but the metric changes at %.6g along it", metric, role, norm, fd)
	}
}

// The consistency step's student gradient is the derivative of its loss (L2, and pseudo-Huber with
// a c large enough to be smooth at this scale), with CFG drawn per sample.
func TestConsistencyGradient(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	for _, p := range []map[string]any{
		{"loss": "l2", "grid_n": 8, "skip": 2, "shift": 3, "cfg": 2},
		{"loss": "huber", "huber_c": 0.5, "grid_n": 8, "skip": 3, "cfg_min": 1, "cfg_max": 4},
	} {
		o, err := New("consistency", p)
		if err != nil {
			t.Fatal(err)
		}
		env := testEnv(t, o, testShape, seed)
		b := testBatch(env, testShape, rand.New(rand.NewPCG(uint64(seed), 2)))
		directional(t, env, o, b, Student, "loss", 1, 0.01)
	}
}

func TestConsistencyParamErrors(t *testing.T) {
	for _, p := range []map[string]any{
		{"skip": 0}, {"grid_n": 4, "skip": 5}, {"loss": "l1"}, {"huber_c": 0.0}, {"cfg_min": 3, "cfg_max": 2}, {"bogus": 1},
	} {
		if _, err := New("consistency", p); err == nil {
			t.Fatalf("params %v: no error", p)
		}
	}
}

// solver: heun — the teacher's step n → m is Heun's (the Euler point x̃, then the mean of the guided
// velocities at x_n and x̃) where σ_m > 0 and Euler into σ_m = 0: x_m against a host reference from
// plain teacher forwards, for samples of both kinds.
func TestConsistencyHeun(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	s := testShape
	s.B = 4
	const w = 2.5
	o, err := New("consistency", map[string]any{"solver": "heun", "grid_n": 8, "skip": 3, "shift": 3, "cfg": w})
	if err != nil {
		t.Fatal(err)
	}
	env := testEnv(t, o, s, seed)
	c := o.(*Consistency)
	dev, C := env.Dev, env.Cfg.InDim
	b := testBatch(env, s, rand.New(rand.NewPCG(uint64(seed), 2)))
	teacher := env.Roles[Teacher].Net
	pass := teacher.NewPass(s)
	tt := dev.Alloc(kernels.F32, s.B, s.F)
	th := make([]float32, s.B*s.F)
	per := C * s.F * s.H * s.W
	// v^w(x, σ) on the host: (1−w)·v_u + w·v_c.
	guidedV := func(x []float32, sig []float32) []float32 {
		xd := dev.Alloc(kernels.F32, s.B, C, s.F, s.H, s.W)
		dev.FromHost(xd, x)
		SetTimesteps(dev, tt, th, sig)
		vc := hostOf(dev, teacher.Forward(pass, xd, tt, b.Ctx))
		vu := hostOf(dev, teacher.Forward(pass, xd, tt, b.Null))
		out := make([]float32, len(x))
		for i := range out {
			out[i] = (1-w)*vu[i] + w*vc[i]
		}
		return out
	}
	kinds := map[bool]bool{}
	for step := 1; step <= 30 && len(kinds) < 2; step++ {
		if _, err := o.Step(&Step{Step: step, Accum: 1, RNG: StepRNG(seed, step, 0)}, b); err != nil {
			t.Fatal(err)
		}
		xn, xm := hostOf(dev, c.xn), hostOf(dev, c.xm)
		v1 := guidedV(xn, c.sn)
		xe := make([]float32, len(xn)) // the Euler point
		for i := range xe {
			bi := i / per
			xe[i] = xn[i] + (c.sm[bi]-c.sn[bi])*v1[i]
		}
		v2 := guidedV(xe, c.sm)
		var maxErr, maxRef float64
		for i := range xm {
			bi := i / per
			ref := xe[i]
			if c.sm[bi] > 0 {
				ref = xn[i] + (c.sm[bi]-c.sn[bi])*(v1[i]+v2[i])/2
			}
			maxErr = math.Max(maxErr, math.Abs(float64(xm[i]-ref)))
			maxRef = math.Max(maxRef, math.Abs(float64(ref)))
		}
		if maxErr > 1e-5*maxRef {
			t.Fatalf("step %d (σ_n %v → σ_m %v): x_m off the Heun reference by %g (max |x_m| %g)", step, c.sn, c.sm, maxErr, maxRef)
		}
		for _, sg := range c.sm {
			kinds[sg > 0] = true
		}
	}
	if len(kinds) < 2 {
		t.Fatalf("30 steps drew only σ_m > 0 = %v", kinds)
	}
	if _, err := New("consistency", map[string]any{"solver": "rk4"}); err == nil {
		t.Fatal("solver rk4: no error")
	}
}
