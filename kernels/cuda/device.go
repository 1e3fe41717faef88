package cuda

import (
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"strings"
	"unsafe"

	"github.com/ebitengine/purego"

	"github.com/fewstep/fewstep/kernels"
)

// Device is the CUDA backend of kernels.Device: one GPU, its primary context, one non-blocking
// stream on which every op is queued, cuBLASLt for the GEMMs and the embedded kernels for the rest.
//
// Storage follows each tensor's DType (fp32, bf16, fp16); arithmetic is fp32. GEMMs: all-fp32
// operands run as GEMM says (exact fp32 by default; TF32, rel. error ≈ 3e-4; or bf16 tensor cores);
// otherwise both operands go to the tensor cores in bf16 (an fp32 operand is converted into a bf16
// copy first: shadows.go) with fp32 accumulation. Weights marked with MarkWeights keep their bf16
// copies between calls until something writes to them.
//
// Errors: shape mismatches are programming errors and panic with the op and the shapes, like the CPU
// device. A failed CUDA call (launch, out of memory, …) is recorded; every later op is skipped and
// Sync returns the first error. A Device is not safe for concurrent use.
type Device struct {
	drv *drv
	lt  *blasLt

	Ordinal int
	Info    string   // "NVIDIA H100 80GB HBM3, sm_90, 132 SMs, driver 13000, cuBLASLt 130100"
	GEMM    GEMMMode // how GEMMs with all-fp32 operands run (default exact fp32)
	// FrozenWeights promises that marked weights do not change while captured graphs are replayed
	// (inference): graphs then reuse the bf16 weight copies made before the capture instead of
	// converting the weights on every replay.
	FrozenWeights bool

	cudev  int32
	ctx    uintptr
	stream uintptr
	cc     int // compute capability, major·10 + minor
	sms    int
	smem   int // max dynamic shared memory per block (opt-in)
	driver int

	mods   []uintptr
	images [][]byte // the modules' images, kept alive for the driver's lazy loading
	fns    map[string]uintptr
	occ    map[string]int // blocks per SM that fit, by kernel and block size (colsums.go)

	args    argBuf
	err     error
	ws      uintptr // cuBLASLt workspace
	plans   map[gemmKey]*gemmPlan
	scr     uintptr // fp32/bf16 scratch (GEMM shadows, reduction accumulators), bump-allocated per op
	scrCap  int
	scrUsed int
	dbl     uintptr // device float64 accumulators of Dot / SumAbsGroups
	dblCap  int
	pins    []*pinnedRead // ReadAsync's pinned host buffers and their events (gate.go)

	copies bf16Copies // the valid bf16 copies of fp32 tensors, weights and activations (shadows.go)

	keep      bool // the op being entered declares its writes
	depth     int  // enter nesting
	ropeTabs  map[int]*ropeTab
	prof      profiler
	smemSet   map[uintptr]int // dynamic shared memory limit set per function
	capturing bool
	refAttn   bool           // FEWSTEP_ATTENTION=ref: always the reference attention kernels
	vec       bool           // float4 fp32 fast paths (FEWSTEP_VEC=0: off, for A/B timings)
	fuse      bool           // fused ops and lazy zeroing (fused.go; FEWSTEP_FUSE=0: off, for A/B timings)
	geluAux   bool           // with fuse: the training GELU epilogues, bf16 pre-activation (GELUPreBF16; FEWSTEP_GELU_AUX=0: off)
	colFuse   int            // with fuse: blocks per SM of the norm and gate backwards that also sum columns (colsums.go; FEWSTEP_COLFUSE=0: off)
	colBias   bool           // with colFuse: they also take the next Linear's bias gradient (kernels.BackBiaser; FEWSTEP_COLFUSE_BIAS=0: off)
	qkv       bool           // with fuse: Linears of one input as one strided-batched GEMM (batched.go; FEWSTEP_QKV=0: off)
	pz        kernels.Tensor // ZeroLazy's pending tensor (header copy), when pzOn
	pzOn      bool
	syncEach  bool // FEWSTEP_CUDA_SYNC=1: synchronize after every launch (debugging)
}

