package kernels

import (
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
)

// The CPU device: Go, fp32 compute, parallel over a small pool of worker goroutines (one per
// GOMAXPROCS by default). Matmuls (Linear, and attention as blocked Q·Kᵀ and P·V products) go
// through a packed GEMM whose 6×16 micro-kernel, the softmax's exp/max and GELU are AVX2/FMA
// assembly on amd64 CPUs that have it and plain Go elsewhere (FEWSTEP_NOASM=1 forces the Go
// paths). Reductions that feed statistics (LayerNorm/RMSNorm, bias and modulation gradients, Dot,
// SumAbsGroups) accumulate in float64. After the first call at a shape (scratch grows then), no op
// allocates.
//
// Storage: every tensor is held as float32 whatever its DType. A BF16 or F16 tensor on the CPU is a
// label only (its values are NOT rounded); the CUDA device is the one that stores 16-bit values.
//
// Ops called from several goroutines at once are serialized by a lock (correct, not concurrent;
// make one device per goroutine for parallel streams of work). Shape mismatches are programming
// errors and panic with a message naming the op and the shapes.

// cpuDevice implements Device.
type cpuDevice struct {
	pool *pool
	mu   sync.Mutex // one op at a time: the fields below are shared by every op

	ropeTab []float32   // cos/sin tables of the last RoPE call, grown on demand
	scr     [][]float32 // per-worker scratch rows (attention), grown on demand
	gb      []*gemmBuf  // per-worker GEMM packing buffers
	kpack   []float32   // attention: every head's packed Kᵀ
	vpack   []float32   // attention backward: every head's packed Vᵀ
	dkv     []float32   // attention backward: per-run partial dK, dV (one run per worker)
	part    []float64   // per-chunk partial sums (Dot)
	arg     opArgs      // the running op's arguments
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
// The worker pool: For(n, chunk, fn, a) splits [0, n) into chunks that the caller and the workers
// pull from a shared counter (so uneven chunks balance). fn is a top-level function (it captures
// nothing, so passing it allocates nothing) that finds the op's arguments in a, the device's
// reusable argument block, and gets the index w of the goroutine running it (0 = the caller,
// < threads) so an op can keep per-worker scratch. A call allocates nothing.

// kernelFn runs one chunk [lo, hi) of an op on worker w.
type kernelFn func(a *opArgs, w, lo, hi int)

// opArgs carries one op's arguments to its kernelFn (fields used as each op documents).
type opArgs struct {
	c *cpuDevice
	s [10][]float32
	i [10]int
	x [8]float32
	m [2]mat
	d []float64
	u []uint64 // RandnPhilox's keys
	k uint64   // RandnPhilox's counter
}

// args returns the device's argument block, cleared.
func (c *cpuDevice) args() *opArgs {
	c.arg = opArgs{c: c}
	return &c.arg
}

type pool struct {
	threads  int
	minFlops int // work below which a chunk is not split off (tests set 1 to exercise the split)
	mu       sync.Mutex
	wake     chan *job
	job      job
}

type job struct {
	fn       kernelFn
	a        *opArgs
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
		j.fn(j.a, w, lo, min(lo+j.chunk, j.n))
	}
}

// For runs fn(a, ·) over [0, n) in chunks of `chunk` items (≥ 1).
func (p *pool) For(n, chunk int, fn kernelFn, a *opArgs) {
	if n <= 0 {
		return
	}
	chunk = max(chunk, 1)
	tasks := (n + chunk - 1) / chunk
	p.mu.Lock()
	defer p.mu.Unlock()
	if tasks == 1 || p.threads == 1 {
		fn(a, 0, 0, n)
		return
	}
	j := &p.job
	j.fn, j.a, j.n, j.chunk = fn, a, n, chunk
	j.next.Store(0)
	helpers := min(p.threads-1, tasks-1)
	j.wg.Add(helpers)
	for i := 0; i < helpers; i++ {
		p.wake <- j
	}
	j.run(0)
	j.wg.Wait()
	j.fn, j.a = nil, nil
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
	c.mu.Lock()
	defer c.mu.Unlock()
	n := sameNumel("Add", out, a, b)
	g := c.args()
	g.s[0], g.s[1], g.s[2] = f32(out), f32(a), f32(b)
	c.pool.For(n, c.pool.grain(n, 1), addRows, g)
}

func addRows(a *opArgs, _, lo, hi int) {
	o, x, y := a.s[0], a.s[1], a.s[2]
	for i := lo; i < hi; i++ {
		o[i] = x[i] + y[i]
	}
}

