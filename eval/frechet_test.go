package eval

import (
	"math"
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/mat"
)

// randomPSD is Q·diag(λ)·Qᵀ with a random orthogonal Q (QR of a Gaussian matrix) and given λ.
func randomPSD(r *rand.Rand, lam []float64) *mat.SymDense {
	n := len(lam)
	g := mat.NewDense(n, n, nil)
	for i := 0; i < n; i++ {
		for j := 0; j < n; j++ {
			g.Set(i, j, r.NormFloat64())
		}
	}
	var qr mat.QR
	qr.Factorize(g)
	var q mat.Dense
	qr.QTo(&q)
	out := mat.NewSymDense(n, nil)
	for i := 0; i < n; i++ {
		for j := i; j < n; j++ {
			s := 0.0
			for k := 0; k < n; k++ {
				s += q.At(i, k) * lam[k] * q.At(j, k)
			}
			out.SetSym(i, j, s)
		}
	}
	return out
}

func TestSqrtPSD(t *testing.T) {
	r := rand.New(rand.NewPCG(uint64(rand.Int64()), 1)) // fresh inputs each run
	for _, n := range []int{1, 5, 20} {
		lam := make([]float64, n)
		for i := range lam {
			lam[i] = r.Float64() * 3
		}
		lam[0] = 0 // singular on purpose
		a := randomPSD(r, lam)
		s, err := SqrtPSD(a)
		if err != nil {
			t.Fatal(err)
		}
		var s2 mat.Dense
		s2.Mul(s, s)
		var diff mat.Dense
		diff.Sub(&s2, a)
		if e := mat.Norm(&diff, 2) / mat.Norm(a, 2); e > 1e-10 {
			t.Fatalf("n=%d: ‖√A·√A − A‖/‖A‖ = %g", n, e)
		}
		// √A is PSD: its eigenvalues are √λ.
		tr := 0.0
		for _, l := range lam {
			tr += math.Sqrt(l)
		}
		if math.Abs(mat.Trace(s)-tr) > 1e-7*(1+tr) { // √ of a rounding-level λ≈1e-16 is 1e-8
			t.Fatalf("n=%d: tr √A = %g, want Σ√λ = %g", n, mat.Trace(s), tr)
		}
	}
}

// Closed forms: for commuting covariances (same eigenvectors) the distance is
// ‖μ1−μ2‖² + Σ (√λ1_i − √λ2_i)²; equal Gaussians are at distance 0.
func TestFrechetClosedForm(t *testing.T) {
	r := rand.New(rand.NewPCG(uint64(rand.Int64()), 2))
	const n = 6
	lam1, lam2 := make([]float64, n), make([]float64, n)
	want := 0.0
	mu1, mu2 := make([]float64, n), make([]float64, n)
	for i := 0; i < n; i++ {
		lam1[i], lam2[i] = r.Float64()*2, r.Float64()*2
		mu1[i], mu2[i] = r.NormFloat64(), r.NormFloat64()
		want += (mu1[i]-mu2[i])*(mu1[i]-mu2[i]) + math.Pow(math.Sqrt(lam1[i])-math.Sqrt(lam2[i]), 2)
	}
	// Same random rotation for both: build both from one Q by reusing the seed.
	seed := r.Uint64()
	c1 := randomPSD(rand.New(rand.NewPCG(seed, 3)), lam1)
	c2 := randomPSD(rand.New(rand.NewPCG(seed, 3)), lam2)
	got, err := FrechetGaussians(&Gaussian{Mu: mu1, Cov: c1}, &Gaussian{Mu: mu2, Cov: c2})
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(got-want) > 1e-9*(1+want) {
		t.Fatalf("FD = %.12g, closed form %.12g", got, want)
	}
	// Non-commuting covariances, 1×1 blocks aside: FD(a, a) = 0 and FD is symmetric.
	c3 := randomPSD(r, lam2)
	d0, _ := FrechetGaussians(&Gaussian{Mu: mu1, Cov: c1}, &Gaussian{Mu: mu1, Cov: c1})
	dab, _ := FrechetGaussians(&Gaussian{Mu: mu1, Cov: c1}, &Gaussian{Mu: mu2, Cov: c3})
	dba, _ := FrechetGaussians(&Gaussian{Mu: mu2, Cov: c3}, &Gaussian{Mu: mu1, Cov: c1})
	if d0 > 1e-9 || math.Abs(dab-dba) > 1e-8*(1+dab) {
		t.Fatalf("FD(a,a) = %g; FD(a,b) = %g vs FD(b,a) = %g", d0, dab, dba)
	}
}

// Sample estimates: two samples of one Gaussian are close; a shifted one is far by ≈ ‖Δμ‖².
func TestFrechetSamples(t *testing.T) {
	r := rand.New(rand.NewPCG(uint64(rand.Int64()), 4))
	draw := func(n int, shift float64) [][]float64 {
		x := make([][]float64, n)
		for i := range x {
			x[i] = []float64{r.NormFloat64() + shift, 0.5*r.NormFloat64() - shift, r.NormFloat64()}
		}
		return x
	}
	same, err := Frechet(draw(4000, 0), draw(4000, 0))
	if err != nil {
		t.Fatal(err)
	}
	far, _ := Frechet(draw(4000, 0), draw(4000, 1))
	if same > 0.02 || math.Abs(far-2) > 0.15 {
		t.Fatalf("same law: FD %g (want ≈ 0); shift by (1,−1,0): FD %g (want ≈ 2)", same, far)
	}
	if _, err := Frechet(draw(1, 0), draw(5, 0)); err == nil {
		t.Fatal("one vector: no error")
	}
	if _, err := Frechet([][]float64{{1, 2}, {3}}, draw(5, 0)); err == nil {
		t.Fatal("ragged vectors: no error")
	}
}
