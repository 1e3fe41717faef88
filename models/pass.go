package models

import (
	"fmt"

	"github.com/fewstep/fewstep/kernels"
)

// Shape is the size of one forward: batch B, latent frames F, latent height H and width W (even),
// L context tokens; ChunkFrames > 0 makes self-attention block-causal over chunks of that many frames.
type Shape struct {
	B, F, H, W, L int
	ChunkFrames   int
	// Recompute (gradient checkpointing, recompute.go): NewPass keeps only each block's input
	// (and, for a causal pass, its K/V) and Backward recomputes a block's activations before its
	// backward; about one block's activations instead of Layers', for one more forward per backward.
	Recompute bool
	// BF16Operands: on a device whose GEMMs and attention read bf16 copies of fp32 activations
	// (GEMMReadsBF16), the activations that only GEMMs and attention read (the modulated norms h1,
	// h2 and the head's input, norm3's output, both attentions' outputs, the GELU output) are stored
	// in bf16 instead of fp32 + a bf16 copy: the same numbers, 6 bytes an element fewer (at 32,760
	// tokens 2.2 GiB a block's buffers); so are the gradients of both attentions' outputs (only the
	// attention backward reads them, as bf16: the output projection's dIn GEMM writes them so). On a
	// device that also keeps the GELU's pre-activation in bf16 (kernels.GELUPreBF16), the FFN's
	// pre-activation and the gradients around the GELU too: no longer the same numbers, but within
	// bf16 rounding (kernels/cuda/gputest: 2e-3 on the output, 5e-3 on the gradients of a 2-block
	// DiT). Elsewhere it changes nothing.
	BF16Operands bool
}

// bf16Reader is a device whose GEMMs read bf16 copies of fp32 operands (kernels/cuda in GEMMBF16
// mode, DryDevice).
type bf16Reader interface{ GEMMReadsBF16() bool }

// GEMMReadsBF16 reports whether dev's GEMMs read bf16 copies of fp32 operands.
func GEMMReadsBF16(dev kernels.Device) bool {
	r, ok := dev.(bf16Reader)
	return ok && r.GEMMReadsBF16()
}

// Check reports whether s fits the model.
func (s Shape) Check(c Config) error {
	if s.B <= 0 || s.F <= 0 || s.H <= 0 || s.W <= 0 || s.L <= 0 || s.ChunkFrames < 0 {
		return fmt.Errorf("models: bad shape %+v: sizes must be positive", s)
	}
	if s.H%2 != 0 || s.W%2 != 0 {
		return fmt.Errorf("models: bad shape %+v: latent height and width must be even (patch 1×2×2)", s)
	}
	if c.TextLen > 0 && s.L > c.TextLen {
		return fmt.Errorf("models: bad shape %+v: %d context tokens, more than the model's text_len %d", s, s.L, c.TextLen)
	}
	return nil
}

// PadContext zero-pads a context [B, L, textDim] to [B, textLen, textDim], as Wan2.1's WanModel
// does before its text embedding (the padding rows are embedded and attended to like any token:
// text_embedding(0) is the MLP of its biases, not zero). A forward matches Wan's for a context of
// L < text_len only on the padded context, with Shape.L = text_len. L > textLen is an error, as in
// Wan. The result is ctx itself when L == textLen.
func PadContext(ctx []float32, B, L, textDim, textLen int) ([]float32, error) {
	if len(ctx) != B*L*textDim {
		return nil, fmt.Errorf("models: context of %d values is not [%d, %d, %d]", len(ctx), B, L, textDim)
	}
	if L > textLen {
		return nil, fmt.Errorf("models: context of %d tokens, more than text_len %d", L, textLen)
	}
	if L == textLen {
		return ctx, nil
	}
	out := make([]float32, B*textLen*textDim)
	for b := 0; b < B; b++ {
		copy(out[b*textLen*textDim:], ctx[b*L*textDim:(b+1)*L*textDim])
	}
	return out, nil
}