var _ kernels.Device = (*Device)(nil)

// GEMMMode selects how GEMMs whose operands and output are all fp32 run.
type GEMMMode int

const (
	GEMMExact GEMMMode = iota // fp32 (CUBLAS_COMPUTE_32F): matches the CPU to ~1e-6
	GEMMTF32                  // TF32 tensor cores, fp32 accumulate: rel. error ≈ 3e-4
	GEMMBF16                  // operands converted to bf16, fp32 accumulate: rel. error 1e-3…1e-2, fastest
)

// GEMMReadsBF16 reports whether the GEMMs read bf16 copies of fp32 operands (GEMMBF16): the models
// then keep frozen weights and GEMM-only activations in bf16 (models.Shape.BF16Operands).
func (d *Device) GEMMReadsBF16() bool { return d.GEMM == GEMMBF16 }

// MarkWeights declares t (an fp32 buffer, e.g. a model's parameter buffer) as weights: in GEMMBF16
// mode the bf16 copies of its views are kept between GEMMs, and remade only after a write into
// them through this device (FromHost, Copy, AdamW, EMA, Axpy, Scale, Fill, Zero, …): every write
// into t must go through an op that declares it (shadows.go).
func (d *Device) MarkWeights(t *kernels.Tensor) {
	d.copies.mark(t.Ptr, t.Ptr+uintptr(t.Numel()*t.DType.Size()))
}

// touch notes a write into t: the bf16 copies of marked weights it overlaps go stale (an op that
// declares t as written has already dropped them; this is for one that does not).
func (d *Device) touch(t *kernels.Tensor) {
	if t != nil {
		d.copies.wroteMarked(t.Ptr, t.Ptr+uintptr(t.Numel()*t.DType.Size()))
	}
}

// isWeight reports whether t lies in a marked region.
func (d *Device) isWeight(t *kernels.Tensor) bool { return d.copies.isMarked(t.Ptr) }

// DeviceCount is the number of CUDA devices this process sees (CUDA_VISIBLE_DEVICES applies), or an
// error that says why there are none (no driver, driver too old).
func DeviceCount() (int, error) {
	d0, err := loadDriver()
	if err != nil {
		return 0, err
	}
	if err := d0.call("cuInit", d0.cuInit, 0); err != nil {
		return 0, fmt.Errorf("no usable CUDA GPU: %w", err)
	}
	var count int32
	if err := d0.call("cuDeviceGetCount", d0.cuDeviceGetCount, uintptr(unsafe.Pointer(&count))); err != nil {
		return 0, err
	}
	return int(count), nil
}

