package sampler

import (
	"fmt"
	"time"

	"github.com/fewstep/fewstep/kernels"
)

// CausalNet is a block-causal network with a KV cache (DiTNet over a models.DiT with ChunkFrames).
type CausalNet interface {
	Net
	// StartCache makes an empty KV cache for batch B at latent H×W that keeps the last localFrames
	// frames (0 = every frame) plus the first sinkFrames frames.
	StartCache(B, H, W, localFrames, sinkFrames int) error
	// VelocityChunk: x [B,C,k,H,W] are frames CacheFrames()..+k (RoPE at absolute positions),
	// attending to the cache and to themselves; t [B,k] → v [B,C,k,H,W], owned by the net.
	VelocityChunk(x, t, ctx *kernels.Tensor) *kernels.Tensor
	// Commit appends the K/V of the last VelocityChunk to the cache and advances CacheFrames().
	Commit()
	CacheFrames() int
}

// stream is Self-Forcing's inference: chunk by chunk (ChunkFrames latent frames), each chunk from
// fresh noise through the denoising list (predict x0, re-noise), then the finished chunk is run once
// more at σ = ContextNoise (clean by default) and its K/V committed to the cache, so the next chunk
// attends to it. Memory is bounded by the cache window (LocalFrames + SinkFrames) whatever F is:
// F may be any multiple of ChunkFrames, longer than the training length.
func stream(cn CausalNet, b *Batch, o Options, sig []float64) (*Result, error) {
	k := o.ChunkFrames
	if k < 1 {
		return nil, fmt.Errorf("sampler: stream: chunk_frames = %d, need ≥ 1", k)
	}
	if b.F%k != 0 {
		return nil, fmt.Errorf("sampler: stream: %d frames is not a multiple of chunk_frames %d", b.F, k)
	}
	if o.ContextNoise < 0 || o.ContextNoise >= 1 {
		return nil, fmt.Errorf("sampler: stream: context_noise %g outside [0, 1)", o.ContextNoise)
	}
	start := time.Now()
	dev := cn.Device()
	B := b.B()
	g := newGuide(dev, cn.VelocityChunk, b, o.CFG, k) // the cache holds 2B rows with CFG
	defer g.free()
	if err := cn.StartCache(B*g.perCall(), b.H, b.W, o.LocalFrames, o.SinkFrames); err != nil {
		return nil, err
	}
	shape := []int{B, b.C, k, b.H, b.W}
	n := kernels.Numel(shape)
	x := dev.Alloc(kernels.F32, shape...)
	x0 := dev.Alloc(kernels.F32, shape...)
	eps := dev.Alloc(kernels.F32, shape...)
	defer dev.Free(x)
	defer dev.Free(x0)
	defer dev.Free(eps)
	host := make([]float32, n)
	out := make([]float32, B*b.C*b.F*b.H*b.W)
	chunks, calls := b.F/k, 0
	plane := b.H * b.W
	for j := 0; j < chunks; j++ {
		drawNoise(host, b.Seeds, j+1, 0)
		dev.FromHost(x, host) // chunk j at σ_0
		for i := range sig {
			if err := o.alive(); err != nil {
				return nil, fmt.Errorf("sampler: stream: %w", err)
			}
			v := g.velocity(x, sig[i])                                       // [B,C,k,H,W]
			dev.Combine(x0, x, v, []float32{1}, []float32{float32(-sig[i])}) // x0 = x − σ·v
			calls++
			if i == len(sig)-1 {
				break
			}
			drawNoise(host, b.Seeds, j+1, i+1)
			dev.FromHost(eps, host)
			s := float32(sig[i+1])
			dev.Combine(x, x0, eps, []float32{1 - s}, []float32{s}) // x = (1−σ)·x0 + σ·ε
		}
		dev.ToHost(host, x0)
		if o.OnChunk != nil {
			if err := dev.Sync(); err != nil {
				return nil, fmt.Errorf("sampler: stream: %w", err)
			}
			if err := o.OnChunk(j, host); err != nil {
				return nil, err
			}
		}
		for bc := 0; bc < B*b.C; bc++ { // scatter [B,C,k,H,W] into frames j·k.. of [B,C,F,H,W]
			copy(out[(bc*b.F+j*k)*plane:(bc*b.F+j*k+k)*plane], host[bc*k*plane:(bc+1)*k*plane])
		}
		if j == chunks-1 {
			break // nothing attends to the last chunk
		}
		// Re-encode the finished chunk at the context noise level and commit its K/V.
		if sc := o.ContextNoise; sc > 0 {
			drawNoise(host, b.Seeds, j+1, len(sig))
			dev.FromHost(eps, host)
			dev.Combine(x, x0, eps, []float32{float32(1 - sc)}, []float32{float32(sc)})
		} else {
			dev.Copy(x, x0)
		}
		g.encode(x, o.ContextNoise)
		cn.Commit()
		calls++
	}
	if err := dev.Sync(); err != nil {
		return nil, fmt.Errorf("sampler: stream: %w", err)
	}
	return &Result{
		Latents: out, Sigmas: sig,
		NFE:    calls * g.perCall(), // each evaluation covers one chunk of k frames
		Millis: float64(time.Since(start).Microseconds()) / 1e3 / float64(B),
	}, nil
}
