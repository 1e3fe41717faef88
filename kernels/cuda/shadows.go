package cuda

import (
	"fmt"
	"unsafe"

	"github.com/fewstep/fewstep/kernels"
)

// bf16 copies of fp32 tensors, one table for all of them (NOTES.md v16). The models keep
// activations and master weights in fp32; the tensor cores want bf16 (GEMMBF16 mode, and the bf16
// attention kernels). Rather than convert an fp32 operand on every use, the device keeps bf16 copies
// and records the valid ones in one table, bf16Copies, that answers "a valid bf16 copy of these
// fp32 elements?" for every op. Copies come three ways, all recorded there:
//   - the op that produces an activation (Modulate, LayerNorm, RMSNorm, GELU, SiLU, RoPE, Attention,
//     the fused forwards, the backward ops that sum a gradient's columns) also writes its bf16 copy
//     into a persistent buffer kept per fp32 address (shadowBuf, actSet);
//   - a GEMM operand in a region marked with MarkWeights (the parameters) is converted once into its
//     persistent buffer and reused until the weights are written (AdamW, EMA, FromHost, NCCL, …);
//   - bf16Persistent converts an operand that two kernels read (LinearBack's dOut, the attention's
//     fp32 operands) into its persistent buffer.
// Any other fp32 operand is converted into the op's scratch (bf16Operand): that copy lives for one
// op and is recorded nowhere.
//
// One validity rule: a copy is valid until its fp32 source may have been written. An op that
// declares every tensor it writes (begin or enterW: the GEMMs, norms, modulation, activations,
// attention, the elementwise ops, the optimizer, FromHost/Copy/Zero/Fill, the collectives, and
// their backward ops) drops the copies whose sources it overlaps and nothing else, so the forward's
// copies of a training pass's activations are still valid when its backward needs them, and the
// weights' copies stay valid from one step's AdamW to the next. An op that does not declare its
// writes (Alloc, a graph replay, …) drops the copies of every unmarked source; marked sources are
// written only by ops that declare it (MarkWeights' contract), so their copies survive it. A graph
// replay drops the copies of the marked ranges its captured ops declared writing. Free forgets
// everything in the freed range.
//
// Graph capture: capture starts and ends an epoch. Inside a capture only copies made in it are
// used (the graph converts for itself, or a replay would read a copy made before it, e.g. before an
// optimizer step), except marked weights' copies under FrozenWeights (inference: the weights do
// not change between replays). Copies made inside a capture are dropped when it ends: they are
// written only when the graph is replayed.

// bf16Copy is one valid copy: sh holds the bf16 values of the n fp32 elements at src.
type bf16Copy struct {
	src   uintptr // fp32 source
	n     int     // elements
	sh    uintptr // bf16 copy
	epoch int     // the epoch it was made in (odd: inside a capture)
}

// copyBuf is a persistent bf16 buffer of n elements.
type copyBuf struct {
	p uintptr
	n int
}

// region is a marked range of fp32 memory [lo, hi).
type region struct{ lo, hi uintptr }

// maxActCopies bounds the copies of unmarked sources (oldest dropped first): a forward of Wan-1.3B
// records ~12 per block, 30 blocks, and its backward needs them all. Marked sources' copies are not
// bounded (one or two per weight view).
const maxActCopies = 2048

// bf16Copies is the table of valid bf16 copies and their persistent buffers: pure bookkeeping, no
// driver calls (the Device allocates, converts and frees; shadows_test.go tests it without a GPU).
// The copies of marked sources are kept by address (every GEMM looks its weight up; a write that
// does not reach a marked region never scans them); the others in order, oldest first.
type bf16Copies struct {
	marked  []region               // MarkWeights
	weights map[uintptr][]bf16Copy // valid copies of marked sources, by fp32 address
	acts    []bf16Copy             // valid copies of other sources, oldest first
	bufs    map[uintptr]copyBuf    // persistent buffers, by fp32 address
	retired map[uintptr][]uintptr  // weights' buffers replaced by larger ones, freed with the weights
	epoch   int                    // bumped when a capture starts and when it ends
	capW    []region               // during a capture: the marked ranges its ops declared writing
}

func (c *bf16Copies) capturing() bool { return c.epoch%2 == 1 }

// mark declares [lo, hi) as weights: persistent copies that only declared writes invalidate.
func (c *bf16Copies) mark(lo, hi uintptr) { c.marked = append(c.marked, region{lo, hi}) }

// isMarked reports whether address p lies in a marked region.
func (c *bf16Copies) isMarked(p uintptr) bool {
	for _, r := range c.marked {
		if p >= r.lo && p < r.hi {
			return true
		}
	}
	return false
}

