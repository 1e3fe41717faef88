package models

import (
	"fmt"

	"github.com/fewstep/fewstep/kernels"
)

// Frozen returns a view of m that shares its weights W but has no gradients (G nil): Backward and
// BackwardHidden through it give input gradients and leave m.G untouched. The adversarial objective
// differentiates the critic this way for the generator's GAN loss (docs/objectives.md: the generator's
// gradient flows through the critic's backbone into x without updating the critic).
func (m *DiT) Frozen() *DiT {
	return &DiT{Cfg: m.Cfg, Dev: m.Dev, Table: m.Table, W: m.W, index: m.index, w: m.w, fs: m.fs,
		g: weights{Blocks: make([]block, m.Cfg.Layers)}}
}

// ForwardTo runs the embeddings and blocks 0…layer only and returns block layer's output [B, N, D]
// (p.Hidden(layer), owned by p): a discriminator's features without the rest of the network.
// BackwardHidden(p, nil, layer, dHidden) then backpropagates from there, skipping the blocks above.
// p's output (Forward's) is not computed.
func (m *DiT) ForwardTo(p *Pass, x, t, ctx *kernels.Tensor, layer int) *kernels.Tensor {
	if layer < 0 || layer >= len(p.blocks) {
		panic(fmt.Sprintf("models: ForwardTo: no block %d (%d blocks)", layer, len(p.blocks)))
	}
	p.tapBlocks = layer + 1
	defer func() { p.tapBlocks = 0 }()
	return m.Forward(p, x, t, ctx)
}
