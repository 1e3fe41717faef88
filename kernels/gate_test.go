package kernels_test

import (
	"math"
	"math/rand"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// accWords writes float64 values into accumulator words (kernels.F64Acc's layout: low word first).
func accWords(vs ...float64) []float32 {
	h := make([]float32, 0, 2*len(vs))
	for _, v := range vs {
		b := math.Float64bits(v)
		h = append(h, math.Float32frombits(uint32(b)), math.Float32frombits(uint32(b>>32)))
	}
	return h
}

// TestStepGate: the gate against its definition written out here (kernels/gate.go): ok only when
// every masked role's Σ g², every deferred sum and the host's losses are finite; a role outside
// the mask is not looked at (its NaN does not count, its clip and count stay); the clip factor in
// float64; the counts go up only when ok.
func TestStepGate(t *testing.T) {
	dev := kernels.NewCPUFine(2)
	const R = 3
	nan, inf := math.NaN(), math.Inf(1)
	cases := []struct {
		name   string
		sq     []float64 // R roles, then the deferred sums
		mask   uint32
		clip   float64
		hostOK bool
		ok     bool
	}{
		{"finite, clip off", []float64{4, 9, 16, 0.5}, 0b111, 0, true, true},
		{"finite, clip on", []float64{4, 0.01, 1e6, 0.5, 2}, 0b111, 1.5, true, true},
		{"NaN role", []float64{4, nan, 16}, 0b011, 1, true, false},
		{"NaN outside the mask", []float64{4, 9, nan, 3}, 0b011, 1, true, true},
		{"Inf deferred", []float64{4, 9, 16, 1, inf}, 0b001, 1, true, false},
		{"host loss", []float64{4, 9, 16}, 0b101, 1, false, false},
	}
	for _, c := range cases {
		buf := dev.Alloc(kernels.F32, 2*len(c.sq))
		dev.FromHost(buf, accWords(c.sq...))
		gate := dev.Alloc(kernels.F32, kernels.GateLen(R))
		before := make([]float32, kernels.GateLen(R))
		for i := 0; i < R; i++ {
			before[2+2*i] = 7 // a stale clip factor
			kernels.SetGateCount(before, i, 10*i+1)
		}
		dev.FromHost(gate, before)
		dev.StepGate(gate, buf, c.mask, R, len(c.sq)-R, c.clip, c.hostOK)
		got := make([]float32, gate.Numel())
		dev.ReadAsync(gate).Wait(got)
		if kernels.GateOK(got) != c.ok {
			t.Errorf("%s: ok = %v, want %v", c.name, kernels.GateOK(got), c.ok)
		}
		for i := 0; i < R; i++ {
			in := c.mask>>i&1 != 0
			wantClip, wantCount := float32(7), 10*i+1
			if in {
				wantClip = 1
				if gn := math.Sqrt(c.sq[i]); c.clip > 0 && gn > c.clip {
					wantClip = float32(c.clip / (gn + 1e-6))
				}
				if c.ok {
					wantCount++
				}
			}
			if g := kernels.GateClip(got, i); math.Float32bits(g) != math.Float32bits(wantClip) {
				t.Errorf("%s: role %d clip factor %v, want %v", c.name, i, g, wantClip)
			}
			if n := kernels.GateCount(got, i); n != wantCount {
				t.Errorf("%s: role %d step count %d, want %d", c.name, i, n, wantCount)
			}
		}
	}
}

// TestAdamWGated: with the gate ok, AdamWGated equals Scale(g, clip) then AdamW at the gate's step
// count, bit for bit (also with m = g, β1 = 0), and g is left unscaled; with the gate not ok,
// nothing changes. EMAGated: EMA when ok, an exact copy at decay 0, nothing when not ok.
func TestAdamWGated(t *testing.T) {
	r := rand.New(rand.NewSource(5))
	dev := kernels.NewCPUFine(3)
	const n = 1001
	rnd := func(scale float64, pos bool) *kernels.Tensor {
		h := make([]float32, n)
		for i := range h {
			h[i] = float32(r.NormFloat64() * scale)
			if pos {
				h[i] = float32(math.Abs(float64(h[i])))
			}
		}
		x := dev.Alloc(kernels.F32, n)
		dev.FromHost(x, h)
		return x
	}
	host := func(x *kernels.Tensor) []float32 { h := make([]float32, n); dev.ToHost(h, x); return h }
	clone := func(x *kernels.Tensor) *kernels.Tensor { y := dev.Alloc(kernels.F32, n); dev.Copy(y, x); return y }
	same := func(what string, a, b []float32) {
		t.Helper()
		for i := range a {
			if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
				t.Fatalf("%s[%d] = %v, want %v", what, i, a[i], b[i])
			}
		}
	}
	for _, c := range []struct {
		clip  float32
		step  int
		beta1 float32
	}{{1, 1, 0.9}, {0.37, 5, 0.9}, {0.5, 3, 0}} {
		w, g, m, v := rnd(1, false), rnd(2, false), rnd(0.1, false), rnd(0.01, true)
		if c.beta1 == 0 {
			m = g
		}
		gate := dev.Alloc(kernels.F32, kernels.GateLen(2))
		h := make([]float32, kernels.GateLen(2))
		h[0], h[2+2*1] = 1, c.clip
		kernels.SetGateCount(h, 1, c.step)
		dev.FromHost(gate, h)
		// The reference: today's host path on copies.
		w2, g2, m2, v2 := clone(w), clone(g), clone(m), clone(v)
		if c.beta1 == 0 {
			m2 = g2
		}
		g0 := host(g)
		dev.Scale(g2, c.clip)
		dev.AdamW(w2, g2, m2, v2, 1e-2, c.beta1, 0.99, 1e-8, 0.1, c.step)
		dev.AdamWGated(w, g, m, v, gate, 1, 1e-2, c.beta1, 0.99, 1e-8, 0.1)
		same("w", host(w), host(w2))
		same("m", host(m), host(m2))
		same("v", host(v), host(v2))
		if c.beta1 != 0 {
			same("g (not scaled in place)", host(g), g0)
		}
		// Not ok: nothing moves.
		h[0] = 0
		dev.FromHost(gate, h)
		w0, m0, v0 := host(w), host(m), host(v)
		dev.AdamWGated(w, g, m, v, gate, 1, 1e-2, c.beta1, 0.99, 1e-8, 0.1)
		same("w after a skipped step", host(w), w0)
		same("m after a skipped step", host(m), m0)
		same("v after a skipped step", host(v), v0)
	}

	ema, w := rnd(1, false), rnd(1, false)
	gate := dev.Alloc(kernels.F32, kernels.GateLen(1))
	e0 := host(ema)
	dev.EMAGated(ema, w, gate, 0.9) // ok = 0 (zeroed gate)
	same("ema after a skipped step", host(ema), e0)
	dev.FromHost(gate, []float32{1, 0, 1, 0})
	want := clone(ema)
	dev.EMA(want, w, 0.9)
	dev.EMAGated(ema, w, gate, 0.9)
	same("ema", host(ema), host(want))
	hw := host(w)
	hw[3] = float32(math.Copysign(0, -1)) // a copy keeps −0
	dev.FromHost(w, hw)
	dev.EMAGated(ema, w, gate, 0)
	same("ema copy", host(ema), hw)
}

// TestReadAsync: the CPU readback copies at ReadAsync (a later write does not show), and several
// may be pending at once.
func TestReadAsync(t *testing.T) {
	dev := kernels.NewCPUFine(1)
	x := dev.Alloc(kernels.F32, 3)
	dev.FromHost(x, []float32{1, 2, 3})
	a := dev.ReadAsync(x)
	dev.FromHost(x, []float32{4, 5, 6})
	b := dev.ReadAsync(x)
	ga, gb := make([]float32, 3), make([]float32, 3)
	if err := b.Wait(gb); err != nil {
		t.Fatal(err)
	}
	if err := a.Wait(ga); err != nil {
		t.Fatal(err)
	}
	if ga[0] != 1 || ga[2] != 3 || gb[0] != 4 || gb[2] != 6 {
		t.Fatalf("readbacks %v %v, want [1 2 3] [4 5 6]", ga, gb)
	}
}
