package main

import (
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/dist"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/trainer"
)

// launchArgs is a small flowmatch job with an EMA, at a batch of batch per rank.
func launchArgs(out string, batch int) []string {
	return []string{"train", "--set", "objective=flowmatch", "--set", "model.preset=tiny",
		"--set", "out_dir=" + out, "--set", "seed=7",
		"--set", "data.synth={count: 8, heldout_count: 2, frames: 4, size: 16, text_dim: 8, seed: 1}",
		"--set", "data.text_len=8", "--set", "data.batch_size=" + strconv.Itoa(batch), "--set", "data.cfg_dropout=0.25",
		"--set", "roles.student.lr=1e-3", "--set", "roles.student.ema_decay=0.9",
		"--set", "train.steps=3", "--set", "train.ckpt_every=0", "--set", "train.log_every=1", "--set", "sample.count=0"}
}

// finalWeights reads a run's last checkpoint of role.
func finalWeights(t *testing.T, run, role string) map[string][]float32 {
	t.Helper()
	dir, err := trainer.ResolveCheckpoint(run)
	if err != nil {
		t.Fatal(err)
	}
	ts, _, err := models.ReadSafetensors(filepath.Join(dir, role+".safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]float32{}
	for k, v := range ts {
		out[k] = v.Data
	}
	return out
}

// TestTrainDevicesCPU: `fewstep train --devices cpu:2` of a small job runs end to end through the
// launch (two CPU ranks, dist.Local) and ends with the weights of the same job run in process by
// the library (trainer.FromJobComm on dist.Local(2)) bit for bit, and with the weights of one rank
// at twice the batch within fp32 tolerance (data parallel = a bigger batch).
func TestTrainDevicesCPU(t *testing.T) {
	dir := t.TempDir()
	two, one, lib := filepath.Join(dir, "two"), filepath.Join(dir, "one"), filepath.Join(dir, "lib")
	run(t, append(launchArgs(two, 2), "--devices", "cpu:2")...)
	run(t, append(launchArgs(one, 4), "--device", "cpu")...)

	// The library, in process: the job as the CLI resolved it.
	job, err := config.Load(filepath.Join(two, "job.yaml"), nil)
	if err != nil {
		t.Fatal(err)
	}
	job.OutDir = lib
	job.Data.Path, job.Data.Heldout = "", ""
	err = dist.Run(dist.Local(2), func(rank int, c dist.Comm) error {
		tr, loader, err := trainer.FromJobComm(cloneJob(job), kernels.NewCPU(1), c, nil, nil, nil)
		if err != nil {
			return err
		}
		defer loader.Close()
		return tr.Run()
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, role := range []string{"student", "ema"} {
		w2, w1, wl := finalWeights(t, two, role), finalWeights(t, one, role), finalWeights(t, lib, role)
		var num, den float64
		for k, v := range w2 {
			if len(wl[k]) != len(v) || len(w1[k]) != len(v) {
				t.Fatalf("%s %s: %d, %d, %d values", role, k, len(v), len(wl[k]), len(w1[k]))
			}
			for i := range v {
				if math.Float32bits(v[i]) != math.Float32bits(wl[k][i]) {
					t.Fatalf("%s %s[%d]: --devices cpu:2 gives %g, the library's 2 ranks %g", role, k, i, v[i], wl[k][i])
				}
				d := float64(v[i] - w1[k][i])
				num += d * d
				den += float64(w1[k][i]) * float64(w1[k][i])
			}
		}
		rel := math.Sqrt(num / den)
		if !(rel < 1e-5) {
			t.Errorf("%s: --devices cpu:2 (batch 2 per rank) vs one rank (batch 4): ‖Δw‖/‖w‖ = %.3g, want < 1e-5", role, rel)
		}
		t.Logf("%s: bit-identical to the library's 2 ranks; vs one rank at batch 4: ‖Δw‖/‖w‖ = %.3g", role, rel)
	}
}

// TestTrainDevicesErrors: device lists the node cannot honour are errors that say why, before any
// training: a GPU that does not exist (or no GPU at all here), a bad form, --device with
// --devices, CPU ranks under a multi-process launcher.
func TestTrainDevicesErrors(t *testing.T) {
	dir := t.TempDir()
	base := launchArgs(filepath.Join(dir, "x"), 2)
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want []string
	}{
		{[]string{"--devices", "cuda:0,7"}, nil, []string{`devices "cuda:0,7"`}},
		{[]string{"--devices", "cuda:x"}, nil, []string{`"x" is not a GPU ordinal`}},
		{[]string{"--devices", "cpu:2", "--device", "cpu"}, nil, []string{"give one"}},
		{[]string{"--devices", "cpu:2"}, map[string]string{"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}, []string{"CPU ranks run in one process", "torchrun", "2 processes"}},
		{[]string{"--set", "device=cuda:0,1,9"}, nil, []string{`devices "cuda:0,1,9"`}},
		{[]string{"--devices", "cpu:2", "--launcher", "pbs"}, nil, []string{`--launcher "pbs"`}},
	} {
		for k, v := range tc.env {
			t.Setenv(k, v)
		}
		resetFlags(rootCmd)
		rootCmd.SetArgs(append(append([]string(nil), base...), tc.args...))
		rootCmd.SetOut(&strings.Builder{})
		rootCmd.SetErr(&strings.Builder{})
		err := rootCmd.Execute()
		for k := range tc.env {
			os.Unsetenv(k) // t.Setenv restores the original at the end
		}
		if err == nil {
			t.Errorf("%v: no error", tc.args)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: error %q does not say %q", tc.args, err, w)
			}
		}
	}
}

// TestBenchTrainDevicesErrors: bench train --devices refuses CPU ranks and the plain step, and
// says why a GPU list cannot run here.
func TestBenchTrainDevicesErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--objective", "dmd", "--devices", "cpu:2"}, "bench train times GPUs"},
		{[]string{"--devices", "cuda:0"}, "--devices runs an objective's trainer step"},
		{[]string{"--objective", "dmd", "--devices", "cuda:x"}, `"x" is not a GPU ordinal`},
	} {
		resetFlags(rootCmd)
		args := append([]string{"bench", "train", "--preset", "tiny", "--frames", "2", "--height", "8", "--width", "8", "--ctx", "4"}, tc.args...)
		rootCmd.SetArgs(args)
		var sb strings.Builder
		rootCmd.SetOut(&sb)
		rootCmd.SetErr(&strings.Builder{})
		err := rootCmd.Execute()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error saying %q", tc.args, err, tc.want)
		}
	}
}

// An unknown objective or a bad parameter of one is an error before anything is written: no
// synthetic set in the run folder (it was made first, then the objective refused).
func TestTrainObjectiveCheckedFirst(t *testing.T) {
	for _, c := range []struct{ set, want string }{
		{"objective=nope", `objective: "nope" is not registered`},
		{"params.nope=1", "nope"},
	} {
		out := filepath.Join(t.TempDir(), "run")
		_, _, err := runCLI(t, "train", "--set", "objective=flowmatch", "--set", "roles.student.lr=1e-4", "--set", c.set, "--set", "out_dir="+out)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("--set %s: %v, want an error with %q", c.set, err, c.want)
		}
		if _, err := os.Stat(out); err == nil {
			t.Errorf("--set %s: the run folder %s was made before the objective was checked", c.set, out)
		}
	}
}
