package models

import (
	"fmt"
	"math"
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
	cfg, err := ReadWanConfig(filepath.Join(dir, arch+".config.json"))
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
