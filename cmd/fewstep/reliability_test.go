package main

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fewstep/fewstep/data"
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

// start runs the fewstep command in a child process without waiting; its output goes to the
// returned builder.
func start(t *testing.T, args ...string) (*exec.Cmd, *strings.Builder) {
	t.Helper()
	c := exec.Command(os.Args[0], args...)
	c.Env = append(os.Environ(), cliEnv+"=1")
	var out strings.Builder
	c.Stdout, c.Stderr = &out, &out
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	return c, &out
}

// waitFor polls until path exists (or fails the test after 60 s).
func waitFor(t *testing.T, path string) {
	t.Helper()
	for i := 0; i < 6000; i++ {
		if _, err := os.Stat(path); err == nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s never appeared", path)
}

// Two runs started on one folder: the second is refused at once, naming the first; the first
// finishes unharmed (exit 0, every step once in metrics.jsonl, its last checkpoint restorable).
func TestTwoRunsOneFolder(t *testing.T) {
	out := filepath.Join(t.TempDir(), "run")
	steps := 60
	a, aout := start(t, tinyTrain(out, "--set", "train.steps="+strconv.Itoa(steps), "--set", "train.ckpt_every=5", "--set", "train.log_every=1")...)
	waitFor(t, filepath.Join(out, "checkpoints", "latest"))
	txt, code := cli(t, tinyTrain(out, "--set", "train.steps="+strconv.Itoa(steps))...)
	if code == 0 || !strings.Contains(txt, "in use by pid "+strconv.Itoa(a.Process.Pid)) {
		t.Fatalf("second run on the folder: exit %d\n%s", code, txt)
	}
	if err := a.Wait(); err != nil {
		t.Fatalf("first run: %v\n%s", err, aout)
	}
	b, _ := os.ReadFile(filepath.Join(out, "metrics.jsonl"))
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != steps {
		t.Fatalf("metrics.jsonl has %d lines, want %d", len(lines), steps)
	}
	for i, l := range lines {
		if !strings.HasPrefix(l, fmt.Sprintf(`{"step":%d,`, i+1)) {
			t.Fatalf("metrics.jsonl line %d: %s", i+1, l)
		}
	}
	if _, err := os.Stat(filepath.Join(out, "run.lock")); !os.IsNotExist(err) {
		t.Fatalf("the finished run left its lock")
	}
	if txt, code := cli(t, tinyTrain(out, "--resume", out, "--set", "train.steps="+strconv.Itoa(steps+2))...); code != 0 {
		t.Fatalf("resuming the first run: exit %d\n%s", code, txt)
	}
}

// --resume of a copied run folder continues in the copy (its job.yaml names the original's
// out_dir); --resume of a folder that is not a run is an error that says what was expected, and
// writes nothing.
func TestResumeFolders(t *testing.T) {
	tmp := t.TempDir()
	orig := filepath.Join(tmp, "orig")
	if txt, code := cli(t, tinyTrain(orig, "--set", "train.steps=2")...); code != 0 {
		t.Fatalf("exit %d\n%s", code, txt)
	}
	cp := filepath.Join(tmp, "copy")
	if err := exec.Command("cp", "-a", orig, cp).Run(); err != nil {
		t.Skip("no cp -a")
	}
	before, _ := os.ReadFile(filepath.Join(orig, "metrics.jsonl"))
	if txt, code := cli(t, "train", "--resume", cp, "--set", "train.steps=4"); code != 0 {
		t.Fatalf("resume of the copy: exit %d\n%s", code, txt)
	}
	if after, _ := os.ReadFile(filepath.Join(orig, "metrics.jsonl")); string(after) != string(before) {
		t.Fatalf("--resume of the copy wrote into the original")
	}
	if _, err := os.Stat(filepath.Join(cp, "checkpoints", "step-000004")); err != nil {
		t.Fatalf("the copy did not continue: %v", err)
	}
	empty := filepath.Join(tmp, "notarun")
	os.MkdirAll(empty, 0o755)
	txt, code := cli(t, "train", "--resume", empty)
	if code == 0 || !strings.Contains(txt, "not a run: expected a run folder") {
		t.Fatalf("--resume of an empty folder: exit %d\n%s", code, txt)
	}
	if ents, _ := os.ReadDir(empty); len(ents) != 0 {
		t.Fatalf("--resume of a non-run wrote %v", ents)
	}
	if _, err := os.Stat("runs"); err == nil {
		t.Fatalf("--resume of a non-run started a default job in ./runs")
	}
}

// Twenty kill -9s at random moments of a run with a checkpoint every step (each after the run
// made progress, 0-60 ms after a checkpoint appeared): each time the run
// resumes (--take-over of the dead process's lock) from its latest checkpoint, and the end is the
// straight run's weights bit for bit. Under -short, five kills.
func TestKill9ResumesBitExact(t *testing.T) {
	kills, steps := 20, 60
	if testing.Short() {
		kills = 5
	}
	tmp := t.TempDir()
	straight := filepath.Join(tmp, "straight")
	if txt, code := cli(t, tinyTrain(straight, "--set", "train.steps="+strconv.Itoa(steps))...); code != 0 {
		t.Fatalf("straight run: exit %d\n%s", code, txt)
	}
	out := filepath.Join(tmp, "killed")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 9))
	done := false
	var at []string
	for k := 0; k < kills && !done; k++ {
		args := tinyTrain(out, "--set", "train.steps="+strconv.Itoa(steps))
		if k > 0 {
			args = append(args, "--take-over") // the killed process's lock
		}
		if _, err := os.Stat(filepath.Join(out, "checkpoints", "latest")); err == nil {
			args = append(args, "--resume", out) // killed before its first checkpoint: start again
		}
		prev, _ := os.ReadFile(filepath.Join(out, "checkpoints", "latest"))
		c, cout := start(t, args...)
		// Kill at a random moment after the run has made progress (a new checkpoint, or 3 s), so
		// that the kills fall during training and checkpoint writes on a slow or a fast machine.
		for t0 := time.Now(); time.Since(t0) < 3*time.Second; time.Sleep(2 * time.Millisecond) {
			if now, _ := os.ReadFile(filepath.Join(out, "checkpoints", "latest")); len(now) > 0 && string(now) != string(prev) {
				break
			}
		}
		time.Sleep(time.Duration(rng.IntN(60)) * time.Millisecond)
		c.Process.Signal(syscall.SIGKILL)
		err := c.Wait()
		if err == nil { // finished before the kill
			done = true
			break
		}
		if ws, ok := c.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("kill %d: the run failed on its own: %v\n%s", k, err, cout)
		}
		latest, _ := os.ReadFile(filepath.Join(out, "checkpoints", "latest"))
		at = append(at, strings.TrimSpace(string(latest)))
	}
	t.Logf("killed %d times, latest at each kill: %v; finished before a kill: %v", len(at), at, done)
	if len(at) < kills {
		t.Fatalf("the run finished after %d kills; the test wants %d (make the run longer)", len(at), kills)
	}
	if !done {
		args := append(tinyTrain(out, "--set", "train.steps="+strconv.Itoa(steps)), "--take-over")
		if _, err := os.Stat(filepath.Join(out, "checkpoints", "latest")); err == nil {
			args = append(args, "--resume", out)
		}
		if txt, code := cli(t, args...); code != 0 {
			t.Fatalf("final resume: exit %d\n%s", code, txt)
		}
	}
	a, _, err := models.ReadSafetensors(filepath.Join(straight, "checkpoints", fmt.Sprintf("step-%06d", steps), "student.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := models.ReadSafetensors(filepath.Join(out, "checkpoints", fmt.Sprintf("step-%06d", steps), "student.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	for name, x := range a {
		y := b[name]
		for i := range x.Data {
			if math.Float32bits(x.Data[i]) != math.Float32bits(y.Data[i]) {
				t.Fatalf("%s[%d]: straight %v, killed and resumed %v", name, i, x.Data[i], y.Data[i])
			}
		}
	}
}

// `train --dry-run` scans every value of the dataset and names the row, column and element of a
// NaN; nothing trains.
func TestDryRunNamesNaNRow(t *testing.T) {
	dir := t.TempDir()
	files, err := data.WriteSynth(filepath.Join(dir, "data"), data.SynthOptions{Count: 8, Heldout: 2, Frames: 2, Size: 16, TextDim: 8, Seed: 3}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ds, err := data.Open(files.Train)
	if err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.arrow")
	w, err := data.NewWriter(bad, []string{data.Latent, data.TextEmb}, 4)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < ds.NumRows(); i++ {
		row, _ := ds.Row(i)
		var ts []data.Tensor
		for _, x := range []string{data.Latent, data.TextEmb} {
			tr, _ := row.Tensor(x)
			v := make([]float32, tr.Numel())
			tr.Decode(v, nil, nil)
			if i == 5 && x == data.Latent {
				v[17] = float32(math.NaN())
			}
			ts = append(ts, data.F32Tensor(x, tr.Shape, v, kernels.F32))
		}
		if err := w.Append(row.ID, row.Caption, ts...); err != nil {
			t.Fatal(err)
		}
	}
	ds.Close()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	err = runErr(t, append(tinyTrain(filepath.Join(dir, "run"), "--set", "data.path="+bad, "--set", "data.heldout="+files.Heldout), "--dry-run")...)
	for _, want := range []string{bad, "row 5", "vae_latent_bytes", "element 17", "not finite"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("train --dry-run: %v, want it to mention %q", err, want)
		}
	}
}
