package trainer

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/data"
	"github.com/fewstep/fewstep/dist"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
)

// odePairsFixture writes a synthetic prompt set (7 prompts) and a tiny random teacher.
func odePairsFixture(t *testing.T) (job *config.Job, prompts, teacher string) {
	t.Helper()
	dir := t.TempDir()
	files, err := data.WriteSynth(filepath.Join(dir, "data"), data.SynthOptions{Count: 7, Heldout: 1, Frames: 4, Size: 16, TextDim: 8, Seed: 3}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := models.Preset("tiny")
	cfg.InDim, cfg.OutDim, cfg.TextDim, cfg.TextLen = 48, 48, 8, 8
	m := models.New(kernels.CPU(), cfg, false)
	m.InitRandom(4, 0.02)
	teacher = filepath.Join(dir, "w", "teacher.safetensors")
	os.MkdirAll(filepath.Dir(teacher), 0o755)
	if err := m.Save(teacher, kernels.F32); err != nil {
		t.Fatal(err)
	}
	job = &config.Job{Model: config.Model{Preset: "tiny"}, Data: config.Data{TextLen: 8}}
	return job, files.Train, teacher
}

// readPairs reads every row's ids, x0 and trajectory.
func readPairs(t *testing.T, path string) (ids []string, x0, traj [][]float32) {
	t.Helper()
	ds, err := data.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	for i := 0; i < ds.NumRows(); i++ {
		row, err := ds.Row(i)
		if err != nil {
			t.Fatal(err)
		}
		a, err := row.Tensor(data.Latent)
		if err != nil {
			t.Fatal(err)
		}
		b, err := row.Tensor(data.TrajLatent)
		if err != nil {
			t.Fatal(err)
		}
		va, vb := make([]float32, a.Numel()), make([]float32, b.Numel())
		a.Decode(va, nil, nil)
		b.Decode(vb, nil, nil)
		ids, x0, traj = append(ids, row.ID), append(x0, va), append(traj, vb)
	}
	return
}

// TestODEPairsRanks: the ODE pairs made by 2 and 3 ranks (dist.Local, each integrating its share
// of every round, gathered, rank 0 writing) are the rows one rank makes, prompt for prompt, within
// fp32 tolerance; 7 prompts in batches of 2 leave some ranks without prompts in the last round.
func TestODEPairsRanks(t *testing.T) {
	job, prompts, teacher := odePairsFixture(t)
	o := ODEPairs{Count: 7, Steps: 3, Batch: 2, CFG: 1, Shift: 3, Timesteps: []float64{1000, 500}, Seed: 11, DType: kernels.F32}
	dir := t.TempDir()
	one := filepath.Join(dir, "one.arrow")
	r1, err := WriteODEPairs(nil, job, kernels.CPU(), nil, teacher, "", prompts, one, o)
	if err != nil {
		t.Fatal(err)
	}
	ids1, x01, traj1 := readPairs(t, one)
	if len(ids1) != 7 || r1.Count != 7 {
		t.Fatalf("one rank wrote %d rows (result %d), want 7", len(ids1), r1.Count)
	}
	for _, n := range []int{2, 3} {
		out := filepath.Join(dir, "ranks.arrow")
		os.Remove(out)
		res := make([]ODEPairsResult, n)
		err := dist.Run(dist.Local(n), func(rank int, c dist.Comm) error {
			var err error
			res[rank], err = WriteODEPairs(nil, job, kernels.NewCPU(1), c, teacher, "", prompts, out, o)
			return err
		})
		if err != nil {
			t.Fatalf("%d ranks: %v", n, err)
		}
		ids, x0, traj := readPairs(t, out)
		if len(ids) != 7 {
			t.Fatalf("%d ranks wrote %d rows, want 7", n, len(ids))
		}
		worst := 0.0
		for i := range ids {
			if ids[i] != ids1[i] {
				t.Fatalf("%d ranks: row %d is %s, one rank's is %s", n, i, ids[i], ids1[i])
			}
			for _, pair := range [][2][]float32{{x0[i], x01[i]}, {traj[i], traj1[i]}} {
				for k := range pair[0] {
					e := math.Abs(float64(pair[0][k]-pair[1][k])) / (1 + math.Abs(float64(pair[1][k])))
					worst = max(worst, e)
				}
			}
		}
		if !(worst <= 1e-5) {
			t.Errorf("%d ranks: rows differ from one rank's by %.3g (relative), want ≤ 1e-5", n, worst)
		}
		if res[0].NFE != r1.NFE || res[0].Count != 7 {
			t.Errorf("%d ranks: result %+v, one rank's %+v", n, res[0], r1)
		}
		t.Logf("%d ranks: 7 rows, worst difference from one rank %.3g", n, worst)
	}
}

// TestFromJobODEPairs: trainer.FromJob of a job with data.ode_pairs (dmd's regression: ode) makes
// the pairs into the run's data/ and trains on them (it failed before with "needs teacher
// trajectories"); FromJobComm on 2 ranks makes the same file, and both report a reg_loss.
func TestFromJobODEPairs(t *testing.T) {
	_, _, teacher := odePairsFixture(t)
	job := func(dir string) *config.Job {
		j := config.Defaults()
		j.Objective, j.OutDir, j.Seed = "dmd", dir, 5
		j.Model.Preset = "tiny"
		j.Data.Synth = config.Synth{Count: 6, HeldoutCount: 2, Frames: 4, Size: 16, TextDim: 8, Seed: 1}
		j.Data.TextLen, j.Data.BatchSize, j.Data.CFGDropout = 8, 2, 0
		j.Data.ODEPairs = config.ODEPairs{Count: 4, Steps: 3}
		j.Roles = map[string]config.Role{"teacher": {Weights: teacher}, "student": dpAdam(1e-4), "critic": dpAdam(1e-4)}
		j.Params = map[string]any{"denoising_timesteps": []any{1000, 500}, "cfg": 1, "generator_update_ratio": 1,
			"regression": "ode", "regression_weight": 1}
		j.Train.Steps, j.Train.CkptEvery, j.Train.LogEvery = 1, 0, 1
		return &j
	}
	one := job(t.TempDir())
	tr, loader, err := FromJob(one, kernels.CPU(), nil, nil, nil)
	if err != nil {
		t.Fatalf("FromJob with data.ode_pairs: %v", err)
	}
	m, err := tr.TrainStep()
	loader.Close()
	if err != nil {
		t.Fatal(err)
	}
	if m["reg_loss"] <= 0 {
		t.Fatalf("no reg_loss in %v", m)
	}
	pairs := filepath.Join(one.OutDir, "data", "ode_pairs.arrow")
	if one.Data.Path != pairs {
		t.Fatalf("data.path %s, want the pairs %s", one.Data.Path, pairs)
	}
	ids1, x01, _ := readPairs(t, pairs)
	if len(ids1) != 4 {
		t.Fatalf("%d pairs, want 4", len(ids1))
	}
	two := job(t.TempDir())
	err = dist.Run(dist.Local(2), func(rank int, c dist.Comm) error {
		j := *two
		tr, loader, err := FromJobComm(&j, kernels.NewCPU(1), c, nil, nil, nil)
		if err != nil {
			return err
		}
		defer loader.Close()
		m, err := tr.TrainStep()
		if err == nil && m["reg_loss"] <= 0 {
			err = fmt.Errorf("rank %d: no reg_loss in %v", rank, m)
		}
		return err
	})
	if err != nil {
		t.Fatalf("2 ranks: %v", err)
	}
	ids2, x02, _ := readPairs(t, filepath.Join(two.OutDir, "data", "ode_pairs.arrow"))
	if !slices.Equal(ids1, ids2) {
		t.Fatalf("2 ranks made pairs of %v, one rank of %v", ids2, ids1)
	}
	for i := range x01 {
		for k := range x01[i] {
			if d := math.Abs(float64(x01[i][k] - x02[i][k])); d > 1e-5*(1+math.Abs(float64(x01[i][k]))) {
				t.Fatalf("pair %d element %d: 2 ranks %g, one rank %g", i, k, x02[i][k], x01[i][k])
			}
		}
	}
}

// The demo names its teacher by a relative path (RUN/teacher/...) and its saved job.yaml by the
// absolute one: `fewstep train --resume RUN` must find the pairs already made, not try to make
// them again from data.path, which by then is the pairs file ("no prompts to make the pairs
// from"). A job whose pairs settings did change says so, naming the file.
func TestODEPairsReusedOnResume(t *testing.T) {
	_, prompts, teacher := odePairsFixture(t)
	t.Chdir(filepath.Dir(teacher))
	out := t.TempDir()
	j := config.Defaults()
	j.Objective, j.OutDir, j.Seed = "dmd", out, 5
	j.Model.Preset = "tiny"
	j.Data.Path, j.Data.TextLen = prompts, 8
	j.Data.ODEPairs = config.ODEPairs{Count: 2, Steps: 2}
	j.Roles = map[string]config.Role{"teacher": {Weights: filepath.Base(teacher)}, "student": dpAdam(1e-4), "critic": dpAdam(1e-4)}
	j.Params = map[string]any{"denoising_timesteps": []any{1000, 500}, "cfg": 1}
	if err := EnsureODEPairs(nil, &j, kernels.CPU(), nil); err != nil {
		t.Fatal(err)
	}
	pairs := filepath.Join(out, "data", "ode_pairs.arrow")
	st, err := os.Stat(pairs)
	if err != nil || j.Data.Path != pairs {
		t.Fatalf("pairs %s: %v; data.path %s", pairs, err, j.Data.Path)
	}
	saved := filepath.Join(out, "job.yaml")
	if err := config.Save(&j, saved); err != nil {
		t.Fatal(err)
	}
	t.Chdir(t.TempDir()) // the resume runs elsewhere, from the saved job (absolute paths)
	resumed, err := config.Load(saved, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := EnsureODEPairs(nil, resumed, kernels.CPU(), nil); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if st2, err := os.Stat(pairs); err != nil || resumed.Data.Path != pairs || !st2.ModTime().Equal(st.ModTime()) {
		t.Errorf("resume: data.path %s, pairs %v (%v): want the same file, not made again", resumed.Data.Path, st2, err)
	}
	resumed.Data.ODEPairs.Steps = 3
	if err := EnsureODEPairs(nil, resumed, kernels.CPU(), nil); err == nil || !strings.Contains(err.Error(), "made with other settings") {
		t.Errorf("changed steps with data.path = the pairs: %v, want an error that says the settings differ", err)
	}
}
