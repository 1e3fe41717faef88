package cuda

import (
	"fmt"
	"io"
	"sort"
	"unsafe"

	"github.com/ebitengine/purego"
)

// A simple per-kernel profiler: with Profile on, every kernel launch and GEMM is bracketed by two
// events; ProfileReport sums the times by kernel name. The events serialize nothing on the GPU but
// add two driver calls per op, so profile runs are for the breakdown, not for the total.

type profRec struct {
	name string
	a, b uintptr
}

type profiler struct {
	on   bool
	pool []uintptr // events, reused
	used int
	recs []profRec
}

// SetProfile turns the per-kernel profiler on (and clears it) or off.
func (d *Device) SetProfile(on bool) {
	d.prof.on = on
	d.prof.used = 0
	d.prof.recs = d.prof.recs[:0]
}

func (d *Device) profEvent() uintptr {
	p := &d.prof
	if p.used == len(p.pool) {
		var e uintptr
		if err := d.drv.call("cuEventCreate", d.drv.cuEventCreate, uintptr(unsafe.Pointer(&e)), 0); err != nil {
			d.fail(err)
			return 0
		}
		p.pool = append(p.pool, e)
	}
	p.used++
	return p.pool[p.used-1]
}

// profBegin/profEnd bracket one op when profiling (and not capturing).
func (d *Device) profBegin() uintptr {
	if !d.prof.on || d.capturing {
		return 0
	}
	e := d.profEvent()
	purego.SyscallN(d.drv.cuEventRecord, e, d.stream)
	return e
}

func (d *Device) profEnd(name string, a uintptr) {
	if a == 0 {
		return
	}
	e := d.profEvent()
	purego.SyscallN(d.drv.cuEventRecord, e, d.stream)
	d.prof.recs = append(d.prof.recs, profRec{name, a, e})
}

// ProfileReport waits for the device and writes the time per kernel name, largest first, divided by
// div (the number of profiled repetitions), then clears the records.
func (d *Device) ProfileReport(w io.Writer, div int) error {
	if err := d.Sync(); err != nil {
		return err
	}
	d.enter()
	defer d.leave()
	type agg struct {
		name string
		ms   float64
		n    int
	}
	m := map[string]*agg{}
	total := 0.0
	for _, r := range d.prof.recs {
		var ms float32
		if err := d.drv.call("cuEventElapsedTime", d.drv.cuEventElapsedTime, uintptr(unsafe.Pointer(&ms)), r.a, r.b); err != nil {
			return err
		}
		a := m[r.name]
		if a == nil {
			a = &agg{name: r.name}
			m[r.name] = a
		}
		a.ms += float64(ms)
		a.n++
		total += float64(ms)
	}
	var as []*agg
	for _, a := range m {
		as = append(as, a)
	}
	sort.Slice(as, func(i, j int) bool { return as[i].ms > as[j].ms })
	fmt.Fprintf(w, "%-44s %10s %8s %6s\n", "kernel", "ms/rep", "calls", "%")
	for _, a := range as {
		fmt.Fprintf(w, "%-44s %10.3f %8d %6.1f\n", a.name, a.ms/float64(div), a.n/div, 100*a.ms/total)
	}
	fmt.Fprintf(w, "%-44s %10.3f\n", "total (sum of op times)", total/float64(div))
	d.prof.used = 0
	d.prof.recs = d.prof.recs[:0]
	return nil
}
