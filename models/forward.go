package models

import (
	"fmt"

	"github.com/fewstep/fewstep/kernels"
)

// Forward runs the DiT: x [B, C, F, H, W] latents, t [B, F] per-frame timesteps in [0, 1000],
// ctx [B, L, text_dim] text embeddings → the velocity [B, C_out, F, H, W], owned by p and valid
// until p's next forward. Self-attention is bidirectional, or block-causal over chunks of
// p.S.ChunkFrames frames when that is > 0. Every activation backward needs is kept in p.
func (m *DiT) Forward(p *Pass, x, t, ctx *kernels.Tensor) *kernels.Tensor {
	p.checkInputs(m, x, t, ctx)
	p.chunk.active = false
	return m.forward(p, x, t, ctx, nil)
}

func (p *Pass) checkInputs(m *DiT, x, t, ctx *kernels.Tensor) {
	s := p.S
	if x.Numel() != s.B*p.C*s.F*s.H*s.W || t.Numel() != s.B*s.F || ctx.Numel() != s.B*s.L*m.Cfg.TextDim {
		panic(fmt.Sprintf("models: forward of a pass for %+v (C %d, text_dim %d) got x %v, t %v, ctx %v",
			s, p.C, m.Cfg.TextDim, x.Shape, t.Shape, ctx.Shape))
	}
}

// forward is Forward, and ForwardChunk when c != nil (self-attention over c's K/V plus the chunk).
func (m *DiT) forward(p *Pass, x, t, ctx *kernels.Tensor, c *Cache) *kernels.Tensor {
	d, w, cfg, s := m.Dev, &m.w, m.Cfg, p.S
	B, F, H, W, hw := s.B, s.F, s.H, s.W, p.hw
	frame0 := 0
	if c != nil {
		frame0 = p.chunk.frame0 // c.Frames(), or an earlier chunk's (ForwardChunkAt)
	}

	// patch embedding: a linear layer on each 1×2×2 patch
	d.Patchify(p.xp, x, B, p.C, F, H, W)          // [B, N, 4C]
	d.Linear(p.tokF, p.xpF, w.Patch.W, w.Patch.B) // [B·N, D]

	// text embedding
	d.Copy(p.ctxIn, ctx)                          // [B·L, text_dim]
	d.Linear(p.c1, p.ctxIn, w.Text0.W, w.Text0.B) // [B·L, D]
	d.GELU(p.c1g, p.c1)                           // [B·L, D]
	d.Linear(p.ctx, p.c1g, w.Text2.W, w.Text2.B)  // [B·L, D]

	// time embedding, per frame
	d.Copy(p.tIn, t)                                  // [B·F]
	d.Sinusoid(p.tsin, p.tIn, cfg.FreqDim/2)          // [B·F, 256] = [cos, sin]
	d.Linear(p.e1, p.tsin, w.Time0.W, w.Time0.B)      // [B·F, D]
	d.SiLU(p.e1s, p.e1)                               // [B·F, D]
	d.Linear(p.e, p.e1s, w.Time2.W, w.Time2.B)        // [B·F, D] e
	d.SiLU(p.es, p.e)                                 // [B·F, D]
	d.Linear(p.e0F, p.es, w.TimeProj.W, w.TimeProj.B) // [B·F, 6·D] e0

	for l := range p.blocks {
		m.block(p, l, c, frame0, false)
		if l+1 == p.tapBlocks { // ForwardTo (tap.go): the features of block l, no further blocks nor head
			return p.blocks[l].x3
		}
	}

	// head: (shift, scale) = head.modulation + e
	for i, r := range p.eRows {
		d.Copy(p.eDupRows[2*i], r)   // [D]
		d.Copy(p.eDupRows[2*i+1], r) // [D]
	}
	d.AddBroadcast(p.hmodF, w.HeadModulation, p.eDup)                                                         // [B·F, 2, D]
	xL := p.blocks[len(p.blocks)-1].x3                                                                        // [B, N, D]
	kernels.LayerNormModulate(d, p.lnH, p.hin, p.meanH, p.rstdH, xL, p.hmod, 0, 1, hw, cfg.Eps, !p.inference) // [B, N, D]
	d.Linear(p.yF, p.hinF, w.Head.W, w.Head.B)                                                                // [B·N, 4·C_out]
	d.Unpatchify(p.out, p.y, B, p.Co, F, H, W)                                                                // [B, C_out, F, H, W]
	return p.out
}

