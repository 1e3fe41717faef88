package models

import (
	"math"
	"math/rand"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// sameBits fails unless a and b are equal bit for bit (recomputation replays the same ops on the
// same inputs on a deterministic device).
func sameBits(t *testing.T, what string, a, b []float32) {
	t.Helper()
	if len(a) != len(b) {
		t.Fatalf("%s: %d vs %d values", what, len(a), len(b))
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			t.Fatalf("%s: value %d: plain %v, recompute %v", what, i, a[i], b[i])
		}
	}
}

// TestRecomputeEqualsPlain: a recompute pass gives the same output, input gradient, feature
// gradient path and parameter gradients as a plain pass (bidirectional, block-causal, and chunk by
// chunk through the KV cache), and holds less memory.
func TestRecomputeEqualsPlain(t *testing.T) {
	cfg, _ := Preset("tiny")
	cfg.InDim, cfg.OutDim, cfg.Layers = 4, 4, 4
	dev := kernels.CPU()
	B, F, H, W, L := 2, 4, 4, 2, 3
	C := cfg.InDim
	m := New(dev, cfg, true)
	randomize(m, 7)
	rng := rand.New(rand.NewSource(8))
	x := devT(dev, randn(rng, B*C*F*H*W, 1), B, C, F, H, W)
	tv := randTimesteps(rng, B*F)
	tt := devT(dev, tv, B, F)
	ctx := devT(dev, randn(rng, B*L*cfg.TextDim, 1), B, L, cfg.TextDim)
	cot := devT(dev, randn(rng, B*C*F*H*W, 1), B, C, F, H, W)
	feat := devT(dev, randn(rng, B*F*(H/2)*(W/2)*cfg.Dim, 0.1), B, F*(H/2)*(W/2), cfg.Dim)

	for _, chunk := range []int{0, 2} {
		s := Shape{B: B, F: F, H: H, W: W, L: L, ChunkFrames: chunk}
		run := func(s Shape) (out, dx, g []float32, bytes int) {
			p := m.NewPass(s)
			defer p.Free()
			m.ZeroGrad()
			out = host(dev, m.Forward(p, x, tt, ctx))
			dx = host(dev, m.BackwardHidden(p, cot, 1, feat))
			return out, dx, host(dev, m.G), p.Bytes()
		}
		o0, dx0, g0, b0 := run(s)
		s.Recompute = true
		o1, dx1, g1, b1 := run(s)
		sameBits(t, "output", o0, o1)
		sameBits(t, "dx", dx0, dx1)
		sameBits(t, "parameter gradients", g0, g1)
		t.Logf("chunk_frames %d: plain pass %d bytes, recompute pass %d bytes (%d layers)", chunk, b0, b1, cfg.Layers)
		if !(b1 < b0*2/3) {
			t.Errorf("chunk_frames %d: recompute pass holds %d bytes, plain %d: no saving", chunk, b1, b0)
		}
	}

	// Streaming: chunk 2 of a video through the cache (chunk 1 committed first), graded backward.
	k := 2
	stream := func(recompute bool) (dx, g []float32) {
		c := m.NewCache(B, H, W, 0, 0)
		p := m.NewPass(Shape{B: B, F: k, H: H, W: W, L: L, ChunkFrames: k, Recompute: recompute})
		defer p.Free()
		xc := devT(dev, frames(host(dev, x), B, C, F, H*W, 0, k), B, C, k, H, W)
		tc := devT(dev, frames(tv, B, 1, F, 1, 0, k), B, k)
		m.ForwardChunk(p, c, xc, tc, ctx)
		m.Commit(c, p)
		xc2 := devT(dev, frames(host(dev, x), B, C, F, H*W, k, k), B, C, k, H, W)
		tc2 := devT(dev, frames(tv, B, 1, F, 1, k, k), B, k)
		m.ForwardChunk(p, c, xc2, tc2, ctx)
		m.ZeroGrad()
		dx = host(dev, m.Backward(p, devT(dev, frames(host(dev, cot), B, C, F, H*W, 0, k), B, C, k, H, W)))
		return dx, host(dev, m.G)
	}
	dx0, g0 := stream(false)
	dx1, g1 := stream(true)
	sameBits(t, "streamed chunk dx", dx0, dx1)
	sameBits(t, "streamed chunk parameter gradients", g0, g1)

	// A bidirectional recompute pass shares K/V between blocks: ForwardChunk on it must refuse.
	p := m.NewPass(Shape{B: B, F: k, H: H, W: W, L: L, Recompute: true})
	defer func() {
		if recover() == nil {
			t.Errorf("ForwardChunk on a bidirectional recompute pass did not panic")
		}
	}()
	m.ForwardChunk(p, m.NewCache(B, H, W, 0, 0), devT(dev, make([]float32, B*C*k*H*W), B, C, k, H, W), devT(dev, make([]float32, B*k), B, k), ctx)
}
