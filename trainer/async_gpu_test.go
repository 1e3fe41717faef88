package trainer

import (
	"math"
	"testing"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/kernels/cuda"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/objectives"
)

// TestGatedRunGPU: the toy job with a NaN planted in step 4 (nanSource) and the clip active, run
// by Run (pipelined, the gate on the device) on the GPU and on the CPU: both skip step 4 and only
// it (bad_steps 1, 5 AdamW steps on the host and in the GPU's gate), and the GPU's weights, AdamW
// moments and EMA follow the CPU's (fp32 GEMMs; relative L2 error ≤ 1e-3: AdamW's m/√v amplifies
// the last bits of tiny gradients, while a gate that failed to skip, clip or count gives O(1) or
// NaN), all finite. Skips without a GPU.
//
//	go test ./trainer -run TestGatedRunGPU
func TestGatedRunGPU(t *testing.T) {
	g, err := cuda.New(0)
	if err != nil {
		t.Skipf("no GPU: %v", err)
	}
	var trs [2]*Trainer
	for k, dev := range []kernels.Device{kernels.NewCPU(1), g} {
		job := toyJob(t.TempDir(), 6)
		job.Train.GradAccum = 1
		job.Train.MaxBadSteps = 1
		job.Train.ClipNorm = 0.3
		tr, err := New(Options{Job: job, Dev: dev, Model: models.Config{InDim: tC, TextDim: tD},
			Shape: models.Shape{B: tB, F: 1, H: 1, W: 1, L: tL}, Null: make([]float32, tL*tD),
			Source: &nanSource{toySource: newToySource(), bad: map[int]bool{3: true}}})
		if err != nil {
			t.Fatal(err)
		}
		if err := tr.Run(); err != nil {
			t.Fatalf("%s: %v", dev.Name(), err)
		}
		st := tr.byName[objectives.Student]
		if tr.BadSteps != 1 || st.updates != 5 || kernels.GateCount(hostOf(tr.gate), tr.slot(st)) != 5 {
			t.Fatalf("%s: bad steps %d, AdamW steps %d on the host, %d in the gate; want 1, 5, 5", dev.Name(),
				tr.BadSteps, st.updates, kernels.GateCount(hostOf(tr.gate), tr.slot(st)))
		}
		trs[k] = tr
	}
	if err := g.Sync(); err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct {
		role string
		t    func(r *role) *kernels.Tensor
		what string
	}{
		{objectives.Student, func(r *role) *kernels.Tensor { return r.W }, "W"},
		{objectives.Student, func(r *role) *kernels.Tensor { return r.m }, "m"},
		{objectives.Student, func(r *role) *kernels.Tensor { return r.v }, "v"},
		{objectives.EMA, func(r *role) *kernels.Tensor { return r.W }, "EMA"},
	} {
		c, gg := hostOf(x.t(trs[0].byName[x.role])), hostOf(x.t(trs[1].byName[x.role]))
		var num, den float64
		for i := range c {
			if !finite(float64(gg[i])) {
				t.Fatalf("GPU %s[%d] = %v", x.what, i, gg[i])
			}
			d := float64(gg[i]) - float64(c[i])
			num, den = num+d*d, den+float64(c[i])*float64(c[i])
		}
		if e := math.Sqrt(num / den); !(e <= 1e-3) {
			t.Errorf("%s: GPU against CPU rel. L2 error %.3g", x.what, e)
		}
	}
}
