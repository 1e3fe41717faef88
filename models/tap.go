package models

// Frozen returns a view of m that shares its weights W but has no gradients (G nil): Backward and
// BackwardHidden through it give input gradients and leave m.G untouched. The adversarial objective
// differentiates the critic this way for the generator's GAN loss (OBJECTIVES.md: the generator's
// gradient flows through the critic's backbone into x without updating the critic).
func (m *DiT) Frozen() *DiT {
	return &DiT{Cfg: m.Cfg, Dev: m.Dev, Table: m.Table, W: m.W, index: m.index, w: m.w,
		g: weights{Blocks: make([]block, m.Cfg.Layers)}}
}
