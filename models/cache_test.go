package models

import (
	"math"
	"math/rand"
	"slices"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// randomize gives every parameter a random, non-degenerate value (as scripts/dump_goldens.py does):
// weights N(0, 1/fan_in), biases N(0, 0.1²), norm weights 1 + N(0, 0.1²), modulations N(0, 1/D).
func randomize(m *DiT, seed int64) {
	rng := rand.New(rand.NewSource(seed))
	h := make([]float32, m.W.Numel())
	for _, p := range m.Table {
		v := h[p.Offset : p.Offset+numel(p.Shape)]
		for i := range v {
			g := rng.NormFloat64()
			switch {
			case strings.HasSuffix(p.Name, "modulation"):
				v[i] = float32(g / math.Sqrt(float64(m.Cfg.Dim)))
			case strings.HasSuffix(p.Name, "norm_q.weight"), strings.HasSuffix(p.Name, "norm_k.weight"), strings.HasSuffix(p.Name, "norm3.weight"):
				v[i] = float32(1 + 0.1*g)
			case strings.HasSuffix(p.Name, "bias"):
				v[i] = float32(0.1 * g)
			default:
				v[i] = float32(g / math.Sqrt(float64(numel(p.Shape)/p.Shape[0])))
			}
		}
	}
	m.Dev.FromHost(m.W, h)
}

func randn(rng *rand.Rand, n int, scale float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(scale * rng.NormFloat64())
	}
	return v
}

// frames copies frames [f0, f0+k) of a video [B, C, F, HW] (or of t [B, F] with C = HW = 1).
func frames(v []float32, B, C, F, HW, f0, k int) []float32 {
	out := make([]float32, 0, B*C*k*HW)
	for b := 0; b < B; b++ {
		for c := 0; c < C; c++ {
			base := ((b*C+c)*F + f0) * HW
			out = append(out, v[base:base+k*HW]...)
		}
	}
	return out
}

// randTimesteps draws n timesteps uniformly in [0, 1000).
func randTimesteps(rng *rand.Rand, n int) []float32 {
	tv := make([]float32, n)
	for i := range tv {
		tv[i] = float32(rng.Float64() * 1000)
	}
	return tv
}

func devT(dev kernels.Device, data []float32, shape ...int) *kernels.Tensor {
	t := dev.Alloc(kernels.F32, shape...)
	dev.FromHost(t, data)
	return t
}

// maskedAttention is a naive float64 attention over q, k, v [B, N, H, hd] where query token i may see
// key token j iff visible(i/hw frame, j/hw frame): the independent reference for windowed streaming.
func maskedAttention(out, lse, q, k, v *kernels.Tensor, hw int, visible func(fq, fk int) bool) {
	B, N, H, hd := q.Shape[0], q.Shape[1], q.Shape[2], q.Shape[3]
	Q, K, V, O := q.F32, k.F32, v.F32, out.F32
	s := make([]float64, N)
	for b := 0; b < B; b++ {
		for h := 0; h < H; h++ {
			for i := 0; i < N; i++ {
				qi := Q[((b*N+i)*H+h)*hd:][:hd]
				mx := math.Inf(-1)
				for j := 0; j < N; j++ {
					s[j] = math.Inf(-1)
					if !visible(i/hw, j/hw) {
						continue
					}
					kj := K[((b*N+j)*H+h)*hd:][:hd]
					dot := 0.0
					for c := range qi {
						dot += float64(qi[c]) * float64(kj[c])
					}
					s[j] = dot / math.Sqrt(float64(hd))
					mx = math.Max(mx, s[j])
				}
				sum := 0.0
				for j := range s {
					s[j] = math.Exp(s[j] - mx)
					sum += s[j]
				}
				oi := O[((b*N+i)*H+h)*hd:][:hd]
				for c := range oi {
					acc := 0.0
					for j := 0; j < N; j++ {
						if s[j] != 0 {
							acc += s[j] * float64(V[((b*N+j)*H+h)*hd+c])
						}
					}
					oi[c] = float32(acc / sum)
				}
				lse.F32[(b*H+h)*N+i] = float32(mx + math.Log(sum))
			}
		}
	}
}

