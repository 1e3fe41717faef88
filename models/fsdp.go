package models

// Fully sharded parameters (FSDP; train.shard: full). A sharded DiT keeps, on each of the N ranks
// of a communicator, only:
//
//	W  [P₀ + Layers·s + P_head]  the embeddings (prefix of the table, P₀), rank r's slice
//	                             [r·s, (r+1)·s) of every block's S parameters (s = ⌈S/N⌉, the last
//	                             slice zero-padded), and the head (suffix), in that order
//	G  the same layout (nil for a frozen network)
//
// plus one block's worth of gathered weights and of gradient (the "slots", [N·s] each). Just
// before a block runs (forward, the replay of a recomputed block, backward) its weights are
// all-gathered into the slot, unless the slot holds them already; after a block's backward its
// gradient, accumulated in the gradient slot, is reduce-scattered (mean over ranks) and added to
// the rank's slice of G. The embeddings and head are replicated (the trainer averages their
// gradients like a data-parallel role). Block views of W and G point into the slots, so the
// forward and backward code is the same as for a whole DiT.
//
// Every rank must run the same forwards and backwards (each block gather and gradient scatter is a
// collective). The weights are gathered block by block as needed, not prefetched: Comm.Wait orders
// the compute after every collective called so far, so a gather issued ahead would be waited for
// at once. A failed gather panics (a forward on weights that are not there would return garbage:
// e.g. a forward on rank 0 alone after the other ranks left); a failed gradient scatter is kept
// (Err, checked by the trainer after each step) and later scatters are skipped.

import (
	"fmt"

	"github.com/fewstep/fewstep/dist"
	"github.com/fewstep/fewstep/kernels"
)

type fsdp struct {
	comm      dist.Comm
	N, rank   int
	P         int // parameters of the whole table
	S, s      int // one block's parameters (table layout, with alignment), slice size ⌈S/N⌉
	b0        int // table offset of block 0
	head      int // table offset of the suffix (the first parameter after the blocks)
	local     int // local offset of the suffix: b0 + Layers·s
	slotW     *kernels.Tensor
	slotG     *kernels.Tensor // nil for a frozen network
	scratch   *kernels.Tensor // [s] reduce-scatter output
	held      int             // block in slotW, −1 none
	err       error
	layers    int
	blockName []string // per block, the prefix "blocks.l."
}

// NewSharded allocates a DiT whose blocks are sharded over comm's ranks (see the file comment), with
// a gradient buffer if grads. Init, InitRandom, Load and SetFull fill it from whole weights; Full
// gathers them back (a collective).
func NewSharded(dev kernels.Device, cfg Config, grads bool, comm dist.Comm) *DiT {
	if err := cfg.Validate(); err != nil {
		panic(err)
	}
	table, P := cfg.Params()
	m := &DiT{Cfg: cfg, Dev: dev, Table: table, index: make(map[string]int, len(table))}
	for i, p := range table {
		m.index[p.Name] = i
	}
	f := &fsdp{comm: comm, N: comm.Size(), rank: comm.Rank(), P: P, held: -1, layers: cfg.Layers}
	f.b0 = table[m.index["blocks.0.self_attn.q.weight"]].Offset
	f.head = table[m.index["head.head.weight"]].Offset
	f.S = (f.head - f.b0) / cfg.Layers
	f.s = (f.S + f.N - 1) / f.N
	f.local = f.b0 + cfg.Layers*f.s
	for l := 0; l < cfg.Layers; l++ {
		f.blockName = append(f.blockName, fmt.Sprintf("blocks.%d.", l))
	}
	m.fs = f
	n := f.local + P - f.head
	m.W = dev.Alloc(kernels.F32, n)
	f.slotW = dev.Alloc(kernels.F32, f.N*f.s)
	f.scratch = dev.Alloc(kernels.F32, f.s)
	m.w = m.carveSharded(m.W, f.slotW)
	if grads {
		m.G = dev.Alloc(kernels.F32, n)
		f.slotG = dev.Alloc(kernels.F32, f.N*f.s)
		m.g = m.carveSharded(m.G, f.slotG)
	} else {
		m.g = weights{Blocks: make([]block, cfg.Layers)}
	}
	return m
}

// Sharded reports whether m's blocks are sharded (NewSharded).
func (m *DiT) Sharded() bool { return m.fs != nil }

// Slots are the gathered-block buffers of a sharded DiT (weights, gradient; nil when frozen), for
// a device that caches copies of weights (MarkWeights).
func (m *DiT) Slots() (w, g *kernels.Tensor) { return m.fs.slotW, m.fs.slotG }

// carveSharded is carve for a sharded DiT: embeddings and head in buf (local layout), the blocks'
// parameters in slot (each block at offset 0 of it).
func (m *DiT) carveSharded(buf, slot *kernels.Tensor) weights {
	f := m.fs
	return m.carveWith(func(name string, shape []int) *kernels.Tensor {
		p := m.Table[m.index[name]]
		if shape == nil {
			shape = p.Shape
		}
		switch {
		case p.Offset < f.b0:
			return buf.View(p.Offset, shape...)
		case p.Offset >= f.head:
			return buf.View(f.local+p.Offset-f.head, shape...)
		}
		return slot.View((p.Offset-f.b0)%f.S, shape...)
	})
}

// Err is the first collective error of a sharded DiT (nil otherwise).
func (m *DiT) Err() error {
	if m.fs == nil {
		return nil
	}
	return m.fs.err
}

