package models

// Fully sharded parameters (FSDP; train.shard: full). A sharded DiT keeps, on each of the N ranks
// of a communicator, only:
//
//	W  [P₀ + Layers·s + P_head]  the embeddings (prefix of the table, P₀), rank r's slice
//	                             [r·s, (r+1)·s) of every block's S parameters (s = ⌈S/N⌉, the last
//	                             slice zero-padded), and the head (suffix), in that order
//	G  the same layout (nil for a frozen network)
//
// plus two blocks' worth of gathered weights and of gradient (the "slots", [N·s] each; block l
// uses slot l mod 2). Block views of W and G point into the slots, so the forward and backward code
// is the same as for a whole DiT. The embeddings and head are replicated (the trainer averages
// their gradients like a data-parallel role).
//
// Weights are gathered in fp32 (NewSharded) or bf16 (NewShardedGather: each rank's fp32 slice
// converted first, the slots bf16). Just before a block runs (forward, the replay of a recomputed block, backward) the
// compute waits for its gather into its slot (issued then, unless the slot holds it already or it
// was prefetched), and the gather of the next block (l+1 in a forward, l−1 in a backward) is
// issued into the other slot, so it runs on the communication stream while block l computes
// (Comm.WaitFor waits for one gather, not the collectives issued after it).
//
// Gradients: after block l's backward its gradient slot is reduce-scattered (mean over ranks) into
// a scratch of that slot, in flight while the blocks below compute; the result is added to the
// rank's slice of G when the slot is needed again (block l−2's backward) or at SettleGrads (the
// trainer, before it reads G). The additions into G are those of an immediate scatter, in the
// same order.
//
// Every rank must run the same forwards and backwards (each block gather and gradient scatter is a
// collective). A failed gather panics (a forward on weights that are not there would return
// garbage: e.g. a forward on rank 0 alone after the other ranks left); a failed gradient scatter
// is kept (Err, checked by the trainer after each step) and later scatters are skipped.

import (
	"fmt"

	"github.com/fewstep/fewstep/dist"
	"github.com/fewstep/fewstep/kernels"
)

type fsdp struct {
	comm      dist.Comm
	N, rank   int
	P         int               // parameters of the whole table
	S, s      int               // one block's parameters (table layout, with alignment), slice size ⌈S/N⌉
	b0        int               // table offset of block 0
	head      int               // table offset of the suffix (the first parameter after the blocks)
	local     int               // local offset of the suffix: b0 + Layers·s
	slotW     []*kernels.Tensor // [N·s] each, block l in slot l mod len (2; 1 for one block); gather dtype
	sendW     []*kernels.Tensor // [s] per weight slot: the slice in the gather dtype (nil: fp32, W itself)
	sendT     []dist.Ticket     // per weight slot: the last gather that read its sendW
	slotG     []*kernels.Tensor // the same for the gradient; nil for a frozen network
	scratch   []*kernels.Tensor // [s] per gradient slot: its reduce-scatter's output
	ws        []wslot           // per weight slot
	gs        []gslot           // per gradient slot
	err       error
	layers    int
	blockName []string // per block, the prefix "blocks.l."
}

// wslot is a weight slot's state: the block gathered into it (−1 none) and the gather's ticket.
type wslot struct {
	block  int
	t      dist.Ticket
	waited bool // the compute waits for the gather already
}

// gslot is a gradient slot's state: the block whose reduce-scatter reads it (−1 none: free).
type gslot struct {
	block int
	t     dist.Ticket
}

// NewSharded allocates a DiT whose blocks are sharded over comm's ranks (see the file comment), with
// a gradient buffer if grads. Init, InitRandom, Load and SetFull fill it from whole weights; Full
// gathers them back (a collective).
func NewSharded(dev kernels.Device, cfg Config, grads bool, comm dist.Comm) *DiT {
	return NewShardedGather(dev, cfg, grads, comm, kernels.F32)
}

