package models

import (
	"fmt"
	"math/rand"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fewstep/fewstep/kernels"
)

// Benchmark shapes (B = 1, as wan_ref.py's timing): F frames, latent H×W, L context tokens.
// FEWSTEP_BENCH_SHAPE="F,H,W,L" overrides them (scripts/bench_cpu_peer.sh passes the same shape to
// wan_ref.py).
var benchShapes = map[string]Shape{
	"tiny":  {B: 1, F: 8, H: 8, W: 8, L: 32},
	"small": {B: 1, F: 4, H: 16, W: 16, L: 64},
}

func benchShape(b *testing.B, preset string) Shape {
	s := benchShapes[preset]
	if env := os.Getenv("FEWSTEP_BENCH_SHAPE"); env != "" {
		f := strings.Split(env, ",")
		if len(f) != 4 {
			b.Fatalf("FEWSTEP_BENCH_SHAPE=%q: want F,H,W,L", env)
		}
		v := make([]int, 4)
		for i := range f {
			var err error
			if v[i], err = strconv.Atoi(f[i]); err != nil {
				b.Fatalf("FEWSTEP_BENCH_SHAPE=%q: %v", env, err)
			}
		}
		s.F, s.H, s.W, s.L = v[0], v[1], v[2], v[3]
	}
	return s
}

// cpuTime is the process's user+system CPU time: with GOMAXPROCS=1 a measure of the work done that
// other processes on a shared machine disturb far less than wall time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchSetup: a Wan-initialized model with random (non-zero) head, inputs like wan_ref.py's timing
// (x, ctx ~ N(0,1), t = 700 for every frame).
func benchSetup(tb testing.TB, preset string, s Shape, grads bool) (*DiT, *Pass, *kernels.Tensor, *kernels.Tensor, *kernels.Tensor) {
	cfg, err := Preset(preset)
	if err != nil {
		tb.Fatal(err)
	}
	dev := kernels.CPU()
	m := New(dev, cfg, grads)
	randomize(m, 1)
	rng := rand.New(rand.NewSource(1))
	x := devT(dev, randn(rng, s.B*cfg.InDim*s.F*s.H*s.W, 1), s.B, cfg.InDim, s.F, s.H, s.W)
	tv := make([]float32, s.B*s.F)
	for i := range tv {
		tv[i] = 700
	}
	t := devT(dev, tv, s.B, s.F)
	ctx := devT(dev, randn(rng, s.B*s.L*cfg.TextDim, 1), s.B, s.L, cfg.TextDim)
	return m, m.NewPass(s), x, t, ctx
}

// trainStep is one step as wan_ref.py --train times it: v = f(x), loss = mean(v²), backward,
// AdamW over every parameter, gradients zeroed.
type trainer struct {
	m       *DiT
	p       *Pass
	dOut    *kernels.Tensor
	mom, vr *kernels.Tensor
	step    int
}

func newTrainer(m *DiT, p *Pass) *trainer {
	return &trainer{m: m, p: p, dOut: m.Dev.Alloc(kernels.F32, p.out.Shape...),
		mom: m.Dev.Alloc(kernels.F32, m.W.Numel()), vr: m.Dev.Alloc(kernels.F32, m.W.Numel())}
}

func (tr *trainer) run(x, t, ctx *kernels.Tensor) {
	d := tr.m.Dev
	out := tr.m.Forward(tr.p, x, t, ctx)
	d.Copy(tr.dOut, out)
	d.Scale(tr.dOut, 2/float32(out.Numel())) // ∂ mean(v²) / ∂v
	tr.m.Backward(tr.p, tr.dOut)
	tr.step++
	d.AdamW(tr.m.W, tr.m.G, tr.mom, tr.vr, 1e-5, 0.9, 0.999, 1e-8, 0.01, tr.step)
	d.Zero(tr.m.G)
}

func BenchmarkForward(b *testing.B) {
	for _, preset := range []string{"tiny", "small"} {
		s := benchShape(b, preset)
		b.Run(fmt.Sprintf("%s/F%dH%dW%dL%d", preset, s.F, s.H, s.W, s.L), func(b *testing.B) {
			m, p, x, t, ctx := benchSetup(b, preset, s, false)
			m.Forward(p, x, t, ctx)
			b.ReportAllocs()
			b.ResetTimer()
			c0 := cpuTime()
			for i := 0; i < b.N; i++ {
				m.Forward(p, x, t, ctx)
			}
			b.StopTimer()
			b.ReportMetric(float64((cpuTime()-c0).Microseconds())/1e3/float64(b.N), "cpu-ms/fwd")
			b.ReportMetric(float64(b.Elapsed().Microseconds())/1e3/float64(b.N), "ms/fwd")
			b.ReportMetric(float64(p.Bytes())/(1<<20), "MiB-acts")
		})
	}
}