// Pass holds every activation of one forward of one Shape (kept for backward) and the gradient
// scratch of its backward, allocated once by NewPass and reused by every call: the steady state
// allocates nothing. A Pass is made by one model; another model of the same Config may run its
// forwards too (objectives.NewDMDGradOn), as long as Backward is called by the model that ran the
// pass's last forward. A Pass is not safe for concurrent use.
type Pass struct {
	S                   Shape
	h, w, hw, N, BF     int
	C, Co, D, Hd, Heads int

	// inputs and embeddings
	tIn       *kernels.Tensor // [B·F] copy of t
	ctxIn     *kernels.Tensor // [B·L, text_dim] copy of the context
	xp, xpF   *kernels.Tensor // [B, N, 4C] patches; [B·N, 4C]
	tok, tokF *kernels.Tensor // [B, N, D] patch tokens = block 0's input; [B·N, D]
	c1, c1g   *kernels.Tensor // [B·L, D] text MLP hidden, after GELU
	ctx       *kernels.Tensor // [B·L, D] embedded context
	tsin      *kernels.Tensor // [B·F, freq_dim] sinusoid of t
	e1, e1s   *kernels.Tensor // [B·F, D] time MLP hidden, after SiLU
	e, es     *kernels.Tensor // [B·F, D] time embedding e, SiLU(e)
	e0, e0F   *kernels.Tensor // [B·F, 6, D] time projection; [B·F, 6·D]
	eRows     []*kernels.Tensor
	eDup      *kernels.Tensor // [B·F, 2, D] e copied twice (head modulation broadcast)
	eDupRows  []*kernels.Tensor
	hmod      *kernels.Tensor // [B, F, 2, D] head.modulation + e
	hmodF     *kernels.Tensor // [B·F, 2, D]
	blocks    []blockActs
	lnH, hin  *kernels.Tensor                                    // [B, N, D] head LayerNorm, modulated
	hinF      *kernels.Tensor                                    // [B·N, D]
	meanH     *kernels.Tensor                                    // [B·N]
	rstdH     *kernels.Tensor                                    // [B·N]
	y, yF     *kernels.Tensor                                    // [B, N, 4·Co]; [B·N, 4·Co]
	out       *kernels.Tensor                                    // [B, Co, F, H, W]
	selfAttn  func(layer int, out, lse, q, k, v *kernels.Tensor) // test seam: replaces self-attention's forward
	chunk     chunkState
	tapBlocks int // > 0: the last forward ran only blocks [0, tapBlocks) (ForwardTo, tap.go)
	allocated []*kernels.Tensor
	d         kernels.Device
	inference bool // forward-only: blocks share buffers, no backward scratch
	recompute bool // Shape.Recompute: blocks share buffers, Backward replays each block (recompute.go)
	ownKV     bool // recompute pass: every block keeps its K/V (ForwardChunk and Commit need them)

	// backward scratch
	g passGrads
}

