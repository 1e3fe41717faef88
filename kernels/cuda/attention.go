package cuda

import (
	"math"
	"os"

	"github.com/fewstep/fewstep/kernels"
)

// The fused FlashAttention-2 kernels of attention.cu behind Device.Attention and AttentionBack
// (ops.go calls them through FusedAttention). They take head_dim 64 or 128 with q, k, v, out, dOut
// in bf16 or fp32 storage (gradients fp32, or bf16 with bf16 inputs) on 16-byte aligned tensors;
// anything else returns false and ops.go runs the reference kernels of refattn.cu.

func init() {
	FusedAttention.Fwd = attentionFwd
	FusedAttention.Back = attentionBack
}

// Launch shapes of attention.cu (FWD and BWD instantiations). Forward: 8 warps on 128 query rows
// (16 per warp) over double-buffered 64-key tiles, or, for hd 128 in bf16, 8 warps on 256 rows (32 per
// warp) over 32-key tiles: faster on large grids (292 vs 269 TFLOP/s at 32,760 tokens, H200) but
// coarser, so slower where few blocks carry unequal block-causal work; hd 64 in bf16: 4 warps on 128
// rows (32 per warp), 64-key tiles. On Hopper (compute capability 9.0) hd 128 in bf16 goes to the
// FA3-style wgmma kernel instead (below; 613 vs 295 TFLOP/s at 32,760 tokens, H200, ATTENTION_NOTES v6).
// Backward: 8 warps on 128 keys per block over double-buffered 64-query tiles.
type attnFwdCfg struct {
	name                string
	threads, rows, keys int
	smemBytes           int // fixed shared memory (the sm_90a kernel); 0: from rows and keys
}

// The Hopper forward (attention.cu attn_fwd_hd128_bf16_sm90, FA3-style: wgmma, warp-specialized,
// 128-byte swizzled K/V ring of attnSm90Stages stages) for hd 128 bf16 on compute capability 9.0.
// Its shared memory: 1 KB of alignment slack, Q and the K, V stages (32 KB each), the mbarriers.
const (
	attnSm90Name   = "attn_fwd_hd128_bf16_sm90"
	attnSm90Stages = 2
	attnSm90Smem   = 1024 + 32768*(1+2*attnSm90Stages) + 8*(1+4*attnSm90Stages)
)

// attnForceFA2: FEWSTEP_ATTN=fa2 keeps the mma.sync (FA2-class) forward and backward on Hopper too,
// for A/B runs; FEWSTEP_ATTN_BWD=fa2 keeps only the backward's.
var (
	attnForceFA2    = os.Getenv("FEWSTEP_ATTN") == "fa2"
	attnBwdForceFA2 = attnForceFA2 || os.Getenv("FEWSTEP_ATTN_BWD") == "fa2"
)

// The Hopper backward (attention.cu attn_bwd_hd128_bf16_g*_sm90, FA3-style: wgmma, warp-specialized,
// one block of 384 threads per 128-key tile, 64-query tiles through a 2-stage ring; ATTENTION_NOTES
// v7, v8) for hd 128 with bf16 storage on compute capability 9.0. Its shared memory: 1 KB of alignment
// slack, K, V (32 KB each), Q, dO, dSᵀ (2 × 16 KB each), the dQ staging (2 × 64 rows of 288 bytes),
// lse and D (2 × 512 B), 5 mbarriers. Its dQ goes through an fp32 scratch of ⌈Nq/64⌉ tiles of
// 64 × 128 per (b, h), in the kernel's register order, that attn_dq_finish_sm90 adds into dQ.
const (
	attnBwdSm90Smem  = 1024 + 5*32768 + 2*attnBwdSm90Tile*288 + 2*512 + 8*5
	attnBwdSm90Tile  = 64
	attnBwdSm90Finis = "attn_dq_finish_sm90"
)

// attnBwdSm90Direct: the sm_90a backward for split key tiles (attnBwdSplit > 1: cross-attention,
// fp32 gradients), which adds dQ straight into dQ (red.global.add.v4 from staged rows): no scratch,
// memset or finishing pass, a large share of so short a backward (ATTENTION_NOTES v8: 0.18 against
// 0.23 ms at 4,680 queries × 512 keys).
const attnBwdSm90Direct = "attn_bwd_hd128_bf16_gf32_sm90_rq"

