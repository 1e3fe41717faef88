package cuda

import "testing"

// The table of bf16 copies (shadows.go) without a GPU: addresses are plain numbers, an fp32
// element 4 bytes. Weights W at [0x10000, 0x20000) (marked), activations elsewhere.

const (
	wLo, wHi = 0x10000, 0x20000
	aBase    = 0x100000
)

func newCopies() *bf16Copies {
	c := &bf16Copies{}
	c.mark(wLo, wHi)
	return c
}

func wantCopy(t *testing.T, c *bf16Copies, what string, src uintptr, n int, frozen bool, want uintptr) {
	t.Helper()
	if got := c.lookup(src, n, frozen); got != want {
		t.Errorf("%s: lookup(%#x, %d, frozen %v) = %#x, want %#x", what, src, n, frozen, got, want)
	}
}

func TestBF16CopiesActivations(t *testing.T) {
	c := newCopies()
	a, b := uintptr(aBase), uintptr(aBase+4000) // [a, a+4000) and [b, b+400): 1000 and 100 elements, adjacent
	c.record(a, 1000, 0xa0)
	c.record(b, 100, 0xb0)
	wantCopy(t, c, "recorded", a, 1000, false, 0xa0)
	wantCopy(t, c, "another length at the same address", a, 999, false, 0)
	wantCopy(t, c, "another address", a+4, 999, false, 0)
	c.wrote(b+400, b+800) // just past b: touches neither
	wantCopy(t, c, "after a write past both", a, 1000, false, 0xa0)
	wantCopy(t, c, "after a write past both", b, 100, false, 0xb0)
	c.wrote(a+3996, a+4000) // a's last element only
	wantCopy(t, c, "after a write into its last element", a, 1000, false, 0)
	wantCopy(t, c, "its neighbour after that write", b, 100, false, 0xb0)
	c.wroteMarked(b, b+400) // a write into unmarked memory through touch: not a weight's
	wantCopy(t, c, "after touch of unmarked memory", b, 100, false, 0xb0)
	c.record(a, 1000, 0xa0)
	c.undeclared()
	wantCopy(t, c, "after an op that declares nothing", a, 1000, false, 0)
	wantCopy(t, c, "after an op that declares nothing", b, 100, false, 0)
}

func TestBF16CopiesWeights(t *testing.T) {
	c := newCopies()
	q, o := uintptr(wLo), uintptr(wLo+0x4000) // two weight views: [q, q+0x4000), [o, o+0x4000)
	if !c.isMarked(q) || !c.isMarked(wHi-4) || c.isMarked(wHi) || c.isMarked(aBase) {
		t.Fatal("isMarked: wrong region bounds")
	}
	for _, v := range []struct {
		src     uintptr
		persist bool
		want    copyPlan
	}{{q, false, toBuffer}, {aBase, false, toScratch}, {aBase, true, toBuffer}} {
		if got, _ := c.plan(v.src, 0x1000, v.persist, false); got != v.want {
			t.Errorf("plan(%#x, persist %v) with no copy = %d, want %d (weights and persistent asks: buffer; else scratch)", v.src, v.persist, got, v.want)
		}
	}
	c.record(q, 0x1000, 0xc0)
	c.record(o, 0x1000, 0xd0)
	if plan, p := c.plan(q, 0x1000, false, false); plan != useCopy || p != 0xc0 {
		t.Errorf("plan of a valid weight copy = %d %#x, want useCopy 0xc0", plan, p)
	}
	c.undeclared() // Alloc, a graph replay: weights are never written that way
	wantCopy(t, c, "weight after an undeclared op", q, 0x1000, false, 0xc0)
	c.wrote(aBase, aBase+1<<20) // an activation's write
	wantCopy(t, c, "weight after another tensor's write", q, 0x1000, false, 0xc0)
	c.wrote(o+8, o+12) // one element of o (an optimizer step on one view)
	wantCopy(t, c, "the written view", o, 0x1000, false, 0)
	wantCopy(t, c, "the other view", q, 0x1000, false, 0xc0)
	// A training step: AdamW writes the whole parameter buffer; the next forward converts again
	// (into the same persistent buffer) and that copy is valid until the next step.
	c.wroteMarked(wLo, wHi)
	wantCopy(t, c, "after AdamW", q, 0x1000, false, 0)
	if plan, _ := c.plan(q, 0x1000, false, false); plan != toBuffer {
		t.Errorf("plan after AdamW = %d, want toBuffer", plan)
	}
	c.record(q, 0x1000, 0xc0)
	wantCopy(t, c, "refreshed after AdamW", q, 0x1000, false, 0xc0)
	c.wrote(wLo, wHi) // the same through a declared write
	wantCopy(t, c, "after the second step", q, 0x1000, false, 0)
	// Weight copies are not evicted by many activation copies.
	c.record(q, 0x1000, 0xc0)
	for i := 0; i < maxActCopies+10; i++ {
		c.record(aBase+uintptr(16*i), 4, uintptr(0x1000000+8*i))
	}
	wantCopy(t, c, "weight after many activation copies", q, 0x1000, false, 0xc0)
	wantCopy(t, c, "the oldest activation copy beyond the bound", aBase, 4, false, 0)
	last := maxActCopies + 9
	wantCopy(t, c, "the newest activation copy", aBase+uintptr(16*last), 4, false, uintptr(0x1000000+8*last))
	if len(c.acts) != maxActCopies {
		t.Errorf("%d activation copies kept, want the bound %d", len(c.acts), maxActCopies)
	}
}

