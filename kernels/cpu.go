package kernels

import (
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
)

// The CPU device: plain Go, fp32 compute, parallel over a small pool of worker goroutines.
//
// Storage: every tensor is held as float32 whatever its DType. A BF16 or F16 tensor on the CPU is a
// label only (its values are NOT rounded); the CUDA device is the one that stores 16-bit values.
//
// A CPU device is not safe for concurrent use: call its ops from one goroutine at a time (make one
// device per goroutine otherwise). Shape mismatches are programming errors and panic with a message
// naming the op and the shapes.

// cpuDevice implements Device.
type cpuDevice struct {
	pool *pool

	ropeTab []float32   // cos/sin tables of the last RoPE call, grown on demand
	scr     [][]float32 // per-worker scratch rows (attention), grown on demand
	gb      []*gemmBuf  // per-worker GEMM packing buffers
	kpack   []float32   // attention: every head's packed Kᵀ
}

// CPU returns a CPU device with one worker per GOMAXPROCS.
func CPU() Device { return NewCPU(0) }

// NewCPU returns a CPU device with the given number of worker goroutines (≤ 0: GOMAXPROCS).
func NewCPU(threads int) Device {
	if threads <= 0 {
		threads = runtime.GOMAXPROCS(0)
	}
	return &cpuDevice{pool: newPool(threads)}
}

func (c *cpuDevice) Name() string { return "cpu" }

// ---------------------------------------------------------------------------------------------
// The worker pool: For(n, chunk, fn) splits [0, n) into chunks that the caller and the workers pull
// from a shared counter (so uneven chunks balance). fn gets the index w of the goroutine running it
// (0 = the caller, < threads) so an op can keep per-worker scratch. Nothing is allocated per call
// except the closure the caller passes.

type pool struct {
	threads  int
	minFlops int // work below which a chunk is not split off (tests set 1 to exercise the split)
	mu       sync.Mutex
	wake     chan *job
	job      job
}

type job struct {
	fn       func(w, lo, hi int)
	n, chunk int
	next     atomic.Int64
	wg       sync.WaitGroup
}

func newPool(threads int) *pool {
	p := &pool{threads: threads, minFlops: 32768, wake: make(chan *job, threads)}
	for w := 1; w < threads; w++ {
		go func(w int) {
			for j := range p.wake {
				j.run(w)
				j.wg.Done()
			}
		}(w)
	}
	return p
}

func (j *job) run(w int) {
	for {
		lo := int(j.next.Add(1)-1) * j.chunk
		if lo >= j.n {
			return
		}
		j.fn(w, lo, min(lo+j.chunk, j.n))
	}
}

// For runs fn over [0, n) in chunks of `chunk` items (≥ 1).
func (p *pool) For(n, chunk int, fn func(w, lo, hi int)) {
	if n <= 0 {
		return
	}
	chunk = max(chunk, 1)
	tasks := (n + chunk - 1) / chunk
	p.mu.Lock()
	defer p.mu.Unlock()
	if tasks == 1 || p.threads == 1 {
		fn(0, 0, n)
		return
	}
	j := &p.job
	j.fn, j.n, j.chunk = fn, n, chunk
	j.next.Store(0)
	helpers := min(p.threads-1, tasks-1)
	j.wg.Add(helpers)
	for i := 0; i < helpers; i++ {
		p.wake <- j
	}
	j.run(0)
	j.wg.Wait()
	j.fn = nil
}

// grain picks a chunk size for n items of about `cost` flops each: about 4 chunks per thread, each
// worth at least minFlops (~32k) so tiny ops stay on the caller.
func (p *pool) grain(n, cost int) int {
	cost = max(cost, 1)
	minItems := max(1, p.minFlops/cost)
	return max(minItems, (n+4*p.threads-1)/(4*p.threads))
}

// ---------------------------------------------------------------------------------------------
// Checks.

// panicf reports a programming error (a shape mismatch). Callers test the condition first so that
// the arguments are only boxed on failure: the hot path allocates nothing.
func panicf(format string, args ...any) {
	panic(fmt.Sprintf("kernels/cpu: "+format, args...))
}

