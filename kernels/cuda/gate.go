package cuda

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"unsafe"

	"github.com/ebitengine/purego"

	"github.com/fewstep/fewstep/kernels"
)

// The optimizer step gated on the device and the asynchronous readback (kernels/gate.go has the
// contract; the kernels are in optim.cu).

// StepGate queues step_gate (one thread): the gate from the float64 accumulators.
func (d *Device) StepGate(gate, acc *kernels.Tensor, mask uint32, roles, deferred int, clip float64, hostOK bool) {
	must(gate.DType == kernels.F32 && gate.Numel() == kernels.GateLen(roles) && gate.Ptr%8 == 0,
		"StepGate: gate %v for %d roles, want 8-byte aligned F32 [%d]", gate, roles, kernels.GateLen(roles))
	must(acc.DType == kernels.F32 && acc.Numel() >= 2*(roles+deferred) && acc.Ptr%8 == 0,
		"StepGate: accumulators %v hold fewer than %d roles + %d deferred float64s", acc, roles, deferred)
	must(roles <= 32 && (roles == 32 || mask>>roles == 0), "StepGate: mask %#x for %d roles (at most 32)", mask, roles)
	if !d.begin(false, gate) {
		return
	}
	defer d.leave()
	ok := 0
	if hostOK {
		ok = 1
	}
	d.args.reset().ptr(gate.Ptr).ptr(acc.Ptr).i32(int(int32(mask))).i32(roles).i32(deferred)
	*(*uint64)(cptr(d.args.slot(8))) = math.Float64bits(clip) // a double argument
	d.args.i32(ok)
	d.launch("step_gate", 1, 1, 1, 32, 1, 1, 0)
}

// AdamWGated is AdamW's launcher (adamwParts: float4 body, scalar head and tail) on the gated kernels.
func (d *Device) AdamWGated(w, g, m, v, gate *kernels.Tensor, role int, lr, beta1, beta2, eps, wd float32) {
	n := sameNumel("AdamWGated", w, g, m, v)
	must(m.DType == v.DType, "AdamWGated: m %v and v %v dtypes differ", m, v)
	must(gate.DType == kernels.F32 && role >= 0 && 3+2*role < gate.Numel(), "AdamWGated: role %d of gate %v", role, gate)
	if !d.begin(n == 0, w, g, m, v) {
		return
	}
	defer d.leave()
	d.touch(w)
	decay := 1 - lr*wd
	d.adamwParts(n, w, g, m, v, func(i0, k int) {
		if k == 0 {
			return
		}
		at := func(t *kernels.Tensor) uintptr { return t.Ptr + uintptr(i0*t.DType.Size()) }
		d.args.reset().ptr(at(w)).i32(int(w.DType)).ptr(at(g)).i32(int(g.DType)).ptr(at(m)).ptr(at(v)).i32(int(m.DType)).
			ptr(gate.Ptr).i32(role).f32(lr).f32(beta1).f32(beta2).f32(eps).f32(decay).i64(k)
		d.ew("adamw_gated", k)
	}, func(b uintptr, n4 int) {
		d.args.reset().ptr(w.Ptr + b).ptr(g.Ptr + b).ptr(m.Ptr + b).ptr(v.Ptr + b).ptr(gate.Ptr).i32(role).
			f32(lr).f32(beta1).f32(beta2).f32(eps).f32(decay).i64(n4)
		d.ew("adamw_gated_f32x4", n4)
	})
}

// EMAGated queues ema_gated.
func (d *Device) EMAGated(ema, w, gate *kernels.Tensor, decay float32) {
	n := sameNumel("EMAGated", ema, w)
	must(gate.DType == kernels.F32 && gate.Numel() >= 1, "EMAGated: gate %v", gate)
	if !d.begin(n == 0, ema) {
		return
	}
	defer d.leave()
	d.touch(ema)
	d.args.reset().t(ema).t(w).ptr(gate.Ptr).f32(decay).i64(n)
	d.ew("ema_gated", n)
}

// pinnedRead is a pinned host buffer of ReadAsync with the event recorded after its copy.
type pinnedRead struct {
	host  uintptr
	bytes int
	ev    uintptr
	busy  bool // a Readback holds it until its Wait
}

// readback is the CUDA Readback: a copy into p.host queued on the stream, then p.ev recorded.
type readback struct {
	d    *Device
	p    *pinnedRead // nil: nothing queued (an earlier error, or no elements)
	n    int
	done bool
}

// ReadAsync queues a copy of src into a pinned host buffer and an event after it; Wait waits for
// that event only. The buffers (a few, as many as readbacks are in flight at once) are kept and
// reused.
func (d *Device) ReadAsync(src *kernels.Tensor) kernels.Readback {
	must(src.DType == kernels.F32, "ReadAsync: %v is not F32", src)
	rb := &readback{d: d, n: src.Numel()}
	if !d.begin(rb.n == 0) {
		return rb
	}
	defer d.leave()
	if d.capturing {
		d.fail(errors.New("cuda: ReadAsync during graph capture"))
		return rb
	}
	p := d.pinned(4 * rb.n)
	if p == nil {
		return rb
	}
	d.fail(d.drv.call("cuMemcpyDtoHAsync_v2(ReadAsync)", d.drv.cuMemcpyDtoHAsync, p.host, src.Ptr, uintptr(4*rb.n), d.stream))
	d.fail(d.drv.call("cuEventRecord(ReadAsync)", d.drv.cuEventRecord, p.ev, d.stream))
	if d.err == nil {
		p.busy, rb.p = true, p
	}
	return rb
}

// pinned returns a free pinned buffer of at least bytes, making one when none is free.
func (d *Device) pinned(bytes int) *pinnedRead {
	for _, p := range d.pins {
		if !p.busy && p.bytes >= bytes {
			return p
		}
	}
	p := &pinnedRead{bytes: max(bytes, 1024)}
	if err := d.drv.call("cuMemAllocHost_v2(ReadAsync)", d.drv.cuMemAllocHost, uintptr(unsafe.Pointer(&p.host)), uintptr(p.bytes)); err != nil {
		d.fail(err)
		return nil
	}
	if err := d.drv.call("cuEventCreate(ReadAsync)", d.drv.cuEventCreate, uintptr(unsafe.Pointer(&p.ev)), eventDisableTiming); err != nil {
		d.fail(err)
		return nil
	}
	d.pins = append(d.pins, p)
	return p
}

// Wait synchronizes with the readback's event (not the stream: work queued after the copy goes on
// running) and copies the values out of the pinned buffer.
func (r *readback) Wait(dst []float32) error {
	d := r.d
	mustNumel("Readback.Wait", len(dst), &kernels.Tensor{Shape: []int{r.n}})
	if r.done {
		panic("cuda: Readback.Wait called twice")
	}
	r.done = true
	if r.n == 0 {
		return d.err
	}
	if r.p != nil {
		runtime.LockOSThread()
		purego.SyscallN(d.drv.cuCtxSetCurrent, d.ctx)
		d.fail(d.drv.call("cuEventSynchronize(ReadAsync)", d.drv.cuEventSynchronize, r.p.ev))
		runtime.UnlockOSThread()
		copy(dst, unsafe.Slice((*float32)(cptr(r.p.host)), r.n))
		r.p.busy = false
	}
	if d.err != nil || r.p == nil {
		for i := range dst {
			dst[i] = float32(math.NaN())
		}
		if d.err == nil {
			return fmt.Errorf("cuda: ReadAsync of %d values queued nothing", r.n)
		}
		return d.err
	}
	return nil
}