// blockActs are one block's saved activations.
type blockActs struct {
	x                *kernels.Tensor // [B, N, D] block input (a view of the previous block's x3 or of tok)
	mod, modF        *kernels.Tensor // [B, F, 6, D] modulation + e0; [B·F, 6, D]
	ln1, h1          *kernels.Tensor // [B, N, D] LN(x), modulated
	h1F              *kernels.Tensor // [B·N, D]
	mean1, rstd1     *kernels.Tensor // [B·N]
	q, k             *kernels.Tensor // [B·N, D] before RMSNorm
	v, v4            *kernels.Tensor // [B·N, D]; [B, N, H, hd]
	qr, qr4, kr, kr4 *kernels.Tensor // RMSNorm·w then RoPE: [B·N, D]; [B, N, H, hd]
	rstdQ, rstdK     *kernels.Tensor // [B·N]
	att, att4        *kernels.Tensor // [B·N, D]; [B, N, H, hd]
	lse              *kernels.Tensor // [B, H, N]
	o, o3            *kernels.Tensor // [B·N, D]; [B, N, D]
	x1               *kernels.Tensor // [B, N, D] after self-attention
	n3, n3F          *kernels.Tensor // [B, N, D] norm3(x1); [B·N, D]
	mean3, rstd3     *kernels.Tensor // [B·N]
	cq, cqr, cqr4    *kernels.Tensor // [B·N, D] cross q; normed [B·N, D] / [B, N, H, hd]
	rstdCq           *kernels.Tensor // [B·N]
	ck, ckr, ckr4    *kernels.Tensor // [B·L, D] cross k; normed [B·L, D] / [B, L, H, hd]
	rstdCk           *kernels.Tensor // [B·L]
	cv, cv4          *kernels.Tensor // [B·L, D]; [B, L, H, hd]
	catt, catt4      *kernels.Tensor // [B·N, D]; [B, N, H, hd]
	clse             *kernels.Tensor // [B, H, N]
	co, co3          *kernels.Tensor // [B·N, D]; [B, N, D]
	x2               *kernels.Tensor // [B, N, D] after cross-attention
	ln2, h2, h2F     *kernels.Tensor // [B, N, D] LN(x2), modulated; [B·N, D]
	mean2, rstd2     *kernels.Tensor // [B·N]
	f1, f1g          *kernels.Tensor // [B·N, ffn] ffn.0 out, after GELU
	f2, f23          *kernels.Tensor // [B·N, D]; [B, N, D]
	x3               *kernels.Tensor // [B, N, D] block output

	qkv []*kernels.Tensor // {q, k, v}: one buffer [3, B·N, D] (one batched GEMM, kernels.LinearBatched)
	ckv []*kernels.Tensor // {ck, cv}: one buffer [2, B·L, D]
}

// passGrads is the backward scratch: the running residual gradient, one block's worth of
// activation gradients (reused by every block) and the embedding paths'.
type passGrads struct {
	dX, dXF           *kernels.Tensor // [B, N, D]; [B·N, D] residual-stream gradient
	dMod, dModF       *kernels.Tensor // [B, F, 6, D]; [B·F, 6, D]
	dF2, dF23         *kernels.Tensor // [B·N, D]; [B, N, D]
	dF1g, dF1         *kernels.Tensor // [B·N, ffn]
	dH2, dH23, dLn2   *kernels.Tensor // [B·N, D]; [B, N, D]; [B, N, D]
	dCatt, dCatt4     *kernels.Tensor // [B·N, D]; [B, N, H, hd]
	dCq, dCq4, dCqPre *kernels.Tensor // [B·N, D]; [B, N, H, hd]; [B·N, D]
	dN3, dN33         *kernels.Tensor // [B·N, D]; [B, N, D]
	dCk, dCk4, dCkPre *kernels.Tensor // [B·L, D]; [B, L, H, hd]; [B·L, D]
	dCv, dCv4         *kernels.Tensor // [B·L, D]; [B, L, H, hd]
	dO, dO3           *kernels.Tensor // [B·N, D]; [B, N, D]
	dAtt, dAtt4       *kernels.Tensor // [B·N, D]; [B, N, H, hd]
	dQr, dQr4         *kernels.Tensor // [B·N, D]; [B, N, H, hd]
	dKr, dKr4         *kernels.Tensor
	dV, dV4           *kernels.Tensor
	dQ, dK            *kernels.Tensor   // [B·N, D] before RMSNorm
	dH1, dH13, dLn1   *kernels.Tensor   // [B·N, D]; [B, N, D]; [B, N, D]
	block             []*kernels.Tensor // zeroed at the start of each block's backward (the others: ZeroLazy before their first write)

	dE0, dE0F     *kernels.Tensor // [B·F, 6, D]; [B·F, 6·D]
	de, dEs       *kernels.Tensor // [B·F, D]
	deRows        []*kernels.Tensor
	dE1s, dE1     *kernels.Tensor // [B·F, D]
	dEDup         *kernels.Tensor // [B·F, 2, D]
	dEDupRows     []*kernels.Tensor
	dHmod, dHmodF *kernels.Tensor // [B, F, 2, D]; [B·F, 2, D]
	dY, dYF       *kernels.Tensor // [B, N, 4·Co]; [B·N, 4·Co]
	dHin, dHin3   *kernels.Tensor // [B·N, D]; [B, N, D]
	dLnH          *kernels.Tensor // [B, N, D]
	dCtx          *kernels.Tensor // [B·L, D] embedded-context gradient, summed over blocks
	dC1g, dC1     *kernels.Tensor // [B·L, D]
	dXp, dXpF     *kernels.Tensor // [B, N, 4C]; [B·N, 4C]
	dx            *kernels.Tensor // [B, C, F, H, W]
	global        []*kernels.Tensor

	dQKV         []*kernels.Tensor  // {dQ, dK, dV}: one buffer [3, B·N, D] (kernels.LinearBatchedBack)
	dCKV         []*kernels.Tensor  // {dCkPre, dCv}: one buffer [2, B·L, D]
	dBQKV, dBCKV [3]*kernels.Tensor // the bias gradients of one LinearBatchedBack
}