// NewShardedGather is NewSharded whose blocks are gathered in dtype dt: with bf16 (a GPU whose
// GEMMs read bf16 weights) each rank converts its fp32 slice of a block to bf16 and the bf16 slices
// are all-gathered into bf16 slots, which the block's ops read as they read a bf16-stored network
// (half the bytes moved and held; the fp32 slices stay the master weights).
func NewShardedGather(dev kernels.Device, cfg Config, grads bool, comm dist.Comm, dt kernels.DType) *DiT {
	m, P := newShell(dev, cfg)
	f := &fsdp{comm: comm, N: comm.Size(), rank: comm.Rank(), P: P, layers: cfg.Layers}
	f.b0 = m.Table[m.index["blocks.0.self_attn.q.weight"]].Offset
	f.head = m.Table[m.index["head.head.weight"]].Offset
	f.S = (f.head - f.b0) / cfg.Layers
	f.s = (f.S + f.N - 1) / f.N
	f.local = f.b0 + cfg.Layers*f.s
	for l := 0; l < cfg.Layers; l++ {
		f.blockName = append(f.blockName, fmt.Sprintf("blocks.%d.", l))
	}
	m.fs = f
	n := f.local + P - f.head
	slots := min(2, cfg.Layers)
	m.W = dev.Alloc(kernels.F32, n)
	for i := 0; i < slots; i++ {
		f.slotW = append(f.slotW, dev.Alloc(dt, f.N*f.s))
		f.ws = append(f.ws, wslot{block: -1})
		if dt != kernels.F32 {
			f.sendW = append(f.sendW, dev.Alloc(dt, f.s))
			f.sendT = append(f.sendT, 0)
		}
	}
	m.w = m.carveSharded(m.W, f.slotW)
	if grads {
		m.G = dev.Alloc(kernels.F32, n)
		for i := 0; i < slots; i++ {
			f.slotG = append(f.slotG, dev.Alloc(kernels.F32, f.N*f.s))
			f.scratch = append(f.scratch, dev.Alloc(kernels.F32, f.s))
			f.gs = append(f.gs, gslot{block: -1})
		}
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
func (m *DiT) Slots() (w, g []*kernels.Tensor) { return m.fs.slotW, m.fs.slotG }

// carveSharded is carve for a sharded DiT: embeddings and head in buf (local layout), block l's
// parameters in slot[l mod len(slot)] (at offset 0 of it).
func (m *DiT) carveSharded(buf *kernels.Tensor, slot []*kernels.Tensor) weights {
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
		l := (p.Offset - f.b0) / f.S
		return slot[l%len(slot)].View((p.Offset-f.b0)%f.S, shape...)
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
		for i := range m.fs.ws {
			m.fs.ws[i] = wslot{block: -1}
		}
	}
}

// useBlock makes block l's weights present in its slot (the compute waits for their gather) and,
// when next is a block (l±1; −1 none), issues next's gather into the other slot.
func (m *DiT) useBlock(l, next int) {
	f := m.fs
	if f == nil {
		return
	}
	if f.err != nil {
		panic(f.err)
	}
	w := &f.ws[l%len(f.ws)]
	if w.block != l {
		m.gather(l)
	}
	if !w.waited {
		if err := f.comm.WaitFor(w.t); err != nil {
			f.err = fmt.Errorf("models: gathering block %d's weights of a sharded DiT: %w", l, err)
			panic(f.err)
		}
		w.waited = true
	}
	if next >= 0 && next < f.layers && next%len(f.ws) != l%len(f.ws) && f.ws[next%len(f.ws)].block != next {
		m.gather(next) // prefetch: in flight while block l computes
	}
}

// gather issues the all-gather of block l's weights into its slot.
func (m *DiT) gather(l int) {
	f := m.fs
	i := l % len(f.ws)
	w := &f.ws[i]
	*w = wslot{block: -1}
	send := m.W.View(f.b0+l*f.s, f.s) // [s] the rank's fp32 slice
	if f.sendW != nil {
		// The slice in the gather dtype, in the slot's send buffer, once the last gather that read
		// it is done (a prefetch may not have been waited for).
		if err := f.comm.WaitFor(f.sendT[i]); err != nil {
			f.err = fmt.Errorf("models: gathering block %d's weights of a sharded DiT: %w", l, err)
			panic(f.err)
		}
		m.Dev.Copy(f.sendW[i], send) // [s] fp32 → the gather dtype
		send = f.sendW[i]
	}
	if err := f.comm.AllGather(f.slotW[i], send); err != nil {
		f.err = fmt.Errorf("models: gathering block %d's weights of a sharded DiT (every rank must run the same forwards): %w", l, err)
		panic(f.err)
	}
	*w = wslot{block: l, t: f.comm.Mark()}
	if f.sendW != nil {
		f.sendT[i] = w.t
	}
}

// beginBlockGrad frees block l's gradient slot (settling the scatter still reading it) and zeroes it.
func (m *DiT) beginBlockGrad(l int) {
	f := m.fs
	if f == nil || m.G == nil {
		return
	}
	i := l % len(f.gs)
	m.settle(i)
	m.Dev.Zero(f.slotG[i])
}

// endBlockGrad issues the reduce-scatter (mean over ranks) of block l's gradient slot into the
// slot's scratch; it is added to the rank's slice of G when the slot is settled.
func (m *DiT) endBlockGrad(l int) {
	f := m.fs
	if f == nil || m.G == nil || f.err != nil {
		return
	}
	i := l % len(f.gs)
	if err := f.comm.ReduceScatter(f.scratch[i], f.slotG[i], dist.Mean); err != nil {
		f.err = fmt.Errorf("models: reduce-scattering block %d's gradient: %w", l, err)
		return
	}
	f.gs[i] = gslot{block: l, t: f.comm.Mark()}
}

// settle waits for gradient slot i's reduce-scatter, if one is in flight, and adds its result to
// the block's slice of G.
func (m *DiT) settle(i int) {
	f := m.fs
	g := f.gs[i]
	if g.block < 0 {
		return
	}
	f.gs[i].block = -1
	if f.err != nil {
		return
	}
	if err := f.comm.WaitFor(g.t); err != nil {
		f.err = fmt.Errorf("models: reduce-scattering block %d's gradient: %w", g.block, err)
		return
	}
	m.Dev.Axpy(m.G.View(f.b0+g.block*f.s, f.s), 1, f.scratch[i]) // [s]
}

// SettleGrads completes the gradient reduce-scatters still in flight (after a backward of a
// sharded DiT, before G is read or zeroed) and returns the first collective error, if any.
func (m *DiT) SettleGrads() error {
	f := m.fs
	if f == nil {
		return nil
	}
	for i := range f.gs {
		m.settle(i)
	}
	return f.err
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
	if buf == m.G {
		if err := m.SettleGrads(); err != nil {
			return nil, err
		}
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
