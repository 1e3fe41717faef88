package models

import (
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// TestDryDeviceCounts: the counting device's bytes against hand counts. A pass built on it holds
// exactly Pass.Bytes(); Free gives everything back; the kept bf16 copies follow kernels/cuda's rules
// (one per marked weight matrix a GEMM reads, one per fp32 activation an op writes or attention
// reads, counted once however often, released with the tensor); the peak is the most held at once.
func TestDryDeviceCounts(t *testing.T) {
	d := NewDryDevice()
	cfg, _ := Preset("tiny")
	cfg.Layers = 2
	s := Shape{B: 1, F: 2, H: 4, W: 4, L: 3}
	m := New(d, cfg, true)
	w := int64(m.W.Numel()+m.G.Numel()) * 4
	if d.InUse() != w {
		t.Fatalf("weights and gradients: %d bytes counted, want %d", d.InUse(), w)
	}
	p := m.NewPass(s)
	if got, want := d.InUse()-w, int64(p.Bytes()); got != want {
		t.Fatalf("pass: %d bytes counted, Pass.Bytes %d", got, want)
	}
	p.Free()
	if d.InUse() != w {
		t.Fatalf("after Pass.Free: %d bytes, want %d", d.InUse(), w)
	}

	// Hand-counted copies: a [6, D] activation through a Linear with a marked [D, D] weight.
	D := cfg.Dim
	wt := d.Alloc(kernels.F32, D, D)
	d.MarkWeights(wt)
	x, y := d.Alloc(kernels.F32, 6, D), d.Alloc(kernels.F32, 6, D)
	base := d.InUse()
	d.Linear(y, x, wt, nil)
	d.Linear(y, x, wt, nil)
	scr := d.scrCap
	if got, want := d.InUse()-base-scr, int64(2*D*D); got != want {
		t.Errorf("weight copy: %d bytes, want %d", got, want)
	}
	if want := int64((2*6*D+512+255)&^255) * 1; scr < want {
		t.Errorf("scratch %d bytes, want ≥ %d (the activation's bf16 conversion)", scr, want)
	}
	d.LayerNorm(y, nil, nil, x, nil, nil, 1e-6) // y gets a kept copy
	d.GELU(y, x)                                // the same address: no second copy
	if got, want := d.InUse()-base-scr, int64(2*D*D+2*6*D); got != want {
		t.Errorf("after LayerNorm and GELU into y: %d bytes of copies, want %d", got, want)
	}
	d.Free(y)
	d.Free(wt)
	if got := d.InUse() - base - scr; got != -int64(4*6*D+4*D*D) {
		t.Errorf("after freeing y and the weight: %d bytes relative to before, want %d", got, -(4*6*D + 4*D*D))
	}
	if d.Peak() < base+scr+int64(2*D*D+2*6*D) {
		t.Errorf("peak %d below the most held at once", d.Peak())
	}

	// Attention reads keep copies of q, k, v (head dim 64 or 128 only: the fused kernels).
	for _, hd := range []int{32, 64} {
		q := d.Alloc(kernels.F32, 1, 8, 2, hd)
		k := d.Alloc(kernels.F32, 1, 16, 2, hd)
		v := d.Alloc(kernels.F32, 1, 16, 2, hd)
		o := d.Alloc(kernels.F32, 1, 8, 2, hd)
		lse := d.Alloc(kernels.F32, 1, 2, 8)
		before := d.InUse()
		d.Attention(o, lse, q, k, v, 0, 0)
		want := int64(0)
		if hd == 64 {
			want = 2 * int64(2*8*2*hd+2*16*2*hd)
		}
		if got := d.InUse() - before; got != want {
			t.Errorf("attention, head dim %d: %d bytes of copies, want %d", hd, got, want)
		}
	}
}

// TestBF16OperandsBytes: Shape.BF16Operands on a device whose GEMMs read bf16 (the counting device)
// stores exactly the GEMM-only activations in bf16 — per block h1, att, n3, catt, h2 ([B·N, D]) and
// f1g ([B·N, ffn]), the head's input, and the backward's gradients of both attentions' outputs
// (dAtt, dCatt [B·N, D]) — 2 bytes an element fewer in the pass, and one forward and
// backward keeps 2 bytes an element fewer of bf16 copies (those tensors need none); with them, as
// the device keeps the GELU's pre-activation in bf16 (kernels.GELUPreBF16, as kernels/cuda's GEMM
// epilogues do), each block's f1 and the backward's dF1 and dF1g ([B·N, ffn]) are bf16 too, and
// dF1 needs no copy. On the CPU it changes nothing. A frozen model with bf16 weights holds 2 bytes
// a parameter and no gradients.
func TestBF16OperandsBytes(t *testing.T) {
	cfg, _ := Preset("tiny")
	cfg.Layers, cfg.Heads = 3, 1 // head dim 64: the fused attention, which keeps copies of its operands
	s := Shape{B: 2, F: 2, H: 4, W: 6, L: 5}
	BN := s.B * s.F * (s.H / 2) * (s.W / 2)
	ops := int64(cfg.Layers*(5*BN*cfg.Dim+BN*cfg.FFNDim) + 3*BN*cfg.Dim) // bf16 elements
	pre := int64((cfg.Layers + 2) * BN * cfg.FFNDim)                     // f1 per block, dF1g and dF1: bf16 too (GELUPreBF16)
	held := func(dev kernels.Device, operands bool) (pass, copies int64) {
		m := New(dev, cfg, true)
		ss := s
		ss.BF16Operands = operands
		p := m.NewPass(ss)
		d, dry := dev.(*DryDevice)
		x := dev.Alloc(kernels.F32, s.B, cfg.InDim, s.F, s.H, s.W)
		tt := dev.Alloc(kernels.F32, s.B, s.F)
		ctx := dev.Alloc(kernels.F32, s.B, s.L, cfg.TextDim)
		out := m.Forward(p, x, tt, ctx)
		m.Backward(p, out)
		if dry {
			for _, it := range d.Labels(true) {
				if it.Label == shadowLabel("models.(*Pass).allocDT") {
					copies = it.Bytes
				}
			}
		}
		return int64(p.Bytes()), copies
	}
	p32, c32 := held(NewDryDevice(), false)
	p16, c16 := held(NewDryDevice(), true)
	if p32-p16 != 2*(ops+pre) {
		t.Errorf("dry device: the pass holds %d bytes with bf16 operands, %d without: %d fewer, want 2·(%d + %d)", p16, p32, p32-p16, ops, pre)
	}
	if dF1 := int64(2 * BN * cfg.FFNDim); c32-c16 != 2*ops+dF1 {
		t.Errorf("dry device: bf16 copies of pass tensors %d bytes with bf16 operands, %d without: want %d fewer", c16, c32, 2*ops+dF1)
	}
	if a, b := func() int { p, _ := held(kernels.NewCPU(1), true); return int(p) }(), func() int { p, _ := held(kernels.NewCPU(1), false); return int(p) }(); a != b {
		t.Errorf("CPU: the pass holds %d bytes with BF16Operands, %d without: want the same", a, b)
	}

	d := NewDryDevice()
	f := NewFrozen(d, cfg, kernels.BF16)
	_, P := cfg.Params()
	if f.G != nil || f.W.DType != kernels.BF16 || d.InUse() != int64(2*P) {
		t.Errorf("NewFrozen bf16: %d bytes, W %v, G %v: want 2·%d bytes, bf16 W, no G", d.InUse(), f.W.DType, f.G, P)
	}
}