func (p *Pass) alloc(shape ...int) *kernels.Tensor { return p.allocDT(kernels.F32, shape...) }

func (p *Pass) allocDT(dt kernels.DType, shape ...int) *kernels.Tensor {
	t := p.d.Alloc(dt, shape...)
	p.allocated = append(p.allocated, t)
	return t
}

// NewPass allocates the activations of one forward+backward of shape s. It panics on a shape the
// model cannot run (check it first with s.Check(m.Cfg) where it comes from user input).
func (m *DiT) NewPass(s Shape) *Pass { return m.newPass(s, false) }

// NewInferencePass allocates a forward-only pass: the blocks share one set of activation buffers
// (about 1/Layers of NewPass's memory, plus each block's K/V for Commit). Forward and ForwardChunk
// work as on any pass; Backward on it panics; Hidden(l) holds the last block's output for every l.
func (m *DiT) NewInferencePass(s Shape) *Pass { return m.newPass(s, true) }

// NewForwardPass is NewInferencePass whose blocks also share one K/V buffer (ShareChunkKV from the
// start, so the per-block K/V are never allocated): the least memory a forward needs; Commit from
// it panics (ForwardChunkCommit works).
func (m *DiT) NewForwardPass(s Shape) *Pass {
	p := m.newPassKV(s, true, true)
	p.ShareChunkKV() // marks the sharing; every block already points at block 0's K/V
	return p
}

func (m *DiT) newPass(s Shape, inference bool) *Pass { return m.newPassKV(s, inference, false) }

