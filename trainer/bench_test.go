package trainer

import (
	"testing"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
)

// BenchmarkDemoForwardBackward times one forward+backward of the demo teacher's architecture
// (configs/teacher/config.json) on a batch of 16 synthetic latents [48, 8, 8, 8].
func BenchmarkDemoForwardBackward(b *testing.B) {
	cfg, err := models.ReadWanConfig("../configs/teacher/config.json")
	if err != nil {
		b.Fatal(err)
	}
	dev := kernels.CPU()
	m := models.New(dev, cfg, true)
	m.Init(1)
	s := models.Shape{B: 16, F: 8, H: 8, W: 8, L: 8}
	p := m.NewPass(s)
	x := dev.Alloc(kernels.F32, s.B, cfg.InDim, s.F, s.H, s.W)
	t := dev.Alloc(kernels.F32, s.B, s.F)
	ctx := dev.Alloc(kernels.F32, s.B, s.L, cfg.TextDim)
	dev.Fill(x, 0.1)
	dev.Fill(t, 500)
	dev.Fill(ctx, 0.1)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		out := m.Forward(p, x, t, ctx)
		m.Backward(p, out)
	}
}