type streamCase struct {
	B, F, H, W, L, k    int
	local, sink         int
	passChunk           int // the chunk pass's ChunkFrames
	wantDiffersFromFull bool
	inference           bool // stream through NewInferencePass
}

// stream runs a video chunk by chunk through the cache and returns the outputs per chunk and the
// full-video reference forward's output (block-causal, with the window mask when local > 0).
func TestStreamingEqualsBlockCausal(t *testing.T) {
	cfg, _ := Preset("tiny")
	cfg.InDim, cfg.OutDim = 4, 4
	dev := kernels.CPU()
	cases := map[string]streamCase{
		"unbounded k=2":              {B: 2, F: 6, H: 4, W: 6, L: 5, k: 2, passChunk: 2},
		"unbounded k=3 inner causal": {B: 1, F: 6, H: 2, W: 4, L: 3, k: 3, passChunk: 1},
		"window 5 sink 1 k=2":        {B: 2, F: 10, H: 4, W: 4, L: 5, k: 2, local: 5, sink: 1, passChunk: 2, wantDiffersFromFull: true},
		"window 4 sink 0 k=1":        {B: 1, F: 9, H: 2, W: 6, L: 4, k: 1, local: 4, sink: 0, passChunk: 0, wantDiffersFromFull: true, inference: true},
		"window 6 sink 2 k=2":        {B: 1, F: 12, H: 2, W: 2, L: 2, k: 2, local: 6, sink: 2, passChunk: 2, wantDiffersFromFull: true},
		"unbounded k=3 cache growth": {B: 2, F: 12, H: 2, W: 2, L: 2, k: 3, passChunk: 0, inference: true},
	}
	for name, sc := range cases {
		t.Run(name, func(t *testing.T) {
			m := New(dev, cfg, true)
			randomize(m, 7)
			rng := rand.New(rand.NewSource(11))
			C, HW := cfg.InDim, sc.H*sc.W
			xv := randn(rng, sc.B*C*sc.F*HW, 1)
			tv := randTimesteps(rng, sc.B*sc.F)
			cv := randn(rng, sc.B*sc.L*cfg.TextDim, 1)
			x, tt, ctx := devT(dev, xv, sc.B, C, sc.F, sc.H, sc.W), devT(dev, tv, sc.B, sc.F), devT(dev, cv, sc.B, sc.L, cfg.TextDim)

			// reference: one forward over the whole video, block-causal at the granularity the chunk
			// pass uses inside a chunk (the chunk itself when its pass has no finer mask)
			mask := sc.k
			if sc.passChunk > 0 && sc.passChunk < sc.k {
				mask = sc.passChunk
			}
			full := m.NewPass(Shape{B: sc.B, F: sc.F, H: sc.H, W: sc.W, L: sc.L, ChunkFrames: mask})
			hwTok := (sc.H / 2) * (sc.W / 2)
			if sc.local > 0 {
				R := sc.local - sc.sink
				full.selfAttn = func(_ int, out, lse, q, k, v *kernels.Tensor) {
					maskedAttention(out, lse, q, k, v, hwTok, func(fq, fk int) bool {
						s := fq / sc.k * sc.k // first frame of the query's chunk
						return (fk >= s && fk < s+sc.k) || fk < min(sc.sink, s) || (fk >= max(sc.sink, s-R) && fk < s)
					})
				}
			}
			ref := host(dev, m.Forward(full, x, tt, ctx))
			plain := m.NewPass(Shape{B: sc.B, F: sc.F, H: sc.H, W: sc.W, L: sc.L, ChunkFrames: mask})
			blockCausal := host(dev, m.Forward(plain, x, tt, ctx))

			c := m.NewCache(sc.B, sc.H, sc.W, sc.local, sc.sink)
			newPass := m.NewPass
			if sc.inference {
				newPass = m.NewInferencePass
			}
			p := newPass(Shape{B: sc.B, F: sc.k, H: sc.H, W: sc.W, L: sc.L, ChunkFrames: sc.passChunk})
			worst, differs := 0.0, 0.0
			for f0 := 0; f0 < sc.F; f0 += sc.k {
				if c.Frames() != f0 {
					t.Fatalf("cache at frame %d, want %d", c.Frames(), f0)
				}
				xc := devT(dev, frames(xv, sc.B, C, sc.F, HW, f0, sc.k), sc.B, C, sc.k, sc.H, sc.W)
				tc := devT(dev, frames(tv, sc.B, 1, sc.F, 1, f0, sc.k), sc.B, sc.k)
				got := host(dev, m.ForwardChunk(p, c, xc, tc, ctx))
				m.Commit(c, p)
				want := frames(ref, sc.B, cfg.OutDim, sc.F, HW, f0, sc.k)
				e := relErr(got, want)
				worst = math.Max(worst, e)
				differs = math.Max(differs, relErr(got, frames(blockCausal, sc.B, cfg.OutDim, sc.F, HW, f0, sc.k)))
				if e > 2e-6 {
					t.Errorf("chunk at frame %d: relative error %.3g vs the full forward", f0, e)
				}
			}
			if sc.local > 0 && c.CachedFrames() != sc.local {
				t.Errorf("cache holds %d frames, want the window %d", c.CachedFrames(), sc.local)
			}
			if sc.wantDiffersFromFull && differs < 1e-3 {
				t.Errorf("windowed streaming equals unwindowed block-causal (rel diff %.2g): the window has no effect", differs)
			}
			t.Logf("worst chunk rel err %.2e vs the reference; vs unwindowed block-causal %.2e", worst, differs)
		})
	}
}