var attnBwdSm90Names = map[kernels.DType]string{
	kernels.F32: "attn_bwd_hd128_bf16_gf32_sm90", kernels.BF16: "attn_bwd_hd128_bf16_gbf16_sm90",
}

// attnBwdSm90 reports whether the backward of this case goes to the sm_90a kernel.
func (d *Device) attnBwdSm90(hd int, dt, g kernels.DType) (string, bool) {
	name, ok := attnBwdSm90Names[g]
	if !ok || hd != 128 || dt != kernels.BF16 || d.cc != 90 || attnBwdForceFA2 || d.smem < attnBwdSm90Smem {
		return "", false
	}
	return name, true
}

const (
	attnBwdThreads = 256
	attnBwdKeys    = 128
)

func (c attnFwdCfg) smem(hd int) int {
	if c.smemBytes > 0 {
		return c.smemBytes
	}
	return (c.rows + 4*c.keys) * (hd + 8) * 2
}

// attnFwdPick chooses the forward kernel for a case the fused path takes.
func (d *Device) attnFwdPick(B, Nq, H, hd int, dt kernels.DType, chunkTokens int) (attnFwdCfg, bool) {
	name, ok := attnFwdNames[[2]int{hd, int(dt)}]
	if !ok {
		return attnFwdCfg{}, false
	}
	if hd == 128 && dt == kernels.BF16 && d.cc == 90 && !attnForceFA2 && d.smem >= attnSm90Smem {
		return attnFwdCfg{attnSm90Name, 384, 128, 128, attnSm90Smem}, true
	}
	if hd == 128 && dt == kernels.BF16 && (chunkTokens == 0 || (Nq+255)/256*H*B >= 4*d.sms) {
		return attnFwdCfg{"attn_fwd_hd128_bf16_r256", 256, 256, 32, 0}, true
	}
	if hd == 64 && dt == kernels.BF16 { // 4 warps × 32 rows
		return attnFwdCfg{name, 128, 128, 64, 0}, true
	}
	return attnFwdCfg{name, 256, 128, 64, 0}, true
}

func attnBwdSmem(hd int) int { return (2*128*(hd+8)+4*64*(hd+8)+128*72)*2 + 4*64*4 }

// Kernel names by head dim, storage dtype and gradient dtype (no formatting in the hot path).
var (
	attnFwdNames = map[[2]int]string{
		{128, int(kernels.BF16)}: "attn_fwd_hd128_bf16", {128, int(kernels.F32)}: "attn_fwd_hd128_f32",
		{64, int(kernels.BF16)}: "attn_fwd_hd64_bf16", {64, int(kernels.F32)}: "attn_fwd_hd64_f32",
	}
	attnBwdNames = map[[3]int]string{
		{128, int(kernels.BF16), int(kernels.F32)}:  "attn_bwd_hd128_bf16_gf32",
		{128, int(kernels.BF16), int(kernels.BF16)}: "attn_bwd_hd128_bf16_gbf16",
		{128, int(kernels.F32), int(kernels.F32)}:   "attn_bwd_hd128_f32_gf32",
		{64, int(kernels.BF16), int(kernels.F32)}:   "attn_bwd_hd64_bf16_gf32",
		{64, int(kernels.BF16), int(kernels.BF16)}:  "attn_bwd_hd64_bf16_gbf16",
		{64, int(kernels.F32), int(kernels.F32)}:    "attn_bwd_hd64_f32_gf32",
	}
	attnPrepNames = map[kernels.DType]string{kernels.BF16: "attn_bwd_prep_bf16", kernels.F32: "attn_bwd_prep_f32"}
)

// attnFits: the fused kernels take this case (shape already checked by attnDims).
func (d *Device) attnFits(B, Nq, Nk, H, hd int, ts ...*kernels.Tensor) bool {
	if hd != 64 && hd != 128 || Nk == 0 || d.smem < attnBwdSmem(hd) {
		return false
	}
	if B > 65535 || H > 65535 || Nq > math.MaxInt32/2 || Nk > math.MaxInt32/2 { // grid.y/z; int32 sizes
		return false
	}
	for _, t := range ts {
		if t != nil && t.Ptr%16 != 0 {
			return false
		}
	}
	return true
}

