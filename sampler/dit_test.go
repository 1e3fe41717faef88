package sampler

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
)

func tinyDiT(t *testing.T, seed int64) *models.DiT {
	t.Helper()
	cfg, err := models.Preset("tiny")
	if err != nil {
		t.Fatal(err)
	}
	cfg.InDim, cfg.OutDim, cfg.TextLen = 4, 4, 3
	m := models.New(kernels.CPU(), cfg, false)
	m.InitRandom(seed, 0.1) // Wan's init zeroes the head: the output would be 0
	return m
}

func randBatch(B, C, F, H, W, L, D int) *Batch {
	r := rand.New(rand.NewPCG(uint64(rand.Int64()), 7)) // fresh prompts each run
	b := &Batch{C: C, F: F, H: H, W: W, L: L, TextDim: D, Text: make([]float32, B*L*D), Null: make([]float32, L*D)}
	for i := range b.Text {
		b.Text[i] = float32(r.NormFloat64())
	}
	for i := 0; i < B; i++ {
		b.Seeds = append(b.Seeds, r.Int64())
	}
	return b
}

// fwd runs one plain forward of m on host arrays (a fresh pass: an independent path).
func fwd(m *models.DiT, x, tt, ctx []float32, B, C, F, H, W, L, chunk int) []float32 {
	dev := m.Dev
	p := m.NewPass(models.Shape{B: B, F: F, H: H, W: W, L: L, ChunkFrames: chunk})
	defer p.Free()
	xd, td, cd := dev.Alloc(kernels.F32, B, C, F, H, W), dev.Alloc(kernels.F32, B, F), dev.Alloc(kernels.F32, B, L, m.Cfg.TextDim)
	dev.FromHost(xd, x)
	dev.FromHost(td, tt)
	dev.FromHost(cd, ctx)
	out := make([]float32, len(x))
	dev.ToHost(out, m.Forward(p, xd, td, cd))
	return out
}

func relErr(a []float32, b []float64) float64 {
	var num, den float64
	for i := range a {
		num += (float64(a[i]) - b[i]) * (float64(a[i]) - b[i])
		den += b[i] * b[i]
	}
	return math.Sqrt(num / den)
}

// Euler with batched CFG (one 2B forward) equals the loop written out with two separate B
// forwards (null, text) and the guidance combined on the host in float64.
func TestDiTEulerCFGEqualsSeparateForwards(t *testing.T) {
	m := tinyDiT(t, 1)
	const B, C, F, H, W, L = 2, 4, 2, 4, 4, 3
	b := randBatch(B, C, F, H, W, L, m.Cfg.TextDim)
	o := Options{Method: Euler, Steps: 3, CFG: 3.5, Shift: 2}
	net := NewDiTNet(m, 0)
	defer net.Free()
	r, err := Sample(net, b, o)
	if err != nil {
		t.Fatal(err)
	}
	n := B * C * F * H * W
	xs := make([]float32, n)
	drawNoise(xs, b.Seeds, 0, 0)
	x := make([]float64, n)
	for i := range x {
		x[i] = float64(xs[i])
	}
	null := make([]float32, 0, B*L*m.Cfg.TextDim)
	for i := 0; i < B; i++ {
		null = append(null, b.Null...)
	}
	sig := EulerSigmas(3, 2)
	for i := 0; i < 3; i++ {
		tt := make([]float32, B*F)
		for j := range tt {
			tt[j] = float32(1000 * sig[i])
		}
		for j := range xs {
			xs[j] = float32(x[j])
		}
		vu := fwd(m, xs, tt, null, B, C, F, H, W, L, 0)
		vc := fwd(m, xs, tt, b.Text, B, C, F, H, W, L, 0)
		for j := range x {
			v := float64(vu[j]) + o.CFG*(float64(vc[j])-float64(vu[j]))
			x[j] += (sig[i+1] - sig[i]) * v
		}
	}
	e := relErr(r.Latents, x)
	t.Logf("batched CFG Euler vs separate forwards: rel err %.3g", e)
	if e > 1e-5 {
		t.Fatalf("batched CFG Euler vs separate forwards: rel err %g", e)
	}
	if r.NFE != 6 {
		t.Fatalf("NFE %d, want 3 steps × 2", r.NFE)
	}
}

