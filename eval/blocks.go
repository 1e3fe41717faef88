package eval

import (
	"fmt"
	"math"
)

// FD split by feature block: the diagnosis tool. Features' vector is a concatenation of blocks
// (pixel statistics, object colour, position x, position y, area, frame differences, random
// projection); the Fréchet distance of each block's marginal Gaussian says which property of the
// generated videos is off. The mean term ‖μ1 − μ2‖² of the whole FD is the exact sum of the blocks'
// mean terms; the covariance terms add up exactly when the blocks are uncorrelated (block-diagonal
// covariances) and approximately otherwise, so the blocks' sum sits near the whole FD, not on it.

// Block is a named range [Lo, Hi) of a feature vector.
type Block struct {
	Name   string
	Lo, Hi int
}

// FeatureBlocks are the blocks of Features(·) for F frames, in order, covering FeatureDim(F).
func FeatureBlocks(F int) []Block {
	sizes := []struct {
		name string
		n    int
	}{{"pixels", 6}, {"colour", 3}, {"x", F}, {"y", F}, {"area", F}, {"motion", F - 1}, {"proj", ProjDim}}
	var out []Block
	lo := 0
	for _, s := range sizes {
		out = append(out, Block{s.name, lo, lo + s.n})
		lo += s.n
	}
	return out
}

// FrechetBlocks is the Fréchet distance between the two sets' Gaussians restricted to each block
// (the marginal of a Gaussian on a block is the Gaussian of the block's coordinates).
func FrechetBlocks(x, y [][]float64, blocks []Block) ([]float64, error) {
	out := make([]float64, len(blocks))
	for i, b := range blocks {
		if b.Lo < 0 || b.Hi <= b.Lo {
			return nil, fmt.Errorf("eval: feature block %q [%d, %d) is empty", b.Name, b.Lo, b.Hi)
		}
		xs, err := columns(x, b)
		if err != nil {
			return nil, err
		}
		ys, err := columns(y, b)
		if err != nil {
			return nil, err
		}
		if out[i], err = Frechet(xs, ys); err != nil {
			return nil, fmt.Errorf("eval: block %s: %w", b.Name, err)
		}
	}
	return out, nil
}

func columns(x [][]float64, b Block) ([][]float64, error) {
	out := make([][]float64, len(x))
	for i, r := range x {
		if b.Hi > len(r) {
			return nil, fmt.Errorf("eval: feature block %q [%d, %d) past the %d features of vector %d", b.Name, b.Lo, b.Hi, len(r), i)
		}
		out[i] = r[b.Lo:b.Hi]
	}
	return out, nil
}

// MeanSpread is the mean and the sample standard deviation (n − 1; 0 for one value) of xs,
// skipping NaNs; NaN, NaN when none is left.
func MeanSpread(xs []float64) (mean, spread float64) {
	n := 0
	for _, v := range xs {
		if !math.IsNaN(v) {
			mean += v
			n++
		}
	}
	if n == 0 {
		return math.NaN(), math.NaN()
	}
	mean /= float64(n)
	if n == 1 {
		return mean, 0
	}
	for _, v := range xs {
		if !math.IsNaN(v) {
			spread += (v - mean) * (v - mean)
		}
	}
	return mean, math.Sqrt(spread / float64(n-1))
}
