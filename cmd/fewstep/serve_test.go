package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/pipeline"
)

// servedWindow runs serve's flag parsing and openServe on an export folder and returns the KV
// window the pipeline samples with (local, sink) or openServe's error.
func servedWindow(t *testing.T, dir string, args ...string) (int, int, error) {
	t.Helper()
	resetFlags(rootCmd)
	if err := serveCmd.ParseFlags(args); err != nil {
		t.Fatal(err)
	}
	p, err := openServe(serveCmd, dir)
	if err != nil {
		return 0, 0, err
	}
	defer p.Close()
	return p.Recipe.LocalFrames, p.Recipe.SinkFrames, nil
}

// `fewstep serve` streams with the job's KV window as sample and eval do (pipeline.JobWindow): a
// causal student exported with an unbounded cache (recipe.json: window 0) is served with the window
// of --set, of its folder's fewstep_job.yaml, or of --config; no window in any leaves the recipe's,
// and a window the cache refuses is an error.
func TestServeJobWindow(t *testing.T) {
	dir := t.TempDir()
	j := config.Defaults()
	j.Objective, j.Params = "selfforcing", map[string]any{}
	j.Model.Causal, j.Model.ChunkFrames = true, 2
	j.Data.Synth.Size, j.Data.Synth.Frames, j.Data.Synth.TextDim, j.Data.TextLen = 16, 4, 8, 4
	rec, err := pipeline.WriteRecipe(dir, &j)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := models.Preset("tiny")
	cfg.InDim, cfg.OutDim, cfg.TextDim, cfg.TextLen = rec.LatentChannels, rec.LatentChannels, rec.TextDim, rec.TextLen
	m := models.New(kernels.CPU(), cfg, false)
	m.InitRandom(3, 0.05)
	if err := m.Save(filepath.Join(dir, "diffusion_pytorch_model.safetensors"), kernels.F32); err != nil {
		t.Fatal(err)
	}
	if err := models.WriteWanConfig(filepath.Join(dir, "config.json"), cfg); err != nil {
		t.Fatal(err)
	}
	if err := config.Save(&j, filepath.Join(dir, "fewstep_job.yaml")); err != nil {
		t.Fatal(err)
	}
	if rec.LocalFrames != 0 || !rec.Causal {
		t.Fatalf("recipe: window %d, causal %v", rec.LocalFrames, rec.Causal)
	}
	check := func(what string, wantLocal, wantSink int, args ...string) {
		t.Helper()
		l, s, err := servedWindow(t, dir, args...)
		if err != nil || l != wantLocal || s != wantSink {
			t.Errorf("%s: window %d + %d, %v; want %d + %d", what, l, s, err, wantLocal, wantSink)
		}
	}
	check("the export's job, no window", 0, 0)
	check("--set", 4, 1, "--set", "model.local_attn_frames=4", "--set", "model.sink_frames=1")
	if _, _, err := servedWindow(t, dir, "--set", "model.local_attn_frames=4", "--set", "model.sink_frames=4"); err == nil ||
		!strings.Contains(err.Error(), "sink_frames") {
		t.Errorf("sink 4 in a 4-frame window: %v, want the sink refused", err)
	}
	other := filepath.Join(t.TempDir(), "job.yaml")
	j.Model.LocalAttnFrames = 6
	if err := config.Save(&j, other); err != nil {
		t.Fatal(err)
	}
	check("--config", 6, 0, "--config", other)
	if err := config.Save(&j, filepath.Join(dir, "fewstep_job.yaml")); err != nil {
		t.Fatal(err)
	}
	check("the export's job with a window", 6, 0)
	check("the export's job and --set", 2, 0, "--set", "model.local_attn_frames=2")
}
