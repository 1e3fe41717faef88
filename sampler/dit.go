package sampler

import (
	"fmt"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
)

// DiTNet adapts a models.DiT to Net and CausalNet. It keeps one forward-only pass per input shape
// (models.NewInferencePass: the blocks share one set of activations, no backward scratch; made on
// first use, reused after, at most maxPasses shapes at once) and, for streaming, one KV cache.
type DiTNet struct {
	M           *models.DiT
	ChunkFrames int // > 0: whole-video forwards are block-causal over chunks of this many frames

	// Capture, when set (a CUDA device: pipeline sets it), replays whole-video forwards from CUDA
	// graphs: per shape, the forward is run once eagerly, then captured on the net's own input
	// buffers; later calls copy their inputs there and launch the graph. A shape whose capture
	// fails runs eagerly.
	Capture func(fn func()) (launch func() error, free func(), err error)

	passes map[models.Shape]*models.Pass
	graphs map[models.Shape]*graphed
	cache  *models.Cache
	last   *models.Pass // the pass of the last VelocityChunk (what Commit caches)
}

// graphed is one shape's captured forward: its inputs, its output, its replay.
type graphed struct {
	x, t, ctx *kernels.Tensor
	out       *kernels.Tensor
	launch    func() error
	free      func()
	failed    bool
}

// NewDiTNet wraps m; chunkFrames > 0 for a block-causal student (0 = bidirectional).
func NewDiTNet(m *models.DiT, chunkFrames int) *DiTNet {
	return &DiTNet{M: m, ChunkFrames: chunkFrames, passes: map[models.Shape]*models.Pass{}}
}

func (d *DiTNet) Device() kernels.Device { return d.M.Dev }

// maxPasses bounds the shapes a DiTNet keeps passes for (a server's batches come in many sizes):
// past it, the passes of other shapes are released before a new one is made.
const maxPasses = 8

// pass is the forward-only pass of shape s; whole-video forwards (commit false) also share one
// K/V buffer across blocks (models.NewForwardPass: only a cache Commit reads every block's).
func (d *DiTNet) pass(s models.Shape, commit bool) *models.Pass {
	key := s
	key.Recompute = commit // the key tells the two kinds apart; Recompute is not used by inference passes
	p, ok := d.passes[key]
	if !ok {
		if len(d.passes) >= maxPasses {
			d.freeGraphs() // they replay the passes about to go
			for o, q := range d.passes {
				if q != d.last {
					q.Free()
					delete(d.passes, o)
				}
			}
		}
		if commit {
			p = d.M.NewInferencePass(s)
		} else {
			p = d.M.NewForwardPass(s)
		}
		d.passes[key] = p
	}
	return p
}

// PassBytes is the device memory the net's passes hold.
func (d *DiTNet) PassBytes() int {
	n := 0
	for _, p := range d.passes {
		n += p.Bytes()
	}
	return n
}

// Velocity runs one forward (block-causal when ChunkFrames > 0).
func (d *DiTNet) Velocity(x, t, ctx *kernels.Tensor) *kernels.Tensor {
	// BF16Operands: GEMM-only activations in bf16 on a GPU in bf16 GEMM mode (the same numbers).
	s := models.Shape{B: x.Shape[0], F: x.Shape[2], H: x.Shape[3], W: x.Shape[4], L: ctx.Shape[1], ChunkFrames: d.ChunkFrames, BF16Operands: true}
	if d.Capture != nil {
		if out := d.graphVelocity(s, x, t, ctx); out != nil {
			return out
		}
	}
	return d.M.Forward(d.pass(s, false), x, t, ctx)
}

// graphVelocity is Velocity through the shape's CUDA graph (nil: run eagerly).
func (d *DiTNet) graphVelocity(s models.Shape, x, t, ctx *kernels.Tensor) *kernels.Tensor {
	if d.graphs == nil {
		d.graphs = map[models.Shape]*graphed{}
	}
	dev := d.M.Dev
	g, ok := d.graphs[s]
	if !ok {
		g = &graphed{x: dev.Alloc(kernels.F32, x.Shape...), t: dev.Alloc(kernels.F32, t.Shape...), ctx: dev.Alloc(kernels.F32, ctx.Shape...)}
		d.graphs[s] = g
		p := d.pass(s, false)
		dev.Copy(g.x, x)
		dev.Copy(g.t, t)
		dev.Copy(g.ctx, ctx)
		g.out = d.M.Forward(p, g.x, g.t, g.ctx) // eager: the tables, plans and bf16 copies the graph reads
		launch, free, err := d.Capture(func() { d.M.Forward(p, g.x, g.t, g.ctx) })
		if err != nil {
			g.failed = true
		} else {
			g.launch, g.free = launch, free
		}
		return g.out
	}
	if g.failed {
		return nil
	}
	dev.Copy(g.x, x)
	dev.Copy(g.t, t)
	dev.Copy(g.ctx, ctx)
	if err := g.launch(); err != nil {
		g.failed = true
		return nil
	}
	return g.out
}

// StartCache makes a fresh KV cache (the previous one is released).
func (d *DiTNet) StartCache(B, H, W, localFrames, sinkFrames int) error {
	if err := models.CheckWindow(localFrames, sinkFrames); err != nil {
		return err
	}
	if H%2 != 0 || W%2 != 0 {
		return fmt.Errorf("sampler: stream: latent %d×%d must be even (patch 1×2×2)", H, W)
	}
	if d.cache != nil {
		d.cache.Free()
	}
	d.cache = d.M.NewCache(B, H, W, localFrames, sinkFrames)
	d.last = nil
	return nil
}

// VelocityChunk runs the next chunk against the cache (attention inside the chunk is full).
func (d *DiTNet) VelocityChunk(x, t, ctx *kernels.Tensor) *kernels.Tensor {
	k := x.Shape[2]
	s := models.Shape{B: x.Shape[0], F: k, H: x.Shape[3], W: x.Shape[4], L: ctx.Shape[1], ChunkFrames: k, BF16Operands: true}
	d.last = d.pass(s, true)
	return d.M.ForwardChunk(d.last, d.cache, x, t, ctx)
}

// Commit caches the last chunk's K/V.
func (d *DiTNet) Commit() { d.M.Commit(d.cache, d.last) }

// CacheFrames is the absolute index of the next frame of the stream.
func (d *DiTNet) CacheFrames() int { return d.cache.Frames() }

// Free releases the passes, the graphs and the cache.
func (d *DiTNet) Free() {
	d.freeGraphs()
	for s, p := range d.passes {
		p.Free()
		delete(d.passes, s)
	}
	if d.cache != nil {
		d.cache.Free()
		d.cache = nil
	}
}

// freeGraphs releases every captured forward and its input buffers.
func (d *DiTNet) freeGraphs() {
	for s, g := range d.graphs {
		if g.free != nil {
			g.free()
		}
		for _, t := range []*kernels.Tensor{g.x, g.t, g.ctx} {
			d.M.Dev.Free(t)
		}
		delete(d.graphs, s)
	}
}