// TestChunkBackward: Backward after ForwardChunk gives the input gradient of the chunk with the
// cache held fixed, which the full block-causal forward's gradient restricted to that chunk equals
// (later frames never influence earlier ones). On the first chunk (empty cache) the parameter
// gradients must agree too.
func TestChunkBackward(t *testing.T) {
	cfg, _ := Preset("tiny")
	cfg.InDim, cfg.OutDim = 4, 4
	dev := kernels.CPU()
	B, F, H, W, L, k := 2, 6, 4, 2, 3, 2
	C, HW := cfg.InDim, H*W
	m := New(dev, cfg, true)
	randomize(m, 3)
	rng := rand.New(rand.NewSource(5))
	xv := randn(rng, B*C*F*HW, 1)
	tv := randTimesteps(rng, B*F)
	ctx := devT(dev, randn(rng, B*L*cfg.TextDim, 1), B, L, cfg.TextDim)
	x, tt := devT(dev, xv, B, C, F, H, W), devT(dev, tv, B, F)
	full := m.NewPass(Shape{B: B, F: F, H: H, W: W, L: L, ChunkFrames: k})
	c := m.NewCache(B, H, W, 0, 0)
	p := m.NewPass(Shape{B: B, F: k, H: H, W: W, L: L, ChunkFrames: k})
	for f0 := 0; f0 < F; f0 += k {
		cot := randn(rng, B*C*k*HW, 1)
		// full: cotangent only on this chunk's frames
		cotFull := make([]float32, B*C*F*HW)
		for b := 0; b < B; b++ {
			for ch := 0; ch < C; ch++ {
				copy(cotFull[((b*C+ch)*F+f0)*HW:], cot[(b*C+ch)*k*HW:((b*C+ch)*k+k)*HW])
			}
		}
		m.ZeroGrad()
		m.Forward(full, x, tt, ctx)
		dxFull := frames(host(dev, m.Backward(full, devT(dev, cotFull, B, C, F, H, W))), B, C, F, HW, f0, k)
		gFull := host(dev, m.G)

		m.ZeroGrad()
		xc := devT(dev, frames(xv, B, C, F, HW, f0, k), B, C, k, H, W)
		tc := devT(dev, frames(tv, B, 1, F, 1, f0, k), B, k)
		m.ForwardChunk(p, c, xc, tc, ctx)
		dx := host(dev, m.Backward(p, devT(dev, cot, B, C, k, H, W)))
		m.Commit(c, p)
		if e := relErr(dx, dxFull); e > 2e-6 {
			t.Errorf("chunk at frame %d: dx relative error %.3g", f0, e)
		} else {
			t.Logf("chunk at frame %d: dx rel err %.2e", f0, e)
		}
		if f0 == 0 {
			if e := relErr(host(dev, m.G), gFull); e > 2e-6 {
				t.Errorf("first chunk: parameter gradient relative error %.3g", e)
			}
		}
	}
}

