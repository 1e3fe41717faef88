package kernels_test

// The gradient oracle: gorgonia (float64) builds the same expression symbolically, and its
// forward values and gradients are what the CPU ops are compared with. Everything is written with
// 2-D matrices (Mul, HadamardProd, elementwise functions) plus constant selector / ones matrices
// for broadcasting, so the reference uses only gorgonia's most basic, well-trodden ops.

import (
	"fmt"
	"math"
	"math/rand"
	"os"
	"strconv"
	"testing"
	"time"

	_ "go4.org/unsafe/assume-no-moving-gc" // gorgonia needs it on Go ≥ 1.22
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/fewstep/fewstep/kernels"
)

// newRand seeds from the clock (or FEWSTEP_SEED) and prints the seed if the test fails.
func newRand(t testing.TB) *rand.Rand {
	seed := time.Now().UnixNano()
	if s := os.Getenv("FEWSTEP_SEED"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("FEWSTEP_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("seed %d (rerun with FEWSTEP_SEED=%d)", seed, seed)
		}
	})
	return rand.New(rand.NewSource(seed))
}

func randn(r *rand.Rand, n int, scale float64) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64() * scale)
	}
	return x
}

func to64(x []float32) []float64 {
	y := make([]float64, len(x))
	for i, v := range x {
		y[i] = float64(v)
	}
	return y
}

// relErr is ‖got − want‖₂ / ‖want‖₂ (want must not be all zero: an oracle of zeros proves nothing).
func relErr(t testing.TB, what string, got []float32, want []float64) float64 {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	var num, den float64
	for i := range got {
		g := float64(got[i])
		if math.IsNaN(g) || math.IsInf(g, 0) {
			t.Fatalf("%s[%d] = %v", what, i, g)
		}
		d := g - want[i]
		num += d * d
		den += want[i] * want[i]
	}
	if den == 0 {
		t.Fatalf("%s: the reference is all zeros", what)
	}
	return math.Sqrt(num / den)
}

func checkRel(t testing.TB, what string, got []float32, want []float64, tol float64) {
	t.Helper()
	e := relErr(t, what, got, want)
	if e > tol || math.IsNaN(e) {
		t.Errorf("%s: relative error %.3g > %.1g", what, e, tol)
	} else if testing.Verbose() {
		t.Logf("%s: relative error %.3g (tol %.1g)", what, e, tol)
	}
}

// graph wraps a gorgonia expression graph of float64 matrices.
type graph struct {
	t     testing.TB
	g     *G.ExprGraph
	n     int
	loss  *G.Node
	wrt   []*G.Node
	grads G.Nodes
	vals  map[*G.Node]*G.Value // watched forward values
}

func newGraph(t testing.TB) *graph {
	return &graph{t: t, g: G.NewGraph(), vals: map[*G.Node]*G.Value{}}
}

func (gr *graph) must(n *G.Node, err error) *G.Node {
	gr.t.Helper()
	if err != nil {
		gr.t.Fatalf("gorgonia: %v", err)
	}
	return n
}

// mat is a [rows, cols] node holding data (float64).
func (gr *graph) mat(rows, cols int, data []float64) *G.Node {
	gr.t.Helper()
	if len(data) != rows*cols {
		gr.t.Fatalf("mat %d×%d with %d values", rows, cols, len(data))
	}
	gr.n++
	v := tensor.New(tensor.WithShape(rows, cols), tensor.WithBacking(append([]float64(nil), data...)))
	return G.NewMatrix(gr.g, tensor.Float64, G.WithShape(rows, cols), G.WithName(fmt.Sprintf("m%d", gr.n)), G.WithValue(v))
}

// param is an input we want the gradient of.
func (gr *graph) param(rows, cols int, data []float32) *G.Node {
	n := gr.mat(rows, cols, to64(data))
	gr.wrt = append(gr.wrt, n)
	return n
}

func (gr *graph) fill(rows, cols int, v float64) *G.Node {
	d := make([]float64, rows*cols)
	for i := range d {
		d[i] = v
	}
	return gr.mat(rows, cols, d)
}

func (gr *graph) mul(a, b *G.Node) *G.Node  { return gr.must(G.Mul(a, b)) }
func (gr *graph) hmul(a, b *G.Node) *G.Node { return gr.must(G.HadamardProd(a, b)) }
func (gr *graph) add(a, b *G.Node) *G.Node  { return gr.must(G.Add(a, b)) }
func (gr *graph) sub(a, b *G.Node) *G.Node  { return gr.must(G.Sub(a, b)) }

// rowBroadcast turns a [R,1] column into [R,C]; colBroadcast a [1,C] row into [R,C].
func (gr *graph) rowBroadcast(col *G.Node, C int) *G.Node {
	return gr.mul(col, gr.fill(1, C, 1))
}
func (gr *graph) colBroadcast(row *G.Node, R int) *G.Node {
	return gr.mul(gr.fill(R, 1, 1), row)
}

// rowMean of a [R,C] node is [R,1].
func (gr *graph) rowMean(x *G.Node, C int) *G.Node {
	return gr.mul(x, gr.fill(C, 1, 1/float64(C)))
}

