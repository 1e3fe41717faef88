package kernels_test

import (
	"math/rand"
	"slices"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// BatchStride on views of one buffer (host and device addresses) and on what is not a batch.
func TestBatchStride(t *testing.T) {
	cpu := kernels.NewCPU(1)
	buf := cpu.Alloc(kernels.F32, 3*100)
	views := func(off ...int) []*kernels.Tensor {
		var ts []*kernels.Tensor
		for _, o := range off {
			ts = append(ts, buf.View(o, 8, 10))
		}
		return ts
	}
	dev := func(dt kernels.DType, n int, ptr ...uintptr) []*kernels.Tensor {
		var ts []*kernels.Tensor
		for _, p := range ptr {
			ts = append(ts, &kernels.Tensor{DType: dt, Shape: []int{n}, Ptr: p})
		}
		return ts
	}
	for _, c := range []struct {
		name   string
		ts     []*kernels.Tensor
		stride int
		ok     bool
	}{
		{"three at 100", views(0, 100, 200), 100, true},
		{"two at 80 (adjacent)", views(0, 80), 80, true},
		{"uneven", views(0, 100, 180), 0, false},
		{"overlapping", views(0, 40, 80), 0, false},
		{"descending", views(200, 100, 0), 0, false},
		{"one", views(0), 0, false},
		{"a nil", []*kernels.Tensor{buf.View(0, 80), nil}, 0, false},
		{"device fp32", dev(kernels.F32, 64, 0x1000, 0x1400, 0x1800), 256, true},
		{"device bf16", dev(kernels.BF16, 64, 0x1000, 0x1200), 256, true},
		{"device odd bytes", dev(kernels.F32, 1, 0x1000, 0x1002), 0, false},
		{"device dtypes differ", append(dev(kernels.F32, 64, 0x1000), dev(kernels.BF16, 64, 0x1400)...), 0, false},
		{"device sizes differ", append(dev(kernels.F32, 64, 0x1000), dev(kernels.F32, 32, 0x1400)...), 0, false},
		{"device unallocated", dev(kernels.F32, 64, 0, 0x400), 0, false},
	} {
		s, ok := kernels.BatchStride(c.ts)
		if s != c.stride || ok != c.ok {
			t.Errorf("%s: BatchStride = %d, %v; want %d, %v", c.name, s, ok, c.stride, c.ok)
		}
	}
}

// batcher is the CPU device with a LinearBatcher that takes the batch (doing it as the plain ops
// would, counted) or declines.
type batcher struct {
	kernels.Device
	take      bool
	fwd, back int
}

func (b *batcher) BatchesLinears() bool { return b.take }

func (b *batcher) LinearBatched(outs []*kernels.Tensor, in *kernels.Tensor, ws, bs []*kernels.Tensor) bool {
	if !b.take {
		return false
	}
	b.fwd++
	for i := range outs {
		var bi *kernels.Tensor
		if bs != nil {
			bi = bs[i]
		}
		b.Device.Linear(outs[i], in, ws[i], bi)
	}
	return true
}

func (b *batcher) LinearBatchedBack(dIn *kernels.Tensor, dWs, dBs, dOuts []*kernels.Tensor, in *kernels.Tensor, ws []*kernels.Tensor) bool {
	if !b.take {
		return false
	}
	b.back++
	for i := range dOuts {
		var dW, dB *kernels.Tensor
		if dWs != nil {
			dW = dWs[i]
		}
		if dBs != nil {
			dB = dBs[i]
		}
		b.Device.LinearBack(dIn, dW, dB, dOuts[i], in, ws[i])
	}
	return true
}

// LinearBatched and LinearBatchedBack: one Linear (LinearBack) each where the device has no
// batcher or it declines, the device's op where it takes the batch; the same numbers either way
// (bit for bit: the same ops in the same order), against Linear and LinearBack called one by one.
func TestLinearBatchedFallback(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	const M, K, N, n = 7, 5, 6, 3
	cpu := kernels.NewCPU(2)
	up := func(shape ...int) []float32 { return randn(r, kernels.Numel(shape), 1) }
	x, dy := up(M, K), make([][]float32, n)
	w, b := make([][]float32, n), make([][]float32, n)
	for i := 0; i < n; i++ {
		w[i], b[i], dy[i] = up(N, K), up(N), up(M, N)
	}
	dx0, dw0, db0 := up(M, K), up(n, N, K), up(n, N)
	type result struct{ out, dx, dw, db []float32 }
	run := func(d kernels.Device, batched bool, bias bool) result {
		X := tensorOf(d, x, M, K)
		var ws, bs, outs, dOuts, dWs, dBs []*kernels.Tensor
		dW, dB := tensorOf(d, dw0, n, N, K), tensorOf(d, db0, n, N)
		for i := 0; i < n; i++ {
			ws = append(ws, tensorOf(d, w[i], N, K))
			bs = append(bs, tensorOf(d, b[i], N))
			outs = append(outs, d.Alloc(kernels.F32, M, N))
			dOuts = append(dOuts, tensorOf(d, dy[i], M, N))
			dWs = append(dWs, dW.View(i*N*K, N, K))
			dBs = append(dBs, dB.View(i*N, N))
		}
		if !bias {
			bs = nil
			dBs[1] = nil // a bias gradient taken elsewhere
		}
		dX := tensorOf(d, dx0, M, K)
		if batched {
			kernels.LinearBatched(d, outs, X, ws, bs)
			kernels.LinearBatchedBack(d, dX, dWs, dBs, dOuts, X, ws)
		} else {
			for i := 0; i < n; i++ {
				var bi *kernels.Tensor
				if bs != nil {
					bi = bs[i]
				}
				d.Linear(outs[i], X, ws[i], bi)
			}
			for i := 0; i < n; i++ {
				d.LinearBack(dX, dWs[i], dBs[i], dOuts[i], X, ws[i])
			}
		}
		var res result
		for _, o := range outs {
			res.out = append(res.out, host(d, o)...)
		}
		res.dx, res.dw, res.db = host(d, dX), host(d, dW), host(d, dB)
		return res
	}
	for _, bias := range []bool{true, false} {
		want := run(cpu, false, bias)
		for _, c := range []struct {
			name string
			d    kernels.Device
			fwd  int
		}{
			{"cpu", cpu, 0},
			{"declining batcher", &batcher{Device: cpu}, 0},
			{"batcher", &batcher{Device: cpu, take: true}, 1},
		} {
			got := run(c.d, true, bias)
			if !slices.Equal(got.out, want.out) || !slices.Equal(got.dx, want.dx) || !slices.Equal(got.dw, want.dw) || !slices.Equal(got.db, want.db) {
				t.Errorf("%s (bias %v): batched Linears differ from one Linear each", c.name, bias)
			}
			if bt, ok := c.d.(*batcher); ok && (bt.fwd != c.fwd || bt.back != c.fwd) {
				t.Errorf("%s: the device's batched ops ran %d and %d times, want %d", c.name, bt.fwd, bt.back, c.fwd)
			}
			if kernels.BatchesLinears(c.d) != (c.fwd == 1) {
				t.Errorf("%s: BatchesLinears = %v", c.name, kernels.BatchesLinears(c.d))
			}
		}
	}
	defer func() {
		if recover() == nil {
			t.Errorf("LinearBatched with 3 outputs and 2 weights did not panic")
		}
	}()
	o := cpu.Alloc(kernels.F32, M, N)
	kernels.LinearBatched(cpu, []*kernels.Tensor{o, o, o}, cpu.Alloc(kernels.F32, M, K), []*kernels.Tensor{o, o}, nil)
}