// TestMaskedReference checks the naive masked attention used as the windowed reference above
// against the device's block-causal attention (same mask, whole model).
func TestMaskedReference(t *testing.T) {
	cfg, _ := Preset("tiny")
	dev := kernels.CPU()
	m := New(dev, cfg, false)
	randomize(m, 9)
	rng := rand.New(rand.NewSource(2))
	B, F, H, W, L, k := 1, 5, 4, 2, 3, 2
	x := devT(dev, randn(rng, B*cfg.InDim*F*H*W, 1), B, cfg.InDim, F, H, W)
	tt := devT(dev, []float32{900, 700, 500, 300, 100}, B, F)
	ctx := devT(dev, randn(rng, B*L*cfg.TextDim, 1), B, L, cfg.TextDim)
	p := m.NewPass(Shape{B: B, F: F, H: H, W: W, L: L, ChunkFrames: k})
	want := host(dev, m.Forward(p, x, tt, ctx))
	p.selfAttn = func(_ int, out, lse, q, kk, v *kernels.Tensor) {
		maskedAttention(out, lse, q, kk, v, (H/2)*(W/2), func(fq, fk int) bool { return fk/k <= fq/k })
	}
	if e := relErr(host(dev, m.Forward(p, x, tt, ctx)), want); e > 1e-6 {
		t.Fatalf("naive masked attention vs device block-causal attention: rel err %.3g", e)
	}
}

// TestInOutChannels: in_dim ≠ out_dim (as Wan's i2v-style configs have) runs, and the input and
// parameter gradients agree with central finite differences of <out, cot> along random directions.
func TestInOutChannels(t *testing.T) {
	cfg := Config{Dim: 32, FFNDim: 64, FreqDim: 256, Heads: 2, Layers: 2, InDim: 6, OutDim: 3, TextDim: 8, TextLen: 4, Eps: 1e-6}
	dev := kernels.CPU()
	m := New(dev, cfg, true)
	randomize(m, 4)
	rng := rand.New(rand.NewSource(8))
	s := Shape{B: 2, F: 3, H: 2, W: 4, L: 3, ChunkFrames: 1}
	xv := randn(rng, s.B*cfg.InDim*s.F*s.H*s.W, 1)
	x := devT(dev, xv, s.B, cfg.InDim, s.F, s.H, s.W)
	tt := devT(dev, []float32{10, 500, 990, 250, 750, 0}, s.B, s.F)
	ctx := devT(dev, randn(rng, s.B*s.L*cfg.TextDim, 1), s.B, s.L, cfg.TextDim)
	p := m.NewPass(s)
	out := m.Forward(p, x, tt, ctx)
	if want := []int{2, 3, 3, 2, 4}; !slices.Equal(out.Shape, want) {
		t.Fatalf("out shape %v, want %v", out.Shape, want)
	}
	cotv := randn(rng, out.Numel(), 1)
	m.ZeroGrad()
	dx := host(dev, m.Backward(p, devT(dev, cotv, out.Shape...)))
	g := host(dev, m.G)
	loss := func() float64 {
		o := host(dev, m.Forward(p, x, tt, ctx))
		s := 0.0
		for i := range o {
			s += float64(o[i]) * float64(cotv[i])
		}
		return s
	}
	const h = 1e-2
	// input direction
	u := randn(rng, len(xv), 1)
	shifted := func(sign float32) {
		v := make([]float32, len(xv))
		for i := range v {
			v[i] = xv[i] + sign*h*u[i]
		}
		dev.FromHost(x, v)
	}
	shifted(1)
	lp := loss()
	shifted(-1)
	lm := loss()
	dev.FromHost(x, xv)
	fd, an := (lp-lm)/(2*h), 0.0
	for i := range u {
		an += float64(u[i]) * float64(dx[i])
	}
	if math.Abs(fd-an) > 2e-3*math.Abs(an)+1e-3 {
		t.Errorf("input directional derivative: analytic %.6g, finite difference %.6g", an, fd)
	}
	// parameter direction (every parameter at once)
	w0 := host(dev, m.W)
	uw := randn(rng, len(w0), 0.05)
	setW := func(sign float32) {
		v := make([]float32, len(w0))
		for i := range v {
			v[i] = w0[i] + sign*h*uw[i]
		}
		dev.FromHost(m.W, v)
	}
	setW(1)
	lp = loss()
	setW(-1)
	lm = loss()
	dev.FromHost(m.W, w0)
	fdw, anw := (lp-lm)/(2*h), 0.0
	for i := range uw {
		anw += float64(uw[i]) * float64(g[i])
	}
	if math.Abs(fdw-anw) > 2e-3*math.Abs(anw)+1e-3 {
		t.Errorf("parameter directional derivative: analytic %.6g, finite difference %.6g", anw, fdw)
	}
	t.Logf("d<out,cot>/dx·u: analytic %.6g, FD %.6g; d/dW·u: analytic %.6g, FD %.6g", an, fd, anw, fdw)
}