// block runs transformer block l on p.blocks[l].x (ForwardChunk's self-attention over c's K/V plus
// the chunk when c != nil). replay: Backward recomputing the block of a recompute pass (its layers
// share one gather buffer, so layer l's keys are gathered again: the same cached frames, and the
// chunk's own K/V just recomputed).
func (m *DiT) block(p *Pass, l int, c *Cache, frame0 int, replay bool) {
	next := l + 1 // a sharded DiT gathers the block's weights and prefetches the next's (fsdp.go)
	if replay || l+1 == p.tapBlocks {
		next = -1
	}
	m.useBlock(l, next)
	d, w, cfg, s := m.Dev, &m.w, m.Cfg, p.S
	F, hw := s.F, p.hw
	a, bw := &p.blocks[l], &w.Blocks[l]
	// (shift1, scale1, gate1, shift2, scale2, gate2) = modulation + e0
	d.AddBroadcast(a.modF, bw.Modulation, p.e0) // [B·F, 6, D]

	// self-attention
	kernels.LayerNormModulate(d, a.ln1, a.h1, a.mean1, a.rstd1, a.x, a.mod, 0, 1, hw, cfg.Eps, !p.inference) // [B, N, D] LN·(1+scale1)+shift1
	kernels.LinearBatched(d, a.qkv, a.h1F, bw.SelfQKVW, bw.SelfQKVB)                                         // [3][B·N, D] q, k, v
	kernels.RMSNormRoPE(d, a.qr4, a.rstdQ, a.q, bw.Self.NormQ, cfg.Eps, F, p.h, p.w, frame0)                 // [B, N, H, hd]
	kernels.RMSNormRoPE(d, a.kr4, a.rstdK, a.k, bw.Self.NormK, cfg.Eps, F, p.h, p.w, frame0)                 // [B, N, H, hd]
	switch {
	case c != nil && replay:
		k, v := p.chunk.regather(d, p, l, c)                              // [B, Nc+N, H, hd] cache + chunk
		d.Attention(a.att4, a.lse, a.qr4, k, v, p.chunk.ct, p.chunk.qOff) // [B, N, H, hd]
	case c != nil:
		p.checkChunkKV()
		k, v := p.chunk.gather(d, l, a, c)                                // [B, Nc+N, H, hd] cache + chunk
		d.Attention(a.att4, a.lse, a.qr4, k, v, p.chunk.ct, p.chunk.qOff) // [B, N, H, hd]
		if p.chunk.commitNow {
			m.commitLayer(c, p, l) // ForwardChunkCommit: this layer's K/V into the cache now
		}
	case p.selfAttn != nil:
		p.selfAttn(l, a.att4, a.lse, a.qr4, a.kr4, a.v4)
	default:
		d.Attention(a.att4, a.lse, a.qr4, a.kr4, a.v4, s.ChunkFrames*hw, 0) // [B, N, H, hd]
	}
	d.Linear(a.o, a.att, bw.Self.O.W, bw.Self.O.B)      // [B·N, D]
	kernels.GateAddTo(d, a.x1, a.x, a.o3, a.mod, 2, hw) // [B, N, D] x1 = x + gate1·o

	// cross-attention over the context, no RoPE, no mask
	d.LayerNorm(a.n3, a.mean3, a.rstd3, a.x1, bw.Norm3W, bw.Norm3B, cfg.Eps)         // [B, N, D]
	d.Linear(a.cq, a.n3F, bw.Cross.Q.W, bw.Cross.Q.B)                                // [B·N, D]
	d.RMSNorm(a.cqr, a.rstdCq, a.cq, bw.Cross.NormQ, cfg.Eps)                        // [B·N, D]
	kernels.LinearBatched(d, a.ckv, p.ctx, bw.CrossKVW, bw.CrossKVB)                 // [2][B·L, D] k, v
	d.RMSNorm(a.ckr, a.rstdCk, a.ck, bw.Cross.NormK, cfg.Eps)                        // [B·L, D]
	d.Attention(a.catt4, a.clse, a.cqr4, a.ckr4, a.cv4, 0, 0)                        // [B, N, H, hd]
	kernels.LinearResidual(d, a.x2, a.co3, a.catt, bw.Cross.O.W, bw.Cross.O.B, a.x1) // [B, N, D] x2 = x1 + o

	// feed-forward
	kernels.LayerNormModulate(d, a.ln2, a.h2, a.mean2, a.rstd2, a.x2, a.mod, 3, 4, hw, cfg.Eps, !p.inference) // [B, N, D] LN·(1+scale2)+shift2
	kernels.LinearGELU(d, a.f1g, a.f1, a.h2F, bw.FFN0.W, bw.FFN0.B, !p.inference)                             // [B·N, ffn]
	d.Linear(a.f2, a.f1g, bw.FFN2.W, bw.FFN2.B)                                                               // [B·N, D]
	kernels.GateAddTo(d, a.x3, a.x2, a.f23, a.mod, 5, hw)                                                     // [B, N, D] x3 = x2 + gate2·y
}

