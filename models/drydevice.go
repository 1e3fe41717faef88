package models

// DryDevice: memory accounting without memory. A kernels.Device that runs no arithmetic and holds
// no storage: Alloc hands out address ranges (so views, reshapes and the models' bookkeeping work
// as on a GPU), every op is a no-op, reductions return 0. It counts the bytes the CUDA device
// (kernels/cuda, GEMMs in bf16 mode as trainer.UseGPUDefaults sets them) would hold:
//
//   - every Alloc, at its dtype's size, labelled by who allocated it (the innermost caller in
//     objectives/trainer/cmd and the innermost one in models, from the stack);
//   - the bf16 copy of each marked weight matrix a GEMM reads (2 bytes an element, kept);
//   - the persistent bf16 copy of each fp32 activation that LayerNorm, RMSNorm, Modulate, GELU,
//     SiLU, RoPE and Attention write, and that Attention/AttentionBack and LinearBack read (q, k, v,
//     out, dOut): 2 bytes an element per distinct address, grown to the largest use, freed with the
//     tensor (kernels/cuda/shadows.go);
//   - the op scratch (one buffer, grown to at least twice its size when an op needs more): GEMM
//     operand conversions and the attention backward's row sums.
//
// Where kernels/cuda keeps a copy that no LinearBack with both GEMMs reads (GELUBack's of dIn for a
// frozen network's input gradient, [B·N, ffn]; LinearBack's of dOut when it takes dB with one GEMM,
// the time and text MLPs' first layers), this device counts that GEMM's conversion in the op scratch
// instead.
//
// Not counted: the CUDA context (≈ 0.5 GiB), cuBLASLt's 32 MiB workspace, allocator rounding and
// fragmentation. So a dry run of a training step at full size on the CPU says what the step needs on
// the card, item by item, in seconds (bench train --dry).

import (
	"fmt"
	"runtime"
	"sort"
	"strings"

	"github.com/fewstep/fewstep/kernels"
)

// DryDevice is the counting device; NewDryDevice makes one.
type DryDevice struct {
	next     uintptr
	allocs   map[uintptr]*dryAlloc // by base address
	inUse    int64
	peak     int64
	byLabel  map[string]int64 // bytes in use per label
	atPeak   map[string]int64 // byLabel at the peak
	weights  [][2]uintptr     // marked regions [lo, hi)
	wShadow  map[uintptr]int  // weight bf16 copies: address → elements
	aShadow  map[uintptr]int  // activation bf16 copies: address → elements
	scrCap   int64
	scrLabel string

	// FP32GEMM: count a device whose GEMMs run in fp32 (no bf16 weight copies; trainer keeps a
	// frozen teacher's fp32 weights then). The default counts bf16 GEMM mode.
	FP32GEMM bool
}

// GEMMReadsBF16 reports the GEMM mode counted (trainer: a frozen teacher's weights in bf16 only).
func (d *DryDevice) GEMMReadsBF16() bool { return !d.FP32GEMM }

// GELUPreBF16 counts the bf16 GELU pre-activation and gradient kernels/cuda's fused GEMM epilogues
// keep (kernels.GELUPreBF16er) in bf16 GEMM mode.
func (d *DryDevice) GELUPreBF16() bool { return !d.FP32GEMM }

type dryAlloc struct {
	bytes int64
	label string
}

// NewDryDevice returns an empty counting device.
func NewDryDevice() *DryDevice {
	return &DryDevice{next: 1 << 20, allocs: map[uintptr]*dryAlloc{}, byLabel: map[string]int64{},
		wShadow: map[uintptr]int{}, aShadow: map[uintptr]int{}, scrLabel: "op scratch (GEMM operand conversions, attention backward)"}
}

// InUse is the bytes held now; Peak the most held at once since NewDryDevice or ResetPeak.
func (d *DryDevice) InUse() int64 { return d.inUse }
func (d *DryDevice) Peak() int64  { return d.peak }

// ResetPeak starts a new peak from the bytes in use now.
func (d *DryDevice) ResetPeak() {
	d.peak = d.inUse
	d.atPeak = copyLabels(d.byLabel)
}

