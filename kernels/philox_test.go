package kernels_test

import (
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// TestPhiloxKnownAnswers: Philox4x32-10 against the known answers published with Random123
// (kat_vectors, as cut and pasted into D. E. Shaw Research's core123/ut/ut_philox.cpp): counter
// and key all zero, all ones, and the digits of π.
func TestPhiloxKnownAnswers(t *testing.T) {
	for _, c := range []struct {
		ctr  [4]uint32
		key  [2]uint32
		want [4]uint32
	}{
		{[4]uint32{0, 0, 0, 0}, [2]uint32{0, 0}, [4]uint32{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
		{[4]uint32{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, [2]uint32{0xffffffff, 0xffffffff},
			[4]uint32{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
		{[4]uint32{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, [2]uint32{0xa4093822, 0x299f31d0},
			[4]uint32{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
	} {
		if got := kernels.Philox4x32(c.ctr, c.key); got != c.want {
			t.Errorf("Philox4x32(%08x, %08x) = %08x, want %08x", c.ctr, c.key, got, c.want)
		}
	}
}

// TestPhiloxNormalMoments: 2^20 draws of one slab have the moments of N(0, 1) (mean 0, variance 1,
// skewness 0, kurtosis 3, each within ~5 standard errors) and its CDF (Kolmogorov–Smirnov distance
// below the 1% critical value 1.63/√n, against Φ from math.Erf); the two values of a Box–Muller
// pair, neighbouring blocks and two keys are uncorrelated.
func TestPhiloxNormalMoments(t *testing.T) {
	const n = 1 << 20
	z := make([]float32, n)
	kernels.PhiloxRandn(z, 0x9e3779b97f4a7c15, 5)
	var m [5]float64 // Σ z^k
	for _, v := range z {
		x := float64(v)
		m[1] += x
		m[2] += x * x
		m[3] += x * x * x
		m[4] += x * x * x * x
	}
	mean, vr, skew, kurt := m[1]/n, m[2]/n, m[3]/n, m[4]/n
	se := 1 / math.Sqrt(n)
	for _, c := range []struct {
		name      string
		got, want float64
		tol       float64
	}{
		{"mean", mean, 0, 5 * se},
		{"variance", vr, 1, 5 * math.Sqrt(2) * se},
		{"skewness", skew, 0, 5 * math.Sqrt(15) * se},
		{"kurtosis", kurt, 3, 5 * math.Sqrt(96) * se},
	} {
		if math.Abs(c.got-c.want) > c.tol {
			t.Errorf("%s %.5f, want %g ± %.4f", c.name, c.got, c.want, c.tol)
		}
	}
	s := slices.Clone(z)
	slices.Sort(s)
	var ks float64
	for i, v := range s {
		phi := 0.5 * (1 + math.Erf(float64(v)/math.Sqrt2))
		ks = max(ks, math.Abs(phi-float64(i)/n), math.Abs(phi-float64(i+1)/n))
	}
	if lim := 1.63 / math.Sqrt(n); ks > lim {
		t.Errorf("Kolmogorov–Smirnov distance %.2e > %.2e", ks, lim)
	}
	other := make([]float32, n)
	kernels.PhiloxRandn(other, 0x9e3779b97f4a7c16, 5) // the next key
	corr := func(name string, a, b []float32) {
		var s float64
		for i := range a {
			s += float64(a[i]) * float64(b[i])
		}
		if c := s / float64(len(a)); math.Abs(c) > 5/math.Sqrt(float64(len(a))) {
			t.Errorf("correlation of %s: %.4f", name, c)
		}
	}
	even, odd := make([]float32, 0, n/2), make([]float32, 0, n/2)
	for i := 0; i < n; i += 2 {
		even, odd = append(even, z[i]), append(odd, z[i+1])
	}
	corr("a Box–Muller pair", even, odd)
	corr("neighbouring blocks", z[:n-4], z[4:])
	corr("keys k and k+1", z, other)
}

// TestRandnPhilox: the device op on the CPU (sequential and split over workers) fills slab b with
// PhiloxRandn under keys[b], a slab size that is not a multiple of 4 included; element 4q+j of a
// slab is output j of Box–Muller on the Philox words of the counter (q, counter); another counter
// or key draws other values; a key count that does not divide the tensor panics with the op's name.
func TestRandnPhilox(t *testing.T) {
	keys := []uint64{1, 2, 0xdeadbeefcafef00d, 1 << 63, 7}
	for _, per := range []int{1, 6, 37, 1024} {
		for _, dev := range devices() {
			x := dev.Alloc(kernels.F32, len(keys), per)
			dev.RandnPhilox(x, keys, 1<<40+3)
			got := host(dev, x)
			for b, k := range keys {
				want := make([]float32, per)
				kernels.PhiloxRandn(want, k, 1<<40+3)
				for i := range want {
					if math.Float32bits(got[b*per+i]) != math.Float32bits(want[i]) {
						t.Fatalf("per %d slab %d [%d]: %v, want %v", per, b, i, got[b*per+i], want[i])
					}
				}
			}
		}
	}
	z := make([]float32, 10)
	kernels.PhiloxRandn(z, 42, 9)
	for i, v := range z {
		q, j := i/4, i%4
		w := kernels.Philox4x32([4]uint32{uint32(q), 0, 9, 0}, [2]uint32{42, 0})
		z0, z1 := kernels.BoxMuller(w[j/2*2], w[j/2*2+1])
		if want := [2]float32{z0, z1}[j%2]; v != want {
			t.Errorf("element %d: %v, want %v (block %d, output %d)", i, v, want, q, j)
		}
	}
	same := func(a, b []float32) int {
		k := 0
		for i := range a {
			if a[i] == b[i] {
				k++
			}
		}
		return k
	}
	c, k := make([]float32, 10), make([]float32, 10)
	kernels.PhiloxRandn(c, 42, 10)
	kernels.PhiloxRandn(k, 43, 9)
	if same(z, c) > 0 || same(z, k) > 0 {
		t.Errorf("counter 9 vs 10: %d equal values, key 42 vs 43: %d", same(z, c), same(z, k))
	}
	defer func() {
		if r := recover(); r == nil || !strings.Contains(r.(string), "RandnPhilox") {
			t.Errorf("3 keys for 10 elements: %v, want a RandnPhilox panic", r)
		}
	}()
	dev := kernels.CPU()
	dev.RandnPhilox(dev.Alloc(kernels.F32, 10), []uint64{1, 2, 3}, 0)
}
