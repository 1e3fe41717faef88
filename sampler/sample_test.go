package sampler

import (
	"math"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// hostNet is an analytic velocity field computed on the host: f(x, t, ctx) for a batch.
type hostNet struct {
	dev   kernels.Device
	f     func(v, x, t, ctx []float32, B int)
	out   *kernels.Tensor
	calls int // forwards
	rows  int // batch rows seen, summed
}

func (h *hostNet) Device() kernels.Device { return h.dev }

func (h *hostNet) Velocity(x, t, ctx *kernels.Tensor) *kernels.Tensor {
	xs, ts, cs := make([]float32, x.Numel()), make([]float32, t.Numel()), make([]float32, ctx.Numel())
	h.dev.ToHost(xs, x)
	h.dev.ToHost(ts, t)
	h.dev.ToHost(cs, ctx)
	v := make([]float32, len(xs))
	h.f(v, xs, ts, cs, x.Shape[0])
	if h.out == nil || h.out.Numel() != len(v) {
		h.out = h.dev.Alloc(kernels.F32, x.Shape...)
	}
	h.out = h.out.Reshape(x.Shape...)
	h.dev.FromHost(h.out, v)
	h.calls++
	h.rows += x.Shape[0]
	return h.out
}

// pointNet is the exact velocity of a flow whose data is one point per video: x0*[b] = ctx[b,0,0]
// everywhere (so the null and conditional branches have different targets): v = (x − x0*)/σ.
func pointNet(dev kernels.Device) *hostNet {
	return &hostNet{dev: dev, f: func(v, x, t, ctx []float32, B int) {
		per, lt, F := len(x)/B, len(ctx)/B, len(t)/B
		for b := 0; b < B; b++ {
			target, sigma := float64(ctx[b*lt]), float64(t[b*F])/1000
			for i := 0; i < per; i++ {
				v[b*per+i] = float32((float64(x[b*per+i]) - target) / sigma)
			}
		}
	}}
}

func testBatch(B, L, D int, targets []float32, null float32) *Batch {
	b := &Batch{C: 3, F: 4, H: 2, W: 2, L: L, TextDim: D, Text: make([]float32, B*L*D), Null: make([]float32, L*D)}
	for i := 0; i < B; i++ {
		b.Text[i*L*D] = targets[i]
		b.Seeds = append(b.Seeds, int64(100+7*i))
	}
	b.Null[0] = null
	return b
}

func TestScheduleClosedForms(t *testing.T) {
	if got := Shift(0.5, 3); math.Abs(got-0.75) > 1e-15 {
		t.Fatalf("Shift(0.5, 3) = %g, want 3·0.5/(1+2·0.5) = 0.75", got)
	}
	if got := DenoisingList(4, 1); len(got) != 4 || got[0] != 1 || got[1] != 0.75 || got[2] != 0.5 || got[3] != 0.25 {
		t.Fatalf("DenoisingList(4,1) = %v, want [1 .75 .5 .25]", got)
	}
	e := EulerSigmas(50, 5)
	if len(e) != 51 || e[0] != 1 || e[50] != 0 {
		t.Fatalf("EulerSigmas(50,5) ends %g..%g (%d values)", e[0], e[len(e)-1], len(e))
	}
	for i := 1; i < len(e); i++ {
		if e[i] >= e[i-1] {
			t.Fatalf("EulerSigmas not decreasing at %d: %v", i, e)
		}
	}
	cs, co := ConsistencyScalings(0)
	if cs != 1 || co != 0 {
		t.Fatalf("consistency boundary at σ=0: c_skip=%g c_out=%g, want 1, 0", cs, co)
	}
	cs, co = ConsistencyScalings(0.001) // t = 1 → scaled 10
	if math.Abs(cs-0.25/100.25) > 1e-15 || math.Abs(co-10/math.Sqrt(100.25)) > 1e-15 {
		t.Fatalf("ConsistencyScalings(0.001) = %g, %g", cs, co)
	}
	s := Snap([]float64{0.97, 0.52}, 10, 1)
	if s[0] != 1 || s[1] != 0.5 {
		t.Fatalf("Snap to a 10-level grid = %v, want [1 0.5]", s)
	}
}

// For a one-point data distribution the flow is a straight line: Euler lands on x0* exactly at any
// step count and shift; so do the few-step sampler's x0 predictions.
func TestEulerAndFewStepHitPointTarget(t *testing.T) {
	dev := kernels.CPU()
	targets := []float32{0.3, -1.7, 2.5}
	for _, o := range []Options{
		{Method: Euler, Steps: 1}, {Method: Euler, Steps: 7, Shift: 3}, {Method: Euler, Steps: 50, Shift: 5},
		{Method: FewStep, Steps: 1}, {Method: FewStep, Steps: 4, Shift: 5},
		{Method: FewStepODE, Steps: 1}, {Method: FewStepODE, Steps: 4, Shift: 5},
	} {
		net := pointNet(dev)
		b := testBatch(3, 2, 4, targets, 0)
		r, err := Sample(net, b, o)
		if err != nil {
			t.Fatal(err)
		}
		per := len(r.Latents) / 3
		for i, v := range r.Latents {
			if d := math.Abs(float64(v - targets[i/per])); d > 2e-5*(1+math.Abs(float64(targets[i/per]))) {
				t.Fatalf("%+v: latent %d = %g, want %g", o, i, v, targets[i/per])
			}
		}
		if r.NFE != o.Steps || net.calls != o.Steps {
			t.Fatalf("%+v: NFE %d, calls %d, want %d", o, r.NFE, net.calls, o.Steps)
		}
	}
}

// CFG: with targets a (conditional) and u (null) the guided field is (x − (u + w(a−u)))/σ, so one
// Euler step lands on u + w·(a − u); one batched forward of 2B per step.
func TestCFGClosedForm(t *testing.T) {
	dev := kernels.CPU()
	targets := []float32{0.5, -1}
	const u = 0.2
	for _, w := range []float64{1, 3, 4.5} {
		net := pointNet(dev)
		b := testBatch(2, 3, 2, targets, u)
		r, err := Sample(net, b, Options{Method: Euler, Steps: 1, CFG: w})
		if err != nil {
			t.Fatal(err)
		}
		per := len(r.Latents) / 2
		for i, v := range r.Latents {
			a := float64(targets[i/per])
			want := u + w*(a-u)
			if math.Abs(float64(v)-want) > 1e-5*(1+math.Abs(want)) {
				t.Fatalf("w=%g: latent %d = %g, want %g", w, i, v, want)
			}
		}
		wantRows, wantNFE := 2, 1
		if w != 1 {
			wantRows, wantNFE = 4, 2
		}
		if net.calls != 1 || net.rows != wantRows || r.NFE != wantNFE {
			t.Fatalf("w=%g: %d forwards of %d rows, NFE %d; want 1 of %d, NFE %d", w, net.calls, net.rows, r.NFE, wantRows, wantNFE)
		}
	}
}

// The batched 2B guide with w = 1 forced on equals the plain conditional forward.
func TestGuideW1EqualsConditional(t *testing.T) {
	dev := kernels.CPU()
	b := testBatch(2, 2, 3, []float32{0.4, -0.6}, 1.3)
	net := pointNet(dev)
	x := dev.Alloc(kernels.F32, 2, 3, 4, 2, 2)
	xs := make([]float32, x.Numel())
	drawNoise(xs, b.Seeds, 0, 0)
	dev.FromHost(x, xs)
	plain := newGuide(dev, net.Velocity, b, 1, 4)
	forced := newGuide(dev, net.Velocity, b, 2, 4)
	forced.w = 1 // the 2B path with w = 1
	vp := make([]float32, x.Numel())
	vf := make([]float32, x.Numel())
	dev.ToHost(vp, plain.velocity(x, 0.6))
	dev.ToHost(vf, forced.velocity(x, 0.6))
	for i := range vp {
		if math.Abs(float64(vp[i]-vf[i])) > 1e-6*(1+math.Abs(float64(vp[i]))) {
			t.Fatalf("v[%d]: conditional %g, batched CFG w=1 %g", i, vp[i], vf[i])
		}
	}
}

// gaussNet is the exact velocity field when the data are i.i.d. N(μ, s²) per element:
// E[x0|x_σ] = μ + (1−σ)s²/((1−σ)²s²+σ²)·(x − (1−σ)μ), v = (x − E[x0|x])/σ.
func gaussNet(dev kernels.Device, mu, s float64) *hostNet {
	return &hostNet{dev: dev, f: func(v, x, t, ctx []float32, B int) {
		per, F := len(x)/B, len(t)/B
		for b := 0; b < B; b++ {
			sg := float64(t[b*F]) / 1000
			a := 1 - sg
			k := a * s * s / (a*a*s*s + sg*sg)
			for i := b * per; i < (b+1)*per; i++ {
				e := mu + k*(float64(x[i])-a*mu)
				v[i] = float32((float64(x[i]) - e) / sg)
			}
		}
	}}
}

// Euler transports N(0,1) to the data law N(μ, s²): the sample std converges to s at first order
// (the error at 400 steps is under a third of the error at 100), with and without shift.
func TestEulerTransportsGaussian(t *testing.T) {
	dev := kernels.CPU()
	const mu, s = 0.7, 0.3
	moments := func(o Options) (float64, float64) {
		b := &Batch{C: 4, F: 8, H: 16, W: 16, L: 1, TextDim: 1, Text: make([]float32, 4), Seeds: []int64{1, 2, 3, 4}}
		r, err := Sample(gaussNet(dev, mu, s), b, o)
		if err != nil {
			t.Fatal(err)
		}
		var m, m2 float64
		for _, v := range r.Latents {
			m += float64(v)
			m2 += float64(v) * float64(v)
		}
		n := float64(len(r.Latents))
		m /= n
		return m, math.Sqrt(m2/n - m*m)
	}
	for _, shift := range []float64{1, 3} {
		_, sd100 := moments(Options{Method: Euler, Steps: 100, Shift: shift})
		m, sd400 := moments(Options{Method: Euler, Steps: 400, Shift: shift})
		// 32768 samples: the standard error of the mean is 0.3/181 ≈ 0.0017.
		if math.Abs(m-mu) > 0.006 || math.Abs(sd400-s) > 0.005 {
			t.Fatalf("shift %g, 400 steps: mean %g std %g, want %g %g", shift, m, sd400, mu, s)
		}
		if e100, e400 := math.Abs(sd100-s), math.Abs(sd400-s); e400 > e100/3 {
			t.Fatalf("shift %g: std error %g at 100 steps, %g at 400: not first order", shift, e100, e400)
		}
	}
	// With one step Euler returns E[x0|ε] = μ + 0 (the posterior mean at σ=1): the std collapses.
	b := &Batch{C: 1, F: 1, H: 8, W: 8, L: 1, TextDim: 1, Text: make([]float32, 1), Seeds: []int64{9}}
	r, _ := Sample(gaussNet(dev, mu, s), b, Options{Method: Euler, Steps: 1})
	for _, v := range r.Latents {
		if math.Abs(float64(v)-mu) > 1e-5 {
			t.Fatalf("1-step Euler from σ=1: %g, want the mean %g", v, mu)
		}
	}
}

// Consistency sampling against a float64 re-implementation of LCM's multistep loop.
func TestConsistencyMatchesReference(t *testing.T) {
	dev := kernels.CPU()
	targets := []float32{0.9, -0.4}
	b := testBatch(2, 1, 2, targets, 0)
	o := Options{Method: Consistency, Steps: 4, Shift: 3, GridN: 50}
	r, err := Sample(pointNet(dev), b, o)
	if err != nil {
		t.Fatal(err)
	}
	sig, _ := o.Schedule()
	n := len(r.Latents)
	per := n / 2
	ref := startNoise(b, n) // x at σ_0
	eps := make([]float32, n)
	for i, s := range sig {
		cs, co := ConsistencyScalings(s)
		for j := range ref {
			x0pred := float64(targets[j/per]) // the point net's x − σ·v
			ref[j] = cs*ref[j] + co*x0pred
		}
		if i < len(sig)-1 {
			drawNoise(eps, b.Seeds, 0, i+1)
			for j := range ref {
				ref[j] = (1-sig[i+1])*ref[j] + sig[i+1]*float64(eps[j])
			}
		}
	}
	for j := range ref {
		if math.Abs(float64(r.Latents[j])-ref[j]) > 1e-5*(1+math.Abs(ref[j])) {
			t.Fatalf("latent %d: %g, reference %g (σ %v)", j, r.Latents[j], ref[j], sig)
		}
	}
}

// fewstep-ode against the DDIM (η = 0) recursion written out on the host for a nonlinear field:
// x0 = x − σ·v, ε̂ = (x − (1−σ)·x0)/σ, x ← (1−σ')·x0 + σ'·ε̂; the last level returns x0.
func TestFewStepODEMatchesDDIM(t *testing.T) {
	dev := kernels.CPU()
	field := func(x, sigma, c float64) float64 { return math.Tanh(1.3*x-c)*(1+sigma) + 0.4*c }
	net := &hostNet{dev: dev, f: func(v, x, t, ctx []float32, B int) {
		per, lt, F := len(x)/B, len(ctx)/B, len(t)/B
		for b := 0; b < B; b++ {
			c, sigma := float64(ctx[b*lt]), float64(t[b*F])/1000
			for i := 0; i < per; i++ {
				v[b*per+i] = float32(field(float64(x[b*per+i]), sigma, c))
			}
		}
	}}
	targets := []float32{0.7, -1.2}
	b := testBatch(2, 1, 2, targets, 0)
	o := Options{Method: FewStepODE, Sigmas: []float64{1, 0.8, 0.45, 0.2}}
	r, err := Sample(net, b, o)
	if err != nil {
		t.Fatal(err)
	}
	n := len(r.Latents)
	per := n / 2
	ref := startNoise(b, n) // x at σ_0
	sig := o.Sigmas
	for i, s := range sig {
		for j := range ref {
			xj := float64(float32(ref[j]))
			pred := xj - s*field(xj, float64(float32(s*1000))/1000, float64(targets[j/per]))
			if i == len(sig)-1 {
				ref[j] = pred
				continue
			}
			eps := (xj - (1-s)*pred) / s
			ref[j] = (1-sig[i+1])*pred + sig[i+1]*eps
		}
	}
	for j := range ref {
		if math.Abs(float64(r.Latents[j])-ref[j]) > 1e-5*(1+math.Abs(ref[j])) {
			t.Fatalf("latent %d: %g, DDIM reference %g", j, r.Latents[j], ref[j])
		}
	}
	if r.NFE != len(sig) {
		t.Fatalf("NFE %d, want %d", r.NFE, len(sig))
	}
}

// startNoise is the sampler's first noise of batch b (n values), in float64 for a host reference.
func startNoise(b *Batch, n int) []float64 {
	x := make([]float32, n)
	drawNoise(x, b.Seeds, 0, 0)
	ref := make([]float64, n)
	for i := range x {
		ref[i] = float64(x[i])
	}
	return ref
}

// A video's result depends on its seed only, not on its batch neighbours; seeds differ → videos differ.
func TestSeedsIndependentOfBatch(t *testing.T) {
	dev := kernels.CPU()
	o := Options{Method: Euler, Steps: 5, CFG: 2}
	b2 := &Batch{C: 2, F: 2, H: 4, W: 4, L: 1, TextDim: 1, Text: []float32{0.1, 0.2}, Null: []float32{0}, Seeds: []int64{5, 6}}
	b1 := &Batch{C: 2, F: 2, H: 4, W: 4, L: 1, TextDim: 1, Text: []float32{0.2}, Null: []float32{0}, Seeds: []int64{6}}
	r2, err := Sample(gaussNet(dev, 0, 1), b2, o)
	if err != nil {
		t.Fatal(err)
	}
	r1, _ := Sample(gaussNet(dev, 0, 1), b1, o)
	per := len(r1.Latents)
	for i := range r1.Latents {
		if r1.Latents[i] != r2.Latents[per+i] {
			t.Fatalf("seed 6 alone vs in a batch: element %d %g != %g", i, r1.Latents[i], r2.Latents[per+i])
		}
	}
	same := 0
	for i := 0; i < per; i++ {
		if r2.Latents[i] == r2.Latents[per+i] {
			same++
		}
	}
	if same > per/10 {
		t.Fatalf("seeds 5 and 6 give %d/%d equal elements", same, per)
	}
}

func TestBadInputs(t *testing.T) {
	dev := kernels.CPU()
	b := testBatch(2, 1, 2, []float32{0, 0}, 0)
	for _, o := range []Options{
		{Method: "heun", Steps: 2}, {Method: Euler, Steps: 0},
		{Method: Euler, Sigmas: []float64{1, 0.5}}, {Method: FewStep, Sigmas: []float64{0.5, 0.7}},
		{Method: Stream, Steps: 2, ChunkFrames: 3},
	} {
		if _, err := Sample(pointNet(dev), b, o); err == nil {
			t.Fatalf("%+v: no error", o)
		}
	}
	b.Null = nil
	if _, err := Sample(pointNet(dev), b, Options{Method: Euler, Steps: 2, CFG: 3}); err == nil {
		t.Fatal("CFG without a null embedding: no error")
	}
}

// Recording a trajectory: for the one-point flow Euler stays on the straight line, so x at level σ
// is exactly (1−σ)·x0* + σ·ε; levels of a denoising list are merged into the grid.
func TestEulerRecordsTrajectory(t *testing.T) {
	dev := kernels.CPU()
	targets := []float32{0.8, -0.3}
	b := testBatch(2, 1, 2, targets, 0)
	levels := DenoisingList(4, 3)
	grid := MergeGrid(EulerSigmas(6, 3), levels)
	rec := append(append([]float64(nil), levels...), 0)
	for i := range rec {
		rec[i] = OnGrid(grid, rec[i])
	}
	r, err := Sample(pointNet(dev), b, Options{Method: Euler, Sigmas: grid, Record: rec})
	if err != nil {
		t.Fatal(err)
	}
	eps := make([]float32, len(r.Latents))
	drawNoise(eps, b.Seeds, 0, 0)
	per := len(eps) / 2
	for k, s := range rec {
		for i, v := range r.Traj[k] {
			want := (1-s)*float64(targets[i/per]) + s*float64(eps[i])
			if math.Abs(float64(v)-want) > 1e-5*(1+math.Abs(want)) {
				t.Fatalf("σ=%g: x[%d] = %g, want %g", s, i, v, want)
			}
		}
	}
	// EulerSigmas(6, 3) holds 1 and 0.75 already; 0.9 and 0.5 are inserted.
	if r.NFE != len(grid)-1 || len(grid) != 7+2 {
		t.Fatalf("grid %v, NFE %d", grid, r.NFE)
	}
	if _, err := Sample(pointNet(dev), b, Options{Method: Euler, Steps: 3, Record: []float64{0.55}}); err == nil {
		t.Fatal("recording off the grid: no error")
	}
}