// overlapsMarked reports whether [lo, hi) overlaps a marked region.
func (c *bf16Copies) overlapsMarked(lo, hi uintptr) bool {
	for _, r := range c.marked {
		if lo < r.hi && r.lo < hi {
			return true
		}
	}
	return false
}

// usable: e may be read now. A copy made in this epoch; or a marked source's copy made outside any
// capture, read outside one or, under FrozenWeights, inside one. (Only marked sources' copies
// outlive an epoch: nothing but declared writes reaches them, and a capture's writes are declared.)
func (c *bf16Copies) usable(e bf16Copy, marked, frozen bool) bool {
	if e.epoch == c.epoch {
		return true
	}
	return marked && e.epoch%2 == 0 && (!c.capturing() || frozen)
}

// lookup returns the valid copy of the n fp32 elements at src, or 0. frozen: Device.FrozenWeights.
func (c *bf16Copies) lookup(src uintptr, n int, frozen bool) uintptr {
	if c.isMarked(src) {
		for _, e := range c.weights[src] {
			if e.n == n && c.usable(e, true, frozen) {
				return e.sh
			}
		}
		return 0
	}
	for _, e := range c.acts {
		if e.src == src && e.n == n && c.usable(e, false, frozen) {
			return e.sh
		}
	}
	return 0
}

// record notes sh as a valid copy of the n fp32 elements at src, made in the current epoch (a
// marked source's copy of the same elements made in the same epoch is replaced). A conversion
// writes no source, so it drops nothing (a producer's write of src is its declared write: actSet).
func (c *bf16Copies) record(src uintptr, n int, sh uintptr) {
	e := bf16Copy{src: src, n: n, sh: sh, epoch: c.epoch}
	if c.isMarked(src) {
		if c.weights == nil {
			c.weights = map[uintptr][]bf16Copy{}
		}
		es := c.weights[src]
		for i := range es {
			if es[i].n == n && es[i].epoch == e.epoch {
				es[i] = e
				return
			}
		}
		c.weights[src] = append(es, e)
		return
	}
	// (no copy of the same elements made in this epoch is left here: the lookup that came before a
	// conversion found none, and a producer's declared write dropped it; a duplicate would be valid too)
	if len(c.acts) == maxActCopies {
		copy(c.acts, c.acts[1:])
		c.acts = c.acts[:maxActCopies-1]
	}
	c.acts = append(c.acts, e)
}

// wrote drops the copies whose fp32 sources overlap [lo, hi) (a declared write).
func (c *bf16Copies) wrote(lo, hi uintptr) {
	k := 0
	for _, e := range c.acts {
		if !(lo < e.src+uintptr(4*e.n) && e.src < hi) {
			c.acts[k] = e
			k++
		}
	}
	c.acts = c.acts[:k]
	c.wroteMarked(lo, hi)
}

// wroteMarked is wrote for the copies of marked sources only.
func (c *bf16Copies) wroteMarked(lo, hi uintptr) {
	if !c.overlapsMarked(lo, hi) {
		return
	}
	if c.capturing() {
		c.capW = append(c.capW, region{lo, hi})
	}
	c.keepWeights(func(e bf16Copy) bool { return !(lo < e.src+uintptr(4*e.n) && e.src < hi) })
}

// keepWeights keeps the marked sources' copies for which keep is true and drops the others.
func (c *bf16Copies) keepWeights(keep func(bf16Copy) bool) {
	for p, es := range c.weights {
		k := 0
		for _, e := range es {
			if keep(e) {
				es[k] = e
				k++
			}
		}
		if k == 0 {
			delete(c.weights, p)
		} else {
			c.weights[p] = es[:k]
		}
	}
}

// undeclared is an op that may write anything but marked sources: only marked copies stay.
func (c *bf16Copies) undeclared() { c.acts = c.acts[:0] }

// beginCapture starts a capture's epoch.
func (c *bf16Copies) beginCapture() {
	c.epoch++
	c.capW = nil
}

// endCapture ends it: the copies made in it are dropped (they exist only in the graph's replays).
// It returns the marked ranges the captured ops declared writing (Graph.Launch drops their copies).
func (c *bf16Copies) endCapture() []region {
	ep := c.epoch
	c.epoch++
	keep := func(es []bf16Copy) []bf16Copy {
		k := 0
		for _, e := range es {
			if e.epoch != ep {
				es[k] = e
				k++
			}
		}
		return es[:k]
	}
	c.acts = keep(c.acts)
	for p, es := range c.weights {
		if es = keep(es); len(es) == 0 {
			delete(c.weights, p)
		} else {
			c.weights[p] = es
		}
	}
	w := c.capW
	c.capW = nil
	return w
}

