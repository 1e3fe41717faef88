package cuda

import (
	"strconv"
	"unsafe"

	"github.com/fewstep/fewstep/kernels"
)

// Column sums folded into the row kernels of the backward (issue 14; kernels/cuda/NOTES.md v14).
// LayerNormBack's weight and bias gradients, the modulation's shift and scale gradients of
// ModulateLayerNormBack, RMSNormBack's (and RMSNormRoPEBack's) weight gradient and GateAddBack's gate
// gradient are column sums over the rows of the tensors that the row kernel reads anyway; a
// separate colreduce read them a second time (two [N, D] fp32 reads each). Here the row kernel's
// block takes several rows, each thread sums its own columns in registers, and the block adds its
// partial sums into the gradient with 16-byte atomics (red.global.add.v4.f32) when its rows or the
// segment (a frame of the modulation) end. fp32 gradients with 16-byte aligned rows only; anything
// else takes the plain kernel and colreduce. FEWSTEP_COLFUSE=0 turns it off (A/B timings; with
// FEWSTEP_FUSE=0 it is off too), FEWSTEP_COLFUSE=n sets the blocks per SM of the row kernels.
//
// The same kernels also sum the gradient they write (kernels.BackBiaser): RMSNormBack's dIn is the
// dOut of the q (k, cross q) projection's LinearBack, GateAddBack's dY that of ffn.2 and the self-
// attention's output projection, ModulateLayerNormBack's dX that of the cross-attention's output
// projection; its bias gradient (Σ dOut over the rows) and the bf16 copy of dOut that the
// LinearBack's GEMMs read come from the producer's registers instead of another read of dOut
// (colreduce_f32x4 with the copy). FEWSTEP_COLFUSE_BIAS=0 turns this part off alone.

// colFuseDefault is the blocks per SM of the summing row kernels: at 4,680 rows of 1,536 columns
// on 132 SMs, 9 rows a block, four rows in flight per SM (enough for the bandwidth; each block adds
// its sums once, so fewer blocks are fewer atomics). Fewer where fewer fit on an SM at once
// (sumRows): the blocks' rows are equal, so a second, partial wave would take as long as the first.
const colFuseDefault = 4

// colFuseEnv reads FEWSTEP_COLFUSE: "0" off (0), n > 0 blocks per SM, anything else the default.
func colFuseEnv(v string) int {
	if n, err := strconv.Atoi(v); err == nil && n >= 0 {
		return n
	}
	return colFuseDefault
}

// colSums reports whether the summing kernels are on.
func (d *Device) colSums() bool { return d.fuse && d.vec && d.colFuse > 0 }

// sumDst reports whether t (nil: no sum wanted) takes the summing kernels' atomics at element off:
// fp32 and 16-byte aligned there.
func sumDst(t *kernels.Tensor, off int) bool {
	return t == nil || (t.DType == kernels.F32 && (t.Ptr+uintptr(4*off))%16 == 0)
}

// sumRows returns the rows a block of the summing row kernel name (T threads) takes and the blocks:
// about d.colFuse blocks per SM, no more than fit on the SMs at once, at least 4 rows a block.
func (d *Device) sumRows(name string, T, rows int) (rpb, blocks int) {
	g := max(1, min(d.fitBlocks(name, T)*d.sms, (rows+3)/4))
	rpb = (rows + g - 1) / g
	return rpb, (rows + rpb - 1) / rpb
}

// fitBlocks returns min(d.colFuse, the blocks of kernel name at T threads that fit on an SM at once)
// (cuOccupancyMaxActiveBlocksPerMultiprocessor, once per kernel and size).
func (d *Device) fitBlocks(name string, T int) int {
	key := name + "/" + strconv.Itoa(T)
	if n, ok := d.occ[key]; ok {
		return min(n, d.colFuse)
	}
	f := d.fn(name)
	if f == 0 {
		return d.colFuse
	}
	var n int32
	if err := d.drv.call("cuOccupancyMaxActiveBlocksPerMultiprocessor("+name+")", d.drv.cuOccupancyMaxActiveBlocksPerMultiprocessor,
		uintptr(unsafe.Pointer(&n)), f, uintptr(T), 0); err != nil || n < 1 {
		n = int32(d.colFuse)
	}
	if d.occ == nil {
		d.occ = map[string]int{}
	}
	d.occ[key] = int(n)
	return min(int(n), d.colFuse)
}

// addr is t's address at element off (0 for nil t).
func addr(t *kernels.Tensor, off int) uintptr {
	if t == nil {
		return 0
	}
	return t.Ptr + uintptr(off*t.DType.Size())
}

// biasSums reports whether the summing kernels also take a bias gradient dB of D elements
// (FEWSTEP_COLFUSE_BIAS=0: never).
func (d *Device) biasSums(dB *kernels.Tensor, D int) bool {
	return d.colBias && sumDst(dB, 0) && dB.Numel() == D
}

// biasCopy returns where a summing kernel writes the bf16 copy of the gradient t whose column sums
// go into dB (t's persistent bf16 buffer: the GEMMs of the LinearBack that gets t as dOut read it),
// or 0 (no dB, fp32 GEMMs, a buffer that cannot be made during a capture).
func (d *Device) biasCopy(t, dB *kernels.Tensor) uintptr {
	if dB == nil {
		return 0
	}
	return d.shadowBuf(t)
}

