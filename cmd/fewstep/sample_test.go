package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/data"
	"github.com/fewstep/fewstep/eval"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/sampler"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// sampleFixture writes a small synthetic dataset and a random tiny checkpoint for it.
func sampleFixture(t *testing.T) (dir, held, weights string, m *models.DiT) {
	t.Helper()
	dir = t.TempDir()
	files, err := data.WriteSynth(filepath.Join(dir, "data"), data.SynthOptions{Count: 2, Heldout: 6, Frames: 4, Size: 16, TextDim: 8, Seed: 3}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := models.Preset("tiny")
	cfg.InDim, cfg.OutDim, cfg.TextDim, cfg.TextLen = 48, 48, 8, 8
	m = models.New(kernels.CPU(), cfg, false)
	m.InitRandom(4, 0.02)
	weights = filepath.Join(dir, "w", "student.safetensors")
	os.MkdirAll(filepath.Dir(weights), 0o755)
	if err := m.Save(weights, kernels.F32); err != nil {
		t.Fatal(err)
	}
	return dir, files.Heldout, weights, m
}

// resetFlags puts every flag of every command back to its default: cobra keeps the values of an
// earlier Execute in the same process.
func resetFlags(c *cobra.Command) {
	c.Flags().VisitAll(func(f *pflag.Flag) {
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			sv.Replace(nil)
		} else {
			f.Value.Set(f.DefValue)
		}
		f.Changed = false
	})
	for _, sub := range c.Commands() {
		resetFlags(sub)
	}
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	resetFlags(rootCmd)
	var sb strings.Builder
	rootCmd.SetArgs(args)
	rootCmd.SetOut(&sb)
	rootCmd.SetErr(&strings.Builder{})
	if err := rootCmd.Execute(); err != nil {
		t.Fatalf("fewstep %s: %v", strings.Join(args, " "), err)
	}
	return sb.String()
}