// Streaming with the KV cache equals causal sampling without a cache: every denoising step of
// chunk j re-runs ONE block-causal forward over the whole prefix (the committed chunks at the
// context noise level, then the noisy chunk j) and keeps chunk j's output. No window here, so the
// two must agree to rounding; with and without CFG and context noise.
func TestStreamEqualsFullCausalSampling(t *testing.T) {
	m := tinyDiT(t, 2)
	const B, C, F, H, W, L, k = 2, 4, 6, 4, 4, 3, 2
	for _, o := range []Options{
		{Method: Stream, Steps: 3, Shift: 3, ChunkFrames: k},
		{Method: Stream, Steps: 2, CFG: 2.5, ChunkFrames: k, ContextNoise: 0.1},
	} {
		b := randBatch(B, C, F, H, W, L, m.Cfg.TextDim)
		net := NewDiTNet(m, k)
		r, err := Sample(net, b, o)
		net.Free()
		if err != nil {
			t.Fatal(err)
		}
		ref := refCausal(m, b, o)
		e := relErr(r.Latents, ref)
		t.Logf("steps %d cfg %g context noise %g: stream vs cache-free causal sampling: rel err %.3g", o.Steps, o.CFG, o.ContextNoise, e)
		if e > 1e-5 {
			t.Fatalf("%+v: stream vs full causal sampling: rel err %g", o, e)
		}
		chunks := F / k
		want := (chunks*o.Steps + chunks - 1)
		if o.CFG != 0 {
			want *= 2
		}
		if r.NFE != want {
			t.Fatalf("%+v: NFE %d, want %d", o, r.NFE, want)
		}
	}
}

// refCausal is streaming sampling done the slow way (no cache), in float64 on the host between forwards.
func refCausal(m *models.DiT, b *Batch, o Options) []float64 {
	B, C, F, H, W, L, k := b.B(), b.C, b.F, b.H, b.W, b.L, o.ChunkFrames
	sig, _ := o.Schedule()
	plane := H * W
	chunkN := B * C * k * plane
	out := make([]float64, B*C*F*plane)
	var hist [][]float32 // committed chunks [B,C,k,H,W], context-noised
	null := make([]float32, 0, B*L*b.TextDim)
	for i := 0; i < B; i++ {
		null = append(null, b.Null...)
	}
	velocity := func(x []float32, s float64) []float64 {
		nf := (len(hist) + 1) * k
		xp := make([]float32, B*C*nf*plane) // [B,C,nf,H,W]
		tt := make([]float32, B*nf)
		for bb := 0; bb < B; bb++ {
			for f := 0; f < nf; f++ {
				tt[bb*nf+f] = float32(1000 * o.ContextNoise)
				if f >= len(hist)*k {
					tt[bb*nf+f] = float32(1000 * s)
				}
			}
		}
		for bc := 0; bc < B*C; bc++ {
			for j, h := range append(hist, x) {
				copy(xp[(bc*nf+j*k)*plane:(bc*nf+j*k+k)*plane], h[bc*k*plane:(bc+1)*k*plane])
			}
		}
		last := func(v []float32) []float64 { // chunk j of the output
			r := make([]float64, chunkN)
			for bc := 0; bc < B*C; bc++ {
				for i := 0; i < k*plane; i++ {
					r[bc*k*plane+i] = float64(v[(bc*nf+nf-k)*plane+i])
				}
			}
			return r
		}
		vc := last(fwd(m, xp, tt, b.Text, B, C, nf, H, W, L, k))
		if !o.guided() {
			return vc
		}
		vu := last(fwd(m, xp, tt, null, B, C, nf, H, W, L, k))
		for i := range vc {
			vc[i] = vu[i] + o.CFG*(vc[i]-vu[i])
		}
		return vc
	}
	eps := make([]float32, chunkN)
	for j := 0; j < F/k; j++ {
		x := make([]float32, chunkN)
		drawNoise(x, b.Seeds, j+1, 0)
		var x0 []float64
		for i, s := range sig {
			v := velocity(x, s)
			x0 = make([]float64, chunkN)
			for n := range x0 {
				x0[n] = float64(x[n]) - s*v[n]
			}
			if i < len(sig)-1 {
				drawNoise(eps, b.Seeds, j+1, i+1)
				for n := range x {
					x[n] = float32((1-sig[i+1])*x0[n] + sig[i+1]*float64(eps[n]))
				}
			}
		}
		for bc := 0; bc < B*C; bc++ {
			copy(out[(bc*F+j*k)*plane:(bc*F+j*k+k)*plane], x0[bc*k*plane:(bc+1)*k*plane])
		}
		xc := make([]float32, chunkN)
		drawNoise(eps, b.Seeds, j+1, len(sig))
		for n := range xc {
			xc[n] = float32(x0[n])
			if o.ContextNoise > 0 {
				xc[n] = float32((1-o.ContextNoise)*x0[n] + o.ContextNoise*float64(eps[n]))
			}
		}
		hist = append(hist, xc)
	}
	return out
}

