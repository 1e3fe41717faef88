package objectives

import (
	"math"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// draw runs RandnSamples on a fresh [B, 3, 2, 5] tensor (slabs of 30: not a multiple of Philox's 4).
func draw(dev kernels.Device, s *Step, B int) []float32 {
	x := dev.Alloc(kernels.F32, B, 3, 2, 5)
	RandnSamples(dev, x, make([]float32, x.Numel()), s)
	h := make([]float32, x.Numel())
	dev.ToHost(h, x)
	return h
}

const slab = 3 * 2 * 5

// TestRandnSamplesDevice: the device noise (Step.Noise device, on the CPU device: the GPU's op
// matches it, kernels/cuda/random_test.go) of a global batch of 4 drawn by one rank equals, slab for
// slab, what two ranks with 2 samples each draw (rank r's local sample j is global sample 2j+r), for
// two successive calls of the step; the second call draws other values than the first; the same
// step drawn again from fresh streams (a resume) draws the same; and slab b is Philox under the key
// that is the next Uint64 of sample b's stream, at the step's draw count (the keying of RandnSamples'
// comment, from the streams' definition in SampleRNG).
func TestRandnSamplesDevice(t *testing.T) {
	dev := kernels.CPU()
	const seed, step, micro, B = 17, 9, 1, 4
	one := &Step{Step: step, Micro: micro, RNG: StepRNG(seed, step, micro), Samples: StepSamples(seed, step, micro, B, 0, 1), Noise: NoiseDevice}
	first, second := draw(dev, one, B), draw(dev, one, B)
	for r := 0; r < 2; r++ {
		s := &Step{Step: step, Micro: micro, RNG: StepRNG(seed, step, micro), Samples: StepSamples(seed, step, micro, B/2, r, 2), Noise: NoiseDevice}
		for call, want := range [][]float32{first, second} {
			got := draw(dev, s, B/2)
			for j := 0; j < B/2; j++ {
				g := 2*j + r
				for i := 0; i < slab; i++ {
					if got[j*slab+i] != want[g*slab+i] {
						t.Fatalf("call %d, rank %d of 2, local sample %d: value %d is %v, one rank's global sample %d has %v",
							call, r, j, i, got[j*slab+i], g, want[g*slab+i])
					}
				}
			}
		}
	}
	equal := 0
	for i := range first {
		if first[i] == second[i] {
			equal++
		}
	}
	if equal > 0 {
		t.Errorf("the step's second draw repeats %d values of its first", equal)
	}
	resumed := &Step{Step: step, Micro: micro, RNG: StepRNG(seed, step, micro), Samples: StepSamples(seed, step, micro, B, 0, 1), Noise: NoiseDevice}
	if again := draw(dev, resumed, B); !same(again, first) {
		t.Errorf("the step drawn again from fresh streams differs from its first draw")
	}
	for b := 0; b < B; b++ {
		rng := SampleRNG(seed, step, micro, b)
		for call, got := range [][]float32{first, second} {
			want := make([]float32, slab)
			kernels.PhiloxRandn(want, rng.Uint64(), uint64(call))
			if !same(got[b*slab:(b+1)*slab], want) {
				t.Errorf("call %d, sample %d: not Philox under its stream's next Uint64 at counter %d", call, b, call)
			}
		}
	}
	other := &Step{Step: step + 1, Micro: micro, RNG: StepRNG(seed, step+1, micro), Samples: StepSamples(seed, step+1, micro, B, 0, 1), Noise: NoiseDevice}
	if same(draw(dev, other, B), first) {
		t.Errorf("step %d draws step %d's noise", step+1, step)
	}
}

// TestRandnSamplesHost: the host mode, and auto on the CPU device, draw each sample's stream's
// NormFloat64s as before device noise existed (the README's CPU tables depend on it), with and
// without per-sample streams; a bad mode is an error naming train.noise.
func TestRandnSamplesHost(t *testing.T) {
	dev := kernels.CPU()
	const seed, step, B = 3, 2, 3
	for _, mode := range []string{"", NoiseAuto, NoiseHost} {
		for _, perSample := range []bool{true, false} {
			s := &Step{Step: step, RNG: StepRNG(seed, step, 0), Noise: mode}
			ref := &Step{RNG: StepRNG(seed, step, 0)}
			if perSample {
				s.Samples = StepSamples(seed, step, 0, B, 0, 1)
				ref.Samples = StepSamples(seed, step, 0, B, 0, 1)
			}
			got := draw(dev, s, B)
			for b := 0; b < B; b++ {
				rng := ref.Sample(b)
				for i := 0; i < slab; i++ {
					if want := float32(rng.NormFloat64()); got[b*slab+i] != want {
						t.Fatalf("mode %q, per-sample streams %v: sample %d value %d is %v, its stream's NormFloat64 %v", mode, perSample, b, i, got[b*slab+i], want)
					}
				}
			}
		}
	}
	if err := CheckNoise("gpu"); err == nil || !strings.Contains(err.Error(), `train.noise: "gpu"`) {
		t.Errorf("CheckNoise(gpu): %v", err)
	}
	for _, m := range []string{"", NoiseAuto, NoiseHost, NoiseDevice} {
		if err := CheckNoise(m); err != nil {
			t.Errorf("CheckNoise(%q): %v", m, err)
		}
	}
	defer func() {
		if r := recover(); r == nil || !strings.Contains(r.(string), "train.noise") {
			t.Errorf("RandnSamples with Noise %q: %v, want a panic naming train.noise", "gpu", r)
		}
	}()
	draw(dev, &Step{RNG: StepRNG(1, 1, 0), Noise: "gpu"}, 1)
}

func same(a, b []float32) bool {
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return len(a) == len(b)
}
