package cuda

import (
	"math"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// TestFusedAttentionTiles checks the fused kernels against the CPU device at sizes that span several
// query and key tiles (cuda_test.go's attention cases fit in one tile of each): partial tiles, chunks
// that are not tile multiples, Nq ≠ Nk with a KV-cache offset, one query. Gradients start random and
// the increments are compared (the backward accumulates). fp32 storage goes through bf16 tensor cores
// too, hence the bf16 tolerance for both storages; gradients are fp32 or bf16 like the inputs.
func TestFusedAttentionTiles(t *testing.T) {
	g := gpu(t)
	cpu := kernels.NewCPU(2)
	type ac struct {
		name             string
		B, Nq, Nk, H, hd int
		chunk, off       int
	}
	for _, a := range []ac{
		{"full", 1, 300, 300, 2, 128, 0, 0},
		{"full, B 2, Nq != Nk", 2, 200, 333, 3, 128, 0, 0},
		{"causal", 1, 257, 257, 2, 128, 100, 0},
		{"cache", 1, 130, 390, 2, 128, 130, 260},
		{"cache, partial chunk", 2, 100, 357, 2, 64, 50, 257},
		{"one query", 1, 1, 300, 2, 128, 100, 250},
		{"cross, query split", 1, 1000, 200, 2, 128, 0, 0}, // fp32 gradients: attnBwdSplit 4
		{"causal, query split", 1, 1500, 1500, 1, 64, 500, 0},
		{"tail split", 2, 700, 700, 2, 128, 0, 0},           // sm_90a, 132 SMs: 24 key tiles, each in 2 blocks (attnBwdTail)
		{"causal, tail split", 1, 900, 900, 3, 128, 300, 0}, // 24 key tiles in 3 blocks each; bf16 atomics with bf16 gradients
	} {
		for _, dt := range []kernels.DType{kernels.F32, kernels.BF16} {
			t.Run(a.name+"/"+dt.String(), func(t *testing.T) {
				r := seedRand(t)
				qs, ks := []int{a.B, a.Nq, a.H, a.hd}, []int{a.B, a.Nk, a.H, a.hd}
				shapes := map[string][]int{"q": qs, "k": ks, "v": ks, "do": qs, "dq": qs, "dk": ks, "dv": ks}
				host := map[string][]float32{}
				tc, tg := map[string]*kernels.Tensor{}, map[string]*kernels.Tensor{}
				for name, sh := range shapes {
					v := randn(r, kernels.Numel(sh))
					if dt == kernels.BF16 && (name == "dq" || name == "dk" || name == "dv") {
						for i := range v { // a small start: bf16 sums would drown the increment
							v[i] *= 1e-2
						}
					}
					if dt == kernels.BF16 {
						roundBF16(v)
					}
					host[name] = v
					tc[name] = cpu.Alloc(kernels.F32, sh...)
					cpu.FromHost(tc[name], v)
					tg[name] = g.Alloc(dt, sh...)
					g.FromHost(tg[name], v)
				}
				for _, d := range []struct {
					dev kernels.Device
					ts  map[string]*kernels.Tensor
					dt  kernels.DType
				}{{cpu, tc, kernels.F32}, {g, tg, dt}} {
					d.ts["o"] = d.dev.Alloc(d.dt, qs...)
					d.ts["lse"] = d.dev.Alloc(kernels.F32, a.B, a.H, a.Nq)
					d.dev.Fill(d.ts["o"], float32(math.NaN()))
					d.dev.Fill(d.ts["lse"], float32(math.NaN()))
					ts := d.ts
					d.dev.Attention(ts["o"], ts["lse"], ts["q"], ts["k"], ts["v"], a.chunk, a.off)
					d.dev.AttentionBack(ts["dq"], ts["dk"], ts["dv"], ts["do"], ts["o"], ts["lse"], ts["q"], ts["k"], ts["v"], a.chunk, a.off)
				}
				if err := g.Sync(); err != nil {
					t.Fatal(err)
				}
				for _, name := range []string{"o", "lse", "dq", "dk", "dv"} {
					want := make([]float32, tc[name].Numel())
					got := make([]float32, len(want))
					cpu.ToHost(want, tc[name])
					g.ToHost(got, tg[name])
					if start, ok := host[name]; ok { // compare the increments
						for i := range got {
							got[i] -= start[i]
							want[i] -= start[i]
						}
					}
					tol := 1e-2
					if e := relErr(got, want); !(e <= tol) {
						t.Errorf("%s: rel error %.3g > %.0e", name, e, tol)
					} else {
						t.Logf("%s: rel error %.3g (tol %.0e)", name, e, tol)
					}
				}
				for _, x := range tg {
					g.Free(x)
				}
			})
		}
	}
}

// TestAttnBwdTail: the tail split of the sm_90a backward's grid (no GPU) fills the last wave without
// going past it, and leaves whole waves, short query runs and FEWSTEP_ATTN_TAIL=0 alone.
func TestAttnBwdTail(t *testing.T) {
	d := &Device{sms: 132}
	for _, c := range []struct{ units, nqt, R, s int }{
		{3072, 512, 36, 3}, // 32,760 tokens, 12 heads: 24 waves → 23 + 108 blocks of a third
		{444, 74, 48, 2},   // 4,680 tokens: 4 → 3.5 waves
		{24, 11, 24, 2},    // TestFusedAttentionTiles "tail split"
		{264, 512, 0, 1},   // whole waves
		{200, 512, 0, 1},   // 68 left: more than half a wave
		{22, 5, 0, 1},      // 5 query tiles: pieces of fewer than 4
		{1, 4096, 1, 132},  // one unit: its query tiles over every SM
	} {
		R, s := d.attnBwdTail(c.units, c.nqt)
		if R != c.R || s != c.s {
			t.Errorf("attnBwdTail(%d, %d) = %d, %d; want %d, %d", c.units, c.nqt, R, s, c.R, c.s)
		}
		if s > 1 && (R*s > d.sms || R != c.units%d.sms || c.nqt/s < 4) {
			t.Errorf("attnBwdTail(%d, %d) = %d, %d: past the last wave or runs under 4 tiles", c.units, c.nqt, R, s)
		}
	}
	defer func(v bool) { attnBwdNoTail = v }(attnBwdNoTail)
	attnBwdNoTail = true
	if R, s := d.attnBwdTail(3072, 512); R != 0 || s != 1 {
		t.Errorf("FEWSTEP_ATTN_TAIL=0: %d, %d; want 0, 1", R, s)
	}
}