// cotangent adds Σ out ⊙ r to the loss, with r random; returns r for the op's backward.
func (gr *graph) cotangent(r *rand.Rand, out *G.Node) []float32 {
	gr.vals[out] = gr.watch(out)
	shp := out.Shape()
	rows, cols := shp[0], shp[1]
	rr := randn(r, rows*cols, 1)
	term := gr.must(G.Sum(gr.hmul(out, gr.mat(rows, cols, to64(rr)))))
	if gr.loss == nil {
		gr.loss = term
	} else {
		gr.loss = gr.add(gr.loss, term)
	}
	return rr
}

// run differentiates the loss with respect to every param and evaluates the graph.
func (gr *graph) run() {
	gr.t.Helper()
	if gr.loss != nil && len(gr.wrt) > 0 {
		gs, err := G.Grad(gr.loss, gr.wrt...)
		if err != nil {
			gr.t.Fatalf("gorgonia Grad: %v", err)
		}
		gr.grads = gs
	}
	vm := G.NewTapeMachine(gr.g)
	defer vm.Close()
	if err := vm.RunAll(); err != nil {
		gr.t.Fatalf("gorgonia run: %v", err)
	}
}

// value is the forward value of a node passed to cotangent or watch, after run.
func (gr *graph) value(n *G.Node) []float64 {
	gr.t.Helper()
	v, ok := gr.vals[n]
	if !ok {
		gr.t.Fatalf("value of an unwatched node")
	}
	return watched(v)
}

// grad of the i-th param after run.
func (gr *graph) grad(i int) []float64 {
	return append([]float64(nil), gr.grads[i].Value().Data().([]float64)...)
}

// tensors on the device under test.

func tensorOf(dev kernels.Device, data []float32, shape ...int) *kernels.Tensor {
	t := dev.Alloc(kernels.F32, shape...)
	dev.FromHost(t, data)
	return t
}

func host(dev kernels.Device, t *kernels.Tensor) []float32 {
	x := make([]float32, t.Numel())
	dev.ToHost(x, t)
	return x
}

// accumulated returns what a backward added to a gradient that started at g0.
func accumulated(dev kernels.Device, t *kernels.Tensor, g0 []float32) []float32 {
	x := host(dev, t)
	for i := range x {
		x[i] -= g0[i]
	}
	return x
}

// G_T is the transpose of a 2-D node.
func G_T(n *G.Node) (*G.Node, error) { return G.Transpose(n, 1, 0) }

// sel is a constant [rows, cols] 0/1 matrix with a single 1 per row, at column col(r): Mul(sel, m)
// picks row col(r) of m for every output row r (and its transpose scatters gradients back).
func (gr *graph) sel(rows, cols int, col func(r int) int) *G.Node {
	d := make([]float64, rows*cols)
	for r := 0; r < rows; r++ {
		d[r*cols+col(r)] = 1
	}
	return gr.mat(rows, cols, d)
}

func (gr *graph) unary(f func(*G.Node) (*G.Node, error), x *G.Node) *G.Node { return gr.must(f(x)) }

func G_Square(n *G.Node) (*G.Node, error) { return G.Square(n) }

// G_InvSqrt is 1/√x built as Inverse(Sqrt(x)): gorgonia v0.9.18's own InverseSqrt has a wrong
// derivative (−g/(2y³) instead of −g·y³/2; found by a finite-difference check while writing these tests).
func G_InvSqrt(n *G.Node) (*G.Node, error) {
	s, err := G.Sqrt(n)
	if err != nil {
		return nil, err
	}
	return G.Inverse(s)
}
func G_Cube(n *G.Node) (*G.Node, error)    { return G.Cube(n) }
func G_Tanh(n *G.Node) (*G.Node, error)    { return G.Tanh(n) }
func G_Sigmoid(n *G.Node) (*G.Node, error) { return G.Sigmoid(n) }
func G_Exp(n *G.Node) (*G.Node, error)     { return G.Exp(n) }
func G_Log(n *G.Node) (*G.Node, error)     { return G.Log(n) }
func G_Inverse(n *G.Node) (*G.Node, error) { return G.Inverse(n) }

// watch records a node's forward value as it is computed (the tape machine may reuse an
// intermediate's memory later, so value() is only safe on outputs); read it after run with *ptr.
func (gr *graph) watch(n *G.Node) *G.Value {
	v := new(G.Value)
	gr.must(G.Read(n, v), nil)
	gr.vals[n] = v
	return v
}

// watched copies a watched value.
func watched(v *G.Value) []float64 { return append([]float64(nil), (*v).Data().([]float64)...) }

// tensorParam is an n-D input we want the gradient of.
func (gr *graph) tensorParam(shape []int, data []float32) *G.Node {
	gr.n++
	v := tensor.New(tensor.WithShape(shape...), tensor.WithBacking(to64(data)))
	n := G.NewTensor(gr.g, tensor.Float64, len(shape), G.WithShape(shape...), G.WithName(fmt.Sprintf("t%d", gr.n)), G.WithValue(v))
	gr.wrt = append(gr.wrt, n)
	return n
}

func (gr *graph) reshape(n *G.Node, shape ...int) *G.Node { return gr.must(G.Reshape(n, shape)) }
func (gr *graph) transpose(n *G.Node, axes ...int) *G.Node {
	return gr.must(G.Transpose(n, axes...))
}

type gNode = G.Node
