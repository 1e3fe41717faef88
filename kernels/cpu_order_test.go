package kernels

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestDotChunkOrder: the CPU Dot is the float64 sum of its chunks' sums (each chunk summed in
// index order, the chunks added in index order), bit for bit and whatever worker took which chunk;
// with one partial per worker, as before, the grouping depended on scheduling and the last bits
// of a gradient norm changed from run to run.
func TestDotChunkOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11))
	const n = 100_003
	x, y := make([]float32, n), make([]float32, n)
	for i := range x {
		x[i], y[i] = float32(r.NormFloat64()), float32(r.NormFloat64()*1e3)
	}
	d := NewCPUFine(4).(*cpuDevice)
	a, b := d.Alloc(F32, n), d.Alloc(F32, n)
	d.FromHost(a, x)
	d.FromHost(b, y)
	chunk := d.pool.grain(n, 2)
	if (n+chunk-1)/chunk < 8 {
		t.Fatalf("only %d chunks of %d: the test wants several per worker", (n+chunk-1)/chunk, chunk)
	}
	var want float64
	for lo := 0; lo < n; lo += chunk {
		var s float64
		for i := lo; i < min(lo+chunk, n); i++ {
			s += float64(x[i]) * float64(y[i])
		}
		want += s
	}
	for rep := 0; rep < 20; rep++ {
		if got := d.Dot(a, b); got != want {
			t.Fatalf("rep %d: Dot = %.17g, want the chunk-ordered sum %.17g", rep, got, want)
		}
	}
}

// TestAttentionBackPartialsRepeat: the few-heads backward (dK, dV through per-run partial sums) gives
// the same bits on every call, and the per-head path's values within float32 rounding.
func TestAttentionBackPartialsRepeat(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 5))
	const B, N, H, hd, chunkTokens = 1, 300, 2, 32, 100
	fine, one := NewCPUFine(4).(*cpuDevice), NewCPU(1).(*cpuDevice)
	rnd := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(r.NormFloat64())
		}
		return v
	}
	q, k, v, dO := rnd(B*N*H*hd), rnd(B*N*H*hd), rnd(B*N*H*hd), rnd(B*N*H*hd)
	back := func(d *cpuDevice) (dq, dk, dv []float32) {
		up := func(x []float32) *Tensor { t := d.Alloc(F32, B, N, H, hd); d.FromHost(t, x); return t }
		Q, K, V, G := up(q), up(k), up(v), up(dO)
		O, L := d.Alloc(F32, B, N, H, hd), d.Alloc(F32, B, H, N)
		d.Attention(O, L, Q, K, V, chunkTokens, 0)
		dQ, dK, dV := d.Alloc(F32, B, N, H, hd), d.Alloc(F32, B, N, H, hd), d.Alloc(F32, B, N, H, hd)
		d.AttentionBack(dQ, dK, dV, G, O, L, Q, K, V, chunkTokens, 0)
		get := func(t *Tensor) []float32 { x := make([]float32, t.Numel()); d.ToHost(x, t); return x }
		return get(dQ), get(dK), get(dV)
	}
	_, dk0, dv0 := back(fine)
	for rep := 0; rep < 10; rep++ {
		_, dk, dv := back(fine)
		for i := range dk {
			if math.Float32bits(dk[i]) != math.Float32bits(dk0[i]) || math.Float32bits(dv[i]) != math.Float32bits(dv0[i]) {
				t.Fatalf("rep %d: dK/dV element %d changed (%g, %g vs %g, %g)", rep, i, dk[i], dv[i], dk0[i], dv0[i])
			}
		}
	}
	_, dk1, dv1 := back(one) // one worker: the per-head path
	for i := range dk1 {
		for _, p := range [][2]float32{{dk0[i], dk1[i]}, {dv0[i], dv1[i]}} {
			if math.Abs(float64(p[0]-p[1])) > 1e-4*(1+math.Abs(float64(p[1]))) {
				t.Fatalf("element %d: partials path %g vs per-head path %g", i, p[0], p[1])
			}
		}
	}
}
