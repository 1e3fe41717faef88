package eval

import (
	"fmt"
	"math"

	"gonum.org/v1/gonum/mat"
)

// SqrtPSD is the symmetric square root of a symmetric positive semi-definite matrix by
// eigen-decomposition: A = Q·diag(λ)·Qᵀ → A^½ = Q·diag(√max(λ,0))·Qᵀ (negative eigenvalues, which
// only rounding produces for a PSD input, are clamped to 0).
func SqrtPSD(a mat.Symmetric) (*mat.SymDense, error) {
	var e mat.EigenSym
	if !e.Factorize(a, true) {
		return nil, fmt.Errorf("eval: eigen-decomposition of a %d×%d matrix failed", a.SymmetricDim(), a.SymmetricDim())
	}
	lam := e.Values(nil)
	var q mat.Dense
	e.VectorsTo(&q)
	n := len(lam)
	d := mat.NewDense(n, n, nil)
	for j := 0; j < n; j++ {
		s := math.Sqrt(math.Sqrt(math.Max(lam[j], 0)))
		for i := 0; i < n; i++ {
			d.Set(i, j, q.At(i, j)*s) // Q·diag(λ^¼)
		}
	}
	out := mat.NewSymDense(n, nil)
	out.SymOuterK(1, d) // (QΛ^¼)(QΛ^¼)ᵀ = QΛ^½Qᵀ
	return out, nil
}

// traceSqrtPSD is tr(A^½) = Σ √max(λ_i, 0).
func traceSqrtPSD(a mat.Symmetric) (float64, error) {
	var e mat.EigenSym
	if !e.Factorize(a, false) {
		return 0, fmt.Errorf("eval: eigenvalues of a %d×%d matrix failed", a.SymmetricDim(), a.SymmetricDim())
	}
	t := 0.0
	for _, l := range e.Values(nil) {
		t += math.Sqrt(math.Max(l, 0))
	}
	return t, nil
}

// Gaussian is the mean and covariance of a set of feature vectors.
type Gaussian struct {
	Mu  []float64
	Cov *mat.SymDense
	N   int
}

// Fit estimates the mean and the (unbiased, N−1) covariance of rows x[i] (all of one length).
func Fit(x [][]float64) (*Gaussian, error) {
	if len(x) < 2 {
		return nil, fmt.Errorf("eval: Fréchet distance needs ≥ 2 feature vectors, got %d", len(x))
	}
	d := len(x[0])
	mu := make([]float64, d)
	for i, r := range x {
		if len(r) != d {
			return nil, fmt.Errorf("eval: feature vector %d has %d values, vector 0 has %d", i, len(r), d)
		}
		for j, v := range r {
			mu[j] += v
		}
	}
	for j := range mu {
		mu[j] /= float64(len(x))
	}
	c := mat.NewDense(len(x), d, nil)
	for i, r := range x {
		for j, v := range r {
			c.Set(i, j, v-mu[j])
		}
	}
	cov := mat.NewSymDense(d, nil)
	cov.SymRankK(cov, 1/float64(len(x)-1), c.T()) // Σ = XcᵀXc/(N−1)
	return &Gaussian{Mu: mu, Cov: cov, N: len(x)}, nil
}

// FrechetGaussians is the Fréchet (2-Wasserstein) distance between N(μ1,Σ1) and N(μ2,Σ2):
//
//	‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2·(Σ1^½ Σ2 Σ1^½)^½)
//
// computed with the symmetric form, so every square root is of a symmetric PSD matrix.
func FrechetGaussians(a, b *Gaussian) (float64, error) {
	d := len(a.Mu)
	if len(b.Mu) != d {
		return 0, fmt.Errorf("eval: Fréchet distance between %d- and %d-dimensional features", d, len(b.Mu))
	}
	dm := 0.0
	for j := range a.Mu {
		dm += (a.Mu[j] - b.Mu[j]) * (a.Mu[j] - b.Mu[j])
	}
	s1, err := SqrtPSD(a.Cov)
	if err != nil {
		return 0, err
	}
	var t, m mat.Dense
	t.Mul(s1, b.Cov)
	m.Mul(&t, s1)
	ms := mat.NewSymDense(d, nil)
	for i := 0; i < d; i++ { // symmetrize away rounding
		for j := i; j < d; j++ {
			ms.SetSym(i, j, 0.5*(m.At(i, j)+m.At(j, i)))
		}
	}
	tr, err := traceSqrtPSD(ms)
	if err != nil {
		return 0, err
	}
	fd := dm + mat.Trace(a.Cov) + mat.Trace(b.Cov) - 2*tr
	return math.Max(fd, 0), nil
}

// Frechet fits a Gaussian to each set of feature vectors and returns their Fréchet distance.
func Frechet(x, y [][]float64) (float64, error) {
	a, err := Fit(x)
	if err != nil {
		return 0, err
	}
	b, err := Fit(y)
	if err != nil {
		return 0, err
	}
	return FrechetGaussians(a, b)
}