// Invalidate tells a sharded DiT that W was written (an optimizer step, an EMA update, a copy):
// the next use of a block gathers it again.
func (m *DiT) Invalidate() {
	if m.fs != nil {
		m.fs.held = -1
	}
}

// useBlock makes block l's weights present in the slot.
func (m *DiT) useBlock(l int) {
	f := m.fs
	if f == nil || f.held == l {
		return
	}
	f.held = -1
	if f.err != nil {
		panic(f.err)
	}
	if err := f.comm.AllGather(f.slotW, m.W.View(f.b0+l*f.s, f.s)); err != nil {
		f.err = fmt.Errorf("models: gathering block %d's weights of a sharded DiT (every rank must run the same forwards): %w", l, err)
		panic(f.err)
	}
	if err := f.comm.Wait(); err != nil {
		f.err = fmt.Errorf("models: gathering block %d's weights of a sharded DiT: %w", l, err)
		panic(f.err)
	}
	f.held = l
}

// beginBlockGrad zeroes the gradient slot before block l's backward.
func (m *DiT) beginBlockGrad(l int) {
	if f := m.fs; f != nil && m.G != nil {
		m.Dev.Zero(f.slotG)
	}
}

// endBlockGrad reduce-scatters block l's gradient (mean over ranks) onto the rank's slice of G.
func (m *DiT) endBlockGrad(l int) {
	f := m.fs
	if f == nil || m.G == nil || f.err != nil {
		return
	}
	if err := f.comm.ReduceScatter(f.scratch, f.slotG, dist.Mean); err != nil {
		f.err = fmt.Errorf("models: reduce-scattering block %d's gradient: %w", l, err)
		return
	}
	if err := f.comm.Wait(); err != nil {
		f.err = fmt.Errorf("models: reduce-scattering block %d's gradient: %w", l, err)
		return
	}
	m.Dev.Axpy(m.G.View(f.b0+l*f.s, f.s), 1, f.scratch)
}

// LocalRanges maps the local buffer to the table: each entry is a local range [Local, Local+N)
// holding table offsets [Full, Full+N). Padding of a block's last slice has no table offset.
func (m *DiT) LocalRanges() []LocalRange {
	f := m.fs
	if f == nil {
		return []LocalRange{{0, 0, m.W.Numel()}}
	}
	rs := []LocalRange{{0, 0, f.b0}}
	lo, hi := f.rank*f.s, min((f.rank+1)*f.s, f.S)
	for l := 0; l < f.layers && hi > lo; l++ {
		rs = append(rs, LocalRange{f.b0 + l*f.s, f.b0 + l*f.S + lo, hi - lo})
	}
	return append(rs, LocalRange{f.local, f.head, f.P - f.head})
}

// LocalRange is a piece of a sharded DiT's local buffer and the table offsets it holds.
type LocalRange struct{ Local, Full, N int }

// Replicated is the local range of the parameters every rank holds whole (embeddings and head):
// [0, b0) and [suffix, end).
func (m *DiT) Replicated() [][2]int {
	f := m.fs
	if f == nil {
		return [][2]int{{0, m.W.Numel()}}
	}
	return [][2]int{{0, f.b0}, {f.local, m.W.Numel()}}
}

// SetFull fills W from whole weights in table layout (host, len P): a sharded DiT takes its part.
func (m *DiT) SetFull(host []float32) {
	m.SetFullBuf(m.W, host)
	m.Invalidate()
}

// SetFullBuf fills buf (laid out like W, e.g. an optimizer moment) from a whole buffer in table
// layout (host, len P).
func (m *DiT) SetFullBuf(buf *kernels.Tensor, host []float32) {
	if m.fs == nil {
		m.Dev.FromHost(buf, host)
		return
	}
	local := make([]float32, buf.Numel())
	for _, r := range m.LocalRanges() {
		copy(local[r.Local:r.Local+r.N], host[r.Full:r.Full+r.N])
	}
	m.Dev.FromHost(buf, local)
}

// Full returns the whole weights (buf = m.W) or gradients (buf = m.G, after reduction) in table
// layout on the host. For a sharded DiT it is a collective: every rank must call it.
func (m *DiT) Full(buf *kernels.Tensor) ([]float32, error) {
	f := m.fs
	host := make([]float32, m.fullNumel())
	if f == nil {
		m.Dev.ToHost(host, buf)
		return host, nil
	}
	local := make([]float32, buf.Numel())
	m.Dev.ToHost(local, buf)
	copy(host[:f.b0], local[:f.b0])
	copy(host[f.head:], local[f.local:])
	tmp := m.Dev.Alloc(kernels.F32, f.N*f.s)
	defer m.Dev.Free(tmp)
	h := make([]float32, f.N*f.s)
	for l := 0; l < f.layers; l++ {
		if err := f.comm.AllGather(tmp, buf.View(f.b0+l*f.s, f.s)); err != nil {
			return nil, fmt.Errorf("models: gathering block %d: %w", l, err)
		}
		if err := f.comm.Wait(); err != nil {
			return nil, err
		}
		m.Dev.ToHost(h, tmp)
		copy(host[f.b0+l*f.S:f.b0+(l+1)*f.S], h[:f.S])
	}
	return host, nil
}

// FullNumel is the number of parameters of the whole table (W.Numel() for a DiT not sharded).
func (m *DiT) FullNumel() int { return m.fullNumel() }

func (m *DiT) fullNumel() int {
	if m.fs != nil {
		return m.fs.P
	}
	return m.W.Numel()
}