// attentionFwd runs the fused forward: out [B,Nq,H,hd], lse [B,H,Nq] fp32. False: not taken.
func attentionFwd(d *Device, out, lse, q, k, v *kernels.Tensor, chunkTokens, qOffset int) bool {
	B, Nq, H, hd := q.Shape[0], q.Shape[1], q.Shape[2], q.Shape[3]
	Nk := k.Shape[1]
	cfg, ok := d.attnFwdPick(B, Nq, H, hd, q.DType, chunkTokens)
	if !ok || out.DType != q.DType || lse.DType != kernels.F32 || !d.attnFits(B, Nq, Nk, H, hd, out, q, k, v) {
		return false
	}
	if !d.enter() {
		d.leave()
		return true // an earlier error stands; the op is skipped like every other
	}
	defer d.leave()
	scale := float32(1 / math.Sqrt(float64(hd)))
	d.Args().Ptr(q.Ptr).Ptr(k.Ptr).Ptr(v.Ptr).Ptr(out.Ptr).Ptr(lse.Ptr).I32(Nq).I32(Nk).I32(H).I32(chunkTokens).I32(qOffset).F32(scale)
	d.Launch(cfg.name, [3]int{(Nq + cfg.rows - 1) / cfg.rows, H, B}, [3]int{cfg.threads, 1, 1}, cfg.smem(hd))
	return true
}

// attentionBack runs the fused backward, accumulating into dQ, dK, dV (nil ones skipped). Scratch:
// D = rowsum(dOut∘out) [B,H,Nq] fp32, and an fp32 dQ accumulator when dQ is not fp32 (always on the
// sm_90a kernel, in its tiled layout).
func attentionBack(d *Device, dQ, dK, dV, dOut, out, lse, q, k, v *kernels.Tensor, chunkTokens, qOffset int) bool {
	B, Nq, H, hd := q.Shape[0], q.Shape[1], q.Shape[2], q.Shape[3]
	Nk := k.Shape[1]
	var g *kernels.Tensor
	for _, t := range []*kernels.Tensor{dQ, dK, dV} {
		if t != nil {
			if g != nil && t.DType != g.DType {
				return false
			}
			g = t
		}
	}
	if g == nil {
		return true // no gradient wanted
	}
	name, ok := attnBwdNames[[3]int{hd, int(q.DType), int(g.DType)}]
	if !ok || dOut.DType != q.DType || out.DType != q.DType || lse.DType != kernels.F32 ||
		!d.attnFits(B, Nq, Nk, H, hd, dQ, dK, dV, dOut, out, q, k, v) {
		return false
	}
	if !d.enter() {
		d.leave()
		return true
	}
	defer d.leave()
	nD, nQ := 4*B*H*Nq, 0
	if dQ != nil && dQ.DType != kernels.F32 {
		nQ = 4 * dQ.Numel()
	}
	ntk := (Nk + attnBwdKeys - 1) / attnBwdKeys
	qsplit := d.attnBwdSplit(ntk*H*B, Nq, g.DType)
	sm90Name, sm90 := d.attnBwdSm90(hd, q.DType, g.DType)
	direct := sm90 && qsplit > 1 // split: fp32 gradients, dQ added straight into dQ
	if direct {
		sm90Name = attnBwdSm90Direct
	} else if sm90 {
		nQ = 0
		if dQ != nil { // the kernel's dQ scratch: ⌈Nq/64⌉ tiles of 64 × 128 fp32 per (b, h)
			nQ = 4 * B * H * ((Nq + attnBwdSm90Tile - 1) / attnBwdSm90Tile) * attnBwdSm90Tile * hd
		}
	}
	d.reserve(nD + nQ + 512)
	D := d.scratch(nD)
	if D == 0 {
		return true
	}
	rows := B * Nq * H
	d.Args().Ptr(D).Ptr(dOut.Ptr).Ptr(out.Ptr).I32(B).I32(Nq).I32(H).I32(hd)
	d.Launch(attnPrepNames[q.DType], [3]int{(rows*32 + 255) / 256, 1, 1}, [3]int{256, 1, 1}, 0)
	dQacc := ptrOf(dQ)
	if nQ > 0 {
		if dQacc = d.scratch(nQ); dQacc == 0 {
			return true
		}
		d.fail(d.drv.call("cuMemsetD32Async(attention dQ accumulator)", d.drv.cuMemsetD32Async, dQacc, 0, uintptr(nQ/4), d.stream))
	}
	scale := float32(1 / math.Sqrt(float64(hd)))
	grid, qarg := [3]int{ntk * qsplit, H, B}, qsplit
	if sm90 && qsplit == 1 {
		if R, s := d.attnBwdTail(ntk*H*B, (Nq+attnBwdSm90Tile-1)/attnBwdSm90Tile); s > 1 {
			grid = [3]int{ntk*H*B + R*(s-1), 1, 1} // 1-D: the whole units, then the last R units in s blocks each
			qarg = -(R<<8 | s)                     // the kernel's qsplit < 0: the tail split
		}
	}
	d.Args().Ptr(ptrOf(dK)).Ptr(ptrOf(dV)).Ptr(dQacc).Ptr(dOut.Ptr).Ptr(lse.Ptr).Ptr(D).Ptr(q.Ptr).Ptr(k.Ptr).Ptr(v.Ptr).
		I32(Nq).I32(Nk).I32(H).I32(chunkTokens).I32(qOffset).F32(scale).I32(qarg)
	if sm90 {
		d.Launch(sm90Name, grid, [3]int{384, 1, 1}, attnBwdSm90Smem)
		if dQ != nil && !direct {
			n := dQ.Numel()
			d.Args().Ptr(dQ.Ptr).I32(int(dQ.DType)).Ptr(dQacc).I32(Nq).I32(H).I64(n)
			d.Launch(attnBwdSm90Finis, [3]int{d.grid1(n), 1, 1}, [3]int{256, 1, 1}, 0)
		}
		return true
	}
	d.Launch(name, [3]int{ntk * qsplit, H, B}, [3]int{attnBwdThreads, 1, 1}, attnBwdSmem(hd))
	if nQ > 0 {
		n := dQ.Numel()
		d.Args().Ptr(dQ.Ptr).I32(int(dQ.DType)).Ptr(dQacc).I64(n)
		d.Launch("attn_add_f32_into", [3]int{d.grid1(n), 1, 1}, [3]int{256, 1, 1}, 0)
	}
	return true
}

