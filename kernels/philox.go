package kernels

// Counter-based Gaussian noise: Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel Random Numbers:
// As Easy as 1, 2, 3", SC 2011; the generator of cuRAND's and PyTorch's CUDA draws) turned into
// N(0, 1) fp32 values by Box–Muller. Every value is a pure function of (key, counter, element
// index), so any device and any split of the work draws the same numbers: the CUDA kernel
// (kernels/cuda/random.cu) computes exactly the same uint32 words, and the same normals up to the
// last bit of its double-precision log/sincos (kernels/cuda/random_test.go).
//
// The layout of one slab of n values under a 64-bit key and a 64-bit counter c: element i is output
// j = i mod 4 of the block q = i / 4, where block q is Philox4x32-10 of the counter words
// (q lo, q hi, c lo, c hi) under the key words (key lo, key hi), and (z0, z1) = BoxMuller(x0, x1),
// (z2, z3) = BoxMuller(x2, x3). Device.RandnPhilox draws slab b of a tensor under keys[b].

import (
	"math"
	"math/bits"
)

// The Philox4x32 multipliers and Weyl key increments (Salmon et al. 2011, section 5; Random123's
// philox.h).
const (
	philoxM0 = 0xD2511F53
	philoxM1 = 0xCD9E8D57
	philoxW0 = 0x9E3779B9
	philoxW1 = 0xBB67AE85
)

// Philox4x32 is Philox4x32-10: ten rounds of the 4-word S-P network over ctr, the key bumped by the
// Weyl increments between rounds.
func Philox4x32(ctr [4]uint32, key [2]uint32) [4]uint32 {
	for r := 0; r < 10; r++ {
		if r > 0 {
			key[0] += philoxW0
			key[1] += philoxW1
		}
		hi0, lo0 := bits.Mul32(philoxM0, ctr[0])
		hi1, lo1 := bits.Mul32(philoxM1, ctr[2])
		ctr = [4]uint32{hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0}
	}
	return ctr
}

// BoxMuller turns two uint32 words into two N(0, 1) values: u1 = an odd multiple of 2⁻²⁴ in (0, 1)
// from x0's top 23 bits (never 0, so the log is finite: |z| ≤ √(2·24·ln 2) ≈ 5.77), u2 ∈ [0, 1)
// from x1's top 24 bits, r = √(−2 ln u1), (z0, z1) = (r cos 2πu2, r sin 2πu2), computed in float64
// and rounded once to float32 (the CUDA kernel does the same in double).
func BoxMuller(x0, x1 uint32) (z0, z1 float32) {
	u1 := float64((x0>>8)|1) * 0x1p-24
	u2 := float64(x1>>8) * 0x1p-24
	r := math.Sqrt(-2 * math.Log(u1))
	s, c := math.Sincos(2 * math.Pi * u2)
	return float32(r * c), float32(r * s)
}

// PhiloxBlock returns the four normals of block q of a slab under (key, counter).
func PhiloxBlock(key, counter, q uint64) [4]float32 {
	x := Philox4x32([4]uint32{uint32(q), uint32(q >> 32), uint32(counter), uint32(counter >> 32)},
		[2]uint32{uint32(key), uint32(key >> 32)})
	z0, z1 := BoxMuller(x[0], x[1])
	z2, z3 := BoxMuller(x[2], x[3])
	return [4]float32{z0, z1, z2, z3}
}

// PhiloxRandn fills dst, one slab, with N(0, 1) under (key, counter) (the layout above).
func PhiloxRandn(dst []float32, key, counter uint64) {
	philoxBlocks(dst, key, counter, 0, (len(dst)+3)/4)
}

// philoxBlocks writes blocks [lo, hi) of the slab dst.
func philoxBlocks(dst []float32, key, counter uint64, lo, hi int) {
	for q := lo; q < hi; q++ {
		z := PhiloxBlock(key, counter, uint64(q))
		i := 4 * q
		if i+4 <= len(dst) {
			dst[i], dst[i+1], dst[i+2], dst[i+3] = z[0], z[1], z[2], z[3]
			continue
		}
		copy(dst[i:], z[:len(dst)-i])
	}
}

// RandnPhilox on the CPU: blocks of every slab split over the workers.
func (c *cpuDevice) RandnPhilox(t *Tensor, keys []uint64, counter uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := t.Numel()
	if len(keys) == 0 || n%len(keys) != 0 {
		panicf("RandnPhilox: %d keys for %v (want one key per equal slab)", len(keys), t)
	}
	if n == 0 {
		return
	}
	per := n / len(keys)
	nq := (per + 3) / 4
	a := c.args()
	a.s[0], a.i[0], a.i[1], a.u, a.k = f32(t), per, nq, keys, counter
	c.pool.For(len(keys)*nq, c.pool.grain(len(keys)*nq, 400), philoxRows, a)
}

// philoxRows writes the global blocks [lo, hi) (slab b = g / nq, block g mod nq).
func philoxRows(a *opArgs, _, lo, hi int) {
	x, per, nq := a.s[0], a.i[0], a.i[1]
	for g := lo; g < hi; {
		b, q := g/nq, g%nq
		end := min(hi-g+q, nq) // the blocks of slab b in this chunk
		philoxBlocks(x[b*per:(b+1)*per], a.u[b], a.k, q, end)
		g += end - q
	}
}