// `fewstep sample` then `fewstep eval --samples`: the files, the previews, and latents equal to the
// library's sampler on the same prompts and seeds.
func TestSampleAndEvalCommands(t *testing.T) {
	dir, held, weights, m := sampleFixture(t)
	out := filepath.Join(dir, "samples")
	run(t, "sample", "--weights", weights, "--prompts", held, "--sampler", "euler", "--steps", "2", "--cfg", "2.5",
		"--count", "3", "--batch", "2", "--seed", "7", "--out", out, "--device", "cpu",
		"--set", "data.text_len=8", "--set", "model.preset=tiny", "--set", "out_dir="+dir)
	st, meta, err := models.ReadSafetensors(filepath.Join(out, "samples.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	lat := st["latents"]
	if want := []int{3, 48, 4, 4, 4}; len(lat.Shape) != 5 || lat.Shape[0] != 3 || lat.Shape[1] != 48 || lat.Shape[2] != 4 {
		t.Fatalf("latents %v, want %v", lat.Shape, want)
	}
	if meta["sampler"] != "euler" || meta["steps"] != "2" {
		t.Fatalf("metadata %v", meta)
	}
	set, _ := eval.LoadSet(held, 8)
	net := sampler.NewDiTNet(m, 0)
	ref, _, _, err := eval.Generate(net, set, 3, 3, 7, sampler.Options{Method: sampler.Euler, Steps: 2, CFG: 2.5, Shift: 1}, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range ref {
		if d := ref[i] - lat.Data[i]; d > 1e-5 || d < -1e-5 {
			t.Fatalf("latent %d: command %g, library %g", i, lat.Data[i], ref[i])
		}
	}
	man, _ := os.ReadFile(filepath.Join(out, "manifest.jsonl"))
	lines := strings.Split(strings.TrimSpace(string(man)), "\n")
	if len(lines) != 3 {
		t.Fatalf("manifest has %d lines", len(lines))
	}
	var l manifestLine
	if err := json.Unmarshal([]byte(lines[2]), &l); err != nil || l.Index != 2 || l.Seed != 9 || l.Caption != set.Captions[2] || l.Steps != 2 || l.CFG != 2.5 || l.NFE != 4 {
		t.Fatalf("manifest line %+v (%v)", l, err)
	}
	for _, f := range []string{"0000.gif", "0002.png"} {
		if _, err := os.Stat(filepath.Join(out, "previews", f)); err != nil {
			t.Fatal(err)
		}
	}
	txt := run(t, "eval", "--samples", filepath.Join(out, "samples.safetensors"), "--heldout", held,
		"--set", "data.text_len=8", "--set", "out_dir="+dir)
	if !strings.Contains(txt, "CondAcc") {
		t.Fatalf("eval output: %s", txt)
	}
	var rec struct {
		Metrics eval.Metrics `json:"metrics"`
	}
	b, err := os.ReadFile(filepath.Join(out, "metrics.json"))
	if err != nil || json.Unmarshal(b, &rec) != nil || rec.Metrics.N != 3 || rec.Metrics.FD <= 0 {
		t.Fatalf("metrics.json: %v %s", err, b)
	}
	// the causal student streamed to twice the dataset's length (model.chunk_frames 2)
	long := filepath.Join(dir, "long")
	run(t, "sample", "--weights", weights, "--prompts", held, "--sampler", "stream", "--steps", "2", "--frames", "8",
		"--count", "2", "--out", long, "--device", "cpu", "--set", "model.chunk_frames=2", "--set", "model.causal=true",
		"--set", "data.text_len=8", "--set", "model.preset=tiny", "--set", "out_dir="+dir)
	st, _, err = models.ReadSafetensors(filepath.Join(long, "samples.safetensors"))
	if err != nil || st["latents"].Shape[2] != 8 {
		t.Fatalf("streamed samples: %v %v", err, st["latents"].Shape)
	}
	txt = run(t, "eval", "--samples", filepath.Join(long, "samples.safetensors"), "--heldout", held,
		"--set", "data.text_len=8", "--set", "out_dir="+dir)
	if !strings.Contains(txt, "CondAcc") {
		t.Fatalf("eval of the long samples: %s", txt)
	}
}

// `fewstep eval --teacher --student`: the table files.
func TestEvalTableCommand(t *testing.T) {
	dir, held, weights, _ := sampleFixture(t)
	out := filepath.Join(dir, "table")
	txt := run(t, "eval", "--teacher", weights, "--student", weights, "--heldout", held, "--count", "2", "--out", out,
		"--student-sampler", "fewstep", "--student-timesteps", "1000,750,500,250", "--device", "cpu",
		"--set", "data.text_len=8", "--set", "eval.teacher_steps=3", "--set", "eval.steps=[1,2]", "--set", "out_dir="+dir)
	if !strings.Contains(txt, "student  fewstep") || !strings.Contains(txt, "teacher  euler") {
		t.Fatalf("table:\n%s", txt)
	}
	var tab struct {
		Rows []eval.Row `json:"rows"`
	}
	b, _ := os.ReadFile(filepath.Join(out, "table.json"))
	if err := json.Unmarshal(b, &tab); err != nil || len(tab.Rows) != 6 {
		t.Fatalf("table.json: %v, %d rows\n%s", err, len(tab.Rows), b)
	}
	// --merge: a second run with another student label joins the first; the teacher rows once
	out2 := filepath.Join(dir, "table2")
	run(t, "eval", "--teacher", weights, "--students", "s1="+weights, "--heldout", held, "--count", "2", "--out", out2,
		"--student-sampler", "fewstep", "--student-timesteps", "1000,750,500,250", "--device", "cpu",
		"--set", "data.text_len=8", "--set", "eval.teacher_steps=3", "--set", "eval.steps=[1,2]", "--set", "out_dir="+dir)
	merged := filepath.Join(dir, "merged")
	txt = run(t, "eval", "--merge", filepath.Join(out, "table.json"), "--merge", filepath.Join(out2, "table.json"), "--out", merged)
	b, _ = os.ReadFile(filepath.Join(merged, "table.json"))
	if err := json.Unmarshal(b, &tab); err != nil || len(tab.Rows) != 8 || tab.Rows[4].Model != "s1" || tab.Rows[7].Model != "s1" {
		t.Fatalf("merged table.json: %v, %d rows\n%s", err, len(tab.Rows), txt)
	}
	if _, _, err := runCLI(t, "eval", "--merge", filepath.Join(out, "table.json")); err == nil || !strings.Contains(err.Error(), "--out") {
		t.Fatalf("--merge without --out: %v", err)
	}
}

// Flag values no sampler takes are refused before anything is loaded (--from names nothing here),
// each with an error naming the flag: they used to be dropped for the default (a negative count,
// steps, frames, batch), fail only after sampling (--preview-scale 0), or be printed as the
// sampler used (--sampler nope).
func TestSampleBadFlags(t *testing.T) {
	for _, c := range []struct{ flag, val, want string }{
		{"--sampler", "nope", `--sampler: sampler "nope" is not one of`},
		{"--steps", "-3", "--steps -3: want ≥ 0"},
		{"--count", "-1", "--count -1: want ≥ 0"},
		{"--frames", "-1", "--frames -1: want ≥ 0"},
		{"--grid-n", "-1", "--grid-n -1: want ≥ 0"},
		{"--batch", "0", "--batch 0: want ≥ 1"},
		{"--preview-scale", "0", "--preview-scale 0: want ≥ 1"},
		{"--context-noise", "5", "--context-noise 5: want a σ in [0, 1)"},
		{"--context-noise", "-0.1", "--context-noise -0.1: want a σ in [0, 1)"},
	} {
		_, _, err := runCLI(t, "sample", "--from", filepath.Join(t.TempDir(), "none"), c.flag, c.val)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("sample %s %s: %v, want an error with %q", c.flag, c.val, err, c.want)
		}
	}
}

// The same for eval: each bad value is refused with the flag's name before any file is read.
func TestEvalBadFlags(t *testing.T) {
	for _, c := range []struct{ flag, val, want string }{
		{"--student-sampler", "nope", `--student-sampler: sampler "nope" is not one of`},
		{"--count", "-2", "--count -2: want ≥ 0"},
		{"--seeds", "-1", "--seeds -1: want ≥ 0"},
		{"--long-frames", "-4", "--long-frames -4: want ≥ 0"},
		{"--batch", "0", "--batch 0: want ≥ 1"},
		{"--teacher-cfg", "-1", "--teacher-cfg -1: want a finite number ≥ 0"},
		{"--student-shift", "-0.5", "--student-shift -0.5: want a finite number ≥ 0"},
	} {
		_, _, err := runCLI(t, "eval", "--teacher", filepath.Join(t.TempDir(), "none.safetensors"), c.flag, c.val)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("eval %s %s: %v, want an error with %q", c.flag, c.val, err, c.want)
		}
	}
}
