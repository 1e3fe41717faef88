package kernels

import "math"

// The optimizer step's gate: what the trainer's non-finite guard and clip decide, computed on the
// device from the step's float64 accumulators (F64Acc, SumSquares) so that the optimizer never
// waits for the host (trainer/optim.go). A gate for R roles is an F32 tensor of GateLen(R)
// elements:
//
//	gate[0]      ok: 1 when every updated role's Σ g² and every deferred loss sum is finite, else 0
//	gate[1]      unused (keeps the pairs below aligned)
//	gate[2+2i]   role i's clip factor: 1, or clip/(√Σg² + 1e-6) when √Σg² > clip > 0
//	gate[3+2i]   role i's AdamW step count (int32 bits), incremented by StepGate only when ok
//
// The step counts persist from step to step: they are the bias correction's t (AdamWGated).
// A zero-filled gate (Alloc) has every count 0.

// GateLen is the number of F32 elements of a gate for roles roles.
func GateLen(roles int) int { return 2 + 2*roles }

// GateOK reads a gate's ok flag from its host copy.
func GateOK(g []float32) bool { return g[0] != 0 }

// GateClip is role i's clip factor in a gate's host copy.
func GateClip(g []float32, i int) float32 { return g[2+2*i] }

// GateCount is role i's AdamW step count in a gate's host copy.
func GateCount(g []float32, i int) int { return int(int32(math.Float32bits(g[3+2*i]))) }

// SetGateCount sets role i's step count in a gate's host copy (to be written with FromHost: a
// resumed run's counts).
func SetGateCount(g []float32, i, n int) { g[3+2*i] = math.Float32frombits(uint32(int32(n))) }

// clipFactor is the clip of trainer/optim.go, in float64 as there: 1, or clip/(√sq + 1e-6) when
// √sq > clip > 0.
func clipFactor(sq, clip float64) float32 {
	if gn := math.Sqrt(sq); clip > 0 && gn > clip {
		return float32(clip / (gn + 1e-6))
	}
	return 1
}

// AdamScalars are AdamW's per-step scalars for step count t (the CPU's AdamW and AdamWGated, the
// CUDA AdamW): stepSize = lr/(1−β1^t), rbc2 = 1/√(1−β2^t), in float64 and rounded once.
func AdamScalars(lr, beta1, beta2 float32, t int) (stepSize, rbc2 float32) {
	bc1 := 1 - math.Pow(float64(beta1), float64(t))
	bc2 := 1 - math.Pow(float64(beta2), float64(t))
	return float32(float64(lr) / bc1), float32(1 / math.Sqrt(bc2))
}

// Readback is a copy to the host started by Device.ReadAsync. Wait waits for that copy only (not
// for work queued after it), writes the values into dst (len(dst) = the source's numel) and
// returns the device's first asynchronous error, if any (dst then holds NaNs). Call Wait once.
type Readback interface {
	Wait(dst []float32) error
}

// Gater is the part of a Device that runs the optimizer step gated on the device (every Device of
// this repository implements it; trainer/optim.go). Kept apart from Device so that the contract
// reads in one place; Device embeds it.
type Gater interface {
	// StepGate computes gate (GateLen(roles) F32) from acc (an F64Acc view of at least
	// roles+deferred accumulators): accumulator i < roles is role i's Σ g², counted when bit i of
	// mask is set; accumulators roles … roles+deferred−1 are the step's deferred loss sums. ok also
	// requires hostOK (the losses the host knows already). The clip factors of the roles in mask are
	// set (clip ≤ 0: 1); their step counts are incremented when ok. Queued; no synchronization.
	StepGate(gate, acc *Tensor, mask uint32, roles, deferred int, clip float64, hostOK bool)
	// AdamWGated is AdamW on the gate's decision: nothing when the gate's ok is 0; else g·clip of
	// role (gate[2+2·role]) is the gradient and the step count is the gate's (gate[3+2·role]). The
	// result equals Scale(g, clip) followed by AdamW at that count, bit for bit on the CPU (g itself
	// is not written unless it is m: β1 = 0, trainer/optim.go firstMoment).
	AdamWGated(w, g, m, v, gate *Tensor, role int, lr, beta1, beta2, eps, wd float32)
	// EMAGated is EMA when the gate's ok is 1 (nothing otherwise); decay 0 copies w exactly.
	EMAGated(ema, w, gate *Tensor, decay float32)
	// ReadAsync starts copying src (F32) to the host behind the work queued so far and returns at
	// once. The CPU device copies at once.
	ReadAsync(src *Tensor) Readback
}
