package cuda

import (
	"fmt"
	"runtime"
	"unsafe"
)

// Graph is a captured, instantiated CUDA graph of the device's stream work.
type Graph struct {
	d           *Device
	graph, exec uintptr
	writesW     []region // the marked (weight) ranges its ops declared writing: a replay drops their bf16 copies
}

const captureModeRelaxed = 2 // CU_STREAM_CAPTURE_MODE_RELAXED: goroutines may change OS threads

// Capture records the ops fn queues (no memory allocation, no host copies, no synchronizing
// reductions inside) into a graph that Launch replays. Run fn once before capturing so every
// per-shape table and scratch buffer exists.
func (d *Device) Capture(fn func()) (*Graph, error) {
	if err := d.Sync(); err != nil {
		return nil, err
	}
	runtime.LockOSThread() // capture and its ops from this thread
	defer runtime.UnlockOSThread()
	if !d.enter() {
		d.leave()
		return nil, d.err
	}
	err := d.drv.call("cuStreamBeginCapture_v2", d.drv.cuStreamBeginCapture, d.stream, captureModeRelaxed)
	d.leave()
	if err != nil {
		return nil, err
	}
	d.capturing = true
	d.copies.beginCapture()
	fn() // at depth 0: its ops clear and keep bf16 copies as they do outside a capture
	d.capturing = false
	writesW := d.copies.endCapture()
	d.enter()
	defer d.leave()
	g := &Graph{d: d, writesW: writesW}
	if err := d.drv.call("cuStreamEndCapture", d.drv.cuStreamEndCapture, d.stream, uintptr(unsafe.Pointer(&g.graph))); err != nil {
		d.fail(err)
	}
	if d.err != nil {
		return nil, fmt.Errorf("graph capture: %w", d.err)
	}
	if err := d.drv.call("cuGraphInstantiateWithFlags", d.drv.cuGraphInstantiateWithFlags, uintptr(unsafe.Pointer(&g.exec)), g.graph, 0); err != nil {
		return nil, err
	}
	return g, nil
}

// Launch queues one replay of the graph on the device's stream.
func (g *Graph) Launch() error {
	d := g.d
	if !d.enter() {
		d.leave()
		return d.err
	}
	defer d.leave()
	d.copies.replayed(g.writesW)
	d.fail(d.drv.call("cuGraphLaunch", d.drv.cuGraphLaunch, g.exec, d.stream))
	return d.err
}

// Destroy releases the graph.
func (g *Graph) Destroy() {
	d := g.d
	d.enter()
	defer d.leave()
	if g.exec != 0 {
		d.drv.call("cuGraphExecDestroy", d.drv.cuGraphExecDestroy, g.exec)
	}
	if g.graph != 0 {
		d.drv.call("cuGraphDestroy", d.drv.cuGraphDestroy, g.graph)
	}
	g.exec, g.graph = 0, 0
}

// Event is a CUDA event on the device's stream, for timing.
type Event struct {
	d  *Device
	ev uintptr
}

// NewEvent makes a timing event.
func (d *Device) NewEvent() (*Event, error) {
	if !d.enterW() {
		d.leave()
		return nil, d.err
	}
	defer d.leave()
	e := &Event{d: d}
	if err := d.drv.call("cuEventCreate", d.drv.cuEventCreate, uintptr(unsafe.Pointer(&e.ev)), 0); err != nil {
		return nil, err
	}
	return e, nil
}

// Record queues the event on the device's stream.
func (e *Event) Record() {
	d := e.d
	if !d.enterW() {
		d.leave()
		return
	}
	defer d.leave()
	d.fail(d.drv.call("cuEventRecord", d.drv.cuEventRecord, e.ev, d.stream))
}

// Since waits for e and returns the milliseconds between start and e.
func (e *Event) Since(start *Event) (float32, error) {
	d := e.d
	if !d.enterW() {
		d.leave()
		return 0, d.err
	}
	defer d.leave()
	if err := d.drv.call("cuEventSynchronize", d.drv.cuEventSynchronize, e.ev); err != nil {
		return 0, err
	}
	var ms float32
	if err := d.drv.call("cuEventElapsedTime", d.drv.cuEventElapsedTime, uintptr(unsafe.Pointer(&ms)), start.ev, e.ev); err != nil {
		return 0, err
	}
	return ms, nil
}