// New opens GPU ordinal: loads the driver and cuBLASLt, retains the primary context, makes a stream,
// loads the kernel modules. Without a usable GPU it returns an error that says why.
func New(ordinal int) (*Device, error) {
	d0, err := loadDriver()
	if err != nil {
		return nil, err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	d := &Device{drv: d0, Ordinal: ordinal, fns: map[string]uintptr{}, plans: map[gemmKey]*gemmPlan{}}
	// Eager module loading: every kernel is loaded with its module, at New, so a broken module
	// shows at start. (The random CUDA_ERROR_INVALID_HANDLE from cuModuleGetFunction that led here
	// was a module handle lost to a stack move; drv.call says how.) The driver reads the variable
	// at cuInit; a user's own setting wins.
	if os.Getenv("CUDA_MODULE_LOADING") == "" {
		os.Setenv("CUDA_MODULE_LOADING", "EAGER")
	}
	if err := d0.call("cuInit", d0.cuInit, 0); err != nil {
		return nil, fmt.Errorf("no usable CUDA GPU: %w", err)
	}
	var ver, count int32
	if err := d0.call("cuDriverGetVersion", d0.cuDriverGetVersion, uintptr(unsafe.Pointer(&ver))); err != nil {
		return nil, err
	}
	d.driver = int(ver)
	if ver < MinDriver {
		return nil, fmt.Errorf("CUDA driver %d.%d is too old: fewstep's kernels are built with CUDA 13 and need a driver ≥ 580 (CUDA 13.0)", ver/1000, ver%1000/10)
	}
	if err := d0.call("cuDeviceGetCount", d0.cuDeviceGetCount, uintptr(unsafe.Pointer(&count))); err != nil {
		return nil, err
	}
	if ordinal < 0 || int(ordinal) >= int(count) {
		return nil, fmt.Errorf("no CUDA device %d: %d device(s) present", ordinal, count)
	}
	if err := d0.call("cuDeviceGet", d0.cuDeviceGet, uintptr(unsafe.Pointer(&d.cudev)), uintptr(ordinal)); err != nil {
		return nil, err
	}
	var name [256]byte
	if err := d0.call("cuDeviceGetName", d0.cuDeviceGetName, uintptr(unsafe.Pointer(&name[0])), 255, uintptr(d.cudev)); err != nil {
		return nil, err
	}
	attr := func(a int) int {
		var v int32
		if err := d0.call("cuDeviceGetAttribute", d0.cuDeviceGetAttribute, uintptr(unsafe.Pointer(&v)), uintptr(a), uintptr(d.cudev)); err != nil {
			return 0
		}
		return int(v)
	}
	d.cc = attr(attrCCMajor)*10 + attr(attrCCMinor)
	d.sms = attr(attrMultiprocessors)
	d.smem = attr(attrMaxSharedOptin)
	if d.cc < 80 {
		return nil, fmt.Errorf("GPU %s has compute capability %d.%d: fewstep's kernels need 8.0 or newer", cstr(name[:]), d.cc/10, d.cc%10)
	}
	if err := d0.call("cuDevicePrimaryCtxRetain", d0.cuDevicePrimaryCtxRetain, uintptr(unsafe.Pointer(&d.ctx)), uintptr(d.cudev)); err != nil {
		return nil, err
	}
	if err := d0.call("cuCtxSetCurrent", d0.cuCtxSetCurrent, d.ctx); err != nil {
		return nil, err
	}
	if err := d0.call("cuStreamCreate", d0.cuStreamCreate, uintptr(unsafe.Pointer(&d.stream)), streamNonBlocking); err != nil {
		return nil, err
	}
	if err := d.args.init(d0); err != nil {
		return nil, err
	}
	if d.lt, err = loadBlasLt(); err != nil {
		return nil, err
	}
	if err := d0.call("cuMemAlloc_v2(cuBLASLt workspace)", d0.cuMemAlloc, uintptr(unsafe.Pointer(&d.ws)), ltWorkspace); err != nil {
		return nil, err
	}
	if err := d.loadModules(); err != nil {
		return nil, err
	}
	d.refAttn = os.Getenv("FEWSTEP_ATTENTION") == "ref"
	d.vec = os.Getenv("FEWSTEP_VEC") != "0"
	d.fuse = os.Getenv("FEWSTEP_FUSE") != "0"
	d.geluAux = os.Getenv("FEWSTEP_GELU_AUX") != "0"
	d.colFuse = colFuseEnv(os.Getenv("FEWSTEP_COLFUSE"))
	d.colBias = os.Getenv("FEWSTEP_COLFUSE_BIAS") != "0"
	d.qkv = os.Getenv("FEWSTEP_QKV") != "0"
	d.syncEach = os.Getenv("FEWSTEP_CUDA_SYNC") == "1"
	d.Info = fmt.Sprintf("%s, sm_%d, %d SMs, driver %d, cuBLASLt %d", cstr(name[:]), d.cc, d.sms, d.driver, d.lt.version)
	return d, nil
}

func cstr(b []byte) string {
	if i := strings.IndexByte(string(b), 0); i >= 0 {
		return string(b[:i])
	}
	return string(b)
}

// Name is "cuda" (the ordinal is in Info).
func (d *Device) Name() string { return "cuda" }

// enter pins the goroutine to its OS thread and makes the context current there (the driver's
// current context is per thread; goroutines move between threads).
func (d *Device) enter() bool {
	if d.pzOn && d.depth == 0 { // a ZeroLazy the op did not claim: zero it now, before the op
		keep := d.keep
		d.flushZero()
		d.keep = keep
	}
	runtime.LockOSThread()
	if d.depth == 0 && !d.keep {
		d.copies.undeclared() // an op that does not declare its writes: no bf16 copy of an unmarked tensor stays valid
	}
	d.keep = false
	d.depth++
	if d.err != nil {
		return false
	}
	r, _, _ := purego.SyscallN(d.drv.cuCtxSetCurrent, d.ctx)
	if r != 0 {
		d.fail(d.drv.check("cuCtxSetCurrent", r))
		return false
	}
	return true
}

// enterW is enter for an op that declares every tensor it writes (ws, nil ones ignored): the bf16
// copies of other tensors stay valid across it (shadows.go). Pair with leave as enter.
func (d *Device) enterW(ws ...*kernels.Tensor) bool {
	d.keep = true
	ok := d.enter()
	d.wrote(ws...)
	return ok
}

// begin opens an op (the launcher ritual of every op): false when it has nothing to do (empty) or
// an earlier error stands, and the op returns at once; else the op runs and defers d.leave(). The
// op declares the tensors it writes (ws; none: it calls d.wrote itself), so the bf16 copies of
// other tensors stay valid across it (shadows.go).
//
//	if !d.begin(n == 0, out) {
//		return
//	}
//	defer d.leave()
func (d *Device) begin(empty bool, ws ...*kernels.Tensor) bool {
	if empty {
		d.keep = false
		return false
	}
	if !d.enterW(ws...) {
		d.leave()
		return false
	}
	return true
}

// leave ends what enter began. An early return that calls it without enter (Alloc's on an empty
// tensor) must not drive depth below zero (enter would then stop clearing the bf16 copy table) nor
// leave the keep flag set for the next op.
func (d *Device) leave() {
	if d.depth == 0 {
		d.keep = false
		return
	}
	d.depth--
	runtime.UnlockOSThread()
}

// fail records the first error.
func (d *Device) fail(err error) {
	if err != nil && d.err == nil {
		d.err = err
	}
}

// Err is the first recorded error (nil if none) without waiting for the device.
func (d *Device) Err() error { return d.err }

// ResetError forgets the recorded error (tests: one failing case must not fail every later one).
// Only for errors that leave the context usable, such as a refused launch; after a fault in a
// kernel the context is lost and every later call fails again.
func (d *Device) ResetError() { d.err = nil }

// ---------------------------------------------------------------------------------------------
// Kernel arguments and launches. Argument values live in pinned host memory (C memory), each in its
// own 8-byte slot (a by-value struct takes several), with an array of pointers to them, as
// cuLaunchKernel wants; the driver copies them at launch, so the buffer is reused at once.

const (
	argSlots = 64
	argBytes = 4096
)

type argBuf struct {
	base uintptr // values: argBytes
	ptrs uintptr // argSlots pointers
	off  int
	n    int
}

func (a *argBuf) init(d *drv) error {
	var p uintptr
	if err := d.call("cuMemAllocHost_v2(kernel arguments)", d.cuMemAllocHost, uintptr(unsafe.Pointer(&p)), argBytes+argSlots*8); err != nil {
		return err
	}
	a.base, a.ptrs = p, p+argBytes
	return nil
}

func (a *argBuf) reset() *argBuf { a.off, a.n = 0, 0; return a }

func (a *argBuf) slot(size int) uintptr {
	a.off = (a.off + 7) &^ 7
	if a.off+size > argBytes || a.n >= argSlots {
		panic("cuda: too many kernel arguments")
	}
	p := a.base + uintptr(a.off)
	*(*uintptr)(cptr(a.ptrs + uintptr(8*a.n))) = p
	a.off += size
	a.n++
	return p
}

func (a *argBuf) ptr(p uintptr) *argBuf { *(*uintptr)(cptr(a.slot(8))) = p; return a }
func (a *argBuf) i32(v int) *argBuf     { *(*int64)(cptr(a.slot(8))) = int64(int32(v)); return a }
func (a *argBuf) i64(v int) *argBuf     { *(*int64)(cptr(a.slot(8))) = int64(v); return a }
func (a *argBuf) f32(v float32) *argBuf {
	*(*uint64)(cptr(a.slot(8))) = uint64(math.Float32bits(v))
	return a
}

// floats passes n float32 values as one by-value struct argument.
func (a *argBuf) floats(vs ...[]float32) *argBuf {
	n := 0
	for _, v := range vs {
		n += len(v)
	}
	p := a.slot(4 * n)
	for _, v := range vs {
		copy(unsafe.Slice((*float32)(cptr(p)), len(v)), v)
		p += uintptr(4 * len(v))
	}
	return a
}

// t passes a tensor's address and dtype code (two arguments); a nil tensor passes 0.
func (a *argBuf) t(t *kernels.Tensor) *argBuf {
	if t == nil {
		return a.ptr(0).i32(0)
	}
	return a.ptr(t.Ptr).i32(int(t.DType))
}

// fn resolves a kernel by name in the loaded modules.
func (d *Device) fn(name string) uintptr {
	if f, ok := d.fns[name]; ok {
		return f
	}
	for _, m := range d.mods {
		var f uintptr
		r, _, _ := purego.SyscallN(d.drv.cuModuleGetFunction, uintptr(unsafe.Pointer(&f)), m, uintptr(unsafe.Pointer(&append([]byte(name), 0)[0])))
		r &= 0xffffffff
		if r == 0 && f != 0 {
			d.fns[name] = f
			return f
		}
		if r != 500 { // not CUDA_ERROR_NOT_FOUND: the context is broken (e.g. an earlier kernel faulted)
			d.fail(fmt.Errorf("looking up kernel %s (an earlier asynchronous failure?): %w", name, d.drv.check("cuModuleGetFunction", r)))
			return 0
		}
	}
	d.fail(fmt.Errorf("cuda: kernel %s is in no loaded module (rebuild with scripts/build-kernels.sh)", name))
	return 0
}

// launch queues kernel name with the arguments in d.args.
func (d *Device) launch(name string, gx, gy, gz, bx, by, bz, smem int) {
	f := d.fn(name)
	if f == 0 || d.err != nil {
		return
	}
	pa := d.profBegin()
	r, _, _ := purego.SyscallN(d.drv.cuLaunchKernel, f, uintptr(gx), uintptr(gy), uintptr(gz), uintptr(bx), uintptr(by), uintptr(bz),
		uintptr(smem), d.stream, d.args.ptrs, 0)
	d.profEnd(name, pa)
	if r&0xffffffff != 0 {
		d.fail(fmt.Errorf("launch of %s (grid %d×%d×%d, block %d×%d×%d, smem %d): %w", name, gx, gy, gz, bx, by, bz, smem, d.drv.check("cuLaunchKernel", r&0xffffffff)))
		return
	}
	if d.syncEach && !d.capturing { // FEWSTEP_CUDA_SYNC=1: find the kernel that faults
		if r, _, _ := purego.SyscallN(d.drv.cuStreamSynchronize, d.stream); r&0xffffffff != 0 {
			d.fail(fmt.Errorf("kernel %s (grid %d×%d×%d, block %d×%d×%d): %w", name, gx, gy, gz, bx, by, bz, d.drv.check("cuStreamSynchronize", r&0xffffffff)))
		}
	}
}

// Launch is the launcher for kernels outside this file set (the fused attention): it resolves name,
// sets the dynamic shared memory limit when smem > 48 KB, and queues it with args (each a pointer to
// one argument value, C or pinned memory; see Args).
func (d *Device) Launch(name string, grid, block [3]int, smem int) {
	if smem > 48<<10 {
		if f := d.fn(name); f != 0 && d.smemSet[f] < smem {
			if d.smemSet == nil {
				d.smemSet = map[uintptr]int{}
			}
			d.smemSet[f] = smem
			if err := d.drv.call("cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES) of "+name, d.drv.cuFuncSetAttribute, f, funcAttrMaxDynShared, uintptr(smem)); err != nil {
				d.fail(err)
			}
		}
	}
	d.launch(name, grid[0], grid[1], grid[2], block[0], block[1], block[2], smem)
}

// Args starts the argument list of the next Launch (a builder: Args().Ptr(p).I32(n)…).
func (d *Device) Args() *Args { d.args.reset(); return (*Args)(&d.args) }

// Args builds kernel arguments for Launch.
type Args argBuf

func (a *Args) Ptr(p uintptr) *Args            { (*argBuf)(a).ptr(p); return a }
func (a *Args) I32(v int) *Args                { (*argBuf)(a).i32(v); return a }
func (a *Args) I64(v int) *Args                { (*argBuf)(a).i64(v); return a }
func (a *Args) F32(v float32) *Args            { (*argBuf)(a).f32(v); return a }
func (a *Args) Tensor(t *kernels.Tensor) *Args { (*argBuf)(a).t(t); return a }

// grid1 is the launch size of a grid-stride elementwise kernel over n elements.
func (d *Device) grid1(n int) int {
	g := (n + 255) / 256
	if lim := d.sms * 16; g > lim {
		g = lim
	}
	if g < 1 {
		g = 1
	}
	return g
}

// ew launches a grid-stride kernel over n elements (args already set, n passed last by the caller).
func (d *Device) ew(name string, n int) {
	if n == 0 {
		return
	}
	d.launch(name, d.grid1(n), 1, 1, 256, 1, 1, 0)
}

// ---------------------------------------------------------------------------------------------
// Scratch: one device buffer, bump-allocated within an op and reused by the next (ops are ordered on
// the stream). It grows outside graph capture only.

func (d *Device) scratchReset() { d.scrUsed = 0 }

func (d *Device) scratch(bytes int) uintptr {
	bytes = (bytes + 255) &^ 255
	if d.scrUsed+bytes > d.scrCap {
		if d.capturing {
			d.fail(fmt.Errorf("cuda: scratch must grow to %d bytes during graph capture: run the captured work once before capturing", d.scrUsed+bytes))
			return 0
		}
		need := d.scrUsed + bytes
		if need < 2*d.scrCap {
			need = 2 * d.scrCap
		}
		if d.scr != 0 {
			if d.scrUsed > 0 { // live scratch of this op: keep it, lose it only when the op ends
				d.fail(fmt.Errorf("cuda: scratch grown within an op (internal)"))
				return 0
			}
			d.fail(d.drv.call("cuStreamSynchronize", d.drv.cuStreamSynchronize, d.stream))
			d.fail(d.drv.call("cuMemFree_v2(scratch)", d.drv.cuMemFree, d.scr))
			d.scr, d.scrCap = 0, 0
		}
		if err := d.drv.call(fmt.Sprintf("cuMemAlloc_v2(scratch, %d bytes)", need), d.drv.cuMemAlloc, uintptr(unsafe.Pointer(&d.scr)), uintptr(need)); err != nil {
			d.fail(err)
			return 0
		}
		d.scrCap = need
	}
	p := d.scr + uintptr(d.scrUsed)
	d.scrUsed += bytes
	return p
}

// reserve makes sure the scratch holds bytes before an op bump-allocates (so it never grows mid-op).
func (d *Device) reserve(bytes int) {
	d.scratchReset()
	d.scratch(bytes)
	d.scratchReset()
}

// ---------------------------------------------------------------------------------------------
// Memory.

func (d *Device) Alloc(dt kernels.DType, shape ...int) *kernels.Tensor {
	t := &kernels.Tensor{Dev: d, DType: dt, Shape: append([]int(nil), shape...)}
	n := t.Numel() * dt.Size()
	if n == 0 || !d.enter() {
		d.leave()
		return t
	}
	defer d.leave()
	if d.capturing {
		d.fail(errors.New("cuda: Alloc during graph capture"))
		return t
	}
	if err := d.drv.call(fmt.Sprintf("cuMemAlloc_v2(%s %v, %d bytes)", dt, shape, n), d.drv.cuMemAlloc, uintptr(unsafe.Pointer(&t.Ptr)), uintptr(n)); err != nil {
		d.fail(err)
		return t
	}
	d.fail(d.drv.call("cuMemsetD8Async", d.drv.cuMemsetD8Async, t.Ptr, 0, uintptr(n), d.stream))
	return t
}

func (d *Device) Free(t *kernels.Tensor) {
	if t == nil || t.Ptr == 0 {
		return
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	purego.SyscallN(d.drv.cuCtxSetCurrent, d.ctx)
	// Free waits for queued work on the tensor: cuMemFree does not order itself after the stream.
	purego.SyscallN(d.drv.cuStreamSynchronize, d.stream)
	d.dropZero(t)
	d.forget(t)
	d.fail(d.drv.call("cuMemFree_v2", d.drv.cuMemFree, t.Ptr))
	t.Ptr = 0
}

// forget drops what the device keeps about the memory of t (about to be freed): its weight mark,
// the bf16 copies of weights and activations in it (shadows.go). A later tensor at the same address
// starts fresh.
func (d *Device) forget(t *kernels.Tensor) {
	for _, p := range d.copies.forget(t.Ptr, t.Ptr+uintptr(t.Numel()*t.DType.Size())) {
		d.drv.call("cuMemFree_v2(bf16 copy)", d.drv.cuMemFree, p)
	}
}

// MemInfo returns free and total device memory in bytes.
func (d *Device) MemInfo() (free, total uint64, err error) {
	if !d.enterW() {
		d.leave()
		return 0, 0, d.err
	}
	defer d.leave()
	err = d.drv.call("cuMemGetInfo_v2", d.drv.cuMemGetInfo, uintptr(unsafe.Pointer(&free)), uintptr(unsafe.Pointer(&total)))
	return
}

func mustNumel(op string, n int, t *kernels.Tensor) {
	if t.Numel() != n {
		panic(fmt.Sprintf("cuda: %s: %d elements for %v", op, n, t))
	}
}

func (d *Device) FromHost(dst *kernels.Tensor, src []float32) {
	mustNumel("FromHost", len(src), dst)
	if !d.begin(len(src) == 0, dst) {
		return
	}
	defer d.leave()
	d.touch(dst)
	var p unsafe.Pointer
	n := len(src) * dst.DType.Size()
	switch dst.DType {
	case kernels.F32:
		p = unsafe.Pointer(&src[0])
	case kernels.BF16:
		h := make([]uint16, len(src))
		for i, v := range src {
			h[i] = F32ToBF16(v)
		}
		p = unsafe.Pointer(&h[0])
	case kernels.F16:
		h := make([]uint16, len(src))
		for i, v := range src {
			h[i] = F32ToF16(v)
		}
		p = unsafe.Pointer(&h[0])
	}
	// From pageable memory: the call returns once the source is staged.
	d.fail(d.drv.call("cuMemcpyHtoDAsync_v2", d.drv.cuMemcpyHtoDAsync, dst.Ptr, uintptr(p), uintptr(n), d.stream))
}

func (d *Device) ToHost(dst []float32, src *kernels.Tensor) {
	mustNumel("ToHost", len(dst), src)
	if len(dst) == 0 {
		return
	}
	if !d.enterW() {
		d.leave()
		for i := range dst {
			dst[i] = float32(math.NaN())
		}
		return
	}
	defer d.leave()
	n := len(dst) * src.DType.Size()
	if src.DType == kernels.F32 {
		d.fail(d.drv.call("cuMemcpyDtoHAsync_v2", d.drv.cuMemcpyDtoHAsync, uintptr(unsafe.Pointer(&dst[0])), src.Ptr, uintptr(n), d.stream))
	} else {
		h := make([]uint16, len(dst))
		d.fail(d.drv.call("cuMemcpyDtoHAsync_v2", d.drv.cuMemcpyDtoHAsync, uintptr(unsafe.Pointer(&h[0])), src.Ptr, uintptr(n), d.stream))
		for i, v := range h {
			if src.DType == kernels.BF16 {
				dst[i] = BF16ToF32(v)
			} else {
				dst[i] = F16ToF32(v)
			}
		}
	}
	d.fail(d.drv.call("cuStreamSynchronize", d.drv.cuStreamSynchronize, d.stream))
	if d.err != nil {
		for i := range dst {
			dst[i] = float32(math.NaN())
		}
	}
}

func (d *Device) Copy(dst, src *kernels.Tensor) {
	n := src.Numel()
	mustNumel("Copy", n, dst)
	if !d.begin(n == 0, dst) {
		return
	}
	defer d.leave()
	d.touch(dst)
	if dst.DType == src.DType {
		pr := d.profBegin()
		d.fail(d.drv.call("cuMemcpyDtoDAsync_v2", d.drv.cuMemcpyDtoDAsync, dst.Ptr, src.Ptr, uintptr(n*src.DType.Size()), d.stream))
		d.profEnd("memcpy", pr)
		return
	}
	d.args.reset().t(dst).t(src).i64(n)
	d.ew("ew_convert", n)
}

func (d *Device) Zero(t *kernels.Tensor) {
	n := t.Numel() * t.DType.Size()
	if !d.begin(n == 0, t) {
		return
	}
	defer d.leave()
	d.touch(t)
	d.zeroNow(t)
}

func (d *Device) Fill(t *kernels.Tensor, v float32) {
	n := t.Numel()
	if !d.begin(n == 0, t) {
		return
	}
	defer d.leave()
	d.touch(t)
	d.args.reset().t(t).f32(v).i64(n)
	d.ew("ew_fill", n)
}

// Sync waits for all queued work and returns the first error.
func (d *Device) Sync() error {
	if !d.enterW() {
		d.leave()
		return d.err
	}
	defer d.leave()
	d.fail(d.drv.call("cuStreamSynchronize", d.drv.cuStreamSynchronize, d.stream))
	return d.err
}

// ---------------------------------------------------------------------------------------------
// Host conversions (round to nearest even, NaN kept), the same as the kernels'.

func F32ToBF16(f float32) uint16 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 {
		return uint16(u>>16) | 0x40
	}
	u += 0x7fff + (u>>16)&1
	return uint16(u >> 16)
}

func BF16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

func F16ToF32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	man := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | man<<13)
	case exp == 0:
		if man == 0 {
			return math.Float32frombits(sign)
		}
		f := float32(man) / 1024 / 16384 // 2^-14 · man/1024
		if sign != 0 {
			return -f
		}
		return f
	}
	return math.Float32frombits(sign | (exp+112)<<23 | man<<13)
}

