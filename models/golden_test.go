package models

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// goldenTol is the relative error ‖got − want‖/‖want‖ every tensor must meet against wan_ref.py (fp32).
const goldenTol = 1e-5

var goldenCases = []struct{ name, arch string }{
	{"tiny_bidir", "tiny"}, {"tiny_causal", "tiny"}, {"odd_bidir", "odd"}, {"odd_causal", "odd"},
}

func relErr(got, want []float32) float64 {
	var num, den float64
	for i := range want {
		d := float64(got[i]) - float64(want[i])
		num += d * d
		den += float64(want[i]) * float64(want[i])
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

func toDev(dev kernels.Device, nt NamedTensor) *kernels.Tensor {
	t := dev.Alloc(kernels.F32, nt.Shape...)
	dev.FromHost(t, nt.Data)
	return t
}

func host(dev kernels.Device, t *kernels.Tensor) []float32 {
	h := make([]float32, t.Numel())
	dev.ToHost(h, t)
	return h
}

// loadGolden builds the model and inputs of one golden case.
func loadGolden(t testing.TB, dev kernels.Device, name, arch string) (*DiT, Shape, map[string]NamedTensor, map[string]NamedTensor) {
	dir := "testdata"
	cp := filepath.Join(dir, arch+".config.json")
	if c := filepath.Join(dir, name+".config.json"); fileExists(c) { // a case's own text_len
		cp = c
	}
	cfg, err := ReadWanConfig(cp)
	if err != nil {
		t.Fatal(err)
	}
	m := New(dev, cfg, true)
	if err := m.Load(filepath.Join(dir, arch+".weights.safetensors")); err != nil {
		t.Fatal(err)
	}
	in, _, err := ReadSafetensors(filepath.Join(dir, name+".inputs.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	want, meta, err := ReadSafetensors(filepath.Join(dir, name+".expect.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	chunk, err := strconv.Atoi(meta["chunk_frames"])
	if err != nil {
		t.Fatalf("%s: metadata chunk_frames: %v", name, err)
	}
	xs := in["x"].Shape
	s := Shape{B: xs[0], F: xs[2], H: xs[3], W: xs[4], L: in["context"].Shape[1], ChunkFrames: chunk}
	return m, s, in, want
}

func TestGoldens(t *testing.T) {
	dev := kernels.CPU()
	for _, gc := range goldenCases {
		t.Run(gc.name, func(t *testing.T) {
			m, s, in, want := loadGolden(t, dev, gc.name, gc.arch)
			p := m.NewPass(s)
			x, tt, ctx, cot := toDev(dev, in["x"]), toDev(dev, in["t"]), toDev(dev, in["context"]), toDev(dev, in["cotangent"])
			// run twice: the second pass over the same buffers must give the same numbers
			for rep := 0; rep < 2; rep++ {
				m.ZeroGrad()
				out := m.Forward(p, x, tt, ctx)
				dx := m.Backward(p, cot)
				errs := map[string]float64{
					"out":    relErr(host(dev, out), want["out"].Data),
					"grad.x": relErr(host(dev, dx), want["grad.x"].Data),
				}
				for _, e := range m.Tensors(m.G, "grad.") {
					w, ok := want[e.Name]
					if !ok {
						t.Fatalf("golden has no %s", e.Name)
					}
					errs[e.Name] = relErr(e.Data, w.Data)
				}
				if len(errs) != len(m.Table)+2 {
					t.Fatalf("compared %d tensors, want %d", len(errs), len(m.Table)+2)
				}
				names := make([]string, 0, len(errs))
				for k := range errs {
					names = append(names, k)
				}
				sort.Slice(names, func(i, j int) bool { return errs[names[i]] > errs[names[j]] })
				for _, k := range names {
					if !(errs[k] <= goldenTol) {
						t.Errorf("%s: relative error %.3g > %g", k, errs[k], goldenTol)
					}
				}
				if rep == 0 { // a forward-only pass gives the same output in less memory
					pi := m.NewInferencePass(s)
					if e := relErr(host(dev, m.Forward(pi, x, tt, ctx)), want["out"].Data); e > goldenTol {
						t.Errorf("inference pass: out relative error %.3g", e)
					}
					if pi.Bytes() >= p.Bytes()/2 {
						t.Errorf("inference pass holds %d bytes, the training pass %d", pi.Bytes(), p.Bytes())
					}
				}
				if rep == 1 { // a frozen network (no G) gives the same input gradient
					fz := New(dev, m.Cfg, false)
					dev.Copy(fz.W, m.W)
					pf := fz.NewPass(s)
					fz.Forward(pf, x, tt, ctx)
					if e := relErr(host(dev, fz.Backward(pf, cot)), want["grad.x"].Data); e > goldenTol {
						t.Errorf("frozen network: grad.x relative error %.3g", e)
					}
				}
				if rep == 0 {
					msg := ""
					for _, k := range names[:5] {
						msg += fmt.Sprintf(" %s %.2e;", k, errs[k])
					}
					t.Logf("%d tensors ≤ %g; worst:%s out %.2e, grad.x %.2e", len(errs), goldenTol, msg, errs["out"], errs["grad.x"])
				}
			}
		})
	}
}

func fileExists(p string) bool { st, err := os.Stat(p); return err == nil && !st.IsDir() }

// TestGoldenShortContext: a context of L = 5 tokens for a model of text_len 8. Wan2.1 zero-pads it to
// text_len and attends to the padding (scripts/dump_goldens.py pads it so before WanRef); PadContext
// and a forward over text_len tokens match that: out and grad.x within 1e-6, every parameter's
// gradient within goldenTol (the self-attention key biases' gradients are zero in exact arithmetic,
// softmax being blind to them, so theirs is a ratio of rounding noises near 1e-6), and the unpadded
// forward does not (the padding rows are embedded to non-zero keys and values).
func TestGoldenShortContext(t *testing.T) {
	const tol = 1e-6
	dev := kernels.CPU()
	m, s, in, want := loadGolden(t, dev, "tiny_short", "tiny")
	if s.L != 5 || m.Cfg.TextLen != 8 {
		t.Fatalf("golden tiny_short: context of %d tokens, text_len %d; want 5 of 8", s.L, m.Cfg.TextLen)
	}
	ctxNT := in["context"]
	padded, err := PadContext(ctxNT.Data, s.B, s.L, m.Cfg.TextDim, m.Cfg.TextLen)
	if err != nil {
		t.Fatal(err)
	}
	for b := 0; b < s.B; b++ { // padding rows are zero, the tokens are where they were
		for i := 0; i < m.Cfg.TextLen*m.Cfg.TextDim; i++ {
			v := padded[b*m.Cfg.TextLen*m.Cfg.TextDim+i]
			if i < s.L*m.Cfg.TextDim && v != ctxNT.Data[b*s.L*m.Cfg.TextDim+i] || i >= s.L*m.Cfg.TextDim && v != 0 {
				t.Fatalf("PadContext: batch %d value %d = %g", b, i, v)
			}
		}
	}
	sp := s
	sp.L = m.Cfg.TextLen
	p := m.NewPass(sp)
	x, tt, cot := toDev(dev, in["x"]), toDev(dev, in["t"]), toDev(dev, in["cotangent"])
	ctx := toDev(dev, NamedTensor{Shape: []int{s.B, sp.L, m.Cfg.TextDim}, Data: padded})
	m.ZeroGrad()
	out := m.Forward(p, x, tt, ctx)
	errs := map[string]float64{"out": relErr(host(dev, out), want["out"].Data), "grad.x": relErr(host(dev, m.Backward(p, cot)), want["grad.x"].Data)}
	for _, e := range m.Tensors(m.G, "grad.") {
		errs[e.Name] = relErr(e.Data, want[e.Name].Data)
	}
	worst, wn := 0.0, ""
	for k, e := range errs {
		lim := goldenTol
		if k == "out" || k == "grad.x" {
			lim = tol
		}
		if !(e <= lim) {
			t.Errorf("%s: relative error %.3g > %g", k, e, lim)
		}
		if e > worst {
			worst, wn = e, k
		}
	}
	t.Logf("L = 5 of text_len 8, padded: %d tensors; out %.2e, grad.x %.2e, worst %s %.2e", len(errs), errs["out"], errs["grad.x"], wn, worst)

	// unpadded: a different function (the reason for the padding)
	pu := m.NewInferencePass(s)
	e := relErr(host(dev, m.Forward(pu, x, tt, toDev(dev, ctxNT))), want["out"].Data)
	if e < 1e-3 {
		t.Errorf("unpadded context: relative error %.3g, want it far from Wan's output", e)
	}
	t.Logf("unpadded context (attending to 5 tokens only): out relative error %.2e", e)
	if _, err := PadContext(ctxNT.Data, s.B, s.L, m.Cfg.TextDim, 4); err == nil {
		t.Error("PadContext to fewer tokens than given: no error")
	}
	if err := (Shape{B: 1, F: 1, H: 2, W: 2, L: 9}).Check(m.Cfg); err == nil {
		t.Error("Shape.Check: 9 context tokens for text_len 8 accepted")
	}
}
