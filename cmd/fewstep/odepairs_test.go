package main

import (
	"math"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/fewstep/fewstep/data"
	"github.com/fewstep/fewstep/eval"
	"github.com/fewstep/fewstep/sampler"
)

// `fewstep data ode-pairs`: rows in the dataset schema; the trajectory starts at the seeded noise
// (σ = 1), passes through the list's levels, ends at the stored vae_latent (t = 0).
func TestODEPairsCommand(t *testing.T) {
	dir, held, weights, _ := sampleFixture(t)
	out := filepath.Join(dir, "ode", "pairs.arrow")
	run(t, "data", "ode-pairs", "--teacher", weights, "--prompts", held, "--out", out, "--count", "3", "--batch", "2",
		"--steps", "6", "--cfg", "2", "--shift", "3", "--timesteps", "1000,500", "--seed", "11", "--device", "cpu",
		"--set", "data.text_len=8", "--set", "model.preset=tiny")
	ds, err := data.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	prompts, _ := eval.LoadSet(held, 8)
	if ds.NumRows() != 3 {
		t.Fatalf("%d rows", ds.NumRows())
	}
	want := []float32{1000, float32(1000 * sampler.Shift(0.5, 3)), 0}
	for i := 0; i < 3; i++ {
		row, err := ds.Row(i)
		if err != nil {
			t.Fatal(err)
		}
		if row.Caption != prompts.Captions[i] || row.ID != prompts.IDs[i] {
			t.Fatalf("row %d: %q %q, prompt %q %q", i, row.ID, row.Caption, prompts.IDs[i], prompts.Captions[i])
		}
		tr, err := row.Tensor(data.TrajLatent)
		if err != nil {
			t.Fatal(err)
		}
		tt, _ := row.Tensor(data.TrajTimes)
		x0r, _ := row.Tensor(data.Latent)
		emb, _ := row.Tensor(data.TextEmb)
		if len(tr.Shape) != 5 || tr.Shape[0] != 3 || tr.Shape[1] != 48 || len(tt.Shape) != 1 || tt.Shape[0] != 3 || emb.Shape[0] != 5 {
			t.Fatalf("row %d: trajectory %v, timesteps %v, text %v", i, tr.Shape, tt.Shape, emb.Shape)
		}
		times := make([]float32, 3)
		tt.Decode(times, nil, nil)
		for k := range want {
			if math.Abs(float64(times[k]-want[k])) > 1e-3 {
				t.Fatalf("timesteps %v, want %v", times, want)
			}
		}
		traj := make([]float32, tr.Numel())
		tr.Decode(traj, nil, nil)
		x0 := make([]float32, x0r.Numel())
		x0r.Decode(x0, nil, nil)
		per := len(x0)
		r := rand.New(rand.NewPCG(uint64(11+i), 0)) // the sampler's noise stream of video i
		for j := 0; j < per; j++ {
			if e := float32(r.NormFloat64()); traj[j] != e {
				t.Fatalf("row %d: trajectory level σ=1 element %d = %g, the seeded noise is %g", i, j, traj[j], e)
			}
			if traj[2*per+j] != x0[j] {
				t.Fatalf("row %d: last trajectory level != vae_latent at %d", i, j)
			}
		}
	}
}
