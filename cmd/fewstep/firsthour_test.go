package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/trainer"
)

// A new user's first hour, shortened: `fewstep demo` in a directory outside the repository (its job
// and teacher are built into the binary), then `sample --from RUN --caption` and `export --from
// RUN` with no other flag, in yet another directory. The checkpoint describes itself: config.json,
// latent.json, and a job.yaml with absolute paths.
func TestDemoSampleExportFromAnyDirectory(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a shortened demo")
	}
	work := t.TempDir()
	t.Chdir(work)
	shortDemo(t, "run", "[1, 4]")
	runDir := filepath.Join(work, "run")
	ckpt, err := trainer.ResolveCheckpoint(runDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"config.json", "latent.json", "recipe.json", "job.yaml", "student.safetensors"} {
		if !fileExists(filepath.Join(ckpt, f)) {
			t.Fatalf("checkpoint %s has no %s", ckpt, f)
		}
	}
	job, err := config.Load(filepath.Join(ckpt, "job.yaml"), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{job.OutDir, job.Model.Config, job.Data.Path, job.Roles["teacher"].Weights} {
		if !filepath.IsAbs(p) || !fileExists(p) && p != job.OutDir {
			t.Errorf("saved job path %q is not an absolute path to a file", p)
		}
	}
	if !strings.HasPrefix(job.Roles["teacher"].Weights, runDir) {
		t.Errorf("the built-in teacher was not written into the run folder: %s", job.Roles["teacher"].Weights)
	}
	lat, err := trainer.ReadLatent(ckpt)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{48, 8, 4, 4}; !equalInts(lat.Shape, want) || lat.TextLen != 8 || lat.TextDim != 32 || !lat.Synthetic {
		t.Errorf("latent.json %+v, want shape %v, text 8×32, synthetic", lat, want)
	}

	t.Chdir(t.TempDir()) // elsewhere again: only the run folder's path is given
	out := run(t, "sample", "--from", runDir, "--caption", "a green cross moving down")
	if !strings.Contains(out, "1 videos [48, 8, 4, 4]") {
		t.Errorf("sample: %s", out)
	}
	prev := filepath.Join(runDir, "samples", "previews", "0000.png")
	if !fileExists(prev) {
		t.Errorf("sample: no preview %s", prev)
	}
	// Scoring that one video: CondAcc and stability; FD needs ≥ 2 videos, so it is "-", not an error.
	out = run(t, "eval", "--samples", filepath.Join(runDir, "samples", "samples.safetensors"), "--heldout", filepath.Join(runDir, "data", "heldout.arrow"))
	if !strings.Contains(out, "eval: 1 videos fewstep") || !strings.Contains(out, "FD -  stability") {
		t.Errorf("eval of one sample: %s", out)
	}
	out = run(t, "export", "--from", runDir)
	exp := filepath.Join(runDir, "export")
	for _, f := range []string{"diffusion_pytorch_model.safetensors", "config.json", "fewstep_job.yaml", "latent.json", "recipe.json"} {
		if !fileExists(filepath.Join(exp, f)) {
			t.Fatalf("export: no %s (%s)", f, out)
		}
	}
	ej, err := config.Load(filepath.Join(exp, "fewstep_job.yaml"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if ej.Objective != "dmd" || ej.Train.Steps != 2 {
		t.Errorf("export recorded job %s with %d steps, want the demo's dmd job of 2 steps", ej.Objective, ej.Train.Steps)
	}
	cfg, err := models.ReadWanConfig(filepath.Join(exp, "config.json"))
	if err != nil || cfg.Dim != 256 || cfg.TextLen != 8 {
		t.Errorf("exported config.json: %+v, %v", cfg, err)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// shortDemo runs `fewstep demo --out out` shortened to seconds: 16 training videos, 4 ODE pairs,
// 2 steps, evaluated on 2 prompts at the student step counts evalSteps (a YAML list).
func shortDemo(t *testing.T, out, evalSteps string) {
	t.Helper()
	run(t, "demo", "--out", out,
		"--set", "data.synth={count: 16, heldout_count: 8, frames: 8, size: 16, text_dim: 32, seed: 0}",
		"--set", "data.ode_pairs={count: 4, steps: 2}", "--set", "data.batch_size=2",
		"--set", "train.steps=2", "--set", "train.ckpt_every=0", "--set", "sample.count=2",
		"--set", "eval.count=2", "--set", "eval.teacher_steps=2", "--set", "eval.steps="+evalSteps)
}