func (c *cpuDevice) Axpy(y *Tensor, alpha float32, x *Tensor) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.axpy(y, alpha, x)
}

func (c *cpuDevice) axpy(y *Tensor, alpha float32, x *Tensor) {
	n := sameNumel("Axpy", y, x)
	g := c.args()
	g.s[0], g.s[1], g.x[0] = f32(y), f32(x), alpha
	c.pool.For(n, c.pool.grain(n, 2), axpyRows, g)
}

func axpyRows(a *opArgs, _, lo, hi int) {
	y, x, alpha := a.s[0], a.s[1], a.x[0]
	for i := lo; i < hi; i++ {
		y[i] += alpha * x[i]
	}
}

func (c *cpuDevice) Scale(x *Tensor, alpha float32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := x.Numel()
	g := c.args()
	g.s[0], g.x[0] = f32(x), alpha
	c.pool.For(n, c.pool.grain(n, 1), scaleRows, g)
}

func scaleRows(a *opArgs, _, lo, hi int) {
	x, alpha := a.s[0], a.x[0]
	for i := lo; i < hi; i++ {
		x[i] *= alpha
	}
}

func (c *cpuDevice) Combine(out, x, y *Tensor, a, b []float32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := sameNumel("Combine", out, x, y)
	G := len(a)
	if !(G > 0 && len(b) == G && n%G == 0) {
		panicf("Combine: %d coefficients a, %d b for %d elements", len(a), len(b), n)
	}
	g := c.args()
	g.s[0], g.s[1], g.s[2], g.s[3], g.s[4], g.i[0] = f32(out), f32(x), f32(y), a, b, n/G
	c.pool.For(n, c.pool.grain(n, 3), combineRows, g)
}

// combineRows: out = a_g·x + b_g·y over groups of gs elements.
func combineRows(a *opArgs, _, lo, hi int) {
	o, x, y, ca, cb, gs := a.s[0], a.s[1], a.s[2], a.s[3], a.s[4], a.i[0]
	for i := lo; i < hi; i++ {
		g := i / gs
		o[i] = ca[g]*x[i] + cb[g]*y[i]
	}
}

func (c *cpuDevice) CombineFrames(out, x, y *Tensor, a, b []float32, B, C, F, HW int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := sameNumel("CombineFrames", out, x, y)
	if !(n == B*C*F*HW) {
		panicf("CombineFrames: %v is not [%d,%d,%d,%d]", x.Shape, B, C, F, HW)
	}
	if !(len(a) == B*F && len(b) == B*F) {
		panicf("CombineFrames: %d/%d coefficients for B·F = %d", len(a), len(b), B*F)
	}
	// Rows of HW elements, row r = ((b·C + ch)·F + f).
	g := c.args()
	g.s[0], g.s[1], g.s[2], g.s[3], g.s[4] = f32(out), f32(x), f32(y), a, b
	g.i[0], g.i[1], g.i[2] = C, F, HW
	rows := B * C * F
	c.pool.For(rows, c.pool.grain(rows, 3*HW), combineFrameRows, g)
}

func combineFrameRows(a *opArgs, _, lo, hi int) {
	o, x, y, ca, cb := a.s[0], a.s[1], a.s[2], a.s[3], a.s[4]
	C, F, HW := a.i[0], a.i[1], a.i[2]
	for r := lo; r < hi; r++ {
		f := r % F
		bb := r / (C * F)
		u, v := ca[bb*F+f], cb[bb*F+f]
		for i := r * HW; i < (r+1)*HW; i++ {
			o[i] = u*x[i] + v*y[i]
		}
	}
}

// ---------------------------------------------------------------------------------------------
// Reductions (float64 accumulation; one partial per chunk, added in chunk order, so that a sum
// does not depend on which worker took which chunk).

func (c *cpuDevice) Dot(a, b *Tensor) float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := sameNumel("Dot", a, b)
	chunk := c.pool.grain(n, 2)
	tasks := (n + chunk - 1) / chunk
	if len(c.part) < tasks {
		c.part = make([]float64, tasks)
	}
	part := c.part[:tasks]
	clear(part)
	g := c.args()
	g.s[0], g.s[1], g.d, g.i[0] = f32(a), f32(b), part, chunk
	c.pool.For(n, chunk, dotRows, g)
	var total float64
	for _, s := range part {
		total += s
	}
	return total
}

