package trainer

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	_ "github.com/fewstep/fewstep/objectives" // dmd, selfforcing
)

type fixedSource struct{ hb *HostBatch }

func (s fixedSource) Next() (*HostBatch, error) { return s.hb, nil }
func (s fixedSource) Cursor() ([]byte, error)   { return []byte("0"), nil }
func (s fixedSource) Restore([]byte) error      { return nil }

// TestRecomputeTrainsIdentically: the roles built as `fewstep bench train` builds them (RandomInit
// teacher, EMA, clipping), trained 3 steps of dmd and of selfforcing with Shape.Recompute on and off:
// every trainable role's weights agree bit for bit (the CPU is deterministic), and they moved.
func TestRecomputeTrainsIdentically(t *testing.T) {
	cfg, err := models.Preset("tiny")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Layers = 3
	B, F, H, W, L := 1, 4, 4, 4, 3
	r := rand.New(rand.NewPCG(1, 2))
	hb := &HostBatch{X0: make([]float32, B*cfg.InDim*F*H*W), Ctx: make([]float32, B*L*cfg.TextDim), Drop: make([]bool, B)}
	for i := range hb.X0 {
		hb.X0[i] = float32(r.NormFloat64())
	}
	for i := range hb.Ctx {
		hb.Ctx[i] = float32(r.NormFloat64())
	}
	for _, obj := range []string{"dmd", "selfforcing"} {
		train := func(recompute bool) (w0, w map[string][]float32) {
			job := config.Defaults()
			job.Objective, job.Seed, job.OutDir = obj, 3, t.TempDir()
			job.Train.Steps, job.Train.ClipNorm = 3, 1
			job.Params = map[string]any{"generator_update_ratio": 1}
			job.Roles = map[string]config.Role{
				"student": {LR: 1e-3, Betas: []float64{0, 0.999}, Eps: 1e-8, Schedule: "constant", EMADecay: 0.9},
				"critic":  {LR: 1e-3, Betas: []float64{0, 0.999}, Eps: 1e-8, Schedule: "constant"},
			}
			s := models.Shape{B: B, F: F, H: H, W: W, L: L, Recompute: recompute}
			if obj == "selfforcing" {
				s.ChunkFrames = 2
			}
			tr, err := New(Options{Job: &job, Dev: kernels.CPU(), Model: cfg, Shape: s, Null: make([]float32, L*cfg.TextDim),
				RandomInit: true, Source: fixedSource{hb}})
			if err != nil {
				t.Fatal(err)
			}
			snap := func() map[string][]float32 {
				m := map[string][]float32{}
				for _, n := range []string{"student", "critic", "ema"} {
					m[n] = append([]float32(nil), tr.Net(n).W.F32...)
				}
				return m
			}
			w0 = snap()
			for tr.Step < 3 {
				if _, err := tr.TrainStep(); err != nil {
					t.Fatal(err)
				}
			}
			return w0, snap()
		}
		w0, plain := train(false)
		_, rec := train(true)
		for role, a := range plain {
			b := rec[role]
			var moved float64
			for i := range a {
				if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
					t.Fatalf("%s %s weight %d: plain %v, recompute %v", obj, role, i, a[i], b[i])
				}
				moved = max(moved, math.Abs(float64(a[i]-w0[role][i])))
			}
			if moved == 0 {
				t.Errorf("%s %s: weights did not move in 3 steps", obj, role)
			}
			t.Logf("%s %s: identical with recompute; max |Δw| %.3g", obj, role, moved)
		}
	}
}
