package kernels_test

import (
	"math/rand"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// TestNilGradients: a backward with some gradients nil skips them and gives the others exactly as
// the full call does.
func TestNilGradients(t *testing.T) {
	dev := kernels.NewCPUFine(3)
	r := rand.New(rand.NewSource(3))
	B, F, T, D, H := 1, 2, 8, 16, 2
	N, hd := F*T, D/H
	x, w, g := rnd(dev, r, 1, B, N, D), rnd(dev, r, 1, D, D), rnd(dev, r, 1, B, N, D)
	mod := rnd(dev, r, 1, B, F, 6, D)
	mean, rstd, o := dev.Alloc(kernels.F32, B*N), dev.Alloc(kernels.F32, B*N), dev.Alloc(kernels.F32, B, N, D)
	dev.LayerNorm(o, mean, rstd, x, w.View(0, D), w.View(D, D), 1e-6)
	q, k, v := rnd(dev, r, 1, B, N, H, hd), rnd(dev, r, 1, B, N, H, hd), rnd(dev, r, 1, B, N, H, hd)
	ao, lse := dev.Alloc(kernels.F32, B, N, H, hd), dev.Alloc(kernels.F32, B, H, N)
	dev.Attention(ao, lse, q, k, v, T, 0)
	gq := rnd(dev, r, 1, B, N, H, hd)

	// each case: the gradient shapes and a call taking them (nil = not wanted)
	cases := []struct {
		name   string
		shapes [][]int
		call   func(gs []*kernels.Tensor)
	}{
		{"LinearBack", [][]int{{B, N, D}, {D, D}, {D}}, func(gs []*kernels.Tensor) { dev.LinearBack(gs[0], gs[1], gs[2], g, x, w) }},
		{"LayerNormBack", [][]int{{B, N, D}, {D}, {D}}, func(gs []*kernels.Tensor) {
			dev.LayerNormBack(gs[0], gs[1], gs[2], g, x, mean, rstd, w.View(0, D))
		}},
		{"RMSNormBack", [][]int{{B, N, D}, {D}}, func(gs []*kernels.Tensor) { dev.RMSNormBack(gs[0], gs[1], g, x, rstd, w.View(0, D)) }},
		{"ModulateBack", [][]int{{B, N, D}, {B, F, 6, D}}, func(gs []*kernels.Tensor) { dev.ModulateBack(gs[0], gs[1], g, x, mod, 0, 1, T) }},
		{"GateAddBack", [][]int{{B, N, D}, {B, F, 6, D}}, func(gs []*kernels.Tensor) { dev.GateAddBack(gs[0], gs[1], g, x, mod, 2, T) }},
		{"AttentionBack", [][]int{{B, N, H, hd}, {B, N, H, hd}, {B, N, H, hd}}, func(gs []*kernels.Tensor) {
			dev.AttentionBack(gs[0], gs[1], gs[2], gq, ao, lse, q, k, v, T, 0)
		}},
		{"AddBroadcastBack", [][]int{{6, D}, {B, F, 6, D}}, func(gs []*kernels.Tensor) { dev.AddBroadcastBack(gs[0], gs[1], mod) }},
	}
	for _, tc := range cases {
		full := make([]*kernels.Tensor, len(tc.shapes))
		for i, s := range tc.shapes {
			full[i] = dev.Alloc(kernels.F32, s...)
		}
		tc.call(full)
		for mask := 0; mask < 1<<len(tc.shapes); mask++ {
			gs := make([]*kernels.Tensor, len(tc.shapes))
			for i, s := range tc.shapes {
				if mask&(1<<i) != 0 {
					gs[i] = dev.Alloc(kernels.F32, s...)
				}
			}
			tc.call(gs)
			for i := range gs {
				if gs[i] == nil {
					continue
				}
				got, want := host(dev, gs[i]), host(dev, full[i])
				for j := range got {
					if got[j] != want[j] {
						t.Fatalf("%s with gradients %b: gradient %d element %d = %g, full call %g", tc.name, mask, i, j, got[j], want[j])
					}
				}
			}
		}
	}
}

// TestShapeErrors: a mismatched shape panics with a message naming the op and the shapes.
func TestShapeErrors(t *testing.T) {
	dev := kernels.CPU()
	a, b := dev.Alloc(kernels.F32, 4, 8), dev.Alloc(kernels.F32, 3, 8)
	w := dev.Alloc(kernels.F32, 5, 8)
	for name, fn := range map[string]func(){
		"Linear":    func() { dev.Linear(b, a, w, nil) },
		"LayerNorm": func() { dev.LayerNorm(a, b.View(0, 3), b.View(0, 4), a, nil, nil, 1e-6) },
		"Add":       func() { dev.Add(a, a, b) },
		"Modulate":  func() { dev.Modulate(a, a, b, 0, 1, 2) },
		"Attention": func() { dev.Attention(a, b, a, b, b, 0, 0) },
		"Patchify":  func() { dev.Patchify(a, b, 1, 1, 1, 3, 3) },
		"AdamW":     func() { dev.AdamW(a, a, a, a, 1, 0.9, 0.9, 1e-8, 0, 0) },
	} {
		func() {
			defer func() {
				msg, _ := recover().(string)
				if !strings.Contains(msg, name) {
					t.Errorf("%s: panic %q does not name the op", name, msg)
				}
			}()
			fn()
		}()
	}
}