func TestBF16CopiesCapture(t *testing.T) {
	for _, frozen := range []bool{false, true} {
		c := newCopies()
		q, a := uintptr(wLo), uintptr(aBase)
		c.record(q, 64, 0xc0) // made before the capture (the warm-up run)
		c.record(a, 64, 0xa0)
		c.beginCapture()
		// Inside: an activation's copy from before is never used; a weight's only under FrozenWeights.
		wantCopy(t, c, "activation copy from before, inside the capture", a, 64, frozen, 0)
		var want uintptr
		if frozen {
			want = 0xc0
		}
		wantCopy(t, c, "weight copy from before, inside the capture", q, 64, frozen, want)
		if plan, _ := c.plan(a, 64, false, frozen); plan != toScratch {
			t.Errorf("frozen %v: plan of an activation inside the capture = %d, want toScratch", frozen, plan)
		}
		if !frozen { // the graph converts the weight for itself, once
			if plan, _ := c.plan(q, 64, false, frozen); plan != toBuffer {
				t.Errorf("plan of a weight inside the capture = %d, want toBuffer", plan)
			}
			c.record(q, 64, 0xc0)
			wantCopy(t, c, "weight copy made inside the capture", q, 64, frozen, 0xc0)
		}
		c.record(a, 64, 0xa1)
		wantCopy(t, c, "activation copy made inside the capture", a, 64, frozen, 0xa1)
		if ws := c.endCapture(); len(ws) != 0 {
			t.Errorf("frozen %v: a capture that wrote no weights reports %v", frozen, ws)
		}
		// After: the capture's copies are gone (they exist only in replays); the weight's from
		// before is valid again (the capture wrote no weights).
		wantCopy(t, c, "activation copy made in the capture, after it", a, 64, frozen, 0)
		for _, e := range c.acts {
			if e.epoch%2 == 1 {
				t.Errorf("frozen %v: a copy made in the capture is still kept after it: %+v", frozen, e)
			}
		}
		wantCopy(t, c, "weight copy from before the capture, after it", q, 64, frozen, 0xc0)
		if n := len(c.weights[q]); n != 1 {
			t.Errorf("frozen %v: %d copies of the weight after the capture, want 1 (the one made before it)", frozen, n)
		}
	}
}

