package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/data"
)

// data.ode_pairs: `fewstep train` first has the teacher make ODE pairs of the first count training
// prompts into the run's data/, trains dmd's regression: ode on them, and a second run in the same
// folder reuses the file instead of making it again.
func TestTrainMakesODEPairs(t *testing.T) {
	_, _, teacher, _ := sampleFixture(t) // tiny DiT, 48 channels, text_dim 8
	out := filepath.Join(t.TempDir(), "run")
	args := []string{"train", "--set", "objective=dmd", "--set", "device=cpu", "--set", "model.preset=tiny",
		"--set", "out_dir=" + out, "--set", "seed=5",
		"--set", "data.synth={count: 6, heldout_count: 2, frames: 4, size: 16, text_dim: 8, seed: 1}",
		"--set", "data.text_len=8", "--set", "data.batch_size=2", "--set", "data.cfg_dropout=0",
		"--set", "data.ode_pairs.count=4", "--set", "data.ode_pairs.steps=3",
		"--set", "roles.teacher.weights=" + teacher, "--set", "roles.student.lr=1e-4", "--set", "roles.critic.lr=1e-4",
		"--set", "params={denoising_timesteps: [1000, 500], cfg: 1, generator_update_ratio: 1, regression: ode, regression_weight: 1}",
		"--set", "train.steps=2", "--set", "train.ckpt_every=0", "--set", "sample.count=0"}
	run(t, args...)
	pairs := filepath.Join(out, "data", "ode_pairs.arrow")
	ds, err := data.Open(pairs)
	if err != nil {
		t.Fatal(err)
	}
	n := ds.NumRows()
	row, err := ds.Row(0)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := row.Tensor(data.TrajLatent)
	ds.Close()
	if err != nil {
		t.Fatal(err)
	}
	if n != 4 || tr.Shape[0] != 3 { // levels 1000, 500 and the end
		t.Fatalf("%d pairs with trajectories %v, want 4 with 3 levels", n, tr.Shape)
	}
	m, err := os.ReadFile(filepath.Join(out, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var last map[string]float64
	for _, l := range strings.Split(strings.TrimSpace(string(m)), "\n") {
		var r map[string]float64
		if json.Unmarshal([]byte(l), &r) == nil && r["reg_loss"] > 0 {
			last = r
		}
	}
	if last == nil {
		t.Fatalf("no step reported a reg_loss:\n%s", m)
	}
	st, _ := os.Stat(pairs)
	run(t, args...) // same settings: the pairs are reused
	st2, _ := os.Stat(pairs)
	if !st2.ModTime().Equal(st.ModTime()) {
		t.Fatalf("the second run rewrote %s", pairs)
	}
}