func f32(t *Tensor) []float32 {
	if t == nil {
		return nil
	}
	if !(t.F32 != nil || t.Numel() == 0) {
		panicf("tensor %v has no CPU storage", t)
	}
	return t.F32
}

func sameNumel(op string, ts ...*Tensor) int {
	n := ts[0].Numel()
	for _, t := range ts[1:] {
		if t != nil {
			if !(t.Numel() == n) {
				panicf("%s: numel mismatch %v vs %v", op, ts[0].Shape, t.Shape)
			}
		}
	}
	return n
}

func lastDim(t *Tensor) int {
	if !(len(t.Shape) > 0) {
		panicf("tensor %v has no dims", t)
	}
	return t.Shape[len(t.Shape)-1]
}

// ---------------------------------------------------------------------------------------------
// Memory.

func (c *cpuDevice) Alloc(dt DType, shape ...int) *Tensor {
	for _, s := range shape {
		if !(s >= 0) {
			panicf("Alloc: negative size in %v", shape)
		}
	}
	return &Tensor{Dev: c, DType: dt, Shape: append([]int(nil), shape...), F32: make([]float32, Numel(shape))}
}

func (c *cpuDevice) Free(t *Tensor) { t.F32 = nil }

func (c *cpuDevice) FromHost(dst *Tensor, src []float32) {
	if !(len(src) == dst.Numel()) {
		panicf("FromHost: %d values into %v", len(src), dst.Shape)
	}
	copy(f32(dst), src)
}

func (c *cpuDevice) ToHost(dst []float32, src *Tensor) {
	if !(len(dst) == src.Numel()) {
		panicf("ToHost: %v into %d values", src.Shape, len(dst))
	}
	copy(dst, f32(src))
}

func (c *cpuDevice) Copy(dst, src *Tensor) {
	sameNumel("Copy", dst, src)
	copy(f32(dst), f32(src))
}

func (c *cpuDevice) Zero(t *Tensor) { clear(f32(t)) }

func (c *cpuDevice) Fill(t *Tensor, v float32) {
	x := f32(t)
	for i := range x {
		x[i] = v
	}
}

func (c *cpuDevice) Sync() error { return nil }

// ---------------------------------------------------------------------------------------------
// Elementwise over whole tensors.

func (c *cpuDevice) Add(out, a, b *Tensor) {
	n := sameNumel("Add", out, a, b)
	o, x, y := f32(out), f32(a), f32(b)
	c.pool.For(n, c.pool.grain(n, 1), func(_, lo, hi int) {
		for i := lo; i < hi; i++ {
			o[i] = x[i] + y[i]
		}
	})
}

func (c *cpuDevice) Axpy(y *Tensor, alpha float32, x *Tensor) {
	n := sameNumel("Axpy", y, x)
	yy, xx := f32(y), f32(x)
	c.pool.For(n, c.pool.grain(n, 2), func(_, lo, hi int) {
		for i := lo; i < hi; i++ {
			yy[i] += alpha * xx[i]
		}
	})
}

func (c *cpuDevice) Scale(x *Tensor, alpha float32) {
	n := x.Numel()
	xx := f32(x)
	c.pool.For(n, c.pool.grain(n, 1), func(_, lo, hi int) {
		for i := lo; i < hi; i++ {
			xx[i] *= alpha
		}
	})
}

func (c *cpuDevice) Combine(out, x, y *Tensor, a, b []float32) {
	n := sameNumel("Combine", out, x, y)
	G := len(a)
	if !(G > 0 && len(b) == G && n%G == 0) {
		panicf("Combine: %d coefficients a, %d b for %d elements", len(a), len(b), n)
	}
	c.combine(f32(out), f32(x), f32(y), a, b, n/G)
}