// A weight update between the warm-up and the capture: the copy the capture converts is not used
// after it (it is written only when the graph runs), and one made after the capture is (an eager
// conversion).
func TestBF16CopiesUpdateBeforeCapture(t *testing.T) {
	c := newCopies()
	q := uintptr(wLo)
	c.record(q, 64, 0xc0)
	c.wrote(wLo, wHi) // AdamW
	c.beginCapture()
	wantCopy(t, c, "updated weight inside the capture", q, 64, false, 0)
	c.record(q, 64, 0xc0) // the graph's conversion
	c.endCapture()
	wantCopy(t, c, "after the capture, the graph's conversion", q, 64, false, 0)
}

// A graph whose ops write weights (an optimizer step captured): the capture drops the copies it
// overlaps, and every replay drops those made since.
func TestBF16CopiesGraphWritesWeights(t *testing.T) {
	c := newCopies()
	q, o := uintptr(wLo), uintptr(wLo+0x8000)
	c.record(q, 64, 0xc0)
	c.record(o, 64, 0xd0)
	c.beginCapture()
	c.wrote(q, q+256) // the captured update of q only
	c.wrote(aBase, aBase+64)
	ws := c.endCapture()
	if len(ws) != 1 || ws[0] != (region{q, q + 256}) {
		t.Fatalf("capture's weight writes %v, want [{%#x %#x}]", ws, q, q+256)
	}
	wantCopy(t, c, "weight the capture writes, after it", q, 64, false, 0)
	wantCopy(t, c, "weight it does not write", o, 64, false, 0xd0)
	c.record(q, 64, 0xc0) // an eager conversion after the capture
	c.replayed(ws)
	wantCopy(t, c, "weight the replay wrote", q, 64, false, 0)
	wantCopy(t, c, "weight the replay did not write", o, 64, false, 0xd0)
}

func TestBF16CopiesBuffers(t *testing.T) {
	c := newCopies()
	a, q := uintptr(aBase), uintptr(wLo)
	if p := c.buf(a, 10); p != 0 {
		t.Fatalf("buffer before any: %#x", p)
	}
	if old := c.setBuf(a, 0xa0, 100); old != 0 {
		t.Fatalf("first buffer replaced %#x", old)
	}
	if c.buf(a, 100) != 0xa0 || c.buf(a, 50) != 0xa0 || c.buf(a, 101) != 0 {
		t.Errorf("buf: %#x %#x %#x, want 0xa0 for 100 and 50 elements, 0 for 101", c.buf(a, 100), c.buf(a, 50), c.buf(a, 101))
	}
	c.record(a, 50, 0xa0) // a smaller view's copy in the same buffer
	c.record(a, 100, 0xa0)
	if old := c.setBuf(a, 0xa8, 200); old != 0xa0 {
		t.Errorf("grown buffer replaced %#x, want 0xa0", old)
	}
	wantCopy(t, c, "copy in a replaced buffer", a, 50, false, 0)
	wantCopy(t, c, "copy in a replaced buffer", a, 100, false, 0)
	c.setBuf(q, 0xb8, 32)
	if old := c.setBuf(q, 0xc0, 64); old != 0xb8 {
		t.Errorf("grown weight buffer replaced %#x, want 0xb8", old)
	}
	c.retire(q, 0xb8) // a graph may still read it
	c.record(q, 64, 0xc0)
	c.record(a, 200, 0xa8)
	// Free of the weights: their mark, buffer and copies go; activation copies go too.
	free := c.forget(wLo, wHi)
	if len(free) != 2 || free[0] != 0xc0 || free[1] != 0xb8 {
		t.Errorf("forget freed %#x, want [0xc0 0xb8] (the weight's buffer and the one it replaced)", free)
	}
	if c.isMarked(q) {
		t.Error("the freed region is still marked")
	}
	wantCopy(t, c, "freed weight", q, 64, false, 0)
	wantCopy(t, c, "activation after a Free", a, 200, false, 0)
	if c.buf(a, 200) != 0xa8 || c.buf(q, 64) != 0 {
		t.Errorf("buffers after Free of the weights: activation %#x (want 0xa8), weight %#x (want 0)", c.buf(a, 200), c.buf(q, 64))
	}
}
