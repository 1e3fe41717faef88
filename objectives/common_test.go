package objectives

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	_ "go4.org/unsafe/assume-no-moving-gc"
)

func TestShiftSigmaClosedForm(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	for i := 0; i < 100; i++ {
		s, k := r.Float64(), 0.5+5*r.Float64()
		// Independent form: the shift maps the SNR-like ratio σ/(1−σ) by a factor k.
		want := 1 / (1 + (1-s)/(k*s))
		if got := ShiftSigma(s, k); math.Abs(got-want) > 1e-12 {
			t.Fatalf("ShiftSigma(%v, %v) = %v, want %v", s, k, got, want)
		}
	}
	if ShiftSigma(0, 3) != 0 || ShiftSigma(1, 3) != 1 {
		t.Fatal("ShiftSigma must fix 0 and 1")
	}
}

func TestDecodeParamsStrict(t *testing.T) {
	var p struct {
		A float64 `mapstructure:"a"`
		N int     `mapstructure:"n"`
	}
	if err := DecodeParams(map[string]any{"a": 1, "n": 2}, &p); err != nil || p.A != 1 || p.N != 2 {
		t.Fatalf("decode: %v %+v", err, p)
	}
	err := DecodeParams(map[string]any{"a": 1, "bogus": 2, "zz": 3}, &p)
	if err == nil || !strings.Contains(err.Error(), "params.bogus") || !strings.Contains(err.Error(), "params.zz") {
		t.Fatalf("unknown keys: %v", err)
	}
	if err := DecodeParams(map[string]any{"n": "x"}, &p); err == nil {
		t.Fatal("a string for an int decoded")
	}
	for _, name := range []string{"flowmatch", "dmd"} {
		if _, err := New(name, map[string]any{"nope": 1}); err == nil || !strings.Contains(err.Error(), "params.nope") {
			t.Fatalf("%s with an unknown key: %v", name, err)
		}
	}
	if _, err := New("dmd", map[string]any{"denoising_timesteps": []any{500, 750}}); err == nil {
		t.Fatal("dmd accepted an ascending denoising list")
	}
	if _, err := New("nosuch", nil); err == nil || !strings.Contains(err.Error(), "dmd") {
		t.Fatalf("unknown objective: %v", err)
	}
}

func TestSigmaLaws(t *testing.T) {
	r := rand.New(rand.NewPCG(2, 2))
	u := SigmaLaw{Law: "uniform", Min: 0.02, Max: 0.98, Shift: 1}
	ln := SigmaLaw{Law: "logit_normal", Mean: 0, Std: 1, Shift: 1}
	var su, sl float64
	const n = 20000
	for i := 0; i < n; i++ {
		a, b := u.Draw(r), ln.Draw(r)
		if a < 0.02 || a > 0.98 || b <= 0 || b >= 1 {
			t.Fatalf("out of range: %v %v", a, b)
		}
		su += a
		sl += b
	}
	if math.Abs(su/n-0.5) > 0.01 || math.Abs(sl/n-0.5) > 0.01 {
		t.Fatalf("means %v %v, want 0.5", su/n, sl/n)
	}
	bad := SigmaLaw{Law: "uniform", Min: 0.5, Max: 0.2, Shift: 1}
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "sigma_min") {
		t.Fatalf("bad range: %v", err)
	}
}

// The rollout's gradient: d<c, x0>/dW from Rollout.Backward against central differences along a
// random direction d in parameter space. Earlier steps run without gradients, so the difference
// perturbs W only in the graded (exit) step and replays the prefix with the original weights and
// the same random draws.
func TestRolloutGradientFiniteDifferences(t *testing.T) {
	dev := kernels.CPU()
	cfg, _ := models.Preset("tiny")
	cfg.TextLen = 2
	net := models.New(dev, cfg, true)
	net.InitRandom(7, 0.05)
	s := models.Shape{B: 2, F: 2, H: 4, W: 4, L: 2}
	env := &Env{Dev: dev, Cfg: cfg, Shape: s}
	sig := []float32{1, 0.6, 0.3}
	ro := NewRollout(env, net, s, sig)
	rh := rand.New(rand.NewPCG(9, 9))
	randn := func(shape ...int) *kernels.Tensor {
		x := dev.Alloc(kernels.F32, shape...)
		for i := range x.F32 {
			x.F32[i] = float32(rh.NormFloat64())
		}
		return x
	}
	ctx := randn(s.B, s.L, cfg.TextDim)
	c := randn(s.B, cfg.InDim, s.F, s.H, s.W)
	d := randn(net.W.Numel()).F32 // the direction
	w0 := append([]float32(nil), net.W.F32...)
	for _, exit := range []int{0, 2} {
		// L(h) = <c, x0> with the exit step's weights W0 + h·d and the prefix's weights W0.
		loss := func(h float32) float64 {
			r := rand.New(rand.NewPCG(5, 5))
			copy(net.W.F32, w0)
			if exit > 0 {
				ro.Run(&Step{RNG: r}, ctx, exit-1) // the prefix up to the step before the exit, then its re-noise
				for b := range ro.sigma {
					ro.sigma[b] = sig[exit]
				}
				Randn(dev, ro.eps, ro.sc.host, r)
				Noise(dev, ro.x, ro.x0, ro.eps, ro.sigma)
			} else {
				Randn(dev, ro.x, ro.sc.host, r)
				for b := range ro.sigma {
					ro.sigma[b] = sig[0]
				}
			}
			for i := range net.W.F32 {
				net.W.F32[i] = w0[i] + h*d[i]
			}
			SetTimesteps(dev, ro.sc.t, ro.sc.th, ro.sigma)
			v := net.Forward(ro.Pass, ro.x, ro.sc.t, ctx)
			X0FromV(dev, ro.x0, ro.x, v, ro.sigma)
			return dev.Dot(ro.x0, c)
		}
		const h = 1e-3
		fd := (loss(h) - loss(-h)) / (2 * h)
		copy(net.W.F32, w0)
		net.ZeroGrad()
		ro.Run(&Step{RNG: rand.New(rand.NewPCG(5, 5))}, ctx, exit)
		ro.Backward(c)
		var an float64
		for i, g := range net.G.F32 {
			an += float64(g) * float64(d[i])
		}
		if rel := math.Abs(an-fd) / math.Abs(fd); !(rel < 1e-2) {
			t.Fatalf("exit %d: analytic %v vs finite differences %v (rel %.2e)", exit, an, fd, rel)
		}
		t.Logf("exit %d: analytic %.6g, finite differences %.6g", exit, an, fd)
	}
}
