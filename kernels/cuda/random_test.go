package cuda

import (
	"math"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// TestPhiloxWordsAgainstGo: random.cu's Philox4x32-10 (rand_philox_words) gives the Go
// kernels.Philox4x32's uint32 words exactly (the Go one passes Random123's known answers:
// kernels/philox_test.go), for counters whose block index crosses 2^32 and keys with both halves set.
func TestPhiloxWordsAgainstGo(t *testing.T) {
	g := gpu(t)
	const n = 5000
	out := g.Alloc(kernels.F32, 4*n)
	defer g.Free(out)
	h := make([]float32, 4*n)
	for _, c := range []struct{ key, counter uint64 }{{0, 0}, {0xffffffffffffffff, 0xffffffffffffffff}, {0x299f31d0a4093822, 0x0370734413198a2e}} {
		if g.begin(false, out) {
			g.args.reset().ptr(out.Ptr).u64(c.key).u64(c.counter).i64(n)
			g.ew("rand_philox_words", n)
			g.leave()
		}
		g.ToHost(h, out)
		if err := g.Sync(); err != nil {
			t.Fatal(err)
		}
		for q := 0; q < n; q++ {
			want := kernels.Philox4x32([4]uint32{uint32(q), 0, uint32(c.counter), uint32(c.counter >> 32)}, [2]uint32{uint32(c.key), uint32(c.key >> 32)})
			for j, w := range want {
				if got := math.Float32bits(h[4*q+j]); got != w {
					t.Fatalf("key %x counter %x block %d word %d: %08x, want %08x", c.key, c.counter, q, j, got, w)
				}
			}
		}
	}
}

// ulps is the distance of two finite float32 values in units in the last place.
func ulps(a, b float32) int64 {
	o := func(f float32) int64 { // monotone integer order of the float's bits
		u := int64(math.Float32bits(f))
		if u&(1<<31) != 0 {
			return (1 << 31) - u
		}
		return u
	}
	d := o(a) - o(b)
	if d < 0 {
		d = -d
	}
	return d
}

// TestRandnPhiloxAgainstGo: Device.RandnPhilox on the GPU against the CPU device's (which is
// kernels.PhiloxRandn per slab: kernels/philox_test.go), on fresh random keys: fp32 tensors of 3 and of 70 slabs (two launches: 64 keys per launch), slab sizes
// that are not multiples of 4, a view at an offset; every value within 1 ulp of the Go value (the
// device's double log and sincos may round differently from Go's in a rare last bit: the test logs
// how many differ), nothing outside the tensor written; bf16 tensors within one bf16 ulp.
func TestRandnPhiloxAgainstGo(t *testing.T) {
	g := gpu(t)
	r := seedRand(t)
	keys := make([]uint64, 70)
	for i := range keys {
		keys[i] = r.Uint64()
	}
	cpu := kernels.CPU()
	for _, c := range []struct {
		B, per  int
		counter uint64
		dt      kernels.DType
	}{{3, 10001, 0, kernels.F32}, {70, 37, 1<<32 + 5, kernels.F32}, {2, 4096, 9, kernels.F32}, {5, 333, 2, kernels.BF16}} {
		pad := 8 // a guard band before and after the view
		n := c.B * c.per
		buf := g.Alloc(c.dt, n+2*pad)
		nan := make([]float32, n+2*pad)
		for i := range nan {
			nan[i] = float32(math.NaN())
		}
		g.FromHost(buf, nan)
		x := buf.View(pad, c.B, c.per)
		g.RandnPhilox(x, keys[:c.B], c.counter)
		h := make([]float32, n+2*pad)
		g.ToHost(h, buf)
		if err := g.Sync(); err != nil {
			t.Fatal(err)
		}
		g.Free(buf)
		for i := 0; i < pad; i++ {
			if !math.IsNaN(float64(h[i])) || !math.IsNaN(float64(h[pad+n+i])) {
				t.Fatalf("B %d per %d: the guard band was written: %v %v", c.B, c.per, h[i], h[pad+n+i])
			}
		}
		ref := cpu.Alloc(kernels.F32, c.B, c.per)
		cpu.RandnPhilox(ref, keys[:c.B], c.counter)
		var differ int
		var worst int64
		for b := 0; b < c.B; b++ {
			for i, w := range ref.F32[b*c.per : (b+1)*c.per] {
				got := h[pad+b*c.per+i]
				if c.dt == kernels.BF16 {
					wb := BF16ToF32(F32ToBF16(w))
					if got != wb && ulps(got, wb) > 1<<16 {
						t.Fatalf("bf16 slab %d [%d]: %v, want %v (%v rounded)", b, i, got, wb, w)
					}
					continue
				}
				if got != w {
					differ++
					worst = max(worst, ulps(got, w))
				}
			}
		}
		if worst > 1 {
			t.Errorf("%v B %d per %d counter %d: %d of %d values differ from the Go reference, the worst by %d ulp (want ≤ 1)", c.dt, c.B, c.per, c.counter, differ, n, worst)
		} else {
			t.Logf("%v B %d per %d counter %d: %d of %d values differ from the Go reference by 1 ulp, the rest are equal", c.dt, c.B, c.per, c.counter, differ, n)
		}
	}
}