// TestBackwardHidden: a gradient injected on a block's output (a discriminator on the critic's
// features) backpropagates like a finite difference of <Hidden(layer), dH>, alone and added to dOut.
func TestBackwardHidden(t *testing.T) {
	cfg := Config{Dim: 32, FFNDim: 64, FreqDim: 256, Heads: 2, Layers: 3, InDim: 4, OutDim: 4, TextDim: 8, TextLen: 4, Eps: 1e-6}
	dev := kernels.CPU()
	m := New(dev, cfg, true)
	randomize(m, 6)
	rng := rand.New(rand.NewSource(9))
	s := Shape{B: 1, F: 2, H: 4, W: 2, L: 3}
	xv := randn(rng, s.B*cfg.InDim*s.F*s.H*s.W, 1)
	x := devT(dev, xv, s.B, cfg.InDim, s.F, s.H, s.W)
	tt := devT(dev, []float32{300, 800}, s.B, s.F)
	ctx := devT(dev, randn(rng, s.B*s.L*cfg.TextDim, 1), s.B, s.L, cfg.TextDim)
	p := m.NewPass(s)
	const layer = 1
	m.Forward(p, x, tt, ctx)
	dHv := randn(rng, p.Hidden(layer).Numel(), 1)
	cotv := randn(rng, p.out.Numel(), 1)
	objective := func(withOut bool) float64 {
		out := host(dev, m.Forward(p, x, tt, ctx))
		h := host(dev, p.Hidden(layer))
		v := 0.0
		for i := range h {
			v += float64(h[i]) * float64(dHv[i])
		}
		if withOut {
			for i := range out {
				v += float64(out[i]) * float64(cotv[i])
			}
		}
		return v
	}
	for _, withOut := range []bool{false, true} {
		m.Forward(p, x, tt, ctx)
		m.ZeroGrad()
		var dOut *kernels.Tensor
		if withOut {
			dOut = devT(dev, cotv, p.out.Shape...)
		}
		dx := host(dev, m.BackwardHidden(p, dOut, layer, devT(dev, dHv, p.Hidden(layer).Shape...)))
		g := host(dev, m.G)
		if g[m.Table[len(m.Table)-2].Offset] != 0 && !withOut {
			t.Error("head.head.bias got a gradient from a hidden-state loss")
		}
		u := randn(rng, len(xv), 1)
		const h = 1e-2
		set := func(sg float32) {
			v := make([]float32, len(xv))
			for i := range v {
				v[i] = xv[i] + sg*h*u[i]
			}
			dev.FromHost(x, v)
		}
		set(1)
		lp := objective(withOut)
		set(-1)
		lm := objective(withOut)
		dev.FromHost(x, xv)
		fd, an := (lp-lm)/(2*h), 0.0
		for i := range u {
			an += float64(u[i]) * float64(dx[i])
		}
		if math.Abs(fd-an) > 2e-3*math.Abs(an)+1e-3 {
			t.Errorf("withOut %v: analytic %.6g, finite difference %.6g", withOut, an, fd)
		}
		t.Logf("withOut %v: analytic %.6g, FD %.6g", withOut, an, fd)
	}
}
