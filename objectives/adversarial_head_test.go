package objectives

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/fewstep/fewstep/kernels"
	_ "go4.org/unsafe/assume-no-moving-gc"
)

// headRef is an independent float64 implementation of the discriminator head: logit_b =
// fc2(mean_n SiLU(fc1(LN(h_bn)·w + b))), parameters read by name from the host buffer.
func headRef(w []float64, offs map[string]int, h []float64, B, N, D, Dh int) []float64 {
	at := func(name string, i int) float64 { return w[offs[name]+i] }
	out := make([]float64, B)
	for b := 0; b < B; b++ {
		m := make([]float64, Dh)
		for n := 0; n < N; n++ {
			row := h[(b*N+n)*D : (b*N+n+1)*D]
			var mu, v float64
			for _, x := range row {
				mu += x / float64(D)
			}
			for _, x := range row {
				v += (x - mu) * (x - mu) / float64(D)
			}
			r := 1 / math.Sqrt(v+1e-6)
			a := make([]float64, D)
			for i, x := range row {
				a[i] = (x-mu)*r*at(discNormW, i) + at(discNormB, i)
			}
			for j := 0; j < Dh; j++ {
				u := at(discFC1B, j)
				for i := 0; i < D; i++ {
					u += at(discFC1W, j*D+i) * a[i]
				}
				m[j] += u / (1 + math.Exp(-u)) / float64(N)
			}
		}
		o := at(discFC2B, 0)
		for j := 0; j < Dh; j++ {
			o += at(discFC2W, j) * m[j]
		}
		out[b] = o
	}
	return out
}

// The head's logits match the float64 reference, and its backward (input and every parameter
// gradient) matches central finite differences of the reference, on fresh random inputs.
func TestDiscHeadMatchesReference(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 7))
	t.Logf("seed %d", seed)
	const B, N, D, Dh = 3, 5, 8, 6
	dev := kernels.CPU()
	net := DiscHeadNet(D, Dh)
	host := make([]float32, net.Numel)
	net.Init(host, rng)
	for _, p := range net.Table { // perturb the init so that norm weights and biases matter too
		for i := 0; i < kernels.Numel(p.Shape); i++ {
			host[p.Offset+i] += float32(0.3 * rng.NormFloat64())
		}
	}
	W, G := dev.Alloc(kernels.F32, net.Numel), dev.Alloc(kernels.F32, net.Numel)
	dev.FromHost(W, host)
	head := NewDiscHead(dev, net.Table, W, G, B, N, D)

	hHost := make([]float32, B*N*D)
	for i := range hHost {
		hHost[i] = float32(1.5*rng.NormFloat64() + 0.5)
	}
	hid := dev.Alloc(kernels.F32, B, N, D)
	dev.FromHost(hid, hHost)
	dl := []float32{float32(rng.NormFloat64()), float32(rng.NormFloat64()), float32(rng.NormFloat64())}

	w64, h64 := make([]float64, len(host)), make([]float64, len(hHost))
	for i, v := range host {
		w64[i] = float64(v)
	}
	for i, v := range hHost {
		h64[i] = float64(v)
	}
	offs := map[string]int{}
	for _, p := range net.Table {
		offs[p.Name] = p.Offset
	}
	lossRef := func(w, h []float64) float64 { // Σ_b dl_b·logit_b
		var s float64
		for b, l := range headRef(w, offs, h, B, N, D, Dh) {
			s += float64(dl[b]) * l
		}
		return s
	}

	logits := head.Forward(hid)
	ref := headRef(w64, offs, h64, B, N, D, Dh)
	for b := range ref {
		if d := math.Abs(float64(logits[b]) - ref[b]); d > 1e-4*(1+math.Abs(ref[b])) {
			t.Fatalf("logit %d: %g, reference %g", b, logits[b], ref[b])
		}
	}
	dh := head.Backward(dl, true)
	dhH, gH := make([]float32, dh.Numel()), make([]float32, G.Numel())
	dev.ToHost(dhH, dh)
	dev.ToHost(gH, G)

	const eps = 1e-5
	check := func(what string, got float32, x []float64, i int, fn func() float64) {
		x0 := x[i]
		x[i] = x0 + eps
		up := fn()
		x[i] = x0 - eps
		dn := fn()
		x[i] = x0
		fd := (up - dn) / (2 * eps)
		if math.Abs(float64(got)-fd) > 2e-3*(1+math.Abs(fd)) {
			t.Fatalf("%s: backward %g, finite difference %g", what, got, fd)
		}
	}
	for i := range h64 {
		check("dhidden", dhH[i], h64, i, func() float64 { return lossRef(w64, h64) })
	}
	for _, p := range net.Table {
		for i := 0; i < kernels.Numel(p.Shape); i++ {
			check(p.Name, gH[p.Offset+i], w64, p.Offset+i, func() float64 { return lossRef(w64, h64) })
		}
	}

	// Without params, only the input gradient is produced: G unchanged, dhidden the same.
	dh2 := head.Backward(dl, false)
	g2 := make([]float32, G.Numel())
	dev.ToHost(g2, G)
	d2 := make([]float32, dh2.Numel())
	dev.ToHost(d2, dh2)
	for i := range g2 {
		if g2[i] != gH[i] {
			t.Fatalf("Backward(params=false) changed G[%d]: %g → %g", i, gH[i], g2[i])
		}
	}
	for i := range d2 {
		if d2[i] != dhH[i] {
			t.Fatalf("Backward(params=false) dhidden[%d] %g, with params %g", i, d2[i], dhH[i])
		}
	}
}

func TestSoftplusSigmoid(t *testing.T) {
	for _, x := range []float64{-800, -30, -1, 0, 0.5, 3, 40, 800} {
		ref := math.Log(1 + math.Exp(x))
		if math.IsInf(ref, 1) {
			ref = x // log(1+eˣ) → x
		}
		if d := math.Abs(softplus(x) - ref); d > 1e-12*(1+math.Abs(ref)) || math.IsNaN(softplus(x)) {
			t.Fatalf("softplus(%g) = %g, want %g", x, softplus(x), ref)
		}
		h := 1e-6
		if fd := (softplus(x+h) - softplus(x-h)) / (2 * h); math.Abs(fd-sigmoid(x)) > 1e-6 {
			t.Fatalf("sigmoid(%g) = %g, d softplus = %g", x, sigmoid(x), fd)
		}
	}
}