// SumSquares adds Dot(x, x)'s float64 sum (the same partial sums, added in the same order) into
// the accumulator's bits.
func (c *cpuDevice) SumSquares(acc, x *Tensor) {
	if !(acc.DType == F32 && acc.Numel() == 2) {
		panicf("SumSquares: accumulator %v is not an F64Acc pair", acc)
	}
	sq := c.Dot(x, x)
	a := f32(acc)
	lo, hi := f64Bits(f64Of(a[0], a[1]) + sq)
	a[0], a[1] = lo, hi
}

// dotRows sums chunk [lo, hi) into its own partial (a.i[0]: the chunk size; a single call over
// [0, n) on one worker lands in partial 0).
func dotRows(a *opArgs, _, lo, hi int) {
	x, y := a.s[0], a.s[1]
	var s float64
	for i := lo; i < hi; i++ {
		s += float64(x[i]) * float64(y[i])
	}
	a.d[lo/a.i[0]] = s
}

func (c *cpuDevice) SumAbsGroups(dst []float64, x *Tensor) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := x.Numel()
	G := len(dst)
	if !(G > 0 && n%G == 0) {
		panicf("SumAbsGroups: %d groups for %v", G, x.Shape)
	}
	g := c.args()
	g.s[0], g.d, g.i[0] = f32(x), dst, n/G
	c.pool.For(G, c.pool.grain(G, n/G), sumAbsRows, g)
}

func sumAbsRows(a *opArgs, _, lo, hi int) {
	x, dst, gs := a.s[0], a.d, a.i[0]
	for g := lo; g < hi; g++ {
		var s float64
		for _, v := range x[g*gs : (g+1)*gs] {
			s += math.Abs(float64(v))
		}
		dst[g] = s
	}
}

// ---------------------------------------------------------------------------------------------
// Optimizer.

// AdamW is PyTorch's torch.optim.AdamW step: w −= lr·wd·w; m = β1·m + (1−β1)·g;
// v = β2·v + (1−β2)·g²; w −= lr·m̂/(√v̂ + eps) with m̂ = m/(1−β1^step), v̂ = v/(1−β2^step).
func (c *cpuDevice) AdamW(w, g, m, v *Tensor, lr, beta1, beta2, eps, wd float32, step int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := sameNumel("AdamW", w, g, m, v)
	if !(step >= 1) {
		panicf("AdamW: step %d < 1", step)
	}
	a := c.args()
	a.s[0], a.s[1], a.s[2], a.s[3] = f32(w), f32(g), f32(m), f32(v)
	a.x[0], a.x[1] = beta1, beta2
	a.x[2], a.x[3] = AdamScalars(lr, beta1, beta2, step) // step size, 1/√(1−β2^step)
	a.x[4], a.x[5] = eps, 1-lr*wd                        // decoupled decay as a factor
	a.x[6] = 1                                           // the gradient's factor (AdamWGated: the clip)
	c.pool.For(n, c.pool.grain(n, 12), adamRows, a)
}

// adamRows is AdamW on the rows [lo, hi) of the gradient times a.x[6] (1, or the gate's clip: the
// product is what Scale(g, clip) would have stored; g·1 is g exactly).
func adamRows(a *opArgs, _, lo, hi int) {
	ww, gg, mm, vv := a.s[0], a.s[1], a.s[2], a.s[3]
	beta1, beta2, stepSize, rbc2 := a.x[0], a.x[1], a.x[2], a.x[3]
	eps, decay, clip := a.x[4], a.x[5], a.x[6]
	for i := lo; i < hi; i++ {
		gi := gg[i] * clip
		mi := beta1*mm[i] + (1-beta1)*gi
		vi := beta2*vv[i] + (1-beta2)*gi*gi
		mm[i], vv[i] = mi, vi
		denom := float32(math.Sqrt(float64(vi)))*rbc2 + eps
		ww[i] = ww[i]*decay - stepSize*mi/denom
	}
}

func (c *cpuDevice) EMA(ema, w *Tensor, decay float32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := sameNumel("EMA", ema, w)
	a := c.args()
	a.s[0], a.s[1], a.x[0] = f32(ema), f32(w), decay
	c.pool.For(n, c.pool.grain(n, 3), emaRows, a)
}

func emaRows(a *opArgs, _, lo, hi int) {
	e, w, decay := a.s[0], a.s[1], a.x[0]
	for i := lo; i < hi; i++ {
		e[i] = decay*e[i] + (1-decay)*w[i]
	}
}

var _ Device = (*cpuDevice)(nil)
