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
	B := testShape.B
	per, n := len(xh)/B, float64(len(xh))
	var scale float64
	want := make([]float64, len(xh))
	for i := 0; i < B; i++ {
		var sum float64
		for j := i * per; j < (i+1)*per; j++ {
			sum += math.Abs(float64(xh[j]) - float64(x0r[j]))
		}
		for j := i * per; j < (i+1)*per; j++ {
			want[j] = (float64(x0f[j]) - float64(x0r[j])) * float64(per) / sum / n
			scale = math.Max(scale, math.Abs(want[j]))
		}
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
