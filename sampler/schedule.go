// Package sampler turns a velocity network into videos: many-step Euler flow sampling with
// classifier-free guidance for teachers, few-step x0-and-re-noise sampling for distilled (DMD,
// adversarial, Self-Forcing) students, multistep consistency sampling for consistency students, and
// chunk-by-chunk causal streaming with the model's KV cache. Conventions (docs/architecture.md):
//
//	x_σ = (1−σ)·x0 + σ·ε        the flow path, σ ∈ [0, 1], network timestep t = 1000·σ
//	v   = ε − x0                 what the network predicts
//	x0  = x_σ − σ·v              the clean estimate from a velocity
//	v   = v_u + w·(v_c − v_u)    classifier-free guidance (w = 1: none; u = the null embedding)
//	σ'  = s·σ / (1 + (s−1)·σ)    the shifted schedule (s = 1: none)
package sampler

import (
	"fmt"
	"math"
	"sort"
)

// Shift warps σ ∈ [0,1] toward the noisy end for s > 1: σ' = s·σ/(1+(s−1)·σ). Shift(0)=0, Shift(1)=1.
func Shift(sigma, s float64) float64 {
	if s == 1 || s <= 0 {
		return sigma
	}
	return s * sigma / (1 + (s-1)*sigma)
}

// EulerSigmas is the N-step Euler grid from σ=1 to σ=0: σ_i = Shift(1 − i/N), i = 0..N (N+1 values,
// the last one 0).
func EulerSigmas(n int, shift float64) []float64 {
	s := make([]float64, n+1)
	for i := 0; i <= n; i++ {
		s[i] = Shift(1-float64(i)/float64(n), shift)
	}
	s[n] = 0
	return s
}

// DenoisingList is the k levels a few-step student visits: σ_i = Shift(1 − i/k), i = 0..k−1
// (k = 4, shift 1: t = 1000, 750, 500, 250 — Self-Forcing's / DMD's list). The student predicts x0
// at each level and re-noises it to the next; the last prediction is the sample.
func DenoisingList(k int, shift float64) []float64 {
	e := EulerSigmas(k, shift)
	return e[:k]
}

// MergeGrid is an Euler grid (decreasing, ending at 0) with extra levels inserted, so that a
// trajectory passes exactly through them (ODE pairs at the levels of a denoising list). Levels
// within 1e-9 of a grid point are that grid point.
func MergeGrid(grid, levels []float64) []float64 {
	out := append([]float64(nil), grid...)
	for _, l := range levels {
		dup := false
		for _, g := range out {
			if math.Abs(g-l) < 1e-9 {
				dup = true
			}
		}
		if !dup {
			out = append(out, l)
		}
	}
	sort.Sort(sort.Reverse(sort.Float64Slice(out)))
	return out
}

// OnGrid returns the grid point within 1e-9 of σ (σ itself if none).
func OnGrid(grid []float64, sigma float64) float64 {
	for _, g := range grid {
		if math.Abs(g-sigma) < 1e-9 {
			return g
		}
	}
	return sigma
}

// Snap moves each σ to the nearest level of an N-level Euler grid (the grid a consistency student
// was trained on; docs/objectives.md: grid_n shifted levels, 50). n ≤ 0 returns the list unchanged.
func Snap(sigmas []float64, n int, shift float64) []float64 {
	out := append([]float64(nil), sigmas...)
	if n <= 0 {
		return out
	}
	grid := EulerSigmas(n, shift)
	for i, s := range out {
		best := grid[0]
		for _, g := range grid {
			if math.Abs(g-s) < math.Abs(best-s) {
				best = g
			}
		}
		out[i] = best
	}
	return out
}

// ConsistencyScalings are LCM's boundary conditions with σ_data = 0.5 and timestep scaling 10,
// evaluated at the network timestep t = 1000·σ:
//
//	c_skip = σ_data² / ((10·t)² + σ_data²),   c_out = 10·t / sqrt((10·t)² + σ_data²)
//
// so that f(x, σ) = c_skip·x + c_out·x0_pred(x, σ) and f(x, 0) = x exactly. The consistency
// objective and the consistency sampler both use this function.
func ConsistencyScalings(sigma float64) (cSkip, cOut float64) {
	const sigmaData, scale = 0.5, 10.0
	st := scale * 1000 * sigma
	cSkip = sigmaData * sigmaData / (st*st + sigmaData*sigmaData)
	cOut = st / math.Sqrt(st*st+sigmaData*sigmaData)
	return cSkip, cOut
}

// checkSigmas rejects a list that is empty, leaves [0,1] or does not decrease strictly.
func checkSigmas(name string, s []float64) error {
	if len(s) == 0 {
		return fmt.Errorf("sampler: %s: empty σ list", name)
	}
	for i, v := range s {
		if v < 0 || v > 1 || math.IsNaN(v) {
			return fmt.Errorf("sampler: %s: σ[%d] = %g outside [0, 1]", name, i, v)
		}
		if i > 0 && v >= s[i-1] {
			return fmt.Errorf("sampler: %s: σ list %v does not decrease strictly at %d", name, s, i)
		}
	}
	return nil
}