func BenchmarkTrainStep(b *testing.B) {
	for _, preset := range []string{"tiny", "small"} {
		s := benchShape(b, preset)
		b.Run(fmt.Sprintf("%s/F%dH%dW%dL%d", preset, s.F, s.H, s.W, s.L), func(b *testing.B) {
			m, p, x, t, ctx := benchSetup(b, preset, s, true)
			tr := newTrainer(m, p)
			tr.run(x, t, ctx)
			b.ReportAllocs()
			b.ResetTimer()
			c0 := cpuTime()
			for i := 0; i < b.N; i++ {
				tr.run(x, t, ctx)
			}
			b.StopTimer()
			b.ReportMetric(float64((cpuTime()-c0).Microseconds())/1e3/float64(b.N), "cpu-ms/step")
			b.ReportMetric(float64(b.Elapsed().Microseconds())/1e3/float64(b.N), "ms/step")
			b.ReportMetric(float64(p.Bytes())/(1<<20), "MiB-acts")
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			b.ReportMetric(float64(ms.HeapSys)/(1<<20), "MiB-heap")
		})
	}
}

// nopDevice runs no compute: every op the model calls is a no-op, so allocations measured through
// it are the model's own.
type nopDevice struct{ kernels.Device }

func (nopDevice) Copy(dst, src *kernels.Tensor)                                        {}
func (nopDevice) Zero(t *kernels.Tensor)                                               {}
func (nopDevice) Linear(out, in, w, b *kernels.Tensor)                                 {}
func (nopDevice) LinearBack(dIn, dW, dB, dOut, in, w *kernels.Tensor)                  {}
func (nopDevice) LayerNorm(out, mean, rstd, in, w, b *kernels.Tensor, eps float32)     {}
func (nopDevice) LayerNormBack(dIn, dW, dB, dOut, in, mean, rstd, w *kernels.Tensor)   {}
func (nopDevice) RMSNorm(out, rstd, in, w *kernels.Tensor, eps float32)                {}
func (nopDevice) RMSNormBack(dIn, dW, dOut, in, rstd, w *kernels.Tensor)               {}
func (nopDevice) Modulate(out, x, mod *kernels.Tensor, iShift, iScale, tpf int)        {}
func (nopDevice) ModulateBack(dX, dMod, dOut, x, mod *kernels.Tensor, iSh, iSc, t int) {}
func (nopDevice) GateAdd(x, y, mod *kernels.Tensor, iGate, tpf int)                    {}
func (nopDevice) GateAddBack(dY, dMod, dX, y, mod *kernels.Tensor, iGate, tpf int)     {}
func (nopDevice) GELU(out, in *kernels.Tensor)                                         {}
func (nopDevice) GELUBack(dIn, dOut, in *kernels.Tensor)                               {}
func (nopDevice) SiLU(out, in *kernels.Tensor)                                         {}
func (nopDevice) SiLUBack(dIn, dOut, in *kernels.Tensor)                               {}
func (nopDevice) RoPE(x *kernels.Tensor, f, r, c, f0 int)                              {}
func (nopDevice) RoPEBack(dx *kernels.Tensor, f, r, c, f0 int)                         {}
func (nopDevice) Attention(out, lse, q, k, v *kernels.Tensor, ct, qo int)              {}
func (nopDevice) AttentionBack(dQ, dK, dV, dO, o, lse, q, k, v *kernels.Tensor, ct, qo int) {
}
func (nopDevice) Patchify(out, x *kernels.Tensor, B, C, F, H, W int)       {}
func (nopDevice) PatchifyBack(dX, dOut *kernels.Tensor, B, C, F, H, W int) {}
func (nopDevice) Unpatchify(out, in *kernels.Tensor, B, C, F, H, W int)    {}
func (nopDevice) UnpatchifyBack(dIn, dOut *kernels.Tensor, B, C, F, H, W int) {
}
func (nopDevice) Sinusoid(out, t *kernels.Tensor, half int)                {}
func (nopDevice) AddBroadcast(out, a, b *kernels.Tensor)                   {}
func (nopDevice) AddBroadcastBack(dA, dB, dOut *kernels.Tensor)            {}
func (nopDevice) Add(out, a, b *kernels.Tensor)                            {}
func (nopDevice) Axpy(y *kernels.Tensor, alpha float32, x *kernels.Tensor) {}

// TestSteadyStateAllocs: after the first call, the model's forward+backward allocates nothing
// (measured through nopDevice); with the real CPU device the count is the device's own (reported).
func TestSteadyStateAllocs(t *testing.T) {
	for _, chunk := range []int{0, 1} {
		s := Shape{B: 1, F: 2, H: 4, W: 4, L: 4, ChunkFrames: chunk}
		m, p, x, tt, ctx := benchSetup(t, "tiny", s, true)
		dOut := m.Dev.Alloc(kernels.F32, p.out.Shape...)
		m.Dev.Fill(dOut, 0.1)
		step := func() { m.Forward(p, x, tt, ctx); m.Backward(p, dOut) }
		step()
		withCPU := testing.AllocsPerRun(5, step)
		cpu := m.Dev
		m.Dev = nopDevice{cpu}
		own := testing.AllocsPerRun(5, step)
		m.Dev = cpu
		t.Logf("chunk %d: allocations per steady-state forward+backward: model %v, with the CPU device %v", chunk, own, withCPU)
		if own != 0 {
			t.Errorf("the model allocates %v times per forward+backward", own)
		}
	}
}
