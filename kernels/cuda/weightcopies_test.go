package cuda

import (
	"fmt"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// The bf16 copies of marked weights (shadows.go) on the GPU against the CPU device: after an
// optimizer step the GEMMs must read the updated weights' copies (eagerly, in a graph replay, in an
// eager run right after a capture), and no weight is converted more often than its writes demand.
// A stale copy shows as an error of the order of the update (lr 0.1 on weights of order 1: ~10%),
// far above the bf16 tolerance (1e-2).

// weightNet is two Linear layers y1 = x·W1ᵀ, y2 = x·W2ᵀ whose weights are views of one marked
// parameter buffer P, with AdamW state; x is bf16 (its own GEMM operand: the only conversions are
// the weights').
type weightNet struct {
	d              kernels.Device
	P, G, M, V     *kernels.Tensor // [2·N·K] fp32
	W1, W2, X      *kernels.Tensor // [N, K] views of P; x [Mr, K] bf16
	Y1, Y2         *kernels.Tensor // [Mr, N] fp32
	step           int
	nRows, nOut, k int
}

func newWeightNet(d kernels.Device, p, g, x []float32, Mr, N, K int) *weightNet {
	up := func(dt kernels.DType, v []float32, shape ...int) *kernels.Tensor {
		t := d.Alloc(dt, shape...)
		d.FromHost(t, v)
		return t
	}
	n := &weightNet{d: d, nRows: Mr, nOut: N, k: K}
	n.P = up(kernels.F32, p, 2*N*K)
	n.G = up(kernels.F32, g, 2*N*K)
	n.M, n.V = d.Alloc(kernels.F32, 2*N*K), d.Alloc(kernels.F32, 2*N*K)
	n.W1, n.W2 = n.P.View(0, N, K), n.P.View(N*K, N, K)
	n.X = up(kernels.BF16, x, Mr, K)
	n.Y1, n.Y2 = d.Alloc(kernels.F32, Mr, N), d.Alloc(kernels.F32, Mr, N)
	return n
}

func (n *weightNet) forward() {
	n.d.Linear(n.Y1, n.X, n.W1, nil)
	n.d.Linear(n.Y2, n.X, n.W2, nil)
}

// adamW steps the whole buffer (all: true) or W1's part only.
func (n *weightNet) adamW(all bool) {
	n.step++
	w, g, m, v := n.P, n.G, n.M, n.V
	if !all {
		e := n.nOut * n.k
		w, g, m, v = w.View(0, e), g.View(0, e), m.View(0, e), v.View(0, e)
	}
	n.d.AdamW(w, g, m, v, 0.1, 0.9, 0.999, 1e-8, 0, n.step)
}

func (n *weightNet) outputs() []float32 {
	y := make([]float32, 2*n.nRows*n.nOut)
	n.d.ToHost(y[:n.nRows*n.nOut], n.Y1)
	n.d.ToHost(y[n.nRows*n.nOut:], n.Y2)
	return y
}

func (n *weightNet) free() {
	for _, t := range []*kernels.Tensor{n.P, n.G, n.M, n.V, n.X, n.Y1, n.Y2} {
		n.d.Free(t)
	}
}

// weightConversions counts the fp32→bf16 conversion launches the profiler recorded since
// SetProfile(true).
func weightConversions(g *Device) int {
	c := 0
	for _, r := range g.prof.recs {
		if r.name == "ew_f32_to_bf16x4" || r.name == "ew_convert" {
			c++
		}
	}
	return c
}

func newWeightNets(t *testing.T, g *Device) (gn, cn *weightNet) {
	r := seedRand(t)
	Mr, N, K := 96, 128, 256
	p, gr, x := randn(r, 2*N*K), randn(r, 2*N*K), randn(r, Mr*K)
	roundBF16(x)
	cn = newWeightNet(kernels.NewCPU(2), p, gr, x, Mr, N, K)
	gn = newWeightNet(g, p, gr, x, Mr, N, K)
	g.MarkWeights(gn.P)
	return gn, cn
}

// Two training steps: the forward after each AdamW reads the updated weights' copies; between
// steps the copies are reused (no conversion, an Alloc in between included); a step on W1 alone
// converts W1 alone.
func TestWeightCopiesTraining(t *testing.T) {
	g := gpu(t)
	g.ResetError()
	g.GEMM = GEMMBF16
	defer func() { g.GEMM = GEMMExact; g.SetProfile(false) }()
	gn, cn := newWeightNets(t, g)
	defer gn.free()
	check := func(what string, wantConv int) {
		t.Helper()
		g.SetProfile(true)
		gn.forward()
		cn.forward()
		if err := g.Sync(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if c := weightConversions(g); c != wantConv {
			t.Errorf("%s: %d weight conversions, want %d", what, c, wantConv)
		}
		g.SetProfile(false)
		if e := relErr(gn.outputs(), cn.outputs()); !(e <= tolBF16) {
			t.Errorf("%s: forward vs CPU: rel error %.3g > %.0e (stale bf16 weight copies?)", what, e, tolBF16)
		} else {
			t.Logf("%s: forward vs CPU: rel error %.3g", what, e)
		}
	}
	check("first forward", 2)
	check("second forward, no write", 0)
	tmp := g.Alloc(kernels.F32, 1000) // an op that declares no writes: the weights' copies stay
	check("after an Alloc", 0)
	g.Free(tmp)
	for step := 1; step <= 2; step++ {
		gn.adamW(true)
		cn.adamW(true)
		check(fmt.Sprintf("after AdamW step %d", step), 2)
		check(fmt.Sprintf("after AdamW step %d, again", step), 0)
	}
	gn.adamW(false)
	cn.adamW(false)
	check("after AdamW of W1 alone", 1)
}

// Graphs and weight updates (FrozenWeights off: a training process): a replay after an eager
// update reads fresh copies; an eager forward right after a capture that converted the updated
// weights (inside the graph only) converts them itself; a graph that updates the weights after its
// forward leaves the eager forward after its replay to convert again.
func TestWeightCopiesGraph(t *testing.T) {
	g := gpu(t)
	g.ResetError()
	g.GEMM = GEMMBF16
	g.FrozenWeights = false
	defer func() { g.GEMM = GEMMExact }()
	gn, cn := newWeightNets(t, g)
	defer gn.free()
	compare := func(what string) {
		t.Helper()
		if err := g.Sync(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if e := relErr(gn.outputs(), cn.outputs()); !(e <= tolBF16) {
			t.Errorf("%s: vs CPU: rel error %.3g > %.0e (stale bf16 weight copies?)", what, e, tolBF16)
		} else {
			t.Logf("%s: vs CPU: rel error %.3g", what, e)
		}
	}
	capture := func(fn func()) *Graph {
		t.Helper()
		gr, err := g.Capture(fn)
		if err != nil {
			t.Fatalf("capture: %v", err)
		}
		return gr
	}
	launch := func(gr *Graph) {
		t.Helper()
		if err := gr.Launch(); err != nil {
			t.Fatal(err)
		}
	}
	gn.forward() // warm-up: the weights' copies and buffers exist before the capture
	cn.forward()
	compare("warm-up")
	fwd := capture(gn.forward)
	defer fwd.Destroy()
	gn.adamW(true)
	cn.adamW(true)
	launch(fwd)
	cn.forward()
	compare("replay after an eager AdamW")
	gn.forward()
	compare("eager forward after that replay")

	// An update, then a capture (which converts the new weights inside the graph only), then an
	// eager forward before any replay.
	gn.adamW(true)
	cn.adamW(true)
	fwd2 := capture(gn.forward)
	defer fwd2.Destroy()
	gn.forward()
	cn.forward()
	compare("eager forward right after a capture that followed an update")
	launch(fwd2)
	compare("its replay")

	// A graph whose forward is followed by an update of the weights (Axpy: P += 0.1·G, a declared
	// write like an optimizer step's), and an eager forward between its capture and its replay:
	// after the replay the weights have changed on the device (the buffer of their copies holds the
	// replay's conversion from before the update), so the eager forward must convert them again.
	update := func(n *weightNet) { n.d.Axpy(n.P, 0.1, n.G) }
	stepG := capture(func() { gn.forward(); update(gn) })
	defer stepG.Destroy()
	gn.forward()
	cn.forward()
	compare("eager forward after capturing forward+update")
	launch(stepG)
	compare("the replay's forward (before its update)")
	update(cn) // the replay's update
	gn.forward()
	cn.forward()
	compare("eager forward after a replay that updated the weights")
}