// lnBackSums queues ln_bwd_sums_f32x4: lnBackVec's dIn and, from the same reads, accXh[seg·accStride +
// c] += Σ dOut·x̂ and acc1[seg·accStride + c] += Σ dOut (either address 0: not summed), seg = row /
// segRows; dB (nil: none) += Σ dIn over all rows, sh (0: none) dIn's bf16 copy.
func (d *Device) lnBackSums(T, rows, D int, dIn, dOut, in, mean, rstd, w, mod *kernels.Tensor, iScale, N, F, K, tpf int,
	accXh, acc1 uintptr, accStride, segRows int, dB *kernels.Tensor, sh uintptr) {
	rpb, g := d.sumRows("ln_bwd_sums_f32x4", T, rows)
	d.args.reset().ptr(dIn.Ptr).ptr(dOut.Ptr).ptr(in.Ptr).ptr(mean.Ptr).ptr(rstd.Ptr).ptr(ptrOf(w)).ptr(ptrOf(mod)).
		i32(iScale).i32(N).i32(F).i32(K).i32(tpf).i32(D).ptr(accXh).ptr(acc1).i64(accStride).i32(segRows).
		ptr(ptrOf(dB)).ptr(sh).i32(rows).i32(rpb)
	d.launch("ln_bwd_sums_f32x4", g, 1, 1, T, 1, 1, 0)
}

// rmsBackSums queues rms_bwd_sums_f32x4: rmsBackVec's dIn (and dOut rotated back with the RoPE
// tables) and, from the same reads, dW += Σ dOut·x̂ (nil: none); dB (nil: none) += Σ dIn, sh (0:
// none) dIn's bf16 copy.
func (d *Device) rmsBackSums(T, nrows, D int, dIn, dW, dB *kernels.Tensor, sh uintptr, dOut, in, rstd, w *kernels.Tensor, fresh bool,
	tf, th uintptr, N, hd, rows, cols, frame0 int) {
	rpb, g := d.sumRows("rms_bwd_sums_f32x4", T, nrows)
	d.args.reset().ptr(dIn.Ptr).ptr(dOut.Ptr).ptr(in.Ptr).ptr(rstd.Ptr).ptr(ptrOf(w)).i32(D).i32(btoi(!fresh)).
		ptr(tf).ptr(th).i32(N).i32(hd).i32(rows).i32(cols).i32(frame0).ptr(ptrOf(dW)).ptr(ptrOf(dB)).ptr(sh).i32(nrows).i32(rpb)
	d.launch("rms_bwd_sums_f32x4", g, 1, 1, T, 1, 1, 0)
}

// gateAddBackSums queues gate_add_back_f32x4: dY (+)= dX·gate (fresh: written) and dMod's gate
// slice (nil: none) += Σ_frame dX·y from one read of dX and y (operands checked by the caller:
// vecEW, sumDst); dB (nil: none) += Σ dY, sh (0: none) dY's bf16 copy. Grid as colReduceVec's: 128
// columns a block, about 8 blocks per SM, a segment's rows split evenly.
func (d *Device) gateAddBackSums(dY, dMod, dB *kernels.Tensor, sh uintptr, dX, y, mod *kernels.Tensor, iGate, nseg, tpf, D, K int, fresh bool) {
	gx := (D + 127) / 128
	gy := max(1, min((8*d.sms+gx*nseg-1)/(gx*nseg), (tpf+7)/8))
	rpb := ((tpf+gy-1)/gy + 7) &^ 7
	gy = (tpf + rpb - 1) / rpb
	dyin := dY.Ptr
	if fresh {
		dyin = 0
	}
	d.args.reset().ptr(dY.Ptr).ptr(dyin).ptr(dX.Ptr).ptr(y.Ptr).ptr(mod.Ptr).ptr(ptrOf(dMod)).i32(iGate).i32(K).i64(tpf).i32(D).i32(rpb).
		ptr(ptrOf(dB)).ptr(sh)
	d.launch("gate_add_back_f32x4", gx, gy, nseg, 32, 8, 1, 0)
}

var _ kernels.BackBiaser = (*Device)(nil)

// RMSNormBackBias: RMSNormBack and dB += Σ dIn with dIn's bf16 copy in one pass (kernels.BackBiaser).
func (d *Device) RMSNormBackBias(dIn, dW, dB, dOut, in, rstd, w *kernels.Tensor) bool {
	return d.rmsNormBack(dIn, dW, dB, dOut, in, rstd, w)
}

// RMSNormRoPEBackBias: RMSNormRoPEBack and dB += Σ dIn with dIn's bf16 copy in one pass.
func (d *Device) RMSNormRoPEBackBias(dIn, dW, dB, dOut, in, rstd, w *kernels.Tensor, frames, rows, cols, frame0 int) bool {
	return d.rmsRoPEBack(dIn, dW, dB, dOut, in, rstd, w, frames, rows, cols, frame0)
}

// GateAddBackBias: GateAddBack and dB += Σ dY with dY's bf16 copy in one pass.
func (d *Device) GateAddBackBias(dY, dMod, dB, dX, y, mod *kernels.Tensor, iGate, tpf int) bool {
	return d.gateAddBack(dY, dMod, dB, dX, y, mod, iGate, tpf)
}

// ModulateLayerNormBackBias: ModulateLayerNormBack and dB += Σ dX with dX's bf16 copy in one pass.
func (d *Device) ModulateLayerNormBackBias(dX, dMod, dB, dH, ln, x, mean, rstd, mod *kernels.Tensor, iShift, iScale, tpf int) bool {
	return d.modLnBack(dX, dMod, dB, dH, ln, x, mean, rstd, mod, iShift, iScale, tpf)
}