// attnBwdNoTail: FEWSTEP_ATTN_TAIL=0 launches the sm_90a backward without the tail split (A/B runs).
var attnBwdNoTail = os.Getenv("FEWSTEP_ATTN_TAIL") == "0"

// attnBwdTail splits the last wave of the sm_90a backward: its blocks (one per key tile, units of
// them, all about as long when there is no mask) run one per SM, so units%SMs blocks make the last
// wave while the other SMs idle: 3,072 units (32,760 tokens, 12 heads) on 132 SMs are 23.3 waves
// run as 24, 444 units (4,680 tokens) 3.4 as 4. The last R = units%SMs units go in s blocks each
// (s·R <= SMs), each block a run of about nqt/s of the query tiles, dK and dV added by atomics
// (attention.cu attn_bwd_sm90_body, qsplit < 0): 24 → 23.33 and 4 → 3.5 waves. s = 1: no split (no
// remainder, more than half a wave, fewer than 8 query tiles, or FEWSTEP_ATTN_TAIL=0).
func (d *Device) attnBwdTail(units, nqt int) (R, s int) {
	if attnBwdNoTail || d.sms <= 0 {
		return 0, 1
	}
	R = units % d.sms
	if R == 0 {
		return 0, 1
	}
	s = min(d.sms/R, nqt/4, 255) // at least 4 query tiles a block; s fits the kernel's 8 bits
	if s < 2 {
		return 0, 1
	}
	return R, s
}

// attnBwdNoSplit: FEWSTEP_ATTN_SPLIT=0 keeps one backward block per key tile (A/B runs).
var attnBwdNoSplit = os.Getenv("FEWSTEP_ATTN_SPLIT") == "0"

// attnBwdSplit is the number of blocks per key tile of the backward: 1, or, when the key tiles give
// fewer than two blocks per SM (cross-attention: 512 keys × 12 heads = 48 blocks) and the gradients
// are fp32 (the split blocks add dK, dV with atomics), enough to fill about four waves, each block
// keeping at least 4 of the 64-query tiles. Wan-1.3B's cross-attention backward at 4,680 queries:
// 48 → 528 blocks.
func (d *Device) attnBwdSplit(blocks, Nq int, g kernels.DType) int {
	if attnBwdNoSplit || g != kernels.F32 || blocks >= 2*d.sms {
		return 1
	}
	s := min((4*d.sms+blocks-1)/blocks, (Nq+63)/64/4)
	return max(s, 1)
}
