package kernels_test

import (
	"math"
	"math/rand"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// TestSumSquares: SumSquares into a zeroed accumulator gives Dot(x, x) bit for bit (the trainer's
// gradient norm relies on it), accumulates (two tensors into one accumulator = the float64 sum of
// their Dots), leaves the other accumulators of the buffer alone, and carries NaN and Inf through
// ReadF64.
func TestSumSquares(t *testing.T) {
	r := rand.New(rand.NewSource(7))
	for _, threads := range []int{1, 3} {
		dev := kernels.NewCPUFine(threads)
		x, y := dev.Alloc(kernels.F32, 10007), dev.Alloc(kernels.F32, 333)
		hx, hy := make([]float32, x.Numel()), make([]float32, y.Numel())
		for i := range hx {
			hx[i] = float32(r.NormFloat64() * 3)
		}
		for i := range hy {
			hy[i] = float32(r.NormFloat64())
		}
		dev.FromHost(x, hx)
		dev.FromHost(y, hy)
		acc := kernels.F64Acc(dev, 3)
		dev.SumSquares(acc.View(0, 2), x)
		dev.SumSquares(acc.View(2, 2), x)
		dev.SumSquares(acc.View(2, 2), y)
		got := make([]float64, 3)
		kernels.ReadF64(dev, got, acc)
		dx, dy := dev.Dot(x, x), dev.Dot(y, y)
		if got[0] != dx || got[1] != dx+dy || got[2] != 0 {
			t.Errorf("threads %d: accumulators %v, want [%v %v 0]", threads, got, dx, dx+dy)
		}
		var want float64
		for _, v := range hx {
			want += float64(v) * float64(v)
		}
		if math.Abs(got[0]-want) > 1e-12*want {
			t.Errorf("threads %d: Σx² = %.15g, want %.15g", threads, got[0], want)
		}
		hx[5] = float32(math.NaN())
		dev.FromHost(x, hx)
		hy[0] = float32(math.Inf(1))
		dev.FromHost(y, hy)
		dev.Zero(acc)
		dev.SumSquares(acc.View(0, 2), x)
		dev.SumSquares(acc.View(2, 2), y)
		kernels.ReadF64(dev, got, acc)
		if !math.IsNaN(got[0]) || !math.IsInf(got[1], 1) || got[2] != 0 {
			t.Errorf("threads %d: with a NaN and an Inf: %v, want [NaN +Inf 0]", threads, got)
		}
	}
}
