package objectives

// The discriminator head of the adversarial objective (DMD2's classifier on the critic's features):
//
//	h [B, N, D]  the critic's hidden states after block tap_layer (on a noised input)
//	a = LayerNorm(h)·w + b              [B·N, D]
//	z = SiLU(fc1(a))                    [B·N, Dh]
//	m = mean over the N tokens of z     [B, Dh]
//	logit = fc2(m)                      [B, 1]   one logit per sample
//
// (fc2 after the token mean equals the mean of per-token logits; it is cheaper.)

import (
	"math"
	"math/rand/v2"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
)

// Parameter names of the head in the discriminator role's buffer (and its checkpoints).
const (
	discNormW = "disc.norm.weight" // [D]
	discNormB = "disc.norm.bias"   // [D]
	discFC1W  = "disc.fc1.weight"  // [Dh, D]
	discFC1B  = "disc.fc1.bias"    // [Dh]
	discFC2W  = "disc.fc2.weight"  // [1, Dh]
	discFC2B  = "disc.fc2.bias"    // [1]
)

// DiscHeadNet is the head's parameter table and initialization (LayerNorm 1/0, xavier-uniform
// linears, zero biases), for a RoleSpec.Custom.
func DiscHeadNet(D, Dh int) *CustomNet {
	var table []models.Param
	off := 0
	add := func(name string, decay bool, shape ...int) {
		table = append(table, models.Param{Name: name, Shape: shape, Offset: off, Decay: decay})
		off += (kernels.Numel(shape) + 63) / 64 * 64
	}
	add(discNormW, false, D)
	add(discNormB, false, D)
	add(discFC1W, true, Dh, D)
	add(discFC1B, false, Dh)
	add(discFC2W, true, 1, Dh)
	add(discFC2B, false, 1)
	return &CustomNet{Table: table, Numel: off, Init: func(w []float32, rng *rand.Rand) {
		for _, p := range table {
			v := w[p.Offset : p.Offset+kernels.Numel(p.Shape)]
			switch p.Name {
			case discNormW:
				for i := range v {
					v[i] = 1
				}
			case discFC1W, discFC2W:
				bound := math.Sqrt(6 / float64(p.Shape[0]+p.Shape[1]))
				for i := range v {
					v[i] = float32((2*rng.Float64() - 1) * bound)
				}
			default:
				clear(v)
			}
		}
	}}
}

// DiscHead runs the head on one shape [B, N, D]; its activations are kept for one Backward.
type DiscHead struct {
	dev      kernels.Device
	B, N, D  int
	Dh       int
	eps      float32
	w, g     map[string]*kernels.Tensor // parameter and gradient views (g nil when frozen)
	h        *kernels.Tensor            // [B·N, D] the input of the last Forward
	a        *kernels.Tensor            // [B·N, D] normalized
	mean, rs *kernels.Tensor            // [B·N]
	u, z     *kernels.Tensor            // [B·N, Dh] fc1 out, after SiLU
	m        *kernels.Tensor            // [B, Dh]
	logit    *kernels.Tensor            // [B, 1]
	dLogit   *kernels.Tensor            // [B, 1]
	dm       *kernels.Tensor            // [B, Dh]
	dz, du   *kernels.Tensor            // [B·N, Dh]
	da, dh   *kernels.Tensor            // [B·N, D]
	host     []float32                  // [B]
}

// NewDiscHead lays the head over a discriminator role's W and G for hidden states [B, N, D].
func NewDiscHead(dev kernels.Device, table []models.Param, W, G *kernels.Tensor, B, N, D int) *DiscHead {
	h := &DiscHead{dev: dev, B: B, N: N, D: D, eps: 1e-6, w: map[string]*kernels.Tensor{}}
	if G != nil {
		h.g = map[string]*kernels.Tensor{}
	}
	for _, p := range table {
		h.w[p.Name] = W.View(p.Offset, p.Shape...)
		if G != nil {
			h.g[p.Name] = G.View(p.Offset, p.Shape...)
		}
	}
	h.Dh = h.w[discFC1W].Shape[0]
	BN := B * N
	h.a, h.da, h.dh = dev.Alloc(kernels.F32, BN, D), dev.Alloc(kernels.F32, BN, D), dev.Alloc(kernels.F32, B, N, D)
	h.mean, h.rs = dev.Alloc(kernels.F32, BN), dev.Alloc(kernels.F32, BN)
	h.u, h.z = dev.Alloc(kernels.F32, BN, h.Dh), dev.Alloc(kernels.F32, B, N, h.Dh)
	h.dz, h.du = dev.Alloc(kernels.F32, B, N, h.Dh), dev.Alloc(kernels.F32, BN, h.Dh)
	h.m, h.dm = dev.Alloc(kernels.F32, B, h.Dh), dev.Alloc(kernels.F32, B, h.Dh)
	h.logit, h.dLogit = dev.Alloc(kernels.F32, B, 1), dev.Alloc(kernels.F32, B, 1)
	h.host = make([]float32, B)
	return h
}

// Forward returns one logit per sample (host copy, valid until the next call) for hidden [B, N, D].
func (h *DiscHead) Forward(hidden *kernels.Tensor) []float32 {
	d := h.dev
	BN := h.B * h.N
	h.h = hidden.Reshape(BN, h.D)
	d.LayerNorm(h.a, h.mean, h.rs, h.h, h.w[discNormW], h.w[discNormB], h.eps) // [B·N, D]
	d.Linear(h.u, h.a, h.w[discFC1W], h.w[discFC1B])                           // [B·N, Dh]
	d.SiLU(h.z.Reshape(BN, h.Dh), h.u)                                         // [B, N, Dh]
	d.MeanTokens(h.m, h.z)                                                     // [B, Dh]
	d.Linear(h.logit, h.m, h.w[discFC2W], h.w[discFC2B])                       // [B, 1]
	d.ToHost(h.host, h.logit)
	return h.host
}

// Backward takes dL/dlogit [B] (host) and returns dL/dhidden [B, N, D] (owned by h). With params it
// accumulates the head's parameter gradients into G; without, the head is only differentiated
// through (the generator's GAN loss).
func (h *DiscHead) Backward(dLogit []float32, params bool) *kernels.Tensor {
	d := h.dev
	BN := h.B * h.N
	gw := func(name string) *kernels.Tensor {
		if !params || h.g == nil {
			return nil
		}
		return h.g[name]
	}
	for _, t := range []*kernels.Tensor{h.dm, h.dz, h.du, h.da, h.dh} {
		d.Zero(t) // backward ops accumulate
	}
	d.FromHost(h.dLogit, dLogit)
	d.LinearBack(h.dm, gw(discFC2W), gw(discFC2B), h.dLogit, h.m, h.w[discFC2W])                                  // [B, Dh]
	d.MeanTokensBack(h.dz, h.dm)                                                                                  // [B, N, Dh]
	d.SiLUBack(h.du, h.dz.Reshape(BN, h.Dh), h.u)                                                                 // [B·N, Dh]
	d.LinearBack(h.da, gw(discFC1W), gw(discFC1B), h.du, h.a, h.w[discFC1W])                                      // [B·N, D]
	d.LayerNormBack(h.dh.Reshape(BN, h.D), gw(discNormW), gw(discNormB), h.da, h.h, h.mean, h.rs, h.w[discNormW]) // [B·N, D]
	return h.dh
}