// replayed drops the copies of the marked ranges a replayed graph writes (endCapture's list).
func (c *bf16Copies) replayed(ws []region) {
	for _, r := range ws {
		c.wroteMarked(r.lo, r.hi)
	}
}

// buf returns the persistent buffer of the fp32 tensor at src when it holds n elements, else 0.
func (c *bf16Copies) buf(src uintptr, n int) uintptr {
	if b, ok := c.bufs[src]; ok && b.n >= n {
		return b.p
	}
	return 0
}

// copyPlan says where an op's bf16 copy of an fp32 tensor comes from.
type copyPlan int

const (
	useCopy   copyPlan = iota // the recorded valid copy
	toBuffer                  // a conversion into the tensor's persistent buffer, recorded
	toScratch                 // a conversion into the op's scratch, recorded nowhere
)

// plan: the valid copy of the n fp32 elements at src; else a conversion into its persistent buffer
// when the copy must outlive the op (persist) or src is marked (weights: every GEMM reads them
// again); else into the op's scratch. p: the valid copy (useCopy).
func (c *bf16Copies) plan(src uintptr, n int, persist, frozen bool) (plan copyPlan, p uintptr) {
	if p := c.lookup(src, n, frozen); p != 0 {
		return useCopy, p
	}
	if persist || c.isMarked(src) {
		return toBuffer, 0
	}
	return toScratch, 0
}

// setBuf makes p (n elements) the persistent buffer of src and returns the buffer it replaces (0:
// none; the caller frees it), whose copies it drops.
func (c *bf16Copies) setBuf(src uintptr, p uintptr, n int) (old uintptr) {
	if c.bufs == nil {
		c.bufs = map[uintptr]copyBuf{}
	}
	if b, ok := c.bufs[src]; ok {
		old = b.p
		c.dropIn(old)
	}
	c.bufs[src] = copyBuf{p, n}
	return old
}

// retire keeps a marked source's replaced buffer until the source is freed (forget): a graph
// captured before may still read it.
func (c *bf16Copies) retire(src, old uintptr) {
	if c.retired == nil {
		c.retired = map[uintptr][]uintptr{}
	}
	c.retired[src] = append(c.retired[src], old)
}

// dropIn forgets the copies held in the buffer at sh.
func (c *bf16Copies) dropIn(sh uintptr) {
	k := 0
	for _, e := range c.acts {
		if e.sh != sh {
			c.acts[k] = e
			k++
		}
	}
	c.acts = c.acts[:k]
	c.keepWeights(func(e bf16Copy) bool { return e.sh != sh })
}

// forget drops what the table keeps about [lo, hi) (memory about to be freed): its marks, the
// persistent buffers of sources in it (returned: the caller frees them), the copies of sources in
// it, and every copy of an unmarked source. A later tensor at the same address starts fresh.
func (c *bf16Copies) forget(lo, hi uintptr) (free []uintptr) {
	k := 0
	for _, r := range c.marked {
		if !(r.lo < hi && lo < r.hi) {
			c.marked[k] = r
			k++
		}
	}
	c.marked = c.marked[:k]
	for p, b := range c.bufs {
		if p >= lo && p < hi {
			free = append(free, b.p)
			c.dropIn(b.p)
			delete(c.bufs, p)
		}
	}
	for p, olds := range c.retired {
		if p >= lo && p < hi {
			free = append(free, olds...)
			delete(c.retired, p)
		}
	}
	for p := range c.weights {
		if p >= lo && p < hi {
			delete(c.weights, p)
		}
	}
	c.acts = c.acts[:0]
	return free
}

// ---------------------------------------------------------------------------------------------
// The Device's side: buffers, conversions, the ops' entry points.

// shadowBuf returns the persistent bf16 buffer of fp32 tensor t, allocating it on first use, for a
// producer to write t's copy into (0 when the GEMMs read no bf16 copies, when t is not fp32, or
// during graph capture when it does not exist yet).
func (d *Device) shadowBuf(t *kernels.Tensor) uintptr {
	if t.DType != kernels.F32 || d.GEMM != GEMMBF16 {
		return 0
	}
	return d.persistentBuf(t)
}

