package trainer

// The trainer on a GPU. Everything goes through kernels.Device, so a job with `device: cuda` runs the
// same code as on the CPU; this file holds the few GPU-specific choices:
//   - UseGPUDefaults: a CUDA device trains with bf16 tensor-core GEMMs (fp32 master weights,
//     gradients and optimizer states, fp32 accumulation), as PyTorch's bf16 autocast does.
//   - markWeights: every role's parameter buffer is declared as weights, so the CUDA device keeps
//     its bf16 shadow between GEMMs and remakes it only after AdamW / EMA / a copy writes the buffer.
//   - bf16Weights: on such a device a frozen network (the teacher) holds its weights in bf16 only:
//     its GEMMs read bf16 copies anyway, and the fp32 master would be a parameter-sized buffer that
//     nothing updates (5.3 GiB for Wan-1.3B).
//   - roundBF16: under train.shard full the frozen teacher's fp32 slices hold bf16 values, as the
//     bf16-only teacher does without sharding.
//   - RandomInit (Options): benchmarks build roles that need a checkpoint (the teacher) from random
//     weights drawn quickly on the host.

import (
	"math/rand/v2"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/kernels/cuda"
	"github.com/fewstep/fewstep/models"
)

// UseGPUDefaults sets a CUDA device's GEMMs to bf16 operands with fp32 accumulation (the training
// precision); other devices are left as they are.
func UseGPUDefaults(dev kernels.Device) {
	if g, ok := dev.(*cuda.Device); ok {
		g.GEMM = cuda.GEMMBF16
	}
}

// bf16Weights reports whether dev's GEMMs read bf16 copies of fp32 weights (a CUDA device in bf16
// GEMM mode, models.DryDevice counting that mode).
func bf16Weights(dev kernels.Device) bool { return models.GEMMReadsBF16(dev) }

// roundBF16 rounds w's values to the nearest bf16 (kept in fp32): the values a bf16 copy of w
// holds. A frozen teacher sharded under train.shard full gets the values of the bf16-only teacher
// it is without sharding: with fp32 values a Wan-1.3B DMD run under full started its student and
// critic (copies of the teacher) off the bf16 grid, and since an AdamW step of 2e-6 is a small
// fraction of a bf16 ulp, their GEMMs (which read bf16 copies) saw different updates: step 2's
// gen_loss was 0.704 against 0.665 (docs/multi-gpu.md). Done in pieces of bucketElems.
func roundBF16(dev kernels.Device, w *kernels.Tensor) {
	n := w.Numel()
	if n == 0 {
		return
	}
	chunk := min(n, bucketElems)
	tmp := dev.Alloc(kernels.BF16, chunk)
	defer dev.Free(tmp)
	for off := 0; off < n; off += chunk {
		k := min(chunk, n-off)
		dev.Copy(tmp.View(0, k), w.View(off, k)) // [k] bf16, rounded to nearest even
		dev.Copy(w.View(off, k), tmp.View(0, k)) // [k] fp32, exact
	}
}

// weightMarker is a device that caches low-precision copies of declared weight buffers.
type weightMarker interface{ MarkWeights(t *kernels.Tensor) }

func markWeights(dev kernels.Device, w *kernels.Tensor) {
	if m, ok := dev.(weightMarker); ok && w != nil {
		m.MarkWeights(w)
	}
}

// RandomWeights fills w with N(0, std²)-like values fast: 1<<20 normal draws from seed, tiled with a
// shifting offset (benchmarks time the arithmetic, not the statistics of the weights).
func RandomWeights(dev kernels.Device, w *kernels.Tensor, seed int64, std float32) {
	if _, dry := dev.(*models.DryDevice); dry {
		return // nothing to fill, and a host copy of a 14B buffer would not fit (bench train --dry)
	}
	dev.FromHost(w, randomHost(w.Numel(), seed, std))
}

// randomHost is RandomWeights' values for a buffer of size elements, on the host.
func randomHost(size int, seed int64, std float32) []float32 {
	const n = 1 << 20
	r := rand.New(rand.NewPCG(uint64(seed), 7))
	tile := make([]float32, n)
	for i := range tile {
		tile[i] = std * float32(r.NormFloat64())
	}
	host := make([]float32, size)
	for off, k := 0, 0; off < len(host); off, k = off+n, k+1 {
		rot := (k * 7919) % n
		m := copy(host[off:], tile[rot:])
		if off+m < len(host) && m < n {
			copy(host[off+m:min(off+n, len(host))], tile[:rot])
		}
	}
	return host
}