func F32ToF16(f float32) uint16 {
	u := math.Float32bits(f)
	sign := uint16(u>>16) & 0x8000
	if u&0x7fffffff > 0x7f800000 {
		return sign | 0x7e00
	}
	a := math.Abs(float64(f))
	if a >= 65520 {
		return sign | 0x7c00
	}
	if a < 6.103515625e-05 { // subnormal: multiples of 2^-24, round half to even
		return sign | uint16(math.RoundToEven(a*16777216))
	}
	e := math.Floor(math.Log2(a))
	m := math.RoundToEven((a/math.Pow(2, e) - 1) * 1024)
	if m == 1024 {
		m, e = 0, e+1
	}
	return sign | uint16(e+15)<<10 | uint16(m)
}

// SetGELUEpilogues turns the training passes' GELU epilogues (GELUPreBF16: a bf16 pre-activation
// written by GELU_AUX_BIAS, read by DGELU) on or off for passes made afterwards (tests: the passes
// without them compute exactly what fp32 activations with bf16 copies do).
func SetGELUEpilogues(d *Device, on bool) { d.geluAux = on }

// SetColumnFusion turns the column sums folded into the norm and gate backwards (colsums.go) on
// or off for ops queued afterwards, the bias gradients they take (kernels.BackBiaser) with them
// (tests: both against the CPU).
func SetColumnFusion(d *Device, on bool) {
	d.colFuse, d.colBias = 0, on
	if on {
		d.colFuse = colFuseEnv("")
	}
}

// SetReferenceAttention switches d to the reference attention kernels (exact fp32; tests) or back
// to the fused ones where they apply.
func SetReferenceAttention(d *Device, on bool) { d.refAttn = on }
