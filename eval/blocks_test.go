package eval

import (
	"math"
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/stat"
)

// The blocks tile the feature vector.
func TestFeatureBlocksTile(t *testing.T) {
	for _, F := range []int{2, 8, 16} {
		bl := FeatureBlocks(F)
		lo := 0
		for _, b := range bl {
			if b.Lo != lo || b.Hi <= b.Lo {
				t.Fatalf("F=%d: block %+v after %d", F, b, lo)
			}
			lo = b.Hi
		}
		if lo != FeatureDim(F) {
			t.Fatalf("F=%d: blocks end at %d, FeatureDim %d", F, lo, FeatureDim(F))
		}
	}
}

// A set shifted by a constant vector c has the same covariance, so the whole FD is ‖c‖² and each
// block's FD is ‖c restricted to the block‖²: the blocks sum to the whole exactly.
func TestFrechetBlocksShiftSums(t *testing.T) {
	r := rand.New(rand.NewPCG(uint64(rand.Int64()), 11))
	const n, d = 300, 9
	bl := []Block{{"a", 0, 2}, {"b", 2, 3}, {"c", 3, 9}}
	c := make([]float64, d)
	for j := range c {
		c[j] = r.NormFloat64()
	}
	x, y := make([][]float64, n), make([][]float64, n)
	for i := range x {
		x[i], y[i] = make([]float64, d), make([]float64, d)
		base := r.NormFloat64() // correlates every coordinate
		for j := range x[i] {
			x[i][j] = base*float64(j) + r.NormFloat64()*float64(j+1)
			y[i][j] = x[i][j] + c[j]
		}
	}
	whole, err := Frechet(x, y)
	if err != nil {
		t.Fatal(err)
	}
	parts, err := FrechetBlocks(x, y, bl)
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for i, b := range bl {
		want := 0.0
		for j := b.Lo; j < b.Hi; j++ {
			want += c[j] * c[j]
		}
		if math.Abs(parts[i]-want) > 1e-6*(1+want) {
			t.Fatalf("block %s: FD %g, want ‖c_block‖² = %g", b.Name, parts[i], want)
		}
		sum += parts[i]
	}
	if math.Abs(sum-whole) > 1e-6*(1+whole) {
		t.Fatalf("blocks sum to %g, whole FD %g", sum, whole)
	}
}

// One-dimensional blocks against the closed form (μ1 − μ2)² + (s1 − s2)² (unbiased s); on
// independent coordinates the blocks' sum approaches the whole FD.
func TestFrechetBlocksOneDimensional(t *testing.T) {
	r := rand.New(rand.NewPCG(uint64(rand.Int64()), 12))
	const n, d = 20000, 4
	x, y := make([][]float64, n), make([][]float64, n)
	for i := range x {
		x[i], y[i] = make([]float64, d), make([]float64, d)
		for j := 0; j < d; j++ {
			x[i][j] = r.NormFloat64() * float64(j+1)
			y[i][j] = 0.3*float64(j) + r.NormFloat64()*(1+0.5*float64(j))
		}
	}
	var bl []Block
	for j := 0; j < d; j++ {
		bl = append(bl, Block{string(rune('a' + j)), j, j + 1})
	}
	parts, err := FrechetBlocks(x, y, bl)
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for j := 0; j < d; j++ {
		xs, ys := make([]float64, n), make([]float64, n)
		for i := range x {
			xs[i], ys[i] = x[i][j], y[i][j]
		}
		m1, s1 := stat.MeanStdDev(xs, nil)
		m2, s2 := stat.MeanStdDev(ys, nil)
		want := (m1-m2)*(m1-m2) + (s1-s2)*(s1-s2)
		if math.Abs(parts[j]-want) > 1e-6*(1+want) {
			t.Fatalf("coordinate %d: FD %g, closed form %g", j, parts[j], want)
		}
		sum += parts[j]
	}
	whole, _ := Frechet(x, y)
	if math.Abs(sum-whole) > 0.02*whole {
		t.Fatalf("independent coordinates: blocks sum to %g, whole FD %g", sum, whole)
	}
	if _, err := FrechetBlocks(x, y, []Block{{"past", 3, 6}}); err == nil {
		t.Fatal("block past the features: no error")
	}
	if _, err := FrechetBlocks(x, y, []Block{{"empty", 2, 2}}); err == nil {
		t.Fatal("empty block: no error")
	}
}

// MeanSpread against gonum's stat.MeanStdDev (n − 1), NaNs skipped.
func TestMeanSpread(t *testing.T) {
	r := rand.New(rand.NewPCG(uint64(rand.Int64()), 13))
	for _, n := range []int{2, 3, 7} {
		xs := make([]float64, n)
		for i := range xs {
			xs[i] = r.NormFloat64()*3 + 1
		}
		m, s := MeanSpread(append(xs, math.NaN()))
		wm, ws := stat.MeanStdDev(xs, nil)
		if math.Abs(m-wm) > 1e-12 || math.Abs(s-ws) > 1e-12 {
			t.Fatalf("n=%d: %g ± %g, want %g ± %g", n, m, s, wm, ws)
		}
	}
	if m, s := MeanSpread([]float64{4}); m != 4 || s != 0 {
		t.Fatalf("one value: %g ± %g", m, s)
	}
	if m, s := MeanSpread([]float64{math.NaN()}); !math.IsNaN(m) || !math.IsNaN(s) {
		t.Fatalf("only NaN: %g ± %g", m, s)
	}
}
