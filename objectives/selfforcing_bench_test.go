package objectives

import (
	"math/rand/v2"
	"testing"

	"github.com/fewstep/fewstep/models"
)

// One training step of each objective of this file set at the demo job's size (configs/teacher/
// config.json: D 128, 4 layers; latents [48, 8, 4, 4], batch 8, 8 text tokens; causal chunks of 2
// frames), generator steps included (ratio 1). ns/op is the step's wall time on this machine:
//
//	go test -run X -bench ObjectiveStep -benchtime 5x ./objectives/
func BenchmarkObjectiveStep(b *testing.B) {
	cfg, err := models.ReadWanConfig("../configs/teacher/config.json")
	if err != nil {
		b.Fatal(err)
	}
	s := models.Shape{B: 8, F: 8, H: 4, W: 4, L: 8}
	causal := s
	causal.ChunkFrames = 2
	for _, c := range []struct {
		name   string
		params map[string]any
		shape  models.Shape
		traj   bool
	}{
		{"consistency", map[string]any{"cfg": 3}, s, false},
		{"adversarial", map[string]any{"mode": "dmd2", "generator_update_ratio": 1, "cfg": 3}, s, false},
		{"selfforcing", map[string]any{"generator_update_ratio": 1, "cfg": 3}, causal, false},
		{"odeinit", nil, causal, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			o, err := New(c.name, c.params)
			if err != nil {
				b.Fatal(err)
			}
			env := testEnvCfg(b, o, cfg, c.shape, 1)
			rng := rand.New(rand.NewPCG(1, 2))
			bt := testBatch(env, c.shape, rng)
			if c.traj {
				odeBatch(env, bt, []float32{1, 0.75, 0.5, 0.25, 0}, rng)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := o.Step(&Step{Step: i + 1, Accum: 1, RNG: StepRNG(1, i+1, 0)}, bt); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
