package cuda

import (
	"fmt"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fewstep/fewstep/kernels"
)

// Every GPU op is checked against the CPU device's op on fresh random inputs, by the relative L2
// error ‖gpu − cpu‖/‖cpu‖ of every output (docs/architecture.md: fp32 ≲ 1e-5, bf16 storage 1e-3…1e-2,
// NaN never). Outputs are poisoned with NaN before the GPU op so unwritten elements show; gradients
// start from random values on both devices so "accumulate, don't overwrite" is checked. In the bf16
// variant every bf16 input is rounded to bf16 on the host first, so the CPU sees the same values and
// the error measures only the GPU's bf16 storage and bf16 tensor-core products.
// The tests skip when no GPU is usable (the CI machine).

var (
	gpuOnce sync.Once
	gpuDev  *Device
	gpuErr  error
)

func gpu(t testing.TB) *Device {
	gpuOnce.Do(func() { gpuDev, gpuErr = New(0) })
	if gpuErr != nil {
		t.Skipf("no GPU: %v", gpuErr)
	}
	return gpuDev
}

// Tolerances by storage of the case (see the package comment).
const (
	tolF32  = 1e-5
	tolBF16 = 1e-2
)

// kind of a case tensor: input (read), output (poisoned), accumulated gradient (random start, compared),
// in place (random, compared), or special inputs.
type kind int

const (
	in     kind = iota // randn
	out                // NaN-poisoned output, compared
	acc                // random start, compared (backward +=)
	inout              // random, modified in place, compared
	pos                // uniform (0.05, 1]: variances
	tsteps             // uniform [0, 1000]: timesteps
	saved              // output of a forward that the case's backward reads: compared too
)

type spec struct {
	name  string
	shape []int
	k     kind
	f32   bool // stays fp32 in the bf16 variant (saved statistics, LSE, optimizer state)
}

type opCase struct {
	name  string
	ts    []spec
	run   func(d kernels.Device, t map[string]*kernels.Tensor)
	tolBF float64 // 0: tolBF16
	tolF  float64 // 0: tolF32
	noBF  bool    // fp32 only
}

func S(name string, k kind, shape ...int) spec { return spec{name: name, shape: shape, k: k} }
func SF(name string, k kind, shape ...int) spec {
	return spec{name: name, shape: shape, k: k, f32: true}
}

func seedRand(t *testing.T) *rand.Rand {
	s := time.Now().UnixNano()
	t.Logf("seed %d", s)
	return rand.New(rand.NewSource(s))
}