// Labels returns the bytes per label at the peak (now: false) or now (true), largest first.
func (d *DryDevice) Labels(now bool) []DryItem {
	m := d.atPeak
	if now || m == nil {
		m = d.byLabel
	}
	var items []DryItem
	for k, v := range m {
		if v != 0 {
			items = append(items, DryItem{k, v})
		}
	}
	sort.Slice(items, func(i, j int) bool {
		if items[i].Bytes != items[j].Bytes {
			return items[i].Bytes > items[j].Bytes
		}
		return items[i].Label < items[j].Label
	})
	return items
}

// DryItem is one label's bytes.
type DryItem struct {
	Label string
	Bytes int64
}

func copyLabels(m map[string]int64) map[string]int64 {
	c := make(map[string]int64, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

func (d *DryDevice) add(label string, b int64) {
	d.inUse += b
	d.byLabel[label] += b
	if d.inUse > d.peak {
		d.peak = d.inUse
		d.atPeak = copyLabels(d.byLabel)
	}
}

// callerLabel names an allocation by its innermost caller in objectives, trainer or cmd and its
// innermost one in models (outside this file).
func callerLabel() string {
	pcs := make([]uintptr, 32)
	n := runtime.Callers(3, pcs)
	frames := runtime.CallersFrames(pcs[:n])
	var owner, model string
	for {
		f, more := frames.Next()
		name := f.Function
		if i := strings.LastIndex(name, "/"); i >= 0 {
			name = name[i+1:]
		}
		switch {
		case strings.HasPrefix(name, "models.") && !strings.Contains(f.File, "drydevice.go"):
			if model == "" {
				model = name
			}
		case strings.HasPrefix(name, "objectives.") || strings.HasPrefix(name, "trainer.") || strings.HasPrefix(name, "main."):
			if owner == "" {
				owner = name
			}
		}
		if !more || owner != "" {
			break
		}
	}
	switch {
	case owner == "":
		return model
	case model == "":
		return owner
	}
	return owner + " → " + model
}

func (d *DryDevice) Name() string { return "dry" }

func (d *DryDevice) Alloc(dt kernels.DType, shape ...int) *kernels.Tensor {
	t := &kernels.Tensor{Dev: d, DType: dt, Shape: append([]int(nil), shape...)}
	b := int64(t.Numel() * dt.Size())
	if b == 0 {
		return t
	}
	t.Ptr = d.next
	d.next += uintptr((b + 511) &^ 255) // a gap: no two allocations touch
	a := &dryAlloc{bytes: b, label: callerLabel()}
	d.allocs[t.Ptr] = a
	d.add(a.label, b)
	return t
}

func (d *DryDevice) Free(t *kernels.Tensor) {
	if t == nil || t.Ptr == 0 {
		return
	}
	a, ok := d.allocs[t.Ptr]
	if !ok {
		panic(fmt.Sprintf("models: dry device: Free of %v, not an allocation", t))
	}
	lo, hi := t.Ptr, t.Ptr+uintptr(a.bytes)
	for p, n := range d.aShadow {
		if p >= lo && p < hi {
			d.add(shadowLabel(a.label), -2*int64(n))
			delete(d.aShadow, p)
		}
	}
	for p, n := range d.wShadow {
		if p >= lo && p < hi {
			d.add("bf16 weight copies", -2*int64(n))
			delete(d.wShadow, p)
		}
	}
	d.add(a.label, -a.bytes)
	delete(d.allocs, t.Ptr)
	t.Ptr = 0
}

// MarkWeights marks t as weights (as on the CUDA device: GEMMs read a kept bf16 copy).
func (d *DryDevice) MarkWeights(t *kernels.Tensor) {
	d.weights = append(d.weights, [2]uintptr{t.Ptr, t.Ptr + uintptr(t.Numel()*t.DType.Size())})
}

func (d *DryDevice) isWeight(t *kernels.Tensor) bool {
	for _, r := range d.weights {
		if t.Ptr >= r[0] && t.Ptr < r[1] {
			return true
		}
	}
	return false
}

func (d *DryDevice) owner(p uintptr) *dryAlloc {
	var best *dryAlloc
	var bp uintptr
	for b, a := range d.allocs {
		if b <= p && p < b+uintptr(a.bytes) && (best == nil || b > bp) {
			best, bp = a, b
		}
	}
	return best
}

func shadowLabel(l string) string { return "bf16 copies of " + l }

// actShadow keeps a persistent bf16 copy of fp32 activation t (shadowBuf).
func (d *DryDevice) actShadow(ts ...*kernels.Tensor) {
	for _, t := range ts {
		if t == nil || t.DType != kernels.F32 || t.Ptr == 0 || d.isWeight(t) {
			continue
		}
		n := t.Numel()
		old, ok := d.aShadow[t.Ptr]
		if ok && old >= n {
			continue
		}
		a := d.owner(t.Ptr)
		label := "bf16 copies of ?"
		if a != nil {
			label = shadowLabel(a.label)
		}
		if ok {
			d.add(label, -2*int64(old))
		}
		d.aShadow[t.Ptr] = n
		d.add(label, 2*int64(n))
	}
}

// gemm counts a bf16 GEMM's operands: kept copies of weights, scratch for the others.
func (d *DryDevice) gemm(a, b *kernels.Tensor) {
	var scr int64
	for _, t := range []*kernels.Tensor{a, b} {
		switch {
		case t.DType == kernels.BF16:
		case d.isWeight(t):
			if n := t.Numel(); d.wShadow[t.Ptr] != n {
				d.add("bf16 weight copies", 2*int64(n-d.wShadow[t.Ptr]))
				d.wShadow[t.Ptr] = n
			}
		default:
			scr += 2 * int64(t.Numel())
		}
	}
	d.reserve(scr + 512)
}

// reserve grows the op scratch as kernels/cuda does (to the need, at least doubling).
func (d *DryDevice) reserve(b int64) {
	b = (b + 255) &^ 255
	if b <= d.scrCap {
		return
	}
	need := max(b, 2*d.scrCap)
	d.add(d.scrLabel, need-d.scrCap)
	d.scrCap = need
}

func (d *DryDevice) FromHost(dst *kernels.Tensor, src []float32) {}
func (d *DryDevice) ToHost(dst []float32, src *kernels.Tensor)   { clear(dst) }
func (d *DryDevice) Copy(dst, src *kernels.Tensor)               {}
func (d *DryDevice) Zero(t *kernels.Tensor)                      {}
func (d *DryDevice) Fill(t *kernels.Tensor, v float32)           {}
func (d *DryDevice) Sync() error                                 { return nil }

func (d *DryDevice) Linear(out, in, w, b *kernels.Tensor) { d.gemm(w, in) }
func (d *DryDevice) LinearBack(dIn, dW, dB, dOut, in, w *kernels.Tensor) {
	if dIn != nil && dW != nil {
		d.actShadow(dOut)
	}
	if dIn != nil {
		d.gemm(w, dOut)
	}
	if dW != nil {
		d.gemm(in, dOut)
	}
}

func (d *DryDevice) LayerNorm(out, mean, rstd, in, w, b *kernels.Tensor, eps float32) {
	d.actShadow(out)
}
func (d *DryDevice) LayerNormBack(dIn, dW, dB, dOut, in, mean, rstd, w *kernels.Tensor) {}
func (d *DryDevice) RMSNorm(out, rstd, in, w *kernels.Tensor, eps float32)              { d.actShadow(out) }
func (d *DryDevice) RMSNormBack(dIn, dW, dOut, in, rstd, w *kernels.Tensor)             {}
func (d *DryDevice) Modulate(out, x, mod *kernels.Tensor, iShift, iScale, tpf int)      { d.actShadow(out) }
func (d *DryDevice) ModulateBack(dX, dMod, dOut, x, mod *kernels.Tensor, iShift, iScale, tpf int) {
}
func (d *DryDevice) GateAdd(x, y, mod *kernels.Tensor, iGate, tpf int)                {}
func (d *DryDevice) GateAddBack(dY, dMod, dX, y, mod *kernels.Tensor, iGate, tpf int) {}
func (d *DryDevice) GELU(out, in *kernels.Tensor)                                     { d.actShadow(out) }
func (d *DryDevice) GELUBack(dIn, dOut, in *kernels.Tensor)                           {}
func (d *DryDevice) SiLU(out, in *kernels.Tensor)                                     { d.actShadow(out) }
func (d *DryDevice) SiLUBack(dIn, dOut, in *kernels.Tensor)                           {}
func (d *DryDevice) RoPE(x *kernels.Tensor, frames, rows, cols, frame0 int)           { d.actShadow(x) }
func (d *DryDevice) RoPEBack(dx *kernels.Tensor, frames, rows, cols, frame0 int)      {}

func fusedHd(q *kernels.Tensor) bool { hd := q.Shape[len(q.Shape)-1]; return hd == 64 || hd == 128 }

// Attention and AttentionBack keep bf16 copies of their fp32 operands (bf16 ones are read as they are).
func (d *DryDevice) Attention(out, lse, q, k, v *kernels.Tensor, chunkTokens, qOffset int) {
	if fusedHd(q) {
		d.actShadow(q, k, v, out)
	}
}
func (d *DryDevice) AttentionBack(dQ, dK, dV, dOut, out, lse, q, k, v *kernels.Tensor, chunkTokens, qOffset int) {
	if fusedHd(q) {
		d.actShadow(q, k, v, out, dOut)
	}
	B, Nq, H := q.Shape[0], q.Shape[1], q.Shape[2]
	d.reserve(int64(4*B*H*Nq + 512))
}

func (d *DryDevice) Patchify(out, x *kernels.Tensor, B, C, F, H, W int)          {}
func (d *DryDevice) PatchifyBack(dX, dOut *kernels.Tensor, B, C, F, H, W int)    {}
func (d *DryDevice) Unpatchify(out, in *kernels.Tensor, B, C, F, H, W int)       {}
func (d *DryDevice) UnpatchifyBack(dIn, dOut *kernels.Tensor, B, C, F, H, W int) {}
func (d *DryDevice) Sinusoid(out, t *kernels.Tensor, half int)                   {}
func (d *DryDevice) AddBroadcast(out, a, b *kernels.Tensor)                      {}
func (d *DryDevice) AddBroadcastBack(dA, dB, dOut *kernels.Tensor)               {}
func (d *DryDevice) MeanTokens(out, in *kernels.Tensor)                          {}
func (d *DryDevice) MeanTokensBack(dIn, dOut *kernels.Tensor)                    {}
func (d *DryDevice) Add(out, a, b *kernels.Tensor)                               {}
func (d *DryDevice) Axpy(y *kernels.Tensor, alpha float32, x *kernels.Tensor)    {}
func (d *DryDevice) Scale(x *kernels.Tensor, alpha float32)                      {}
func (d *DryDevice) Combine(out, x, y *kernels.Tensor, a, b []float32)           {}
func (d *DryDevice) CombineFrames(out, x, y *kernels.Tensor, a, b []float32, B, C, F, HW int) {
}

// RandnPhilox draws nothing: a dry run computes no values.
func (d *DryDevice) RandnPhilox(t *kernels.Tensor, keys []uint64, counter uint64) {}

func (d *DryDevice) Dot(a, b *kernels.Tensor) float64  { return 0 }
func (d *DryDevice) SumSquares(acc, x *kernels.Tensor) {}
func (d *DryDevice) SumAbsGroups(dst []float64, x *kernels.Tensor) {
	clear(dst)
	d.reserve(int64(8*len(dst) + 256))
}
func (d *DryDevice) AdamW(w, g, m, v *kernels.Tensor, lr, beta1, beta2, eps, wd float32, step int) {}
func (d *DryDevice) EMA(ema, w *kernels.Tensor, decay float32)                                     {}
func (d *DryDevice) StepGate(gate, acc *kernels.Tensor, mask uint32, roles, deferred int, clip float64, hostOK bool) {
}
func (d *DryDevice) AdamWGated(w, g, m, v, gate *kernels.Tensor, role int, lr, beta1, beta2, eps, wd float32) {
}
func (d *DryDevice) EMAGated(ema, w, gate *kernels.Tensor, decay float32) {}

// ReadAsync: zeros, as the reductions (the gate reads ok = 0: a dry step updates nothing, as no
// op runs anyway). The CUDA device's pinned buffer is a few hundred bytes, not counted.
func (d *DryDevice) ReadAsync(src *kernels.Tensor) kernels.Readback { return dryReadback{} }

type dryReadback struct{}

func (dryReadback) Wait(dst []float32) error { clear(dst); return nil }

var _ kernels.Device = (*DryDevice)(nil)