// A video far longer than the window (24 frames, window 6 with a 2-frame sink): the cache never holds
// more than the window and the output is finite. (The windowed attention itself is checked against a
// masked reference in the models package.)
func TestStreamLongVideoBoundedCache(t *testing.T) {
	m := tinyDiT(t, 3)
	const B, C, F, H, W, L, k = 1, 4, 24, 4, 4, 3, 2
	b := randBatch(B, C, F, H, W, L, m.Cfg.TextDim)
	net := NewDiTNet(m, k)
	defer net.Free()
	r, err := Sample(net, b, Options{Method: Stream, Steps: 2, ChunkFrames: k, LocalFrames: 6, SinkFrames: 2})
	if err != nil {
		t.Fatal(err)
	}
	if got := net.cache.CachedFrames(); got > 6 {
		t.Fatalf("cache holds %d frames, window is 6", got)
	}
	if net.CacheFrames() != F-k {
		t.Fatalf("stream committed %d frames, want %d (all but the last chunk)", net.CacheFrames(), F-k)
	}
	for i, v := range r.Latents {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			t.Fatalf("latent %d = %g", i, v)
		}
	}
	if _, err := Sample(net, b, Options{Method: Stream, Steps: 2, ChunkFrames: k, LocalFrames: 2, SinkFrames: 2}); err == nil {
		t.Fatal("sink ≥ window: no error")
	}
}

// The graph path's plumbing (on the CPU, a "graph" that replays by calling the captured function):
// inputs copied into the net's own buffers, the output read from the captured pass, the same
// samples as eager forwards; a failed capture falls back to eager forwards.
func TestDiTNetGraphPlumbing(t *testing.T) {
	m := tinyDiT(t, 9)
	b := randBatch(2, 4, 2, 4, 4, 3, m.Cfg.TextDim)
	o := Options{Method: FewStep, Steps: 3, CFG: 2.5, Shift: 3}
	eager := NewDiTNet(m, 0)
	defer eager.Free()
	want, err := Sample(eager, b, o)
	if err != nil {
		t.Fatal(err)
	}
	for _, fail := range []bool{false, true} {
		g := NewDiTNet(m, 0)
		captures, launches := 0, 0
		g.Capture = func(fn func()) (func() error, func(), error) {
			captures++
			if fail {
				return nil, nil, errTest
			}
			return func() error { launches++; fn(); return nil }, func() {}, nil
		}
		got, err := Sample(g, b, o)
		g.Free()
		if err != nil {
			t.Fatal(err)
		}
		if captures != 1 || (!fail && launches != 2) || (fail && launches != 0) {
			t.Fatalf("fail %v: %d captures, %d launches for 3 steps", fail, captures, launches)
		}
		for i := range want.Latents {
			if got.Latents[i] != want.Latents[i] {
				t.Fatalf("fail %v: latent %d: %g, eager %g", fail, i, got.Latents[i], want.Latents[i])
			}
		}
	}
}

var errTest = fmt.Errorf("capture refused")
