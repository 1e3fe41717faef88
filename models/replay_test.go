package models

import (
	"math/rand"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// TestForwardChunkAtReplays: a chunk streamed earlier, run again with ForwardChunkAt once later
// chunks are in the cache, gives the output, input gradient and parameter gradients that
// ForwardChunk + Backward gave when it was the next chunk, bit for bit — on a recompute pass, whose
// layers share one gather buffer and re-gather in Backward, against plain passes at the time, and
// with the cache's K/V labelled bf16 (the CPU stores fp32 either way). Misuse panics: a replay on
// a windowed cache, a Commit of a replay, a recompute Backward after the cache was Reset.
func TestForwardChunkAtReplays(t *testing.T) {
	cfg, _ := Preset("tiny")
	cfg.InDim, cfg.OutDim, cfg.Layers = 4, 4, 3
	dev := kernels.CPU()
	B, H, W, L, k, chunks := 2, 4, 2, 3, 2, 3
	C := cfg.InDim
	m := New(dev, cfg, true)
	randomize(m, 11)
	rng := rand.New(rand.NewSource(12))
	ctx := devT(dev, randn(rng, B*L*cfg.TextDim, 1), B, L, cfg.TextDim)
	cs := Shape{B: B, F: k, H: H, W: W, L: L, ChunkFrames: k}
	var xs, ts, cots []*kernels.Tensor
	for j := 0; j < chunks; j++ {
		xs = append(xs, devT(dev, randn(rng, B*C*k*H*W, 1), B, C, k, H, W))
		tv := randTimesteps(rng, B*k)
		ts = append(ts, devT(dev, tv, B, k))
		cots = append(cots, devT(dev, randn(rng, B*C*k*H*W, 1), B, C, k, H, W))
	}

	for _, dt := range []kernels.DType{kernels.F32, kernels.BF16} {
		// At the time: each chunk on a plain pass, backward at once, then its K/V committed.
		c := m.NewCacheDType(dt, B, H, W, 0, 0)
		commit := m.NewInferencePass(cs)
		var outs, dxs, gs [][]float32
		for j := 0; j < chunks; j++ {
			p := m.NewPass(cs)
			outs = append(outs, host(dev, m.ForwardChunk(p, c, xs[j], ts[j], ctx)))
			m.ZeroGrad()
			dxs = append(dxs, host(dev, m.Backward(p, cots[j])))
			gs = append(gs, host(dev, m.G))
			m.ForwardChunk(commit, c, xs[j], ts[j], ctx)
			m.Commit(c, commit)
		}
		// Afterwards: every chunk replayed on one recompute pass against the full cache.
		rs := cs
		rs.Recompute = true
		p := m.NewPass(rs)
		for j := chunks - 1; j >= 0; j-- {
			sameBits(t, "replayed output", outs[j], host(dev, m.ForwardChunkAt(p, c, j*k, xs[j], ts[j], ctx)))
			m.ZeroGrad()
			sameBits(t, "replayed dx", dxs[j], host(dev, m.Backward(p, cots[j])))
			sameBits(t, "replayed parameter gradients", gs[j], host(dev, m.G))
		}
		t.Logf("cache %v: %d chunks replayed bit for bit", dt, chunks)

		mustPanic(t, "Commit of a replay", func() { m.ForwardChunkAt(p, c, 0, xs[0], ts[0], ctx); m.Commit(c, p) })
		mustPanic(t, "recompute Backward after Reset", func() {
			m.ForwardChunkAt(p, c, k, xs[1], ts[1], ctx)
			c.Reset()
			m.Backward(p, cots[1])
		})
	}
	win := m.NewCache(B, H, W, 4, 0)
	pw := m.NewPass(cs)
	for j := 0; j < 2; j++ {
		m.ForwardChunk(pw, win, xs[j], ts[j], ctx)
		m.Commit(win, pw)
	}
	mustPanic(t, "ForwardChunkAt on a windowed cache", func() { m.ForwardChunkAt(pw, win, 0, xs[0], ts[0], ctx) })
}

// TestCacheReserve: Reserve sizes an empty unbounded cache to exactly the frames asked for (Bytes in
// the cache's dtype, fewer than NewCache's first 8 too), never shrinks an occupied one, keeps what it
// holds, and leaves a windowed cache alone; after Free it holds 0 bytes.
func TestCacheReserve(t *testing.T) {
	cfg, _ := Preset("tiny")
	cfg.Layers = 2
	dev := kernels.CPU()
	m := New(dev, cfg, false)
	randomize(m, 2)
	B, H, W := 1, 4, 2
	perFrame := 2 * cfg.Layers * B * (H / 2) * (W / 2) * cfg.Dim // K and V elements per frame
	for _, dt := range []kernels.DType{kernels.F32, kernels.BF16} {
		c := m.NewCacheDType(dt, B, H, W, 0, 0)
		c.Reserve(11)
		if got, want := c.Bytes(), 11*perFrame*dt.Size(); got != want {
			t.Errorf("%v: reserved 11 frames, %d bytes, want %d", dt, got, want)
		}
		c.Reserve(3) // empty: exactly 3
		if got, want := c.Bytes(), 3*perFrame*dt.Size(); got != want {
			t.Errorf("%v: Reserve(3) of an empty cache: %d bytes, want %d", dt, got, want)
		}
		p := m.NewInferencePass(Shape{B: B, F: 2, H: H, W: W, L: 3, ChunkFrames: 2})
		x := dev.Alloc(kernels.F32, B, cfg.InDim, 2, H, W)
		tt := dev.Alloc(kernels.F32, B, 2)
		ctx := dev.Alloc(kernels.F32, B, 3, cfg.TextDim)
		dev.FromHost(x, randn(rand.New(rand.NewSource(1)), x.Numel(), 1))
		m.ForwardChunk(p, c, x, tt, ctx)
		m.Commit(c, p)
		kept := host(dev, c.K[1])[:perFrame/(2*cfg.Layers)*2]
		c.Reserve(1) // occupied: never shrinks
		if got, want := c.Bytes(), 3*perFrame*dt.Size(); got != want {
			t.Errorf("%v: Reserve(1) of an occupied cache of 3: %d bytes, want %d", dt, got, want)
		}
		c.Reserve(7) // occupied: grows, keeping the 2 frames
		if got, want := c.Bytes(), 7*perFrame*dt.Size(); got != want {
			t.Errorf("%v: Reserve(7) of an occupied cache: %d bytes, want %d", dt, got, want)
		}
		sameBits(t, "cached K after growth", kept, host(dev, c.K[1])[:len(kept)])
		if kept[0] == 0 && kept[len(kept)-1] == 0 {
			t.Fatalf("cached K is zero: the growth check compares nothing")
		}
		c.Free()
		if got := c.Bytes(); got != 0 {
			t.Errorf("%v: %d bytes after Free, want 0", dt, got)
		}
	}
	w := m.NewCache(B, H, W, 3, 1)
	w.Reserve(10)
	if got, want := w.Bytes(), 3*perFrame*4; got != want {
		t.Errorf("windowed cache of 3 frames: %d bytes after Reserve(10), want %d", got, want)
	}
}

func mustPanic(t *testing.T, what string, f func()) {
	t.Helper()
	defer func() {
		if recover() == nil {
			t.Errorf("%s did not panic", what)
		}
	}()
	f()
}

// TestForwardChunkCommit: a pass whose blocks share K/V (ShareChunkKV, one block's K/V instead of
// Layers') streaming with ForwardChunkCommit gives the outputs and the cache contents that a pass
// keeping every block's K/V gives with ForwardChunk then Commit, bit for bit, through a growth of
// the cache; inference and recompute passes alike. Commit from a shared pass, and ForwardChunkCommit
// into a full window, panic.
func TestForwardChunkCommit(t *testing.T) {
	cfg, _ := Preset("tiny")
	cfg.InDim, cfg.OutDim, cfg.Layers = 4, 4, 3
	dev := kernels.CPU()
	B, H, W, L, k, chunks := 1, 4, 2, 3, 3, 4 // 12 frames: the cache grows past its first 8
	C := cfg.InDim
	m := New(dev, cfg, true)
	randomize(m, 21)
	rng := rand.New(rand.NewSource(22))
	ctx := devT(dev, randn(rng, B*L*cfg.TextDim, 1), B, L, cfg.TextDim)
	cs := Shape{B: B, F: k, H: H, W: W, L: L, ChunkFrames: k}
	var xs, ts []*kernels.Tensor
	for j := 0; j < chunks; j++ {
		xs = append(xs, devT(dev, randn(rng, B*C*k*H*W, 1), B, C, k, H, W))
		tv := randTimesteps(rng, B*k)
		ts = append(ts, devT(dev, tv, B, k))
	}
	stream := func(p *Pass, now bool) (outs [][]float32, c *Cache) {
		c = m.NewCache(B, H, W, 0, 0)
		for j := 0; j < chunks; j++ {
			if now {
				outs = append(outs, host(dev, m.ForwardChunkCommit(p, c, xs[j], ts[j], ctx)))
			} else {
				outs = append(outs, host(dev, m.ForwardChunk(p, c, xs[j], ts[j], ctx)))
				m.Commit(c, p)
			}
		}
		return outs, c
	}
	want, wc := stream(m.NewInferencePass(cs), false)
	rs := cs
	rs.Recompute = true
	for _, mk := range []func() *Pass{func() *Pass { return m.NewInferencePass(cs) }, func() *Pass { return m.NewPass(rs) }} {
		p := mk()
		before := p.Bytes()
		p.ShareChunkKV()
		if saved, want := before-p.Bytes(), 2*(cfg.Layers-1)*B*k*(H/2)*(W/2)*cfg.Dim*4; saved != want {
			t.Errorf("ShareChunkKV freed %d bytes, want %d (Layers−1 blocks' K and V)", saved, want)
		}
		got, gc := stream(p, true)
		for j := range want {
			sameBits(t, "output of a ForwardChunkCommit", want[j], got[j])
		}
		if gc.Frames() != wc.Frames() {
			t.Fatalf("cache at frame %d, want %d", gc.Frames(), wc.Frames())
		}
		n := chunks * k * (H / 2) * (W / 2) * cfg.Dim
		for l := 0; l < cfg.Layers; l++ {
			sameBits(t, "cached K", host(dev, wc.K[l])[:n], host(dev, gc.K[l])[:n])
			sameBits(t, "cached V", host(dev, wc.V[l])[:n], host(dev, gc.V[l])[:n])
		}
		mustPanic(t, "Commit from a shared-K/V pass", func() {
			c := m.NewCache(B, H, W, 0, 0)
			m.ForwardChunk(p, c, xs[0], ts[0], ctx)
			m.Commit(c, p)
		})
	}
	win := m.NewCache(B, H, W, 4, 1)
	p := m.NewInferencePass(cs)
	m.ForwardChunkCommit(p, win, xs[0], ts[0], ctx) // 3 of 4 frames: nothing evicted
	mustPanic(t, "ForwardChunkCommit into a full window", func() { m.ForwardChunkCommit(p, win, xs[1], ts[1], ctx) })
}
