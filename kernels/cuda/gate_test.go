package cuda

import (
	"fmt"
	"math"
	"math/rand"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// The gated optimizer step (kernels/gate.go, optim.cu step_gate, adamw_gated*, ema_gated) and
// ReadAsync on the GPU against the CPU device, on fresh random inputs: the gate exactly (its
// float64 arithmetic is correctly rounded on both), AdamW to fp32 tolerance (tolF32) with the
// clip on and off, on views that take the float4 path's head, body and tail and on a short
// scalar-only one, with m = g (β1 = 0); a gate that says skip leaves w, m, v and the EMA bit for
// bit as they were.
//
//	go test ./kernels/cuda -run 'TestGatedOptimizerAgainstCPU|TestReadAsyncGPU'
func TestGatedOptimizerAgainstCPU(t *testing.T) {
	g := gpu(t)
	c := kernels.NewCPU(2)
	r := rand.New(rand.NewSource(11))
	nan, inf := math.NaN(), math.Inf(1)
	const R = 3
	words := func(vs ...float64) []float32 {
		h := make([]float32, 0, 2*len(vs))
		for _, v := range vs {
			b := math.Float64bits(v)
			h = append(h, math.Float32frombits(uint32(b)), math.Float32frombits(uint32(b>>32)))
		}
		return h
	}
	put := func(d kernels.Device, h []float32) *kernels.Tensor {
		x := d.Alloc(kernels.F32, len(h))
		d.FromHost(x, h)
		return x
	}
	read := func(x *kernels.Tensor) []float32 {
		h := make([]float32, x.Numel())
		if err := x.Dev.ReadAsync(x).Wait(h); err != nil {
			t.Fatal(err)
		}
		return h
	}
	rnd := func(n int, scale float64, pos bool) []float32 {
		h := make([]float32, n)
		for i := range h {
			h[i] = float32(r.NormFloat64() * scale)
			if pos {
				h[i] = float32(math.Abs(float64(h[i])) + 1e-4)
			}
		}
		return h
	}
	for ci, cs := range []struct {
		sq     []float64
		mask   uint32
		clip   float64
		hostOK bool
		ok     bool
	}{
		{[]float64{4, 9, 16, 0.25}, 0b111, 0, true, true},                                // clip off
		{[]float64{4 + r.Float64(), 0.01, 1e6 * r.Float64(), 1}, 0b111, 1.5, true, true}, // clip on for roles 0 and 2
		{[]float64{4, nan, 16}, 0b011, 1, true, false},                                   // a NaN gradient norm
		{[]float64{4, 9, nan, 2}, 0b011, 1, true, true},                                  // NaN outside the mask
		{[]float64{4, 9, 16, 1, inf}, 0b101, 1, true, false},                             // an Inf loss
		{[]float64{4, 9, 16}, 0b111, 1, false, false},                                    // the host's loss
	} {
		name := fmt.Sprintf("case %d", ci)
		g0 := make([]float32, kernels.GateLen(R))
		for i := 0; i < R; i++ {
			kernels.SetGateCount(g0, i, 3*i+2)
		}
		var gates [2][]float32
		var gt [2]*kernels.Tensor
		for k, d := range []kernels.Device{c, g} {
			gt[k] = put(d, g0)
			d.StepGate(gt[k], put(d, words(cs.sq...)), cs.mask, R, len(cs.sq)-R, cs.clip, cs.hostOK)
			gates[k] = read(gt[k])
		}
		if kernels.GateOK(gates[1]) != cs.ok {
			t.Errorf("%s: GPU gate ok = %v, want %v", name, kernels.GateOK(gates[1]), cs.ok)
		}
		for i := range gates[0] {
			if math.Float32bits(gates[0][i]) != math.Float32bits(gates[1][i]) {
				t.Errorf("%s: gate[%d] GPU %v (bits %#x), CPU %v (bits %#x)", name, i, gates[1][i], math.Float32bits(gates[1][i]), gates[0][i], math.Float32bits(gates[0][i]))
			}
		}
		// AdamW on the gate of each role, on views (head, float4 body, tail) and a short one.
		for _, sz := range []struct{ n, off int }{{1001, 5}, {37, 0}} {
			for role := 0; role < R; role++ {
				for _, beta1 := range []float32{0.9, 0} {
					hw, hg, hm, hv := rnd(sz.n+9, 1, false), rnd(sz.n+9, 2, false), rnd(sz.n+9, 0.1, false), rnd(sz.n+9, 0.01, true)
					var res [2][3][]float32
					for k, d := range []kernels.Device{c, g} {
						w, gr, m, v := put(d, hw), put(d, hg), put(d, hm), put(d, hv)
						if beta1 == 0 {
							m = gr
						}
						at := func(x *kernels.Tensor) *kernels.Tensor { return x.View(sz.off, sz.n) }
						d.AdamWGated(at(w), at(gr), at(m), at(v), gt[k], role, 3e-3, beta1, 0.99, 1e-8, 0.05)
						res[k] = [3][]float32{read(w), read(m), read(v)}
					}
					for j, what := range []string{"w", "m", "v"} {
						if !cs.ok { // skipped: untouched, bit for bit
							before := [3][]float32{hw, hm, hv}[j]
							if beta1 == 0 && j == 1 {
								before = hg
							}
							for i := range before {
								if math.Float32bits(res[1][j][i]) != math.Float32bits(before[i]) {
									t.Fatalf("%s n=%d role %d β1=%g: skipped step changed %s[%d]: %v → %v", name, sz.n, role, beta1, what, i, before[i], res[1][j][i])
								}
							}
							continue
						}
						if e := relErr(res[1][j], res[0][j]); !(e <= tolF32) {
							t.Errorf("%s n=%d role %d β1=%g: %s rel. error %.3g (tolerance %g)", name, sz.n, role, beta1, what, e, tolF32)
						}
						for _, i := range []int{0, sz.off - 1, sz.off + sz.n, sz.n + 8} { // outside the view
							if i >= 0 && i < sz.off || i >= sz.off+sz.n {
								if res[1][j][i] != res[0][j][i] {
									t.Errorf("%s n=%d: %s[%d] outside the view changed", name, sz.n, what, i)
								}
							}
						}
					}
				}
			}
		}
		// EMA (decay 0.95) and the copy (decay 0), gated.
		for _, decay := range []float32{0.95, 0} {
			he, hw := rnd(501, 1, false), rnd(501, 1, false)
			var res [2][]float32
			for k, d := range []kernels.Device{c, g} {
				e := put(d, he)
				d.EMAGated(e, put(d, hw), gt[k], decay)
				res[k] = read(e)
			}
			want := res[0]
			if !cs.ok {
				want = he
			}
			tol := tolF32
			if decay == 0 || !cs.ok {
				tol = 0 // a copy, or untouched: exact
			}
			if e := relErr(res[1], want); !(e <= tol) {
				t.Errorf("%s: EMAGated decay %g: rel. error %.3g (tolerance %g)", name, decay, e, tol)
			}
		}
	}
	if err := g.Sync(); err != nil {
		t.Fatal(err)
	}
}

// TestReadAsyncGPU: a readback takes the values in stream order (a write queued after ReadAsync
// does not show in it), two can be in flight and waited for in either order, and the values are
// ToHost's.
func TestReadAsyncGPU(t *testing.T) {
	g := gpu(t)
	x := g.Alloc(kernels.F32, 4099)
	h := make([]float32, x.Numel())
	for i := range h {
		h[i] = float32(i) - 7.5
	}
	g.FromHost(x, h)
	a := g.ReadAsync(x)
	g.Fill(x, 3)
	b := g.ReadAsync(x.View(1, 5))
	gb, ga := make([]float32, 5), make([]float32, x.Numel())
	if err := b.Wait(gb); err != nil {
		t.Fatal(err)
	}
	if err := a.Wait(ga); err != nil {
		t.Fatal(err)
	}
	for i := range h {
		if ga[i] != h[i] {
			t.Fatalf("first readback [%d] = %v, want %v (the Fill queued after it must not show)", i, ga[i], h[i])
		}
	}
	for i, v := range gb {
		if v != 3 {
			t.Fatalf("second readback [%d] = %v, want 3", i, v)
		}
	}
	c := g.ReadAsync(x) // a buffer comes back to the pool after Wait and is reused
	if err := c.Wait(ga); err != nil || ga[100] != 3 {
		t.Fatalf("third readback: %v, [100] = %v", err, ga[100])
	}
}
