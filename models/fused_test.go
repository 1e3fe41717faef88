package models

import (
	"math/rand"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// geluBiasCPU is the CPU device as the GPU looks to the models in bf16-GEMM mode with the fusions
// on: GEMMReadsBF16 and GELUPreBF16 (so a BF16Operands pass labels its GEMM-only activations, the
// GELU's pre-activation and the gradients around it bf16; the CPU device computes in fp32 whatever
// the label), and a GELUBackBias that takes the bias gradient (GELUBack, then dIn's column sums
// added into dBias as the CPU's LinearBack adds its dB), counting its calls.
type geluBiasCPU struct {
	kernels.Device
	calls, took int
}

func (*geluBiasCPU) GEMMReadsBF16() bool { return true }
func (*geluBiasCPU) GELUPreBF16() bool   { return true }

func (d *geluBiasCPU) GELUBackBias(dIn, dBias, dOut, in *kernels.Tensor) bool {
	d.calls++
	d.GELUBack(dIn, dOut, in)
	if dBias == nil {
		return true
	}
	d.took++
	addColumnSums(d, dBias, dIn)
	return true
}

// addColumnSums adds g's column sums (float64, rows in order) into dBias, as the CPU's LinearBack
// adds its dB: what the fake devices below do in place of a fused kernel.
func addColumnSums(d kernels.Device, dBias, g *kernels.Tensor) {
	cols := dBias.Numel()
	v, b := host(d, g), host(d, dBias)
	for c := 0; c < cols; c++ {
		var s float64
		for r := 0; r < len(v)/cols; r++ {
			s += float64(v[r*cols+c])
		}
		b[c] += float32(s)
	}
	d.FromHost(dBias, b)
}

// TestGELUBackBiasWiring: a BF16Operands pass on a device that keeps the GELU's pre-activation in
// bf16 and takes ffn.0's bias gradient with the GELU backward (as kernels/cuda does) computes the
// same output, input gradient and parameter gradients, bit for bit, as the plain CPU pass: the bias
// gradient is counted once (the following LinearBack gets no dB), and the pass holds f1, dF1 and
// dF1g in bf16. A frozen network's backward passes no bias (and the device's op still runs).
func TestGELUBackBiasWiring(t *testing.T) {
	cfg, _ := Preset("tiny")
	cfg.InDim, cfg.OutDim, cfg.Layers = 4, 4, 3
	B, F, H, W, L := 1, 2, 4, 4, 3
	C := cfg.InDim
	rng := rand.New(rand.NewSource(11))
	xv, tv := randn(rng, B*C*F*H*W, 1), randTimesteps(rng, B*F)
	cv, gv := randn(rng, B*L*cfg.TextDim, 1), randn(rng, B*C*F*H*W, 1)
	run := func(dev kernels.Device, grads bool) (out, dx, g []float32, p *Pass) {
		m := New(dev, cfg, grads)
		randomize(m, 5)
		p = m.NewPass(Shape{B: B, F: F, H: H, W: W, L: L, BF16Operands: true})
		out = host(dev, m.Forward(p, devT(dev, xv, B, C, F, H, W), devT(dev, tv, B, F), devT(dev, cv, B, L, cfg.TextDim)))
		dx = host(dev, m.Backward(p, devT(dev, gv, B, C, F, H, W)))
		if grads {
			g = host(dev, m.G)
		}
		return out, dx, g, p
	}
	o0, dx0, g0, _ := run(kernels.CPU(), true)
	fd := &geluBiasCPU{Device: kernels.CPU()}
	o1, dx1, g1, p := run(fd, true)
	sameBits(t, "output", o0, o1)
	sameBits(t, "dx", dx0, dx1)
	sameBits(t, "parameter gradients", g0, g1)
	if fd.calls != cfg.Layers || fd.took != cfg.Layers {
		t.Errorf("GELUBackBias called %d times, took the bias %d times: want %d and %d", fd.calls, fd.took, cfg.Layers, cfg.Layers)
	}
	if a := p.blocks[0]; a.f1.DType != kernels.BF16 || p.g.dF1.DType != kernels.BF16 || p.g.dF1g.DType != kernels.BF16 {
		t.Errorf("f1 %v, dF1 %v, dF1g %v: want bf16 on a device with GELUPreBF16", a.f1.DType, p.g.dF1.DType, p.g.dF1g.DType)
	}
	if _, _, _, pc := run(kernels.CPU(), true); pc.blocks[0].f1.DType != kernels.F32 {
		t.Errorf("f1 %v on the CPU: want fp32", pc.blocks[0].f1.DType)
	}

	// Frozen (no gradients wanted): the input gradient only, no bias passed.
	_, fdx0, _, _ := run(kernels.CPU(), false)
	ff := &geluBiasCPU{Device: kernels.CPU()}
	_, fdx1, _, _ := run(ff, false)
	sameBits(t, "frozen dx", fdx0, fdx1)
	if ff.calls != cfg.Layers || ff.took != 0 {
		t.Errorf("frozen: GELUBackBias called %d times, took a bias %d times: want %d and 0", ff.calls, ff.took, cfg.Layers)
	}
}

// backBiasCPU is the CPU device with the backward row ops of kernels.BackBiaser (as kernels/cuda
// has them): each runs the plain op, then adds the column sums of the gradient it wrote into
// dBias as the CPU's LinearBack adds its dB, counting the biases it took.
type backBiasCPU struct {
	kernels.Device
	took int
}

func (d *backBiasCPU) addCols(dBias, g *kernels.Tensor) bool {
	if dBias == nil {
		return true
	}
	d.took++
	addColumnSums(d, dBias, g)
	return true
}

func (d *backBiasCPU) RMSNormBackBias(dIn, dW, dBias, dOut, in, rstd, w *kernels.Tensor) bool {
	d.RMSNormBack(dIn, dW, dOut, in, rstd, w)
	return d.addCols(dBias, dIn)
}

func (d *backBiasCPU) RMSNormRoPEBackBias(dIn, dW, dBias, dOut, in, rstd, w *kernels.Tensor, frames, rows, cols, frame0 int) bool {
	kernels.RMSNormRoPEBack(d.Device, dIn, dW, dOut, in, rstd, w, frames, rows, cols, frame0)
	return d.addCols(dBias, dIn)
}

func (d *backBiasCPU) GateAddBackBias(dY, dMod, dBias, dX, y, mod *kernels.Tensor, iGate, tpf int) bool {
	d.GateAddBack(dY, dMod, dX, y, mod, iGate, tpf)
	return d.addCols(dBias, dY)
}

func (d *backBiasCPU) ModulateLayerNormBackBias(dX, dMod, dBias, dH, ln, x, mean, rstd, mod *kernels.Tensor, iShift, iScale, tpf int) bool {
	dLn := d.Alloc(kernels.F32, dH.Shape...)
	defer d.Free(dLn)
	kernels.ModulateLayerNormBack(d.Device, dX, dMod, dH, dLn, ln, x, mean, rstd, mod, iShift, iScale, tpf)
	return d.addCols(dBias, dX)
}

// tinyLayers is tinyTrainingPass's number of blocks.
const tinyLayers = 3

// tinyTrainingPass returns a function that runs one forward and backward of a tinyLayers-block tiny
// DiT (weights from randomize(m, wseed), inputs and output gradient from seed) on a device and
// returns the output, the input gradient and, with grads, every parameter's gradient.
func tinyTrainingPass(seed, wseed int64) func(dev kernels.Device, grads bool) (out, dx, g []float32) {
	cfg, _ := Preset("tiny")
	cfg.InDim, cfg.OutDim, cfg.Layers = 4, 4, tinyLayers
	B, F, H, W, L := 1, 2, 4, 4, 3
	C := cfg.InDim
	rng := rand.New(rand.NewSource(seed))
	xv, tv := randn(rng, B*C*F*H*W, 1), randTimesteps(rng, B*F)
	cv, gv := randn(rng, B*L*cfg.TextDim, 1), randn(rng, B*C*F*H*W, 1)
	run := func(dev kernels.Device, grads bool) (out, dx, g []float32) {
		m := New(dev, cfg, grads)
		randomize(m, wseed)
		p := m.NewPass(Shape{B: B, F: F, H: H, W: W, L: L})
		out = host(dev, m.Forward(p, devT(dev, xv, B, C, F, H, W), devT(dev, tv, B, F), devT(dev, cv, B, L, cfg.TextDim)))
		dx = host(dev, m.Backward(p, devT(dev, gv, B, C, F, H, W)))
		if grads {
			g = host(dev, m.G)
		}
		return out, dx, g
	}
	return run
}

// TestBackBiasWiring: on a device whose norm and gate backwards take the next Linear's bias
// gradient (kernels.BackBiaser: q, k, cross q, cross k, ffn.2, both output projections), the
// training pass computes the same output, input gradient and parameter gradients, bit for bit, as
// the plain CPU pass (each bias counted once: its LinearBack gets no dB); a frozen network's
// backward takes none.
func TestBackBiasWiring(t *testing.T) {
	run := tinyTrainingPass(12, 6)
	o0, dx0, g0 := run(kernels.CPU(), true)
	fd := &backBiasCPU{Device: kernels.CPU()}
	o1, dx1, g1 := run(fd, true)
	sameBits(t, "output", o0, o1)
	sameBits(t, "dx", dx0, dx1)
	sameBits(t, "parameter gradients", g0, g1)
	if want := 7 * tinyLayers; fd.took != want {
		t.Errorf("took %d biases, want %d (7 a block)", fd.took, want)
	}
	_, fdx0, _ := run(kernels.CPU(), false)
	ff := &backBiasCPU{Device: kernels.CPU()}
	_, fdx1, _ := run(ff, false)
	sameBits(t, "frozen dx", fdx0, fdx1)
	if ff.took != 0 {
		t.Errorf("frozen: took %d biases, want 0", ff.took)
	}
}

// batchCPU is backBiasCPU with the batched Linears of kernels.LinearBatcher (as kernels/cuda has
// them): each runs the plain ops in order, counting the batches, the bias gradients it got, and the
// batches whose weights, outputs (gradients) and parameter gradients are not at one stride.
type batchCPU struct {
	backBiasCPU
	fwd, back, biases, uneven int
}

func (d *batchCPU) BatchesLinears() bool { return true }

func (d *batchCPU) strided(ts ...[]*kernels.Tensor) {
	for _, s := range ts {
		if _, ok := kernels.BatchStride(s); !ok && !kernels.AllNil(s) {
			d.uneven++
		}
	}
}

func (d *batchCPU) LinearBatched(outs []*kernels.Tensor, in *kernels.Tensor, ws, bs []*kernels.Tensor) bool {
	d.fwd++
	d.strided(outs, ws, bs)
	for i := range outs {
		d.Linear(outs[i], in, ws[i], bs[i])
	}
	return true
}

func (d *batchCPU) LinearBatchedBack(dIn *kernels.Tensor, dWs, dBs, dOuts []*kernels.Tensor, in *kernels.Tensor, ws []*kernels.Tensor) bool {
	d.back++
	d.strided(dOuts, ws, dWs)
	for i := range dOuts {
		var dW *kernels.Tensor
		if dWs != nil {
			dW = dWs[i]
		}
		if dBs[i] != nil {
			d.biases++
		}
		d.LinearBack(dIn, dW, dBs[i], dOuts[i], in, ws[i])
	}
	return true
}

// TestBatchedLinearWiring: on a device that batches Linears (kernels.LinearBatcher) the block's
// q, k, v and cross k, v go to it, their weights, outputs and gradients each at one stride (the
// parameter table, the pass's buffers), and it gets all five bias gradients (the norm backwards no
// longer take q's, k's and cross k's: 4 of BackBiaser's 7 a block); the results equal the plain
// CPU pass's bit for bit. A frozen network's backward passes no weight or bias gradient.
func TestBatchedLinearWiring(t *testing.T) {
	run := tinyTrainingPass(13, 7)
	o0, dx0, g0 := run(kernels.CPU(), true)
	fd := &batchCPU{backBiasCPU: backBiasCPU{Device: kernels.CPU()}}
	o1, dx1, g1 := run(fd, true)
	sameBits(t, "output", o0, o1)
	sameBits(t, "dx", dx0, dx1)
	sameBits(t, "parameter gradients", g0, g1)
	n := tinyLayers
	if fd.fwd != 2*n || fd.back != 2*n || fd.biases != 5*n || fd.took != 4*n || fd.uneven != 0 {
		t.Errorf("batched forwards %d, backwards %d, bias gradients %d, BackBiaser's %d, not at one stride %d: want %d, %d, %d, %d, 0",
			fd.fwd, fd.back, fd.biases, fd.took, fd.uneven, 2*n, 2*n, 5*n, 4*n)
	}
	_, fdx0, _ := run(kernels.CPU(), false)
	ff := &batchCPU{backBiasCPU: backBiasCPU{Device: kernels.CPU()}}
	_, fdx1, _ := run(ff, false)
	sameBits(t, "frozen dx", fdx0, fdx1)
	if ff.biases != 0 || ff.took != 0 || ff.back != n { // the context's path (cross k, v) only carries parameter gradients
		t.Errorf("frozen: %d batched backwards, %d bias gradients, BackBiaser's %d: want %d, 0, 0", ff.back, ff.biases, ff.took, n)
	}
}
