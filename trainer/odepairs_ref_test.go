package trainer

import (
	"math"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/fewstep/fewstep/eval"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/sampler"
)

// TestODEPairsLevelsIndependent checks the ODE pairs against a computation that shares nothing with
// WriteODEPairs but the network's forward: the levels and the Euler grid written out by hand, the
// noise drawn as docs/architecture.md says (video i: PCG(seed+i, 0), standard normals), and the
// guided Euler integration done here, step by step, on the host.
//
// 4 Euler steps at shift 3 are σ = 1, .9, .75, .5, 0 (3σ/(1+2σ) at 1, .75, .5, .25, 0). The list
// t = 1000, 600 becomes σ = 1 and 3·.6/(1+2·.6) = 9/11, which is off that grid: it is inserted, so
// the teacher integrates over 1, .9, 9/11, .75, .5, 0 and the rows hold x at σ = 1 and 9/11, then
// the final x0.
func TestODEPairsLevelsIndependent(t *testing.T) {
	job, prompts, teacher := odePairsFixture(t)
	const seed, w = 11, 2.0
	out := filepath.Join(t.TempDir(), "pairs.arrow")
	res, err := WriteODEPairs(nil, job, kernels.CPU(), nil, teacher, "", prompts, out,
		ODEPairs{Count: 3, Steps: 4, Batch: 2, CFG: w, Shift: 3, Timesteps: []float64{1000, 600}, Seed: seed, DType: kernels.F32})
	if err != nil {
		t.Fatal(err)
	}
	wantTimes := []float64{1000, 9000.0 / 11, 0}
	grid := []float64{1, 0.9, 9.0 / 11, 0.75, 0.5, 0}
	if res.Steps != len(grid)-1 || res.NFE != 2*(len(grid)-1) {
		t.Fatalf("result %+v: want %d steps and %d evaluations (guided) on the grid %v", res, len(grid)-1, 2*(len(grid)-1), grid)
	}
	for i, tt := range wantTimes {
		if i >= len(res.Times) || math.Abs(float64(res.Times[i])-tt) > 1e-3 {
			t.Fatalf("recorded timesteps %v, want %v", res.Times, wantTimes)
		}
	}
	ids, x0s, trajs := readPairs(t, out)
	if len(ids) != 3 {
		t.Fatalf("%d rows, want 3", len(ids))
	}

	// the reference: the teacher's velocity, guided by hand, integrated over the hand-written grid
	set, err := eval.LoadSet(prompts, job.Data.TextLen)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := models.Preset("tiny")
	cfg.InDim, cfg.OutDim, cfg.TextDim, cfg.TextLen = 48, 48, 8, 8
	dev := kernels.CPU()
	m := models.New(dev, cfg, false)
	if err := m.Load(teacher); err != nil {
		t.Fatal(err)
	}
	net := sampler.NewDiTNet(m, 0)
	defer net.Free()
	per := set.C * set.F * set.H * set.W
	lt := set.L * set.TextDim
	xd := dev.Alloc(kernels.F32, 1, set.C, set.F, set.H, set.W) // [1, C, F, H, W]
	td := dev.Alloc(kernels.F32, 1, set.F)                      // [1, F]
	cd := dev.Alloc(kernels.F32, 1, set.L, set.TextDim)         // [1, L, TextDim]
	defer dev.Free(xd)
	defer dev.Free(td)
	defer dev.Free(cd)
	velocity := func(x []float32, sigma float64, ctx []float32) []float64 {
		dev.FromHost(xd, x)
		ts := make([]float32, set.F)
		for f := range ts {
			ts[f] = float32(1000 * sigma)
		}
		dev.FromHost(td, ts)
		dev.FromHost(cd, ctx)
		v := make([]float32, per)
		dev.ToHost(v, net.Velocity(xd, td, cd))
		out := make([]float64, per)
		for k := range v {
			out[k] = float64(v[k])
		}
		return out
	}
	worst := 0.0
	for i := 0; i < 3; i++ {
		r := rand.New(rand.NewPCG(uint64(seed+i), 0))
		x := make([]float32, per)
		for k := range x {
			x[k] = float32(r.NormFloat64())
		}
		var atLevels [][]float32 // x at σ = 1 and 9/11
		for s := 0; s+1 < len(grid); s++ {
			if s == 0 || s == 2 {
				atLevels = append(atLevels, append([]float32(nil), x...))
			}
			vc := velocity(x, grid[s], set.Text[i*lt:(i+1)*lt])
			vu := velocity(x, grid[s], make([]float32, lt)) // the null prompt: zeros
			for k := range x {
				v := vu[k] + w*(vc[k]-vu[k])
				x[k] += float32((grid[s+1] - grid[s]) * v)
			}
		}
		atLevels = append(atLevels, x)
		for lvl, ref := range atLevels[:2] {
			got := trajs[i][lvl*per : (lvl+1)*per]
			for k := range ref {
				worst = max(worst, math.Abs(float64(got[k]-ref[k]))/(1+math.Abs(float64(ref[k]))))
			}
		}
		for k := range x {
			worst = max(worst, math.Abs(float64(x0s[i][k]-x[k]))/(1+math.Abs(float64(x[k]))))
			worst = max(worst, math.Abs(float64(trajs[i][2*per+k]-x[k]))/(1+math.Abs(float64(x[k]))))
		}
	}
	if !(worst <= 1e-4) {
		t.Fatalf("the pairs differ from the hand-written integration by %.3g (relative), want ≤ 1e-4", worst)
	}
	t.Logf("3 prompts, levels σ = 1, 9/11, 0 on a 5-step merged grid: worst relative difference %.3g", worst)
}