// persistentBuf returns t's persistent bf16 buffer (t.Numel() elements), allocating it (outside a
// capture) when there is none or it is too small.
func (d *Device) persistentBuf(t *kernels.Tensor) uintptr {
	n := t.Numel()
	if p := d.copies.buf(t.Ptr, n); p != 0 {
		return p
	}
	if d.capturing {
		return 0
	}
	var p uintptr
	if err := d.drv.call(fmt.Sprintf("cuMemAlloc_v2(bf16 copy of %v)", t.Shape), d.drv.cuMemAlloc, uintptr(unsafe.Pointer(&p)), uintptr(2*n)); err != nil {
		d.fail(err)
		return 0
	}
	old := d.copies.setBuf(t.Ptr, p, n) // a smaller view's buffer: its copies go with it
	switch {
	case old != 0 && d.isWeight(t): // a graph may read it (FrozenWeights): freed with the weights
		d.copies.retire(t.Ptr, old)
	case old != 0:
		d.fail(d.drv.call("cuStreamSynchronize", d.drv.cuStreamSynchronize, d.stream))
		d.fail(d.drv.call("cuMemFree_v2(bf16 copy)", d.drv.cuMemFree, old))
	}
	return p
}

// actSet records sh as the valid bf16 copy of t that the op writing t made beside it (the write of
// t itself drops the copies of what it overlaps).
func (d *Device) actSet(t *kernels.Tensor, sh uintptr) {
	if sh == 0 {
		return
	}
	d.wrote(t)
	d.copies.record(t.Ptr, t.Numel(), sh)
}

// actSetF32 is actSet for an fp32 t (a bf16 t is its own operand: nothing to record).
func (d *Device) actSetF32(t *kernels.Tensor, sh uintptr) {
	if t.DType == kernels.F32 {
		d.actSet(t, sh)
	}
}

// actLookup returns the valid bf16 copy of fp32 t, or 0.
func (d *Device) actLookup(t *kernels.Tensor) uintptr {
	if t.DType != kernels.F32 {
		return 0
	}
	return d.copies.lookup(t.Ptr, t.Numel(), d.FrozenWeights)
}

// wrote drops the copies whose sources overlap the given tensors (nil ones ignored).
func (d *Device) wrote(ts ...*kernels.Tensor) {
	for _, t := range ts {
		if t != nil {
			d.copies.wrote(t.Ptr, t.Ptr+uintptr(t.Numel()*t.DType.Size()))
		}
	}
}

// bf16Persistent returns a bf16 copy of fp32 t that stays valid as the table says: the recorded
// one, or a fresh conversion into t's persistent buffer (recorded). 0 when none can be made
// (capture without a buffer): the caller falls back.
func (d *Device) bf16Persistent(t *kernels.Tensor) uintptr {
	if t.DType != kernels.F32 {
		return 0
	}
	return d.bf16Copy(t, true)
}

// bf16Operand returns t's address as bf16 for one op: t itself, its valid recorded copy, a fresh
// copy of a marked weight in its persistent buffer (recorded), or else a conversion into the op's
// scratch (recorded nowhere: it lives as long as the op).
func (d *Device) bf16Operand(t *kernels.Tensor) uintptr {
	switch t.DType {
	case kernels.BF16:
		return t.Ptr
	case kernels.F32:
		return d.bf16Copy(t, false)
	}
	return d.scratchCopy(t) // fp16
}

// bf16Copy is the one way an op obtains a bf16 copy of fp32 t: where the table's plan says
// (persist: the copy must outlive the op). 0 when none can be made (the error recorded for a
// weight whose buffer would have to be made during a capture).
func (d *Device) bf16Copy(t *kernels.Tensor, persist bool) uintptr {
	n := t.Numel()
	plan, p := d.copies.plan(t.Ptr, n, persist, d.FrozenWeights)
	switch plan {
	case useCopy:
		return p
	case toScratch:
		return d.scratchCopy(t)
	}
	weight := d.isWeight(t)
	if weight { // in any GEMM mode that reads bf16 (fp32 weights with a bf16 activation, too)
		p = d.persistentBuf(t)
	} else { // other tensors get persistent copies in GEMMBF16 mode only
		p = d.shadowBuf(t)
	}
	if p == 0 {
		if weight && d.capturing {
			d.fail(fmt.Errorf("cuda: new bf16 weight copy during graph capture: run the work once before capturing"))
		}
		return 0
	}
	d.convert(p, kernels.BF16, t)
	d.copies.record(t.Ptr, n, p)
	return p
}

// scratchCopy converts t into the op's scratch (a one-op copy, recorded nowhere).
func (d *Device) scratchCopy(t *kernels.Tensor) uintptr {
	p := d.scratch(2 * t.Numel())
	if p == 0 {
		return 0
	}
	d.convert(p, kernels.BF16, t)
	return p
}

// bf16View is a bf16 tensor header over p shaped like t.
func bf16View(d *Device, t *kernels.Tensor, p uintptr) *kernels.Tensor {
	return &kernels.Tensor{Dev: d, DType: kernels.BF16, Shape: t.Shape, Ptr: p}
}
