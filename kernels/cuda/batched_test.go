package cuda

import (
	"fmt"
	"math"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// TestLinearBatched: the batched Linears (batched.go) against the CPU device's plain Linear and
// LinearBack on random inputs, for n = 3 (q, k, v) and n = 2 (cross k, v), in exact fp32, bf16
// operands (fp32 marked weights, their span's bf16 copy) and bf16-stored weights and biases; with
// and without biases; weights laid out as the parameter table lays them (one Linear apart: the
// batch) or in separate buffers (not at one stride: the device declines and the fallback runs);
// outputs in one buffer (one batched GEMM) or apart (one GEMM each on the span); sizes whose
// matrices are 16-byte aligned and sizes whose batch strides are not (the GEMMs one by one).
// Gradients start random (accumulate) or after ZeroLazy (written), with some bias gradients taken
// elsewhere (nil, as models' q and k when a norm backward takes them).
func TestLinearBatched(t *testing.T) {
	g := gpu(t)
	defer func() { g.GEMM = GEMMExact; SetBatchedLinears(g, true) }()
	SetBatchedLinears(g, true)
	r := seedRand(t)
	cpu := kernels.NewCPU(2)
	pad := func(n int) int { return (n + 63) / 64 * 64 }
	get := func(d kernels.Device, t *kernels.Tensor) []float32 {
		v := make([]float32, t.Numel())
		d.ToHost(v, t)
		return v
	}
	type sizes struct{ M, K, N int }
	for _, sz := range []sizes{{300, 256, 192}, {333, 136, 130}} {
		for _, n := range []int{3, 2} {
			for _, mode := range []string{"fp32", "bf16 operands", "bf16 weights"} {
				for _, bias := range []bool{true, false} {
					for _, lay := range []string{"table", "outs apart", "weights apart"} {
						name := fmt.Sprintf("%dx%dx%d n=%d %s bias=%v %s", sz.M, sz.K, sz.N, n, mode, bias, lay)
						t.Run(name, func(t *testing.T) {
							g.ResetError()
							linearBatchedCase(t, g, cpu, r, sz.M, sz.K, sz.N, n, mode, bias, lay, pad, get)
						})
					}
				}
			}
		}
	}
	SetBatchedLinears(g, false)
	x := g.Alloc(kernels.F32, 4, 8)
	w := g.Alloc(kernels.F32, 2*64)
	o := g.Alloc(kernels.F32, 2, 4, 8)
	ws := []*kernels.Tensor{w.View(0, 8, 8), w.View(64, 8, 8)}
	os := []*kernels.Tensor{o.View(0, 4, 8), o.View(32, 4, 8)}
	if g.LinearBatched(os, x, ws, nil) || g.BatchesLinears() {
		t.Errorf("FEWSTEP_QKV off (SetBatchedLinears false): LinearBatched took the batch")
	}
	for _, x := range []*kernels.Tensor{x, w, o} {
		g.Free(x)
	}
}

func linearBatchedCase(t *testing.T, g *Device, cpu kernels.Device, r interface{ NormFloat64() float64 }, M, K, N, n int, mode string, bias bool,
	lay string, pad func(int) int, get func(kernels.Device, *kernels.Tensor) []float32) {
	var wc worstCheck
	defer func() { t.Logf("worst: %s rel error %.3g (tol %.0e)", wc.what, wc.err, wc.tol) }()
	S := pad(N*K) + pad(N) // one Linear of the parameter table
	wdt := kernels.F32
	g.GEMM = GEMMExact
	tol := tolF32
	switch mode {
	case "bf16 operands":
		g.GEMM, tol = GEMMBF16, tolBF16
	case "bf16 weights":
		g.GEMM, tol, wdt = GEMMBF16, tolBF16, kernels.BF16
	}
	rnd := func(k int) []float32 {
		v := make([]float32, k)
		for i := range v {
			v[i] = float32(r.NormFloat64())
		}
		return v
	}
	x := rnd(M * K)
	wv, bv := make([][]float32, n), make([][]float32, n)
	for i := 0; i < n; i++ {
		wv[i], bv[i] = rnd(N*K), rnd(N)
		if wdt == kernels.BF16 {
			roundBF16(wv[i])
			roundBF16(bv[i])
		}
	}
	// GPU tensors: weights and biases (and their gradients) at stride S in one buffer, or apart
	var free []*kernels.Tensor
	alloc := func(dt kernels.DType, shape ...int) *kernels.Tensor {
		a := g.Alloc(dt, shape...)
		free = append(free, a)
		return a
	}
	defer func() {
		for _, a := range free {
			g.Free(a)
		}
	}()
	params := func(dt kernels.DType, weights bool) (ws, bs []*kernels.Tensor) {
		buf := alloc(dt, n*S)
		if weights && mode == "bf16 operands" { // fp32 weights whose bf16 copy the device caches (as models' W)
			g.MarkWeights(buf)
		}
		for i := 0; i < n; i++ {
			o := i * S
			if lay == "weights apart" { // in reverse order: never at one (positive) stride (separate
				o = (n - 1 - i) * S // allocations can happen to be, as on the H200)
			}
			ws = append(ws, buf.View(o, N, K))
			bs = append(bs, buf.View(o+pad(N*K), N))
		}
		return
	}
	Wg, Bg := params(wdt, true)
	dWg, dBg := params(kernels.F32, false)
	acts := func(rows int) []*kernels.Tensor {
		var ts []*kernels.Tensor
		if lay == "table" {
			buf := alloc(kernels.F32, n, rows, N)
			for i := 0; i < n; i++ {
				ts = append(ts, buf.View(i*rows*N, rows, N))
			}
			return ts
		}
		for i := 0; i < n; i++ {
			ts = append(ts, alloc(kernels.F32, rows, N))
		}
		return ts
	}
	Og, dOg := acts(M), acts(M)
	Xg, dXg := alloc(kernels.F32, M, K), alloc(kernels.F32, M, K)
	g.FromHost(Xg, x)
	for i := 0; i < n; i++ {
		g.FromHost(Wg[i], wv[i])
		g.FromHost(Bg[i], bv[i])
		g.Fill(Og[i], float32(math.NaN()))
	}
	var bs []*kernels.Tensor
	if bias {
		bs = Bg
	}
	took := g.LinearBatched(Og, Xg, Wg, bs)
	if want := lay != "weights apart"; took != want {
		t.Errorf("LinearBatched took the batch: %v, want %v", took, want)
	}
	if !took {
		kernels.LinearBatched(g, Og, Xg, Wg, bs)
	}
	// CPU reference: one Linear each
	Xc := cpu.Alloc(kernels.F32, M, K)
	cpu.FromHost(Xc, x)
	Wc, Bc := make([]*kernels.Tensor, n), make([]*kernels.Tensor, n)
	for i := 0; i < n; i++ {
		Wc[i], Bc[i] = cpu.Alloc(kernels.F32, N, K), cpu.Alloc(kernels.F32, N)
		cpu.FromHost(Wc[i], wv[i])
		cpu.FromHost(Bc[i], bv[i])
		Oc := cpu.Alloc(kernels.F32, M, N)
		var b *kernels.Tensor
		if bias {
			b = Bc[i]
		}
		cpu.Linear(Oc, Xc, Wc[i], b)
		wc.check(t, fmt.Sprintf("out %d", i), get(g, Og[i]), get(cpu, Oc), tol)
	}

	// backward, twice: gradients from a random start (accumulated), then dIn after ZeroLazy; the
	// first round leaves the first two bias gradients to "another op" (nil), as models' q and k
	for round := 0; round < 2; round++ {
		dx0 := rnd(M * K)
		dXc := cpu.Alloc(kernels.F32, M, K)
		g.FromHost(dXg, dx0)
		if round == 0 {
			cpu.FromHost(dXc, dx0)
		}
		dBs := append([]*kernels.Tensor(nil), dBg...)
		if round == 0 {
			for i := 0; i < n-1; i++ {
				dBs[i] = nil
			}
		}
		dWc, dBc := make([]*kernels.Tensor, n), make([]*kernels.Tensor, n)
		for i := 0; i < n; i++ {
			dy, dw, db := rnd(M*N), rnd(N*K), rnd(N)
			g.FromHost(dOg[i], dy)
			g.FromHost(dWg[i], dw)
			g.FromHost(dBg[i], db)
			dWc[i], dBc[i] = cpu.Alloc(kernels.F32, N, K), cpu.Alloc(kernels.F32, N)
			cpu.FromHost(dWc[i], dw)
			cpu.FromHost(dBc[i], db)
			dYc := cpu.Alloc(kernels.F32, M, N)
			cpu.FromHost(dYc, dy)
			var cb *kernels.Tensor
			if dBs[i] != nil {
				cb = dBc[i]
			}
			cpu.LinearBack(dXc, dWc[i], cb, dYc, Xc, Wc[i])
		}
		if round == 1 {
			g.ZeroLazy(dXg) // just before: the batched backward writes dIn instead of adding
		}
		took := g.LinearBatchedBack(dXg, dWg, dBs, dOg, Xg, Wg)
		if want := lay != "weights apart"; took != want {
			t.Errorf("round %d: LinearBatchedBack took the batch: %v, want %v", round, took, want)
		}
		if !took {
			kernels.LinearBatchedBack(g, dXg, dWg, dBs, dOg, Xg, Wg)
		}
		if err := g.Sync(); err != nil {
			t.Fatal(err)
		}
		wc.check(t, fmt.Sprintf("round %d dIn", round), get(g, dXg), get(cpu, dXc), tol)
		for i := 0; i < n; i++ {
			wc.check(t, fmt.Sprintf("round %d dW %d", round, i), get(g, dWg[i]), get(cpu, dWc[i]), tol)
			wc.check(t, fmt.Sprintf("round %d dB %d", round, i), get(g, dBg[i]), get(cpu, dBc[i]), tolF32) // fp32 sums of fp32 gradients
		}
	}
	if err := g.Sync(); err != nil {
		t.Fatal(err)
	}
}

// worstCheck compares got with want (relative L2 error ≤ tol) and keeps the worst error seen
// relative to its tolerance, for one log line a case.
type worstCheck struct {
	what     string
	err, tol float64
}

func (w *worstCheck) check(t *testing.T, what string, got, want []float32, tol float64) {
	t.Helper()
	e := relErr(got, want)
	if !(e <= tol) {
		t.Errorf("%s: rel error %.3g > %.0e", what, e, tol)
	}
	if w.what == "" || e/tol > w.err/w.tol || math.IsNaN(e) {
		*w = worstCheck{what, e, tol}
	}
}
