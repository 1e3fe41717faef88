package objectives

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// The DMD generator gradient against its formula, computed on the host from the step's own
// tensors: dL/dx = (x0_fake − x0_real) / mean|x − x0_real| per sample, divided by numel (DMD2's
// normalised gradient of 0.5·mean((x − sg(x − grad))²)). x is the generator's sample, drawn
// again here with the step's RNG; x0_real and x0_fake are the teacher's and critic's predictions
// the step made. Catches a flipped sign, the normaliser taken from the wrong x0, and a lost scale.
func TestDMDGradientHostFormula(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	o, err := New("dmd", map[string]any{"regression_weight": 0, "cfg": 2, "generator_update_ratio": 1})
	if err != nil {
		t.Fatal(err)
	}
	env := testEnv(t, o, testShape, seed)
	b := testBatch(env, testShape, rand.New(rand.NewPCG(uint64(seed), 2)))
	d := o.(*dmd)
	step := func() *Step { return &Step{Step: 0, Accum: 1, RNG: StepRNG(11, 0, 0)} }
	x, err := d.generate(step(), b)
	if err != nil {
		t.Fatal(err)
	}
	host := func(n int) []float32 { return make([]float32, n) }
	xh := host(x.Numel())
	env.Dev.ToHost(xh, x)
	if _, err := o.Step(step(), b); err != nil {
		t.Fatal(err)
	}
	x0r, x0f, g := host(len(xh)), host(len(xh)), host(len(xh))
	env.Dev.ToHost(x0r, d.x0Real)
	env.Dev.ToHost(x0f, d.x0Fake)
	env.Dev.ToHost(g, d.grad)
	want := dmdGradRef(xh, x0r, x0f, testShape.B)
	var scale float64
	for _, w := range want {
		scale = math.Max(scale, math.Abs(w))
	}
	if !(scale > 0) {
		t.Fatalf("reference gradient is %v everywhere", scale)
	}
	for j := range want {
		if d := math.Abs(float64(g[j]) - want[j]); d > 1e-4*scale {
			t.Fatalf("dL/dx[%d] = %.6g, host formula %.6g (largest %.3g)", j, g[j], want[j], scale)
		}
	}
}

// dmdGradRef is DMD's gradient by the host formula, in float64: for each of the B samples of x
// (flattened, per = len(x)/B values each), (x0Fake − x0Real) · per / Σ|x − x0Real| / len(x).
func dmdGradRef(x, x0Real, x0Fake []float32, B int) []float64 {
	per, n := len(x)/B, float64(len(x))
	want := make([]float64, len(x))
	for i := 0; i < B; i++ {
		var sum float64
		for j := i * per; j < (i+1)*per; j++ {
			sum += math.Abs(float64(x[j]) - float64(x0Real[j]))
		}
		for j := i * per; j < (i+1)*per; j++ {
			want[j] = (float64(x0Fake[j]) - float64(x0Real[j])) * float64(per) / sum / n
		}
	}
	return want
}

// checkDMDGradSampleZeroed checks a DMD gradient g of B samples, sample bad of which was NaN: that
// sample's gradient is 0, every other one is dmdGradRef's within 1e-4 of the largest reference
// value of its sample seen so far, and no other sample's reference is 0 everywhere.
func checkDMDGradSampleZeroed(t *testing.T, g, x, x0Real, x0Fake []float32, B, bad int) {
	t.Helper()
	ref, per := dmdGradRef(x, x0Real, x0Fake, B), len(x)/B
	for i := 0; i < B; i++ {
		var scale float64
		for j := i * per; j < (i+1)*per; j++ {
			want := ref[j]
			if i == bad {
				want = 0
			} else {
				scale = math.Max(scale, math.Abs(want))
			}
			if d := math.Abs(float64(g[j]) - want); !(d <= 1e-4*scale) {
				t.Fatalf("sample %d (NaN: %v): dL/dx[%d] = %.6g, want %.6g", i, i == bad, j, g[j], want)
			}
		}
		if i != bad && !(scale > 0) {
			t.Fatalf("sample %d: reference gradient is 0 everywhere", i)
		}
	}
}