func (c *cpuDevice) CombineFrames(out, x, y *Tensor, a, b []float32, B, C, F, HW int) {
	n := sameNumel("CombineFrames", out, x, y)
	if !(n == B*C*F*HW) {
		panicf("CombineFrames: %v is not [%d,%d,%d,%d]", x.Shape, B, C, F, HW)
	}
	if !(len(a) == B*F && len(b) == B*F) {
		panicf("CombineFrames: %d/%d coefficients for B·F = %d", len(a), len(b), B*F)
	}
	o, xx, yy := f32(out), f32(x), f32(y)
	// Rows of HW elements, row r = ((b·C + ch)·F + f).
	rows := B * C * F
	c.pool.For(rows, c.pool.grain(rows, 3*HW), func(_, lo, hi int) {
		for r := lo; r < hi; r++ {
			f := r % F
			bb := r / (C * F)
			ca, cb := a[bb*F+f], b[bb*F+f]
			for i := r * HW; i < (r+1)*HW; i++ {
				o[i] = ca*xx[i] + cb*yy[i]
			}
		}
	})
}

// combine: out = a_g·x + b_g·y over groups of gs elements.
func (c *cpuDevice) combine(o, x, y, a, b []float32, gs int) {
	n := len(o)
	c.pool.For(n, c.pool.grain(n, 3), func(_, lo, hi int) {
		for i := lo; i < hi; i++ {
			g := i / gs
			o[i] = a[g]*x[i] + b[g]*y[i]
		}
	})
}

// ---------------------------------------------------------------------------------------------
// Reductions (float64 accumulation, one partial per worker).

func (c *cpuDevice) Dot(a, b *Tensor) float64 {
	n := sameNumel("Dot", a, b)
	x, y := f32(a), f32(b)
	var mu sync.Mutex
	var total float64
	c.pool.For(n, c.pool.grain(n, 2), func(_, lo, hi int) {
		var s float64
		for i := lo; i < hi; i++ {
			s += float64(x[i]) * float64(y[i])
		}
		mu.Lock()
		total += s
		mu.Unlock()
	})
	return total
}

func (c *cpuDevice) SumAbsGroups(dst []float64, x *Tensor) {
	n := x.Numel()
	G := len(dst)
	if !(G > 0 && n%G == 0) {
		panicf("SumAbsGroups: %d groups for %v", G, x.Shape)
	}
	gs := n / G
	xx := f32(x)
	c.pool.For(G, c.pool.grain(G, gs), func(_, lo, hi int) {
		for g := lo; g < hi; g++ {
			var s float64
			for _, v := range xx[g*gs : (g+1)*gs] {
				s += math.Abs(float64(v))
			}
			dst[g] = s
		}
	})
}

// ---------------------------------------------------------------------------------------------
// Optimizer.

// AdamW is PyTorch's torch.optim.AdamW step: w −= lr·wd·w; m = β1·m + (1−β1)·g;
// v = β2·v + (1−β2)·g²; w −= lr·m̂/(√v̂ + eps) with m̂ = m/(1−β1^step), v̂ = v/(1−β2^step).
func (c *cpuDevice) AdamW(w, g, m, v *Tensor, lr, beta1, beta2, eps, wd float32, step int) {
	n := sameNumel("AdamW", w, g, m, v)
	if !(step >= 1) {
		panicf("AdamW: step %d < 1", step)
	}
	ww, gg, mm, vv := f32(w), f32(g), f32(m), f32(v)
	bc1 := 1 - math.Pow(float64(beta1), float64(step))
	bc2 := 1 - math.Pow(float64(beta2), float64(step))
	stepSize := float32(float64(lr) / bc1)
	rbc2 := float32(1 / math.Sqrt(bc2))
	decay := 1 - lr*wd
	c.pool.For(n, c.pool.grain(n, 12), func(_, lo, hi int) {
		for i := lo; i < hi; i++ {
			gi := gg[i]
			mi := beta1*mm[i] + (1-beta1)*gi
			vi := beta2*vv[i] + (1-beta2)*gi*gi
			mm[i], vv[i] = mi, vi
			denom := float32(math.Sqrt(float64(vi)))*rbc2 + eps
			ww[i] = ww[i]*decay - stepSize*mi/denom
		}
	})
}

func (c *cpuDevice) EMA(ema, w *Tensor, decay float32) {
	n := sameNumel("EMA", ema, w)
	e, ww := f32(ema), f32(w)
	c.pool.For(n, c.pool.grain(n, 3), func(_, lo, hi int) {
		for i := lo; i < hi; i++ {
			e[i] = decay*e[i] + (1-decay)*ww[i]
		}
	})
}

var _ Device = (*cpuDevice)(nil)