// Backward backpropagates dOut (shaped like Forward's output) through p's last forward. With m.G
// it accumulates every parameter's gradient into m.G; it always returns dx [B, C, F, H, W] (owned
// by p, overwritten by each call). No gradient flows into t, the context, or a KV cache.
func (m *DiT) Backward(p *Pass, dOut *kernels.Tensor) *kernels.Tensor {
	return m.BackwardHidden(p, dOut, -1, nil)
}

// BackwardHidden is Backward with an extra gradient dHidden [B, N, D] on block layer's output
// (Pass.Hidden(layer)), e.g. from a discriminator head on the critic's features. dOut may be nil
// (then only dHidden is backpropagated).
func (m *DiT) BackwardHidden(p *Pass, dOut *kernels.Tensor, layer int, dHidden *kernels.Tensor) *kernels.Tensor {
	if p.inference {
		panic("models: Backward on a pass made by NewInferencePass (use NewPass)")
	}
	m.backwards++
	done := m.GradDone // reports each range of G when final (dit.go); not for a sharded DiT
	if m.G == nil || m.fs != nil {
		done = nil
	}
	m.GradDone = nil
	d, w, s, g := m.Dev, &m.w, p.S, &p.g
	B, F, H, W, hw := s.B, s.F, s.H, s.W, p.hw
	train := m.G != nil
	gw := &m.g // parameter-gradient views; every one nil for a frozen network ("not wanted")
	for _, t := range g.global {
		d.Zero(t)
	}
	frame0 := 0
	if p.chunk.active {
		frame0 = p.chunk.frame0
	}
	batched := kernels.BatchesLinears(d) // LinearBatchedBack takes the bias gradients of q, k, v and of cross k, v
	var dMod, dHmod *kernels.Tensor      // modulation gradients, only wanted for the parameters
	if train {
		dMod, dHmod = g.dMod, g.dHmod
	}

	// head
	xL := p.blocks[len(p.blocks)-1].x3
	if dOut != nil {
		if dOut.Numel() != p.out.Numel() {
			panic(fmt.Sprintf("models: backward: dOut %v, output %v", dOut.Shape, p.out.Shape))
		}
		d.UnpatchifyBack(g.dY, dOut, B, p.Co, F, H, W)                                                                // [B, N, 4·C_out]
		d.LinearBack(g.dHin, gw.Head.W, gw.Head.B, g.dYF, p.hinF, w.Head.W)                                           // [B·N, D]
		kernels.ModulateLayerNormBack(d, g.dX, dHmod, g.dHin3, g.dLnH, p.lnH, xL, p.meanH, p.rstdH, p.hmod, 0, 1, hw) // [B, N, D]
		if train {
			d.AddBroadcastBack(gw.HeadModulation, g.dEDup, g.dHmodF) // [2·D], [B·F, 2, D]
			for i, r := range g.deRows {
				d.Axpy(r, 1, g.dEDupRows[2*i])   // [D]
				d.Axpy(r, 1, g.dEDupRows[2*i+1]) // [D]
			}
		}
	}

	top := len(p.blocks) - 1
	if dOut == nil && layer >= 0 && dHidden != nil && layer < top {
		top = layer // the blocks above the features only carry zero gradients
	}
	for l := top; l >= 0; l-- {
		a, bw, gb := &p.blocks[l], &w.Blocks[l], &gw.Blocks[l]
		m.useBlock(l, l-1)  // sharded: the block's weights; the one below prefetched
		m.beginBlockGrad(l) // sharded: its gradient slot zeroed
		if p.recompute && l < len(p.blocks)-1 {
			m.block(p, l, p.chunk.replayCache(), frame0, true) // this block's activations again (recompute.go)
		}
		if l == layer && dHidden != nil {
			d.Axpy(g.dX, 1, dHidden) // [B, N, D]
		}
		for _, t := range g.block {
			d.Zero(t)
		}

		// feed-forward; g.dX, the gradient of x3, becomes that of x2
		// A bias gradient whose sums the op before took (kernels.BackBiaser: the gradient's column
		// sums from the kernel that wrote it) is not passed to the LinearBack again (nil).
		kernels.ZeroLazy(d, g.dF23)
		b2 := gb.FFN2.B
		if kernels.GateAddBackBias(d, g.dF23, dMod, b2, g.dX, a.f23, a.mod, 5, hw) { // [B, N, D]
			b2 = nil
		}
		kernels.ZeroLazy(d, g.dF1g)
		d.LinearBack(g.dF1g, gb.FFN2.W, b2, g.dF2, a.f1g, bw.FFN2.W) // [B·N, ffn]
		kernels.ZeroLazy(d, g.dF1)
		b0 := gb.FFN0.B                                       // ffn.0's bias gradient, unless taken with dF1
		if kernels.GELUBackBias(d, g.dF1, b0, g.dF1g, a.f1) { // [B·N, ffn]
			b0 = nil
		}
		kernels.ZeroLazy(d, g.dH2)
		d.LinearBack(g.dH2, gb.FFN0.W, b0, g.dF1, a.h2F, bw.FFN0.W) // [B·N, D]
		bco := gb.Cross.O.B
		if kernels.ModulateLayerNormBackBias(d, g.dX, dMod, bco, g.dH23, g.dLn2, a.ln2, a.x2, a.mean2, a.rstd2, a.mod, 3, 4, hw) { // [B, N, D]
			bco = nil
		}

		// cross-attention; g.dX becomes the gradient of x1
		kernels.ZeroLazy(d, g.dCatt)
		d.LinearBack(g.dCatt, gb.Cross.O.W, bco, g.dXF, a.catt, bw.Cross.O.W)                           // [B·N, D]
		d.AttentionBack(g.dCq4, g.dCk4, g.dCv4, g.dCatt4, a.catt4, a.clse, a.cqr4, a.ckr4, a.cv4, 0, 0) // [B, N|L, H, hd]
		kernels.ZeroLazy(d, g.dCqPre)
		bcq := gb.Cross.Q.B
		if kernels.RMSNormBackBias(d, g.dCqPre, gb.Cross.NormQ, bcq, g.dCq, a.cq, a.rstdCq, bw.Cross.NormQ) { // [B·N, D]
			bcq = nil
		}
		kernels.ZeroLazy(d, g.dN3)
		d.LinearBack(g.dN3, gb.Cross.Q.W, bcq, g.dCqPre, a.n3F, bw.Cross.Q.W) // [B·N, D]
		if train {                                                            // the context's path only carries parameter gradients
			kernels.ZeroLazy(d, g.dCkPre)
			// k's bias gradient: with the norm's backward, or with v's in the batched backward
			bck := gb.Cross.K.B
			if kernels.RMSNormBackBias(d, g.dCkPre, gb.Cross.NormK, biasUnless(batched, bck), g.dCk, a.ck, a.rstdCk, bw.Cross.NormK) { // [B·L, D]
				bck = nil
			}
			g.dBCKV[0], g.dBCKV[1] = bck, gb.Cross.V.B
			kernels.LinearBatchedBack(d, g.dCtx, gb.CrossKVW, g.dBCKV[:2], g.dCKV, p.ctx, bw.CrossKVW) // [B·L, D]
		}
		d.LayerNormBack(g.dX, gb.Norm3W, gb.Norm3B, g.dN33, a.x1, a.mean3, a.rstd3, bw.Norm3W) // [B, N, D]

		// self-attention; g.dX becomes the gradient of the block input x
		kernels.ZeroLazy(d, g.dO3)
		bo := gb.Self.O.B
		if kernels.GateAddBackBias(d, g.dO3, dMod, bo, g.dX, a.o3, a.mod, 2, hw) { // [B, N, D]
			bo = nil
		}
		kernels.ZeroLazy(d, g.dAtt)
		d.LinearBack(g.dAtt, gb.Self.O.W, bo, g.dO, a.att, bw.Self.O.W) // [B·N, D]
		if p.chunk.active {
			p.chunk.attentionBack(d, l, a, g) // [B, N, H, hd] through the cache + chunk keys
		} else {
			d.AttentionBack(g.dQr4, g.dKr4, g.dV4, g.dAtt4, a.att4, a.lse, a.qr4, a.kr4, a.v4, s.ChunkFrames*hw, 0) // [B, N, H, hd]
		}
		// q's and k's bias gradients: with the norms' backwards, or with v's in the batched backward
		// (one pass over dQ, dK, dV that also makes their bf16 copy for its GEMMs)
		kernels.ZeroLazy(d, g.dQ)
		bq, bk := gb.Self.Q.B, gb.Self.K.B
		if kernels.RMSNormRoPEBackBias(d, g.dQ, gb.Self.NormQ, biasUnless(batched, bq), g.dQr4, a.q, a.rstdQ, bw.Self.NormQ, F, p.h, p.w, frame0) { // [B·N, D]
			bq = nil
		}
		kernels.ZeroLazy(d, g.dK)
		if kernels.RMSNormRoPEBackBias(d, g.dK, gb.Self.NormK, biasUnless(batched, bk), g.dKr4, a.k, a.rstdK, bw.Self.NormK, F, p.h, p.w, frame0) { // [B·N, D]
			bk = nil
		}
		kernels.ZeroLazy(d, g.dH1)
		g.dBQKV = [3]*kernels.Tensor{bq, bk, gb.Self.V.B}
		kernels.LinearBatchedBack(d, g.dH1, gb.SelfQKVW, g.dBQKV[:], g.dQKV, a.h1F, bw.SelfQKVW)                    // [B·N, D] dH1 = Σ dQ·Wq + dK·Wk + dV·Wv
		kernels.ModulateLayerNormBack(d, g.dX, dMod, g.dH13, g.dLn1, a.ln1, a.x, a.mean1, a.rstd1, a.mod, 0, 1, hw) // [B, N, D]

		if train {
			d.AddBroadcastBack(gb.Modulation, g.dE0, g.dModF) // [6·D], [B·F, 6, D]
		}
		m.endBlockGrad(l) // sharded: the block's gradient reduce-scattered, in flight while the blocks below compute
		if done != nil {
			done(m.blockRange(l))
		}
	}

	if train {
		// time embedding (t itself gets no gradient)
		d.LinearBack(g.dEs, gw.TimeProj.W, gw.TimeProj.B, g.dE0F, p.es, w.TimeProj.W) // [B·F, D]
		d.SiLUBack(g.de, g.dEs, p.e)                                                  // [B·F, D]
		d.LinearBack(g.dE1s, gw.Time2.W, gw.Time2.B, g.de, p.e1s, w.Time2.W)          // [B·F, D]
		d.SiLUBack(g.dE1, g.dE1s, p.e1)                                               // [B·F, D]
		d.LinearBack(nil, gw.Time0.W, gw.Time0.B, g.dE1, p.tsin, w.Time0.W)           // [B·F, 256]

		// text embedding (the context itself gets no gradient)
		d.LinearBack(g.dC1g, gw.Text2.W, gw.Text2.B, g.dCtx, p.c1g, w.Text2.W) // [B·L, D]
		d.GELUBack(g.dC1, g.dC1g, p.c1)                                        // [B·L, D]
		d.LinearBack(nil, gw.Text0.W, gw.Text0.B, g.dC1, p.ctxIn, w.Text0.W)   // [B·L, text_dim]
	}

	// patch embedding
	d.LinearBack(g.dXpF, gw.Patch.W, gw.Patch.B, g.dXF, p.xpF, w.Patch.W) // [B·N, 4C]
	d.PatchifyBack(g.dx, g.dXp, B, p.C, F, H, W)                          // [B, C, F, H, W]
	if done != nil {
		for l := top + 1; l < len(p.blocks); l++ { // no gradient from this backward
			done(m.blockRange(l))
		}
		b0, _ := m.blockRange(0)
		_, head := m.blockRange(m.Cfg.Layers - 1)
		done(0, b0)             // the embeddings
		done(head, m.G.Numel()) // the head
	}
	return g.dx
}

// biasUnless is b, or nil when batched (the bias gradient is left to kernels.LinearBatchedBack).
func biasUnless(batched bool, b *kernels.Tensor) *kernels.Tensor {
	if batched {
		return nil
	}
	return b
}
