package sampler

import (
	"testing"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
)

// Sampling speed at the demo's shapes: the demo teacher's architecture (configs/teacher/config.json:
// D 128, 4 layers, 4 heads, in/out 48, text_dim 32, L 8) on synthetic latents [48, 8, 8, 8], a batch
// of 8 videos, on this machine's CPU. Reported: ms per video and NFE per video.
//
//	go test -run '^$' -bench Sample -benchtime 3x ./sampler/
func benchSample(b *testing.B, o Options) {
	cfg := models.Config{Dim: 128, FFNDim: 512, FreqDim: 256, Heads: 4, Layers: 4, InDim: 48, OutDim: 48, TextDim: 32, TextLen: 8, Eps: 1e-6}
	m := models.New(kernels.CPU(), cfg, false)
	m.InitRandom(1, 0.02)
	batch := &Batch{C: 48, F: 8, H: 8, W: 8, L: 8, TextDim: 32, Text: make([]float32, 8*8*32), Null: make([]float32, 8*32)}
	for i := 0; i < 8; i++ {
		batch.Seeds = append(batch.Seeds, int64(i))
		for j := 0; j < 8*32; j++ {
			batch.Text[i*8*32+j] = float32(j%7) / 7
		}
	}
	chunk := 0
	if o.Method == Stream {
		chunk = o.ChunkFrames
	}
	net := NewDiTNet(m, chunk)
	defer net.Free()
	if _, err := Sample(net, batch, o); err != nil { // warm-up: passes allocated
		b.Fatal(err)
	}
	b.ResetTimer()
	var ms float64
	var nfe int
	for i := 0; i < b.N; i++ {
		r, err := Sample(net, batch, o)
		if err != nil {
			b.Fatal(err)
		}
		ms += r.Millis
		nfe = r.NFE
	}
	b.ReportMetric(ms/float64(b.N), "ms/video")
	b.ReportMetric(float64(nfe), "NFE/video")
}

func BenchmarkSampleEuler50CFG(b *testing.B) {
	benchSample(b, Options{Method: Euler, Steps: 50, CFG: 3})
}
func BenchmarkSampleEuler4CFG(b *testing.B) { benchSample(b, Options{Method: Euler, Steps: 4, CFG: 3}) }
func BenchmarkSampleFewStep4(b *testing.B)  { benchSample(b, Options{Method: FewStep, Steps: 4}) }
func BenchmarkSampleFewStep1(b *testing.B)  { benchSample(b, Options{Method: FewStep, Steps: 1}) }
func BenchmarkSampleStream4(b *testing.B) {
	benchSample(b, Options{Method: Stream, Steps: 4, ChunkFrames: 2})
}