func relErr(got, want []float32) float64 {
	var num, den float64
	for i := range want {
		g, w := float64(got[i]), float64(want[i])
		if math.IsNaN(g) || math.IsInf(g, 0) {
			return math.Inf(1)
		}
		num += (g - w) * (g - w)
		den += w * w
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

func roundBF16(v []float32) {
	for i := range v {
		v[i] = BF16ToF32(F32ToBF16(v[i]))
	}
}

// runCase runs c on the CPU and the GPU with dtype dt for the non-f32 tensors and compares.
func runCase(t *testing.T, g *Device, c opCase, dt kernels.DType) {
	g.ResetError()
	r := seedRand(t)
	cpu := kernels.NewCPU(2)
	host := map[string][]float32{}
	tc, tg := map[string]*kernels.Tensor{}, map[string]*kernels.Tensor{}
	for _, s := range c.ts {
		n := kernels.Numel(s.shape)
		v := make([]float32, n)
		for i := range v {
			switch s.k {
			case pos:
				v[i] = 0.05 + 0.95*r.Float32()
			case tsteps:
				v[i] = 1000 * r.Float32()
			default:
				v[i] = float32(r.NormFloat64())
			}
		}
		sdt := dt
		if s.f32 {
			sdt = kernels.F32
		}
		if sdt == kernels.BF16 {
			roundBF16(v)
		}
		host[s.name] = v
		a := cpu.Alloc(kernels.F32, s.shape...)
		cpu.FromHost(a, v)
		tc[s.name] = a
		b := g.Alloc(sdt, s.shape...)
		if s.k == out || s.k == saved {
			g.Fill(b, float32(math.NaN()))
		} else {
			g.FromHost(b, v)
		}
		tg[s.name] = b
	}
	c.run(cpu, tc)
	c.run(g, tg)
	if err := g.Sync(); err != nil {
		t.Fatalf("%s: %v", c.name, err)
	}
	tol := tolF32
	if c.tolF > 0 {
		tol = c.tolF
	}
	if dt == kernels.BF16 {
		tol = tolBF16
		if c.tolBF > 0 {
			tol = c.tolBF
		}
	}
	for _, s := range c.ts {
		if s.k == in || s.k == pos || s.k == tsteps {
			continue
		}
		want := make([]float32, tc[s.name].Numel())
		cpu.ToHost(want, tc[s.name])
		got := make([]float32, len(want))
		g.ToHost(got, tg[s.name])
		e := relErr(got, want)
		if !(e <= tol) {
			t.Errorf("%s [%s] %s %v: rel error %.3g > %.1g", c.name, dt, s.name, s.shape, e, tol)
		} else {
			t.Logf("%s [%s] %s: rel error %.3g (tol %.0e)", c.name, dt, s.name, e, tol)
		}
	}
	for _, x := range tg {
		g.Free(x)
	}
}

func cases() []opCase {
	const B, N, D, F = 2, 24, 96, 3 // 8 tokens per frame
	const tpf = N / F
	var cs []opCase
	for _, bias := range []bool{false, true} {
		name := "Linear"
		if bias {
			name += "+bias"
		}
		cs = append(cs, opCase{name: name,
			ts: []spec{S("x", in, 37, 72), S("w", in, 40, 72), S("b", in, 40), S("y", out, 37, 40),
				S("dy", in, 37, 40), S("dx", acc, 37, 72), S("dw", acc, 40, 72), S("db", acc, 40)},
			run: func(d kernels.Device, t map[string]*kernels.Tensor) {
				var b, db *kernels.Tensor
				if bias {
					b, db = t["b"], t["db"]
				}
				d.Linear(t["y"], t["x"], t["w"], b)
				d.LinearBack(t["dx"], t["dw"], db, t["dy"], t["x"], t["w"])
			}})
	}
	for _, affine := range []bool{false, true} {
		name := "LayerNorm"
		if affine {
			name += "+affine"
		}
		cs = append(cs, opCase{name: name,
			ts: []spec{S("x", in, B*N, D), S("w", in, D), S("b", in, D), S("y", out, B*N, D), SF("mean", saved, B*N), SF("rstd", saved, B*N),
				S("dy", in, B*N, D), S("dx", acc, B*N, D), S("dw", acc, D), S("db", acc, D)},
			run: func(d kernels.Device, t map[string]*kernels.Tensor) {
				var w, b, dw, db *kernels.Tensor
				if affine {
					w, b, dw, db = t["w"], t["b"], t["dw"], t["db"]
				}
				d.LayerNorm(t["y"], t["mean"], t["rstd"], t["x"], w, b, 1e-6)
				d.LayerNormBack(t["dx"], dw, db, t["dy"], t["x"], t["mean"], t["rstd"], w)
			}})
	}
	for _, W := range []int{3000, 9000} { // block per row: row in registers, and re-read
		cs = append(cs, opCase{name: fmt.Sprintf("LayerNorm+RMSNorm D=%d", W),
			ts: []spec{S("x", in, 3, W), S("w", in, W), S("b", in, W), S("y", out, 3, W), SF("mean", saved, 3), SF("rstd", saved, 3),
				S("z", out, 3, W), SF("rstd2", saved, 3)},
			run: func(d kernels.Device, t map[string]*kernels.Tensor) {
				d.LayerNorm(t["y"], t["mean"], t["rstd"], t["x"], t["w"], t["b"], 1e-6)
				d.RMSNorm(t["z"], t["rstd2"], t["x"], t["w"], 1e-6)
			}})
	}
	cs = append(cs, opCase{name: "RMSNorm",
		ts: []spec{S("x", in, B*N, D), S("w", in, D), S("y", out, B*N, D), SF("rstd", saved, B*N),
			S("dy", in, B*N, D), S("dx", acc, B*N, D), S("dw", acc, D)},
		run: func(d kernels.Device, t map[string]*kernels.Tensor) {
			d.RMSNorm(t["y"], t["rstd"], t["x"], t["w"], 1e-6)
			d.RMSNormBack(t["dx"], t["dw"], t["dy"], t["x"], t["rstd"], t["w"])
		}})
	cs = append(cs, opCase{name: "Modulate",
		ts: []spec{S("x", in, B, N, D), S("mod", in, B, F, 6, D), S("y", out, B, N, D),
			S("dy", in, B, N, D), S("dx", acc, B, N, D), S("dmod", acc, B, F, 6, D)},
		run: func(d kernels.Device, t map[string]*kernels.Tensor) {
			d.Modulate(t["y"], t["x"], t["mod"], 3, 4, tpf)
			d.ModulateBack(t["dx"], t["dmod"], t["dy"], t["x"], t["mod"], 3, 4, tpf)
		}})
	cs = append(cs, opCase{name: "GateAdd",
		ts: []spec{S("x", inout, B, N, D), S("y", in, B, N, D), S("mod", in, B, F, 6, D),
			S("dx", in, B, N, D), S("dy", acc, B, N, D), S("dmod", acc, B, F, 6, D)},
		run: func(d kernels.Device, t map[string]*kernels.Tensor) {
			d.GateAdd(t["x"], t["y"], t["mod"], 5, tpf)
			d.GateAddBack(t["dy"], t["dmod"], t["dx"], t["y"], t["mod"], 5, tpf)
		}})
	// Fused ops (kernels/fused.go): the GPU's one-pass kernels against the CPU's plain ops.
	cs = append(cs, opCase{name: "GateAddTo",
		ts: []spec{S("x", in, B, N, D), S("y", in, B, N, D), S("mod", in, B, F, 6, D), S("out", out, B, N, D)},
		run: func(d kernels.Device, t map[string]*kernels.Tensor) {
			kernels.GateAddTo(d, t["out"], t["x"], t["y"], t["mod"], 2, tpf)
		}})
	for _, hd := range []int{128, 12} { // 12: 2 frame pairs, 2 row pairs, 2 column pairs
		const H, fr, rows, cols = 3, 3, 4, 5
		cs = append(cs, opCase{name: fmt.Sprintf("RMSNormRoPE hd=%d", hd),
			ts: []spec{S("x", in, 2*fr*rows*cols, H*hd), S("w", in, H*hd), S("y", out, 2, fr*rows*cols, H, hd), SF("rstd", saved, 2*fr*rows*cols)},
			run: func(d kernels.Device, t map[string]*kernels.Tensor) {
				kernels.RMSNormRoPE(d, t["y"], t["rstd"], t["x"], t["w"], 1e-6, fr, rows, cols, 7)
			}})
	}
	for _, hd := range []int{128, 12} {
		const H, fr, rows, cols = 2, 3, 4, 5
		R, Dm := 2*fr*rows*cols, H*hd
		cs = append(cs, opCase{name: fmt.Sprintf("RMSNormRoPEBack hd=%d", hd),
			ts: []spec{S("x", in, R, Dm), S("w", in, Dm), S("y", out, 2, fr*rows*cols, H, hd), SF("rstd", saved, R),
				S("dy", inout, 2, fr*rows*cols, H, hd), S("dx", out, R, Dm), S("dw", acc, Dm),
				S("dy2", inout, 2, fr*rows*cols, H, hd), S("dx2", acc, R, Dm)},
			run: func(d kernels.Device, t map[string]*kernels.Tensor) {
				kernels.RMSNormRoPE(d, t["y"], t["rstd"], t["x"], t["w"], 1e-6, fr, rows, cols, 5)
				kernels.ZeroLazy(d, t["dx"]) // written (fresh)
				kernels.RMSNormRoPEBack(d, t["dx"], t["dw"], t["dy"], t["x"], t["rstd"], t["w"], fr, rows, cols, 5)
				kernels.RMSNormRoPEBack(d, t["dx2"], nil, t["dy2"], t["x"], t["rstd"], t["w"], fr, rows, cols, 5) // accumulated
			}})
	}
	cs = append(cs, opCase{name: "ModulateLayerNormBack",
		ts: []spec{S("x", in, B, N, D), S("ln", saved, B, N, D), SF("mean", saved, B*N), SF("rstd", saved, B*N), S("mod", in, B, F, 6, D),
			S("dh", in, B, N, D), S("dln", in, B, N, D), S("dx", acc, B, N, D), S("dmod", acc, B, F, 6, D)},
		run: func(d kernels.Device, t map[string]*kernels.Tensor) {
			d.LayerNorm(t["ln"], t["mean"], t["rstd"], t["x"], nil, nil, 1e-6)
			kernels.ModulateLayerNormBack(d, t["dx"], t["dmod"], t["dh"], t["dln"], t["ln"], t["x"], t["mean"], t["rstd"], t["mod"], 3, 4, tpf)
		}})
	cs = append(cs, opCase{name: "LinearResidual",
		ts: []spec{S("x", in, 37, 72), S("w", in, 40, 72), S("b", in, 40), S("r", in, 37, 40), S("tmp", in, 37, 40), S("y", out, 37, 40)},
		run: func(d kernels.Device, t map[string]*kernels.Tensor) {
			kernels.LinearResidual(d, t["y"], t["tmp"], t["x"], t["w"], t["b"], t["r"])
		}})
	// ZeroLazy folded into the next op (LinearBack's dIn, GELUBack, GateAddBack; NaN-poisoned
	// outputs: an op that added to them instead of writing shows), and flushed before one that
	// does not take it (Axpy).
	cs = append(cs, opCase{name: "ZeroLazy",
		ts: []spec{S("x", in, 37, 72), S("w", in, 40, 72), S("dy", in, 37, 40), S("dx", out, 37, 72), S("dw", acc, 40, 72),
			S("g", in, 5, 332), S("gx", in, 5, 332), S("dg", out, 5, 332),
			S("gy", in, B, N, D), S("mod", in, B, F, 6, D), S("gd", in, B, N, D), S("dgy", out, B, N, D), S("dmod", acc, B, F, 6, D),
			S("z", out, 1000), S("a", in, 1000), S("rx", out, B, N, D), SF("rrs", pos, B*N)},
		run: func(d kernels.Device, t map[string]*kernels.Tensor) {
			kernels.ZeroLazy(d, t["dx"])
			d.LinearBack(t["dx"], t["dw"], nil, t["dy"], t["x"], t["w"])
			kernels.ZeroLazy(d, t["dg"])
			d.GELUBack(t["dg"], t["g"], t["gx"])
			kernels.ZeroLazy(d, t["dgy"])
			d.GateAddBack(t["dgy"], t["dmod"], t["gd"], t["gy"], t["mod"], 5, tpf)
			kernels.ZeroLazy(d, t["z"])
			d.Axpy(t["z"], 0.5, t["a"])
			kernels.ZeroLazy(d, t["rx"])
			d.RMSNormBack(t["rx"], nil, t["gd"], t["gy"], t["rrs"], nil)
		}})
	for _, a := range []string{"GELU", "SiLU", "GELU4"} { // GELU4: the fp32 float4 path (n % 4 == 0)
		cols := map[string]int{"GELU4": 332}[a]
		if cols == 0 {
			cols = 333
		}
		cs = append(cs, opCase{name: a,
			ts: []spec{S("x", in, 5, cols), S("y", out, 5, cols), S("dy", in, 5, cols), S("dx", acc, 5, cols)},
			run: func(d kernels.Device, t map[string]*kernels.Tensor) {
				if a != "SiLU" {
					d.GELU(t["y"], t["x"])
					d.GELUBack(t["dx"], t["dy"], t["x"])
				} else {
					d.SiLU(t["y"], t["x"])
					d.SiLUBack(t["dx"], t["dy"], t["x"])
				}
			}})
	}
	for _, hd := range []int{128, 12} {
		cs = append(cs, opCase{name: fmt.Sprintf("RoPE hd=%d", hd),
			ts: []spec{S("x", inout, 2, 3*4*5, 3, hd), S("g", inout, 2, 3*4*5, 3, hd)},
			run: func(d kernels.Device, t map[string]*kernels.Tensor) {
				d.RoPE(t["x"], 3, 4, 5, 7)
				d.RoPEBack(t["g"], 3, 4, 5, 7)
			}})
	}
	cs = append(cs, opCase{name: "Patchify",
		ts: []spec{S("x", in, 2, 5, 3, 6, 4), S("p", out, 2, 3*3*2, 20), S("dp", in, 2, 3*3*2, 20), S("dx", acc, 2, 5, 3, 6, 4),
			S("u", out, 2, 5, 3, 6, 4), S("du", acc, 2, 3*3*2, 20)},
		run: func(d kernels.Device, t map[string]*kernels.Tensor) {
			d.Patchify(t["p"], t["x"], 2, 5, 3, 6, 4)
			d.PatchifyBack(t["dx"], t["dp"], 2, 5, 3, 6, 4)
			d.Unpatchify(t["u"], t["dp"], 2, 5, 3, 6, 4)
			d.UnpatchifyBack(t["du"], t["x"], 2, 5, 3, 6, 4)
		}})
	cs = append(cs, opCase{name: "Sinusoid", noBF: true,
		ts:  []spec{S("t", tsteps, 2, 5), S("y", out, 10, 256)},
		run: func(d kernels.Device, t map[string]*kernels.Tensor) { d.Sinusoid(t["y"], t["t"], 128) }})
	// Column reductions over many rows (colreduce_f32x4 in fp32: several 128-column blocks with a
	// partial last one, rows split into blocks of 64 with a short last block, the four-row steps and
	// their tail; the fused bias/shift sums of LayerNormBack and ModulateBack).
	{
		const M, W, K = 2003, 4100, 8
		cs = append(cs, opCase{name: "column reductions, tall",
			ts: []spec{S("x", in, M, K), S("w", in, W, K), S("b", in, W), S("y", out, M, W),
				S("dy", in, M, W), S("dx", acc, M, K), S("dw", acc, W, K), S("db", acc, W),
				S("lw", in, W), S("lb", in, W), S("ly", out, M, W), SF("mean", saved, M), SF("rstd", saved, M),
				S("ldy", in, M, W), S("ldx", acc, M, W), S("ldw", acc, W), S("ldb", acc, W),
				S("mx", in, 1, M-1, W), S("mod", in, 1, 2, 6, W), S("my", out, 1, M-1, W), S("mdy", in, 1, M-1, W),
				S("mdx", acc, 1, M-1, W), S("dmod", acc, 1, 2, 6, W)},
			run: func(d kernels.Device, t map[string]*kernels.Tensor) {
				d.Linear(t["y"], t["x"], t["w"], t["b"])
				d.LinearBack(t["dx"], t["dw"], t["db"], t["dy"], t["x"], t["w"])
				d.LayerNorm(t["ly"], t["mean"], t["rstd"], t["dy"], t["lw"], t["lb"], 1e-6)
				d.LayerNormBack(t["ldx"], t["ldw"], t["ldb"], t["ldy"], t["dy"], t["mean"], t["rstd"], t["lw"])
				d.Modulate(t["my"], t["mx"], t["mod"], 0, 1, (M-1)/2)
				d.ModulateBack(t["mdx"], t["dmod"], t["mdy"], t["mx"], t["mod"], 0, 1, (M-1)/2)
			}})
	}
	cs = append(cs, opCase{name: "AddBroadcast",
		ts: []spec{S("a", in, 6, D), S("b", in, B*F, 6, D), S("y", out, B*F, 6, D), S("dy", in, B*F, 6, D), S("da", acc, 6, D), S("db", acc, B*F, 6, D)},
		run: func(d kernels.Device, t map[string]*kernels.Tensor) {
			d.AddBroadcast(t["y"], t["a"], t["b"])
			d.AddBroadcastBack(t["da"], t["db"], t["dy"])
		}})
	cs = append(cs, opCase{name: "MeanTokens",
		ts: []spec{S("x", in, B, 77, D), S("y", out, B, D), S("dy", in, B, D), S("dx", acc, B, 77, D)},
		run: func(d kernels.Device, t map[string]*kernels.Tensor) {
			d.MeanTokens(t["y"], t["x"])
			d.MeanTokensBack(t["dx"], t["dy"])
		}})
	cs = append(cs, opCase{name: "Elementwise",
		ts: []spec{S("a", in, 1000), S("b", in, 1000), S("y", out, 1000), S("z", inout, 1000), S("s", inout, 1000)},
		run: func(d kernels.Device, t map[string]*kernels.Tensor) {
			d.Add(t["y"], t["a"], t["b"])
			d.Axpy(t["z"], -0.7, t["a"])
			d.Scale(t["s"], 1.3)
		}})
	for _, G := range []int{4, 100} {
		cs = append(cs, opCase{name: fmt.Sprintf("Combine G=%d", G),
			ts: []spec{S("x", in, G*30), S("y", in, G*30), S("o", out, G*30)},
			run: func(d kernels.Device, t map[string]*kernels.Tensor) {
				a, b := make([]float32, G), make([]float32, G)
				for i := range a {
					a[i], b[i] = float32(i)/7-1, 0.5-float32(i%5)/3
				}
				d.Combine(t["o"], t["x"], t["y"], a, b)
			}})
	}
	for _, Bc := range []int{2, 40} {
		cs = append(cs, opCase{name: fmt.Sprintf("CombineFrames B=%d", Bc),
			ts: []spec{S("x", in, Bc, 3, 2, 10), S("y", in, Bc, 3, 2, 10), S("o", out, Bc, 3, 2, 10)},
			run: func(d kernels.Device, t map[string]*kernels.Tensor) {
				a, b := make([]float32, Bc*2), make([]float32, Bc*2)
				for i := range a {
					a[i], b[i] = float32(i)/9-1, 0.3-float32(i%3)/4
				}
				d.CombineFrames(t["o"], t["x"], t["y"], a, b, Bc, 3, 2, 10)
			}})
	}
	cs = append(cs, opCase{name: "AdamW+EMA", noBF: true,
		ts: []spec{S("w", inout, 999), S("g", in, 999), S("m", inout, 999), S("v", pos, 999), S("vv", inout, 999), S("e", inout, 999)},
		run: func(d kernels.Device, t map[string]*kernels.Tensor) {
			d.Copy(t["vv"], t["v"])
			d.AdamW(t["w"], t["g"], t["m"], t["vv"], 1e-3, 0.9, 0.999, 1e-8, 0.01, 3)
			d.EMA(t["e"], t["w"], 0.95)
		}})
	// AdamW on views 5 elements into their buffers (the float4 path's scalar head, body and tail;
	// the buffers' first 5 and last 4 elements must stay as they were).
	cs = append(cs, opCase{name: "AdamW views", noBF: true,
		ts: []spec{S("w", inout, 1010), S("g", in, 1010), S("m", inout, 1010), S("v", pos, 1010), S("vv", inout, 1010)},
		run: func(d kernels.Device, t map[string]*kernels.Tensor) {
			d.Copy(t["vv"], t["v"])
			at := func(k string) *kernels.Tensor { return t[k].View(5, 1001) }
			d.AdamW(at("w"), at("g"), at("m"), at("vv"), 1e-3, 0.9, 0.999, 1e-8, 0.01, 2)
		}})
	// Attention: full, cross (Nk ≠ Nq), block-causal, block-causal with a KV-cache offset.
	type ac struct {
		name             string
		B, Nq, Nk, H, hd int
		chunk, off       int
	}
	for _, a := range []ac{
		{"full hd=128", 2, 70, 70, 2, 128, 0, 0},
		{"cross hd=64", 1, 50, 33, 3, 64, 0, 0},
		{"causal hd=128", 1, 96, 96, 2, 128, 32, 0},
		{"cache hd=64", 2, 40, 120, 2, 64, 40, 80},
		{"odd hd=18", 1, 30, 45, 2, 18, 15, 15},
	} {
		for _, ref := range []bool{true, false} {
			n := "Attention " + a.name
			if ref {
				n += " (reference)"
			}
			cs = append(cs, opCase{name: n, tolF: map[bool]float64{true: 1e-5, false: 1e-2}[ref],
				ts: []spec{S("q", in, a.B, a.Nq, a.H, a.hd), S("k", in, a.B, a.Nk, a.H, a.hd), S("v", in, a.B, a.Nk, a.H, a.hd),
					S("o", saved, a.B, a.Nq, a.H, a.hd), SF("lse", saved, a.B, a.H, a.Nq), S("do", in, a.B, a.Nq, a.H, a.hd),
					S("dq", acc, a.B, a.Nq, a.H, a.hd), S("dk", acc, a.B, a.Nk, a.H, a.hd), S("dv", acc, a.B, a.Nk, a.H, a.hd)},
				run: func(d kernels.Device, t map[string]*kernels.Tensor) {
					if g, ok := d.(*Device); ok {
						g.refAttn = ref
						defer func() { g.refAttn = false }()
					}
					d.Attention(t["o"], t["lse"], t["q"], t["k"], t["v"], a.chunk, a.off)
					d.AttentionBack(t["dq"], t["dk"], t["dv"], t["do"], t["o"], t["lse"], t["q"], t["k"], t["v"], a.chunk, a.off)
				}})
		}
	}
	return cs
}

func TestOpsAgainstCPU(t *testing.T) {
	g := gpu(t)
	t.Logf("device: %s", g.Info)
	for _, c := range cases() {
		for _, dt := range []kernels.DType{kernels.F32, kernels.BF16} {
			if dt == kernels.BF16 && c.noBF {
				continue
			}
			t.Run(c.name+"/"+dt.String(), func(t *testing.T) { runCase(t, g, c, dt) })
		}
	}
}

// Mixed storage: fp32 activations with bf16 weights (the bf16 shadow path), with a bf16 bias too
// (the fp32 epilogue reads its fp32 copy), and TF32.
func TestLinearMixedAndTF32(t *testing.T) {
	g := gpu(t)
	r := seedRand(t)
	cpu := kernels.NewCPU(2)
	M, K, N := 300, 256, 192
	x, w, b := randn(r, M*K), randn(r, N*K), randn(r, N)
	roundBF16(w)
	roundBF16(b)
	want := make([]float32, M*N)
	{
		X, W, Bt, Y := cpu.Alloc(kernels.F32, M, K), cpu.Alloc(kernels.F32, N, K), cpu.Alloc(kernels.F32, N), cpu.Alloc(kernels.F32, M, N)
		cpu.FromHost(X, x)
		cpu.FromHost(W, w)
		cpu.FromHost(Bt, b)
		cpu.Linear(Y, X, W, Bt)
		cpu.ToHost(want, Y)
	}
	for _, mode := range []string{"bf16 weights", "bf16 weights and bias", "tf32", "bf16 shadows"} {
		bdt, wdt := kernels.F32, kernels.F32
		if strings.HasPrefix(mode, "bf16 weights") {
			wdt = kernels.BF16
		}
		if mode == "bf16 weights and bias" {
			bdt = kernels.BF16
		}
		X, Bt, Y := g.Alloc(kernels.F32, M, K), g.Alloc(bdt, N), g.Alloc(kernels.F32, M, N)
		W := g.Alloc(wdt, N, K)
		g.FromHost(X, x)
		g.FromHost(W, w)
		g.FromHost(Bt, b)
		g.Fill(Y, float32(math.NaN()))
		g.GEMM = map[string]GEMMMode{"tf32": GEMMTF32, "bf16 shadows": GEMMBF16}[mode]
		g.Linear(Y, X, W, Bt)
		g.GEMM = GEMMExact
		got := make([]float32, M*N)
		g.ToHost(got, Y)
		if err := g.Sync(); err != nil {
			t.Fatal(err)
		}
		e := relErr(got, want)
		if !(e < 1e-2) {
			t.Errorf("Linear %s: rel error %.3g > 1e-2", mode, e)
		}
		t.Logf("Linear %s: rel error %.3g", mode, e)
		for _, x := range []*kernels.Tensor{X, Bt, Y, W} {
			g.Free(x)
		}
	}
}

// colSumCases: the backward ops whose column sums colsums.go folds into the row kernels, on tall
// tensors: several rows a block (2,082 and 1,200 rows: 4 and 5 a block on 132 SMs), frames of 347
// rows that blocks straddle (the per-frame modulation and gate sums), 130 float4s a row over 64
// threads (a partial last float4 slot), gradients that accumulate (random start) and one written
// after ZeroLazy; the bias gradients of kernels.BackBiaser (against the CPU's plain op and its
// LinearBack's dB), and the bf16 copies they leave for the LinearBack's GEMMs in bf16-GEMM mode.
func colSumCases() []opCase {
	const B, F, tpf, D = 2, 3, 347, 520
	const N = F * tpf
	const fr, rows, cols, H, hd = 5, 10, 12, 2, 128
	const T = fr * rows * cols
	return []opCase{{name: "column sums, LayerNorm and modulation",
		ts: []spec{S("x", in, B, N, D), S("w", in, D), S("b", in, D), S("y", out, B, N, D), SF("mean", saved, B*N), SF("rstd", saved, B*N),
			S("dy", in, B, N, D), S("dx", acc, B, N, D), S("dw", acc, D), S("db", acc, D), S("dx1", acc, B, N, D), S("dw1", acc, D),
			S("ln", saved, B, N, D), S("mod", in, B, F, 6, D), S("dh", in, B, N, D), S("dln", in, B, N, D), S("mdx", acc, B, N, D), S("dmod", acc, B, F, 6, D)},
		run: func(d kernels.Device, t map[string]*kernels.Tensor) {
			d.LayerNorm(t["y"], t["mean"], t["rstd"], t["x"], t["w"], t["b"], 1e-6)
			d.LayerNormBack(t["dx"], t["dw"], t["db"], t["dy"], t["x"], t["mean"], t["rstd"], t["w"])
			d.LayerNormBack(t["dx1"], t["dw1"], nil, t["dy"], t["x"], t["mean"], t["rstd"], nil) // weight gradient only, no affine
			d.LayerNorm(t["ln"], t["mean"], t["rstd"], t["x"], nil, nil, 1e-6)
			kernels.ModulateLayerNormBack(d, t["mdx"], t["dmod"], t["dh"], t["dln"], t["ln"], t["x"], t["mean"], t["rstd"], t["mod"], 3, 4, tpf)
		}}, {name: "column sums, RMSNorm and gate",
		ts: []spec{S("x", in, B*N, D), S("w", in, D), S("y", out, B*N, D), SF("rstd", saved, B*N),
			S("dy", in, B*N, D), S("dx", acc, B*N, D), S("dw", acc, D), S("dx0", out, B*N, D), S("dw0", acc, D),
			S("gy", in, B, N, D), S("mod", in, B, F, 6, D), S("gd", in, B, N, D), S("dgy", acc, B, N, D), S("dgy0", out, B, N, D), S("dmod", acc, B, F, 6, D)},
		run: func(d kernels.Device, t map[string]*kernels.Tensor) {
			d.RMSNorm(t["y"], t["rstd"], t["x"], t["w"], 1e-6)
			d.RMSNormBack(t["dx"], t["dw"], t["dy"], t["x"], t["rstd"], t["w"])
			kernels.ZeroLazy(d, t["dx0"]) // written (fresh)
			d.RMSNormBack(t["dx0"], t["dw0"], t["dy"], t["x"], t["rstd"], t["w"])
			d.GateAddBack(t["dgy"], t["dmod"], t["gd"], t["gy"], t["mod"], 5, tpf)
			kernels.ZeroLazy(d, t["dgy0"]) // written (fresh)
			d.GateAddBack(t["dgy0"], t["dmod"], t["gd"], t["gy"], t["mod"], 2, tpf)
		}}, {name: "column sums, RMSNormRoPEBack",
		ts: []spec{S("x", in, 2*T, H*hd), S("w", in, H*hd), S("y", out, 2, T, H, hd), SF("rstd", saved, 2*T),
			S("dy", inout, 2, T, H, hd), S("dx", out, 2*T, H*hd), S("dw", acc, H*hd),
			S("dy2", inout, 2, T, H, hd), S("dx2", acc, 2*T, H*hd), S("dw2", acc, H*hd), S("db2", acc, H*hd), S("lin", in, 2*T, 1), S("lw", in, H*hd, 1)},
		run: func(d kernels.Device, t map[string]*kernels.Tensor) {
			kernels.RMSNormRoPE(d, t["y"], t["rstd"], t["x"], t["w"], 1e-6, fr, rows, cols, 3)
			kernels.ZeroLazy(d, t["dx"])
			kernels.RMSNormRoPEBack(d, t["dx"], t["dw"], t["dy"], t["x"], t["rstd"], t["w"], fr, rows, cols, 3)
			if !kernels.RMSNormRoPEBackBias(d, t["dx2"], t["dw2"], t["db2"], t["dy2"], t["x"], t["rstd"], t["w"], fr, rows, cols, 3) {
				d.LinearBack(nil, nil, t["db2"], t["dx2"], t["lin"], t["lw"]) // the bias as the model's LinearBack would take it
			}
		}}, {name: "column sums, biases",
		ts: []spec{S("x", in, B*N, D), S("w", in, D), S("y", out, B*N, D), SF("rstd", saved, B*N), S("lin", in, B*N, 1), S("lw", in, D, 1),
			S("dy", in, B*N, D), S("dx", out, B*N, D), S("dw", acc, D), S("db", acc, D),
			S("gy", in, B, N, D), S("mod", in, B, F, 6, D), S("gd", in, B, N, D), S("dgy", acc, B, N, D), S("dmod", acc, B, F, 6, D), S("gdb", acc, D),
			S("mx", in, B, N, D), S("ln", saved, B, N, D), SF("mean", saved, B*N), SF("rstd2", saved, B*N),
			S("dh", in, B, N, D), S("dln", in, B, N, D), S("mdx", acc, B, N, D), S("mdb", acc, D)},
		run: func(d kernels.Device, t map[string]*kernels.Tensor) {
			bias := func(took bool, db, g *kernels.Tensor) { // the bias as the model's LinearBack would take it
				if !took {
					d.LinearBack(nil, nil, db, g.Reshape(B*N, D), t["lin"], t["lw"])
				}
			}
			d.RMSNorm(t["y"], t["rstd"], t["x"], t["w"], 1e-6)
			kernels.ZeroLazy(d, t["dx"]) // written (fresh)
			bias(kernels.RMSNormBackBias(d, t["dx"], t["dw"], t["db"], t["dy"], t["x"], t["rstd"], t["w"]), t["db"], t["dx"])
			bias(kernels.GateAddBackBias(d, t["dgy"], t["dmod"], t["gdb"], t["gd"], t["gy"], t["mod"], 5, tpf), t["gdb"], t["dgy"])
			d.LayerNorm(t["ln"], t["mean"], t["rstd2"], t["mx"], nil, nil, 1e-6)
			bias(kernels.ModulateLayerNormBackBias(d, t["mdx"], nil, t["mdb"], t["dh"], t["dln"], t["ln"], t["mx"], t["mean"], t["rstd2"], t["mod"], 0, 1, tpf),
				t["mdb"], t["mdx"])
		}}, {name: "column sums, bias copies read by bf16 GEMMs", tolF: tolBF16,
		ts: []spec{S("x", in, B*N, D), S("w", in, D), S("y", out, B*N, D), SF("rstd", saved, B*N),
			S("dy", in, B*N, D), S("dx", out, B*N, D), S("dw", acc, D), S("db", acc, D),
			S("gy", in, B, N, D), S("mod", in, B, F, 6, D), S("gd", in, B, N, D), S("dgy", out, B, N, D), S("dmod", acc, B, F, 6, D), S("gdb", acc, D),
			S("mx", in, B, N, D), S("ln", saved, B, N, D), SF("mean", saved, B*N), SF("rstd2", saved, B*N),
			S("dh", in, B, N, D), S("dln", in, B, N, D), S("mdx", acc, B, N, D), S("mdb", acc, D),
			S("lx", in, B*N, 24), S("lw", in, D, 24), S("lw2", acc, D, 24), S("lx1", out, B*N, 24), S("lx2", out, B*N, 24), S("lx3", out, B*N, 24)},
		run: func(d kernels.Device, t map[string]*kernels.Tensor) {
			if g, ok := d.(*Device); ok { // the LinearBacks' GEMMs read the bf16 copies the fused ops wrote
				g.GEMM = GEMMBF16
				defer func() { g.GEMM = GEMMExact }()
			}
			lin := func(took bool, db, g, dIn *kernels.Tensor) {
				if took {
					db = nil
				}
				kernels.ZeroLazy(d, dIn)
				d.LinearBack(dIn, t["lw2"], db, g.Reshape(B*N, D), t["lx"], t["lw"])
			}
			d.RMSNorm(t["y"], t["rstd"], t["x"], t["w"], 1e-6)
			kernels.ZeroLazy(d, t["dx"])
			lin(kernels.RMSNormBackBias(d, t["dx"], t["dw"], t["db"], t["dy"], t["x"], t["rstd"], t["w"]), t["db"], t["dx"], t["lx1"])
			kernels.ZeroLazy(d, t["dgy"])
			lin(kernels.GateAddBackBias(d, t["dgy"], t["dmod"], t["gdb"], t["gd"], t["gy"], t["mod"], 2, tpf), t["gdb"], t["dgy"], t["lx2"])
			d.LayerNorm(t["ln"], t["mean"], t["rstd2"], t["mx"], nil, nil, 1e-6)
			lin(kernels.ModulateLayerNormBackBias(d, t["mdx"], t["dmod"], t["mdb"], t["dh"], t["dln"], t["ln"], t["mx"], t["mean"], t["rstd2"], t["mod"], 3, 4, tpf),
				t["mdb"], t["mdx"], t["lx3"])
		}}}
}

// TestColumnSums: colSumCases and the small backward cases of TestOpsAgainstCPU with the column
// sums folded into the row kernels (colsums.go; the default) and without (FEWSTEP_COLFUSE=0: the
// plain row kernels and colreduce), each against the CPU.
func TestColumnSums(t *testing.T) {
	g := gpu(t)
	defer SetColumnFusion(g, true)
	cs := colSumCases()
	for _, c := range cases() {
		switch c.name {
		case "LayerNorm+affine", "RMSNorm", "GateAdd", "RMSNormRoPEBack hd=128", "RMSNormRoPEBack hd=12", "ModulateLayerNormBack", "ZeroLazy":
			cs = append(cs, c)
		}
	}
	if len(cs) != 12 {
		t.Fatalf("%d cases, want 12: a case of cases() was renamed", len(cs))
	}
	for _, on := range []bool{true, false} {
		for _, c := range cs {
			for _, dt := range []kernels.DType{kernels.F32, kernels.BF16} {
				t.Run(fmt.Sprintf("%s/%s/fused=%v", c.name, dt, on), func(t *testing.T) {
					SetColumnFusion(g, on)
					runCase(t, g, c, dt)
				})
			}
		}
	}
}

// LinearBack with bf16 GEMM operands: the bias gradient and dOut's bf16 copy come from one pass
// (colreduce_f32x4 with a copy), the GEMMs then read the copy. Twice, with a new dOut uploaded
// in between: the second must not read the first's copy.
// TestFusedBF16Copy: the bf16 copy that RMSNormRoPE writes beside its fp32 output is the operand
// of the next bf16 GEMM (and of the attention): a GEMM on it against the CPU's fp32 RMSNorm, RoPE
// and Linear; a stale or unrotated copy would be off by O(1).
func TestFusedBF16Copy(t *testing.T) {
	g := gpu(t)
	defer func() { g.GEMM = GEMMExact }()
	r := seedRand(t)
	cpu := kernels.NewCPU(2)
	const B, fr, rows, cols, H, hd, N = 2, 3, 4, 6, 2, 128, 40
	T, D := fr*rows*cols, H*hd
	g.GEMM = GEMMBF16
	up := func(d kernels.Device, v []float32, shape ...int) *kernels.Tensor {
		t := d.Alloc(kernels.F32, shape...)
		d.FromHost(t, v)
		return t
	}
	x, w, wl := randn(r, B*T*D), randn(r, D), randn(r, N*D)
	var outs [2][]float32
	for i, d := range []kernels.Device{cpu, g} {
		X, W, WL := up(d, x, B*T, D), up(d, w, D), up(d, wl, N, D)
		Y, R, Z := d.Alloc(kernels.F32, B, T, H, hd), d.Alloc(kernels.F32, B*T), d.Alloc(kernels.F32, B*T, N)
		kernels.RMSNormRoPE(d, Y, R, X, W, 1e-6, fr, rows, cols, 2)
		d.Linear(Z, Y.Reshape(B*T, D), WL, nil)
		if err := d.Sync(); err != nil {
			t.Fatal(err)
		}
		outs[i] = make([]float32, Z.Numel())
		d.ToHost(outs[i], Z)
		for _, t := range []*kernels.Tensor{X, W, WL, Y, R, Z} {
			d.Free(t)
		}
	}
	if e := relErr(outs[1], outs[0]); !(e <= tolBF16) {
		t.Errorf("Linear after RMSNormRoPE (bf16 GEMM on the fused copy): rel error %.3g > %.0e", e, tolBF16)
	} else {
		t.Logf("Linear after RMSNormRoPE (bf16 GEMM on the fused copy): rel error %.3g", e)
	}
}

// TestLinearGELU: cuBLASLt's GELU_BIAS epilogue (bf16 out, bf16-GEMM mode, pre-activation not
// kept) against the CPU's Linear then GELU (tanh form) in fp32, and against the GPU's unfused pair.
func TestLinearGELU(t *testing.T) {
	g := gpu(t)
	defer func() { g.GEMM = GEMMExact }()
	r := seedRand(t)
	cpu := kernels.NewCPU(2)
	const M, K, N = 300, 256, 520
	x, w, b := randn(r, M*K), randn(r, N*K), randn(r, N)
	for i := range w {
		w[i] *= 0.1 // pre-activations of order 1, where the GELU bends
	}
	up := func(d kernels.Device, v []float32, shape ...int) *kernels.Tensor {
		t := d.Alloc(kernels.F32, shape...)
		d.FromHost(t, v)
		return t
	}
	Xc, Wc, Bc := up(cpu, x, M, K), up(cpu, w, N, K), up(cpu, b, N)
	Pc, Yc := cpu.Alloc(kernels.F32, M, N), cpu.Alloc(kernels.F32, M, N)
	kernels.LinearGELU(cpu, Yc, Pc, Xc, Wc, Bc, true)
	want := make([]float32, M*N)
	cpu.ToHost(want, Yc)
	g.GEMM = GEMMBF16
	Xg, Wg, Bg := up(g, x, M, K), up(g, w, N, K), up(g, b, N)
	g.MarkWeights(Wg)
	g.MarkWeights(Bg)
	Pg, Yg, Y2 := g.Alloc(kernels.F32, M, N), g.Alloc(kernels.BF16, M, N), g.Alloc(kernels.BF16, M, N)
	P3, Y3 := g.Alloc(kernels.BF16, M, N), g.Alloc(kernels.BF16, M, N) // a training pass's: the pre-activation kept in bf16
	g.Fill(Yg, float32(math.NaN()))
	g.Fill(Y3, float32(math.NaN()))
	g.Fill(P3, float32(math.NaN()))
	kernels.LinearGELU(g, Yg, Pg, Xg, Wg, Bg, false) // the epilogue
	kernels.LinearGELU(g, Y2, Pg, Xg, Wg, Bg, true)  // declined (fp32 pre kept): Linear, then GELU
	kernels.LinearGELU(g, Y3, P3, Xg, Wg, Bg, true)  // GELU_AUX_BIAS: out and the bf16 pre-activation
	if err := g.Sync(); err != nil {
		t.Fatal(err)
	}
	got, got2, got3, pre3, wantPre := make([]float32, M*N), make([]float32, M*N), make([]float32, M*N), make([]float32, M*N), make([]float32, M*N)
	g.ToHost(got, Yg)
	g.ToHost(got2, Y2)
	g.ToHost(got3, Y3)
	g.ToHost(pre3, P3)
	cpu.ToHost(wantPre, Pc)
	if e := relErr(got, want); !(e <= tolBF16) {
		t.Errorf("LinearGELU (epilogue) vs CPU: rel error %.3g > %.0e", e, tolBF16)
	} else {
		t.Logf("LinearGELU (epilogue) vs CPU: rel error %.3g; vs the GPU's Linear+GELU: %.3g; unfused vs CPU: %.3g", e, relErr(got, got2), relErr(got2, want))
	}
	for _, c := range []struct {
		what      string
		got, want []float32
	}{{"out", got3, want}, {"pre-activation", pre3, wantPre}} {
		if e := relErr(c.got, c.want); !(e <= tolBF16) {
			t.Errorf("LinearGELU keeping a bf16 pre-activation (GELU_AUX_BIAS), %s vs CPU: rel error %.3g > %.0e", c.what, e, tolBF16)
		} else {
			t.Logf("LinearGELU keeping a bf16 pre-activation (GELU_AUX_BIAS), %s vs CPU: rel error %.3g", c.what, e)
		}
	}
	for _, x := range []*kernels.Tensor{Xg, Wg, Bg, Pg, Yg, Y2, P3, Y3} {
		g.Free(x)
	}
}

// TestGELUBackBias: the GELU backward of a bf16 pre-activation with the bias gradient in the same
// pass (act_gelu_back_bias_bf16x8) against the CPU's GELUBack and column sums in fp32, on the same
// bf16-rounded inputs: dIn written after a ZeroLazy (NaN-poisoned before) and accumulated onto
// random values; the bias gradient starts random (accumulated). 520 columns: two full 256-column
// blocks and a partial one; 300 rows: the four-row steps and a remainder.
func TestGELUBackBias(t *testing.T) {
	g := gpu(t)
	r := seedRand(t)
	cpu := kernels.NewCPU(2)
	const M, K = 300, 520
	get := func(d kernels.Device, t *kernels.Tensor) []float32 {
		v := make([]float32, t.Numel())
		d.ToHost(v, t)
		return v
	}
	for _, acc := range []bool{false, true} {
		pre, dy, d0, b0 := randn(r, M*K), randn(r, M*K), randn(r, M*K), randn(r, K)
		roundBF16(pre)
		roundBF16(dy)
		roundBF16(d0)
		if !acc {
			clear(d0)
		}
		want := append([]float32(nil), d0...)
		Pc, Yc, Dc := cpu.Alloc(kernels.F32, M, K), cpu.Alloc(kernels.F32, M, K), cpu.Alloc(kernels.F32, M, K)
		cpu.FromHost(Pc, pre)
		cpu.FromHost(Yc, dy)
		cpu.FromHost(Dc, want)
		cpu.GELUBack(Dc, Yc, Pc)
		cpu.ToHost(want, Dc)
		wantB := append([]float32(nil), b0...)
		for i := 0; i < M; i++ {
			for j := 0; j < K; j++ {
				wantB[j] += want[i*K+j]
			}
		}
		Pg, Yg, Dg, Bg := g.Alloc(kernels.BF16, M, K), g.Alloc(kernels.BF16, M, K), g.Alloc(kernels.BF16, M, K), g.Alloc(kernels.F32, K)
		g.FromHost(Pg, pre)
		g.FromHost(Yg, dy)
		g.FromHost(Bg, b0)
		if acc {
			g.FromHost(Dg, d0)
		} else {
			g.Fill(Dg, float32(math.NaN()))
			kernels.ZeroLazy(g, Dg)
		}
		took := kernels.GELUBackBias(g, Dg, Bg, Yg, Pg)
		if err := g.Sync(); err != nil {
			t.Fatal(err)
		}
		if !took {
			t.Fatalf("acc %v: GELUBackBias not taken by the GPU (FEWSTEP_FUSE=0 or FEWSTEP_VEC=0?)", acc)
		}
		for _, c := range []struct {
			name      string
			got, want []float32
			tol       float64
		}{
			{"dIn", get(g, Dg), want, tolBF16}, // bf16 storage
			{"dBias", get(g, Bg), wantB, 1e-4}, // fp32 sums of the same values (atomics' order)
		} {
			if e := relErr(c.got, c.want); !(e <= c.tol) {
				t.Errorf("acc %v: GELUBackBias %s vs CPU: rel error %.3g > %.0e", acc, c.name, e, c.tol)
			} else {
				t.Logf("acc %v: GELUBackBias %s vs CPU: rel error %.3g", acc, c.name, e)
			}
		}
		for _, x := range []*kernels.Tensor{Pg, Yg, Dg, Bg} {
			g.Free(x)
		}
	}
}

func TestLinearBackBF16(t *testing.T) {
	g := gpu(t)
	defer func() { g.GEMM = GEMMExact }()
	r := seedRand(t)
	cpu := kernels.NewCPU(2)
	M, K, N := 333, 136, 260 // N: two 128-column blocks and a partial third
	x, w := randn(r, M*K), randn(r, N*K)
	up := func(d kernels.Device, v []float32, shape ...int) *kernels.Tensor {
		t := d.Alloc(kernels.F32, shape...)
		d.FromHost(t, v)
		return t
	}
	get := func(d kernels.Device, t *kernels.Tensor) []float32 {
		v := make([]float32, t.Numel())
		d.ToHost(v, t)
		return v
	}
	Xc, Wc := up(cpu, x, M, K), up(cpu, w, N, K)
	Xg, Wg := up(g, x, M, K), up(g, w, N, K)
	g.MarkWeights(Wg)
	g.GEMM = GEMMBF16
	// Allocated once (Alloc and Free clear the table of copies; Zero and FromHost declare their writes).
	dYg := g.Alloc(kernels.F32, M, N)
	dXg, dWg, dBg := g.Alloc(kernels.F32, M, K), g.Alloc(kernels.F32, N, K), g.Alloc(kernels.F32, N)
	for round := 0; round < 2; round++ {
		dy := randn(r, M*N)
		dXc, dWc, dBc := cpu.Alloc(kernels.F32, M, K), cpu.Alloc(kernels.F32, N, K), cpu.Alloc(kernels.F32, N)
		cpu.LinearBack(dXc, dWc, dBc, up(cpu, dy, M, N), Xc, Wc)
		g.Zero(dXg)
		g.Zero(dWg)
		g.Zero(dBg)
		g.FromHost(dYg, dy)
		g.LinearBack(dXg, dWg, dBg, dYg, Xg, Wg)
		if err := g.Sync(); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			name      string
			got, want []float32
			tol       float64
		}{
			{"dB", get(g, dBg), get(cpu, dBc), tolF32}, // fp32 sums
			{"dX", get(g, dXg), get(cpu, dXc), tolBF16},
			{"dW", get(g, dWg), get(cpu, dWc), tolBF16},
		} {
			e := relErr(c.got, c.want)
			if !(e <= c.tol) {
				t.Errorf("round %d: LinearBack %s: rel error %.3g > %.0e", round, c.name, e, c.tol)
			} else {
				t.Logf("round %d: LinearBack %s: rel error %.3g", round, c.name, e)
			}
		}
	}
	for _, x := range []*kernels.Tensor{Xg, Wg, dYg, dXg, dWg, dBg} {
		g.Free(x)
	}
}

func randn(r *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	return v
}

// Reductions to the host, dtype round trips, and a captured graph replayed.
func TestReductionsCopyGraph(t *testing.T) {
	g := gpu(t)
	r := seedRand(t)
	cpu := kernels.NewCPU(2)
	n := 12345 * 3
	a, b := randn(r, n), randn(r, n)
	A, Bt := g.Alloc(kernels.F32, n), g.Alloc(kernels.F32, n)
	g.FromHost(A, a)
	g.FromHost(Bt, b)
	Ac, Bc := cpu.Alloc(kernels.F32, n), cpu.Alloc(kernels.F32, n)
	cpu.FromHost(Ac, a)
	cpu.FromHost(Bc, b)
	if d, w := g.Dot(A, Bt), cpu.Dot(Ac, Bc); math.Abs(d-w) > 1e-9*math.Abs(w)+1e-9 {
		t.Errorf("Dot %v, CPU %v", d, w)
	}
	// SumSquares into the second of two device accumulators (a view), twice, read back in one copy:
	// 2·Σa² beside the CPU's; the first accumulator stays 0.
	acc, accC := kernels.F64Acc(g, 2), kernels.F64Acc(cpu, 2)
	for range 2 {
		g.SumSquares(acc.View(2, 2), A)
		cpu.SumSquares(accC.View(2, 2), Ac)
	}
	sq, sqC := make([]float64, 2), make([]float64, 2)
	kernels.ReadF64(g, sq, acc)
	kernels.ReadF64(cpu, sqC, accC)
	if sq[0] != 0 || math.Abs(sq[1]-sqC[1]) > 1e-9*sqC[1] {
		t.Errorf("SumSquares %v, CPU %v", sq, sqC)
	}
	g.Free(acc)
	gs, cs := make([]float64, 3), make([]float64, 3)
	g.SumAbsGroups(gs, A)
	cpu.SumAbsGroups(cs, Ac)
	for i := range gs {
		if math.Abs(gs[i]-cs[i]) > 1e-9*cs[i] {
			t.Errorf("SumAbsGroups[%d] %v, CPU %v", i, gs[i], cs[i])
		}
	}
	// fp32 → bf16 → fp32 through Copy equals the host rounding; Fill and Zero.
	H := g.Alloc(kernels.BF16, n)
	g.Copy(H, A)
	back := make([]float32, n)
	g.ToHost(back, H)
	for i := range a {
		if want := BF16ToF32(F32ToBF16(a[i])); back[i] != want {
			t.Fatalf("Copy to bf16 [%d]: %v, want %v", i, back[i], want)
		}
	}
	g.Fill(H, 2.5)
	g.ToHost(back, H)
	g.Zero(A)
	g.ToHost(a, A)
	for i := range back {
		if back[i] != 2.5 || a[i] != 0 {
			t.Fatalf("Fill/Zero [%d]: %v %v", i, back[i], a[i])
		}
	}
	// Graph: y = 2·(x + x) captured, replayed on new x.
	X, Y := g.Alloc(kernels.F32, 1000), g.Alloc(kernels.F32, 1000)
	ops := func() { g.Add(Y, X, X); g.Scale(Y, 2) }
	ops()
	gr, err := g.Capture(ops)
	if err != nil {
		t.Fatal(err)
	}
	xs := randn(r, 1000)
	g.FromHost(X, xs)
	if err := gr.Launch(); err != nil {
		t.Fatal(err)
	}
	ys := make([]float32, 1000)
	g.ToHost(ys, Y)
	for i := range xs {
		if ys[i] != 4*xs[i] {
			t.Fatalf("graph replay [%d]: %v, want %v", i, ys[i], 4*xs[i])
		}
	}
	gr.Destroy()
	if err := g.Sync(); err != nil {
		t.Fatal(err)
	}
}

// TestArtifactsFresh fails when a kernel source changed without a rebuild (runs everywhere, no GPU):
// every kernels/cuda/*.cu must have build/<name>.fatbin whose MANIFEST hash is the source's.
func TestArtifactsFresh(t *testing.T) {
	srcs, _ := filepath.Glob("*.cu")
	sort.Strings(srcs)
	man := Manifest(mustRead(t, "build/MANIFEST"))
	var stale []string
	for _, cu := range srcs {
		fb := strings.TrimSuffix(cu, ".cu") + ".fatbin"
		h, err := SourceHash(".", cu)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join("build", fb)); err != nil || man[fb] != h {
			stale = append(stale, cu)
		}
	}
	if len(stale) > 0 {
		t.Errorf("kernel artifacts are stale or missing for %v: rebuild on a GPU machine with scripts/build-kernels.sh and commit kernels/cuda/build", stale)
	}
}

