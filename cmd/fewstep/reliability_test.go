package main

import (
	"errors"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
)

// cli runs the fewstep command in a child process (the test binary as the CLI) and returns its
// combined output and exit code.
func cli(t *testing.T, args ...string) (string, int) {
	t.Helper()
	c := exec.Command(os.Args[0], args...)
	c.Env = append(os.Environ(), cliEnv+"=1")
	out, err := c.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	default:
		t.Fatalf("fewstep %s: %v", strings.Join(args, " "), err)
		return "", -1
	}
}

// runErr is run for a command that must fail: its error.
func runErr(t *testing.T, args ...string) error {
	t.Helper()
	resetFlags(rootCmd)
	rootCmd.SetArgs(args)
	rootCmd.SetOut(&strings.Builder{})
	rootCmd.SetErr(&strings.Builder{})
	err := rootCmd.Execute()
	if err == nil {
		t.Fatalf("fewstep %s: no error", strings.Join(args, " "))
	}
	return err
}

// tinyTrain is a flowmatch job of a tiny model on a small synthetic set.
func tinyTrain(out string, extra ...string) []string {
	return append([]string{"train", "--set", "objective=flowmatch", "--set", "device=cpu", "--set", "model.preset=tiny",
		"--set", "out_dir=" + out, "--set", "seed=5",
		"--set", "data.synth={count: 8, heldout_count: 2, frames: 2, size: 16, text_dim: 8, seed: 1}",
		"--set", "data.text_len=8", "--set", "data.batch_size=2", "--set", "roles.student.lr=1e-4",
		"--set", "train.steps=6", "--set", "train.ckpt_every=1", "--set", "sample.count=0"}, extra...)
}

// The divergence test at the command line: a learning rate far too high stops `fewstep train` with
// a non-zero exit and an error naming the step, the role and the loss; every checkpoint on disk
// holds finite weights that load.
func TestTrainDivergenceExitsNonZero(t *testing.T) {
	out := filepath.Join(t.TempDir(), "run")
	txt, code := cli(t, tinyTrain(out, "--set", "roles.student.lr=1e30", "--set", "train.clip_norm=0", "--set", "train.steps=20")...)
	if code == 0 || !strings.Contains(txt, "training diverged") || !strings.Contains(txt, "student") || !strings.Contains(txt, "loss") {
		t.Fatalf("exit %d, output:\n%s", code, txt)
	}
	ckpts, _ := filepath.Glob(filepath.Join(out, "checkpoints", "step-*"))
	if len(ckpts) == 0 {
		t.Fatalf("no checkpoint before the divergence:\n%s", txt)
	}
	cfg, _ := models.Preset("tiny")
	cfg.InDim, cfg.OutDim, cfg.TextDim, cfg.TextLen = 48, 48, 8, 8
	for _, c := range ckpts {
		m := models.New(kernels.CPU(), cfg, false)
		if err := m.Load(filepath.Join(c, "student.safetensors")); err != nil { // Load refuses NaN/Inf
			t.Fatalf("%s: %v", c, err)
		}
	}
}

// `sample` and `export` refuse weights with a NaN, naming the key.
func TestSampleExportRefuseNonFinite(t *testing.T) {
	dir, held, weights, m := sampleFixture(t)
	m.W.F32[m.Table[3].Offset+1] = float32(math.NaN())
	if err := m.Save(weights, kernels.F32); err != nil {
		t.Fatal(err)
	}
	key := m.Table[3].Name
	err := runErr(t, "sample", "--weights", weights, "--prompts", held, "--sampler", "euler", "--steps", "2",
		"--count", "1", "--out", filepath.Join(dir, "s"), "--device", "cpu", "--set", "data.text_len=8", "--set", "model.preset=tiny", "--set", "out_dir="+dir)
	if !strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), "not finite") {
		t.Errorf("sample: %v", err)
	}
	err = runErr(t, "export", "--weights", weights, "--out", filepath.Join(dir, "e"), "--set", "data.text_len=8")
	if !strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), "not finite") {
		t.Errorf("export: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "e", "diffusion_pytorch_model.safetensors")); err == nil {
		t.Errorf("export wrote the NaN weights")
	}
}

// NaN and Inf in number flags are refused before any work, naming the flag.
func TestFlagsRefuseNonFinite(t *testing.T) {
	dir, held, weights, _ := sampleFixture(t)
	base := []string{"sample", "--weights", weights, "--prompts", held, "--sampler", "fewstep", "--steps", "2",
		"--count", "1", "--out", filepath.Join(dir, "s"), "--device", "cpu", "--set", "data.text_len=8", "--set", "out_dir=" + dir}
	for _, c := range [][]string{{"--cfg", "NaN"}, {"--shift", "+Inf"}, {"--timesteps", "1000,nan"}, {"--cfg", "-infinity"}} {
		err := runErr(t, append(append([]string{}, base...), c...)...)
		if !strings.Contains(err.Error(), c[0]) || !strings.Contains(err.Error(), "not a finite number") {
			t.Errorf("%v: %v", c, err)
		}
	}
	err := runErr(t, "eval", "--teacher-cfg", "nan")
	if !strings.Contains(err.Error(), "--teacher-cfg") {
		t.Errorf("eval --teacher-cfg nan: %v", err)
	}
}

// Sizes from flags that the machine cannot hold are refused before anything is allocated, saying
// what would have been needed.
func TestHugeSizesRefused(t *testing.T) {
	dir, held, weights, _ := sampleFixture(t)
	base := []string{"sample", "--weights", weights, "--prompts", held, "--sampler", "euler", "--steps", "1",
		"--count", "1", "--out", filepath.Join(dir, "s"), "--device", "cpu", "--set", "data.text_len=8", "--set", "out_dir=" + dir}
	for _, c := range []struct {
		flags []string
		want  string
	}{
		{[]string{"--frames", "1000000000"}, "limit"},
		{[]string{"--preview-scale", "100000"}, "scale"},
	} {
		err := runErr(t, append(append([]string{}, base...), c.flags...)...)
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want it to say %q", c.flags, err, c.want)
		}
	}
	err := runErr(t, "data", "synth", "--out", filepath.Join(dir, "big"), "--count", "100000000")
	if !strings.Contains(err.Error(), "limit") {
		t.Errorf("data synth --count 1e8: %v", err)
	}
}