func (m *DiT) newPassKV(s Shape, inference, shareKV bool) *Pass {
	if err := s.Check(m.Cfg); err != nil {
		panic(err)
	}
	c := m.Cfg
	p := &Pass{d: m.Dev, S: s, h: s.H / 2, w: s.W / 2, C: c.InDim, Co: c.OutDim, D: c.Dim, Hd: c.HeadDim(), Heads: c.Heads}
	p.hw = p.h * p.w
	p.N = s.F * p.hw
	p.BF = s.B * s.F
	B, N, L, D, H, Hd, BF := s.B, p.N, s.L, c.Dim, c.Heads, c.HeadDim(), p.BF
	BN, BL, Fd := B*N, B*L, c.FFNDim
	opDT := kernels.F32 // activations read only by GEMMs and attention (Shape.BF16Operands)
	if s.BF16Operands && GEMMReadsBF16(m.Dev) {
		opDT = kernels.BF16
	}
	preDT := kernels.F32 // the FFN's GELU pre-activation and the gradients around the GELU: bf16 where the device wants them so (kernels.GELUPreBF16)
	if opDT == kernels.BF16 && kernels.GELUPreBF16(m.Dev) {
		preDT = kernels.BF16
	}

	p.tIn = p.alloc(BF)
	p.ctxIn = p.alloc(BL, c.TextDim)
	p.xp = p.alloc(B, N, 4*p.C)
	p.xpF = p.xp.Reshape(BN, 4*p.C)
	p.tok = p.alloc(B, N, D)
	p.tokF = p.tok.Reshape(BN, D)
	p.c1, p.c1g, p.ctx = p.alloc(BL, D), p.alloc(BL, D), p.alloc(BL, D)
	p.tsin = p.alloc(BF, c.FreqDim)
	p.e1, p.e1s, p.e, p.es = p.alloc(BF, D), p.alloc(BF, D), p.alloc(BF, D), p.alloc(BF, D)
	p.e0 = p.alloc(BF, 6, D)
	p.e0F = p.e0.Reshape(BF, 6*D)
	p.eDup = p.alloc(BF, 2, D)
	p.hmod = p.alloc(B, s.F, 2, D)
	p.hmodF = p.hmod.Reshape(BF, 2, D)
	for i := 0; i < BF; i++ {
		p.eRows = append(p.eRows, p.e.View(i*D, D))
		p.eDupRows = append(p.eDupRows, p.eDup.View(2*i*D, D), p.eDup.View((2*i+1)*D, D))
	}
	x := p.tok
	for l := 0; l < c.Layers; l++ {
		if s.Recompute && !inference && l > 0 {
			x = p.recomputeBlock(x, B, N, D, H, Hd) // recompute.go: block 0's buffers but its own x3 (and K/V)
			continue
		}
		if inference && l > 0 {
			// every block reuses block 0's buffers, except its own K/V (Commit caches them);
			// the residual stream lives in one buffer, read before it is overwritten
			a := p.blocks[0]
			a.x, a.x3 = x, x
			if !shareKV {
				a.v, a.kr = p.alloc(BN, D), p.alloc(BN, D)
				a.v4, a.kr4 = a.v.Reshape(B, N, H, Hd), a.kr.Reshape(B, N, H, Hd)
				a.qkv = []*kernels.Tensor{a.q, a.k, a.v} // not at one stride: three GEMMs (kernels.LinearBatched falls back)
			}
			p.blocks = append(p.blocks, a)
			continue
		}
		a := blockActs{x: x}
		a.mod = p.alloc(B, s.F, 6, D)
		a.modF = a.mod.Reshape(BF, 6, D)
		a.ln1, a.h1 = p.alloc(B, N, D), p.allocDT(opDT, B, N, D)
		a.h1F = a.h1.Reshape(BN, D)
		a.mean1, a.rstd1 = p.alloc(BN), p.alloc(BN)
		qkv := p.alloc(3, BN, D) // q, k, v at a constant stride: one batched GEMM (kernels.LinearBatched)
		a.q, a.k, a.v = qkv.View(0, BN, D), qkv.View(BN*D, BN, D), qkv.View(2*BN*D, BN, D)
		a.qkv = []*kernels.Tensor{a.q, a.k, a.v}
		a.v4 = a.v.Reshape(B, N, H, Hd)
		a.qr, a.kr = p.alloc(BN, D), p.alloc(BN, D)
		a.qr4, a.kr4 = a.qr.Reshape(B, N, H, Hd), a.kr.Reshape(B, N, H, Hd)
		a.rstdQ, a.rstdK = p.alloc(BN), p.alloc(BN)
		a.att = p.allocDT(opDT, BN, D)
		a.att4 = a.att.Reshape(B, N, H, Hd)
		a.lse = p.alloc(B, H, N)
		a.o = p.alloc(BN, D)
		a.o3 = a.o.Reshape(B, N, D)
		a.x1 = p.alloc(B, N, D)
		a.n3 = p.allocDT(opDT, B, N, D)
		a.n3F = a.n3.Reshape(BN, D)
		a.mean3, a.rstd3 = p.alloc(BN), p.alloc(BN)
		a.cq, a.cqr = p.alloc(BN, D), p.alloc(BN, D)
		a.cqr4 = a.cqr.Reshape(B, N, H, Hd)
		a.rstdCq = p.alloc(BN)
		ckv := p.alloc(2, BL, D) // cross k, v at a constant stride
		a.ck, a.cv = ckv.View(0, BL, D), ckv.View(BL*D, BL, D)
		a.ckv = []*kernels.Tensor{a.ck, a.cv}
		a.ckr = p.alloc(BL, D)
		a.ckr4 = a.ckr.Reshape(B, L, H, Hd)
		a.rstdCk = p.alloc(BL)
		a.cv4 = a.cv.Reshape(B, L, H, Hd)
		a.catt = p.allocDT(opDT, BN, D)
		a.catt4 = a.catt.Reshape(B, N, H, Hd)
		a.clse = p.alloc(B, H, N)
		a.co = p.alloc(BN, D)
		a.co3 = a.co.Reshape(B, N, D)
		a.x2 = p.alloc(B, N, D)
		a.ln2, a.h2 = p.alloc(B, N, D), p.allocDT(opDT, B, N, D)
		a.h2F = a.h2.Reshape(BN, D)
		a.mean2, a.rstd2 = p.alloc(BN), p.alloc(BN)
		a.f1, a.f1g = p.allocDT(preDT, BN, Fd), p.allocDT(opDT, BN, Fd)
		a.f2 = p.alloc(BN, D)
		a.f23 = a.f2.Reshape(B, N, D)
		a.x3 = p.alloc(B, N, D)
		p.blocks = append(p.blocks, a)
		x = a.x3
	}
	p.lnH, p.hin = p.alloc(B, N, D), p.allocDT(opDT, B, N, D)
	p.hinF = p.hin.Reshape(BN, D)
	p.meanH, p.rstdH = p.alloc(BN), p.alloc(BN)
	p.y = p.alloc(B, N, 4*p.Co)
	p.yF = p.y.Reshape(BN, 4*p.Co)
	p.out = p.alloc(B, p.Co, s.F, s.H, s.W)
	if inference {
		p.inference = true
		return p
	}

	// backward scratch
	g := &p.g
	blk := func(shape ...int) *kernels.Tensor { t := p.alloc(shape...); g.block = append(g.block, t); return t }
	glob := func(shape ...int) *kernels.Tensor { t := p.alloc(shape...); g.global = append(g.global, t); return t }
	// lazy: written first by one op that accumulates into all of it; Backward zeroes it just before
	// that op with kernels.ZeroLazy (a device may fold the zeroing into the op)
	lazy := p.alloc
	g.dX = glob(B, N, D)
	g.dXF = g.dX.Reshape(BN, D)
	g.dMod = blk(B, s.F, 6, D)
	g.dModF = g.dMod.Reshape(BF, 6, D)
	g.dF2 = lazy(BN, D)
	g.dF23 = g.dF2.Reshape(B, N, D)
	g.dF1g, g.dF1 = p.allocDT(preDT, BN, Fd), p.allocDT(preDT, BN, Fd) // lazy; bf16 where the device's GELU backward reads and writes bf16
	g.dH2 = lazy(BN, D)
	g.dH23 = g.dH2.Reshape(B, N, D)
	g.dLn2 = lazy(B, N, D)
	g.dCatt = p.allocDT(opDT, BN, D) // lazy; read only by the attention backward (as bf16)
	g.dCatt4 = g.dCatt.Reshape(B, N, H, Hd)
	g.dCq = blk(BN, D)
	g.dCq4 = g.dCq.Reshape(B, N, H, Hd)
	g.dCqPre = lazy(BN, D)
	g.dN3 = lazy(BN, D)
	g.dN33 = g.dN3.Reshape(B, N, D)
	g.dCk = blk(BL, D)
	g.dCk4 = g.dCk.Reshape(B, L, H, Hd)
	dckv := p.alloc(2, BL, D) // dCkPre (lazy) and dCv (zeroed per block) at a constant stride
	g.dCkPre, g.dCv = dckv.View(0, BL, D), dckv.View(BL*D, BL, D)
	g.block = append(g.block, g.dCv)
	g.dCKV = []*kernels.Tensor{g.dCkPre, g.dCv}
	g.dCv4 = g.dCv.Reshape(B, L, H, Hd)
	g.dO = lazy(BN, D)
	g.dO3 = g.dO.Reshape(B, N, D)
	g.dAtt = p.allocDT(opDT, BN, D) // lazy; read only by the attention backward (as bf16)
	g.dAtt4 = g.dAtt.Reshape(B, N, H, Hd)
	g.dQr = blk(BN, D)
	g.dQr4 = g.dQr.Reshape(B, N, H, Hd)
	g.dKr = blk(BN, D)
	g.dKr4 = g.dKr.Reshape(B, N, H, Hd)
	dqkv := p.alloc(3, BN, D) // dQ, dK (lazy) and dV (zeroed per block) at a constant stride
	g.dQ, g.dK, g.dV = dqkv.View(0, BN, D), dqkv.View(BN*D, BN, D), dqkv.View(2*BN*D, BN, D)
	g.block = append(g.block, g.dV)
	g.dQKV = []*kernels.Tensor{g.dQ, g.dK, g.dV}
	g.dV4 = g.dV.Reshape(B, N, H, Hd)
	g.dH1 = lazy(BN, D)
	g.dH13 = g.dH1.Reshape(B, N, D)
	g.dLn1 = lazy(B, N, D)

	g.dE0 = glob(BF, 6, D)
	g.dE0F = g.dE0.Reshape(BF, 6*D)
	g.de, g.dEs = glob(BF, D), glob(BF, D)
	g.dE1s, g.dE1 = glob(BF, D), glob(BF, D)
	g.dEDup = glob(BF, 2, D)
	for i := 0; i < BF; i++ {
		g.deRows = append(g.deRows, g.de.View(i*D, D))
		g.dEDupRows = append(g.dEDupRows, g.dEDup.View(2*i*D, D), g.dEDup.View((2*i+1)*D, D))
	}
	g.dHmod = glob(B, s.F, 2, D)
	g.dHmodF = g.dHmod.Reshape(BF, 2, D)
	g.dY = glob(B, N, 4*p.Co)
	g.dYF = g.dY.Reshape(BN, 4*p.Co)
	g.dHin = glob(BN, D)
	g.dHin3 = g.dHin.Reshape(B, N, D)
	g.dLnH = glob(B, N, D)
	g.dCtx = glob(BL, D)
	g.dC1g, g.dC1 = glob(BL, D), glob(BL, D)
	g.dXp = glob(B, N, 4*p.C)
	g.dXpF = g.dXp.Reshape(BN, 4*p.C)
	g.dx = glob(B, p.C, s.F, s.H, s.W)
	return p
}

// Free releases the pass's device memory.
func (p *Pass) Free() {
	for _, t := range p.allocated {
		p.d.Free(t)
	}
	p.chunk.free(p.d)
	p.allocated = nil
}

// Hidden is block layer's output [B, N, D] of the last forward (the critic's features).
func (p *Pass) Hidden(layer int) *kernels.Tensor { return p.blocks[layer].x3 }

// Bytes is the device memory the pass holds (activations and backward scratch).
func (p *Pass) Bytes() int {
	n := 0
	for _, t := range p.allocated {
		n += t.Numel() * t.DType.Size()
	}
	return n
}