func mustRead(t *testing.T, p string) []byte {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Without a GPU, New must say so in an error, not crash.
func TestNoGPUError(t *testing.T) {
	d, err := New(0)
	if err == nil {
		t.Skipf("a GPU is present: %s", d.Info)
	}
	if !strings.Contains(err.Error(), "CUDA") && !strings.Contains(err.Error(), "GPU") {
		t.Errorf("unclear error without a GPU: %v", err)
	}
	t.Logf("without a GPU: %v", err)
}

func TestHostConversions(t *testing.T) {
	for _, c := range []struct {
		f float32
		h uint16
	}{{1, 0x3c00}, {-2, 0xc000}, {65504, 0x7bff}, {6.103515625e-05, 0x0400}, {5.960464477539063e-08, 0x0001}, {0.1, 0x2e66}} {
		if got := F32ToF16(c.f); got != c.h {
			t.Errorf("F32ToF16(%v) = %#x, want %#x", c.f, got, c.h)
		}
		if got := F16ToF32(c.h); math.Abs(float64(got-c.f)) > 1e-3*math.Abs(float64(c.f)) {
			t.Errorf("F16ToF32(%#x) = %v, want %v", c.h, got, c.f)
		}
	}
	if F32ToBF16(1.00390625) != 0x3f80 || F32ToBF16(1.01171875) != 0x3f82 { // ties to even
		t.Errorf("bf16 rounding: %#x %#x", F32ToBF16(1.00390625), F32ToBF16(1.01171875))
	}
}

// The driver loads kernels lazily from the module images: after a garbage collection that reuses
// freed memory, a fresh device must still find and run its kernels (a freed image once gave random
// CUDA_ERROR_INVALID_HANDLE from cuModuleGetFunction).
func TestKernelsAfterGC(t *testing.T) {
	gpu(t)
	for round := 0; round < 3; round++ {
		d, err := New(0)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 4; i++ {
			runtime.GC()
			junk := make([][]byte, 64)
			for j := range junk {
				junk[j] = make([]byte, 1<<20)
				for k := range junk[j] {
					junk[j][k] = 0xa5
				}
			}
			debug.FreeOSMemory()
		}
		x := d.Alloc(kernels.F32, 2, 6, 2, 12)
		tt := d.Alloc(kernels.F32, 4)
		y := d.Alloc(kernels.F32, 4, 256)
		d.Fill(x, 1)
		d.Sinusoid(y, tt, 128)
		d.RoPE(x, 1, 2, 3, 0)
		d.GELU(x, x)
		if err := d.Sync(); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
	}
}
