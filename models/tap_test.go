package models

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/fewstep/fewstep/kernels"
)

// ForwardTo's features equal Forward's Hidden(layer), and BackwardHidden from them (skipping the
// blocks above) gives the input and parameter gradients of the full backward with a zero output
// gradient — plain and recompute passes, bidirectional and block-causal.
func TestForwardToMatchesForward(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 1))
	dev := kernels.CPU()
	cfg, _ := Preset("tiny")
	cfg.Layers = 3
	m := New(dev, cfg, true)
	m.InitRandom(seed, 0.2)
	randT := func(shape ...int) *kernels.Tensor {
		x := dev.Alloc(kernels.F32, shape...)
		h := make([]float32, x.Numel())
		for i := range h {
			h[i] = float32(rng.NormFloat64())
		}
		dev.FromHost(x, h)
		return x
	}
	host := func(x *kernels.Tensor) []float32 {
		h := make([]float32, x.Numel())
		dev.ToHost(h, x)
		return h
	}
	for _, s := range []Shape{{B: 2, F: 2, H: 4, W: 4, L: 3}, {B: 2, F: 4, H: 4, W: 4, L: 3, ChunkFrames: 2, Recompute: true}} {
		N := s.F * s.H * s.W / 4
		x, tt, ctx := randT(s.B, cfg.InDim, s.F, s.H, s.W), randT(s.B, s.F), randT(s.B, s.L, cfg.TextDim)
		dev.Scale(tt, 300)
		dH := randT(s.B, N, cfg.Dim)
		for layer := 0; layer < cfg.Layers; layer++ {
			p := m.NewPass(s)
			m.Forward(p, x, tt, ctx)
			want := host(p.Hidden(layer))
			m.ZeroGrad()
			zero := dev.Alloc(kernels.F32, s.B, cfg.OutDim, s.F, s.H, s.W)
			dxWant := host(m.BackwardHidden(p, zero, layer, dH)) // every block, zero head gradient
			gWant := host(m.G)

			q := m.NewPass(s)
			got := host(m.ForwardTo(q, x, tt, ctx, layer))
			m.ZeroGrad()
			dxGot := host(m.BackwardHidden(q, nil, layer, dH))
			gGot := host(m.G)
			for i := range want {
				if got[i] != want[i] {
					t.Fatalf("%+v layer %d: feature %d: ForwardTo %g, Forward %g", s, layer, i, got[i], want[i])
				}
			}
			for name, pair := range map[string][2][]float32{"dx": {dxGot, dxWant}, "G": {gGot, gWant}} {
				var num, den float64
				for i := range pair[0] {
					d := float64(pair[0][i] - pair[1][i])
					num += d * d
					den += float64(pair[1][i]) * float64(pair[1][i])
				}
				if den == 0 || math.Sqrt(num/den) > 1e-6 {
					t.Fatalf("%+v layer %d: %s relative difference %g (|ref|² %g)", s, layer, name, math.Sqrt(num/den), den)
				}
			}
		}
	}
}
