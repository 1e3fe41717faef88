package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/pipeline"
)

// cliEnv makes the test binary behave as the fewstep command (for scripts that call the CLI).
const cliEnv = "FEWSTEP_TEST_AS_CLI"

func TestMain(m *testing.M) {
	if os.Getenv(cliEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// `fewstep export` from a trainer-style checkpoint folder: the config is read off the shapes, the
// EMA role is chosen, the exported weights are the checkpoint's exactly, config.json reads back.
// When Debian's PyTorch is installed, scripts/check_export.py loads the export into wan_ref.py and
// compares it with `fewstep model forward` (bidirectional and causal).
func TestExportCommand(t *testing.T) {
	dir := t.TempDir()
	cfg, _ := models.Preset("tiny")
	cfg.InDim, cfg.OutDim, cfg.TextDim, cfg.TextLen, cfg.Layers = 12, 12, 16, 8, 3
	ckpt := filepath.Join(dir, "run", "checkpoints", "step-000010")
	os.MkdirAll(ckpt, 0o755)
	os.WriteFile(filepath.Join(dir, "run", "checkpoints", "latest"), []byte("step-000010\n"), 0o644)
	os.WriteFile(filepath.Join(ckpt, "state.json"), []byte("{}"), 0o644)
	ema := models.New(kernels.CPU(), cfg, false)
	ema.InitRandom(5, 0.05)
	raw := models.New(kernels.CPU(), cfg, false)
	raw.InitRandom(6, 0.05)
	if err := ema.Save(filepath.Join(ckpt, "ema.safetensors"), kernels.F32); err != nil {
		t.Fatal(err)
	}
	raw.Save(filepath.Join(ckpt, "student.safetensors"), kernels.F32)
	out := filepath.Join(dir, "export")
	txt := run(t, "export", "--from", filepath.Join(dir, "run"), "--out", out, "--set", "data.text_len=8")
	if !strings.Contains(txt, "ema.safetensors") {
		t.Fatalf("export did not pick the EMA role: %s", txt)
	}
	got, err := models.ReadWanConfig(filepath.Join(out, "config.json"))
	if err != nil || got != cfg {
		t.Fatalf("config.json: %+v (%v), want %+v", got, err, cfg)
	}
	back := models.New(kernels.CPU(), cfg, false)
	if err := back.Load(filepath.Join(out, "diffusion_pytorch_model.safetensors")); err != nil {
		t.Fatal(err)
	}
	for i := range back.W.F32 {
		if back.W.F32[i] != ema.W.F32[i] {
			t.Fatalf("exported weight %d: %g, EMA %g", i, back.W.F32[i], ema.W.F32[i])
		}
	}
	// the raw student, bf16
	run(t, "export", "--from", filepath.Join(dir, "run"), "--role", "student", "--dtype", "bfloat16", "--out", filepath.Join(dir, "raw"))
	if _, _, err := models.ReadSafetensors(filepath.Join(dir, "raw", "diffusion_pytorch_model.safetensors")); err != nil {
		t.Fatal(err)
	}
	resetFlags(rootCmd)
	rootCmd.SetArgs([]string{"export", "--from", filepath.Join(dir, "run"), "--role", "critic", "--out", out})
	if err := rootCmd.Execute(); err == nil || !strings.Contains(err.Error(), "critic") {
		t.Fatalf("a missing role: %v", err)
	}

	checkWithPyTorch(t, out)
}

// checkWithPyTorch runs scripts/check_export.py: PyTorch loads the export into the reference
// implementation and compares it with `fewstep model forward`. It needs Debian's PyTorch
// (apt-get install -y python3-torch) and the reference beside the repository; CI has neither, so
// there it skips, saying so. FEWSTEP_REQUIRE_TORCH=1 turns the skip into a failure, for a machine
// that must run it (docs/reliability.md).
func checkWithPyTorch(t *testing.T, out string) {
	t.Helper()
	skip := func(why string) {
		if os.Getenv("FEWSTEP_REQUIRE_TORCH") == "1" {
			t.Fatalf("FEWSTEP_REQUIRE_TORCH=1 but %s", why)
		}
		t.Skipf("export's PyTorch check NOT run: %s (the export's other checks above did run)", why)
	}
	py := "/usr/bin/python3.11"
	if testing.Short() {
		skip("-short")
	}
	if exec.Command(py, "-c", "import torch").Run() != nil {
		skip("no " + py + " with torch (apt-get install -y python3-torch)")
	}
	bin, err := os.Executable() // this test binary, run as the CLI (TestMain)
	if err != nil {
		t.Fatal(err)
	}
	ref := filepath.Join("..", "..", "..", "shared", "reference", "wan_ref.py")
	if r := os.Getenv("FEWSTEP_WAN_REF"); r != "" { // a checkout elsewhere than beside shared/
		ref = r
	}
	if _, err := os.Stat(ref); err != nil {
		skip("no " + ref + " (FEWSTEP_WAN_REF names it)")
	}
	c := exec.Command(py, filepath.Join("..", "..", "scripts", "check_export.py"), "--export", out, "--fewstep", bin, "--ref", ref)
	c.Env = append(os.Environ(), cliEnv+"=1")
	b, err := c.CombinedOutput()
	t.Logf("check_export.py:\n%s", b)
	if err != nil {
		t.Fatal(err)
	}
}

// `fewstep export` writes recipe.json from the job's objective, and `fewstep sample` reads it: no
// sampler flag, yet the dmd student is sampled with its own few-step list and shift.
func TestExportRecipeThenSample(t *testing.T) {
	dir, held, weights, _ := sampleFixture(t)
	out := filepath.Join(dir, "export")
	job := []string{"--set", "objective=dmd", "--set", "params.denoising_timesteps=[1000,500]", "--set", "params.shift=2",
		"--set", "data.text_len=8", "--set", "data.synth.size=16", "--set", "data.synth.frames=4", "--set", "data.synth.text_dim=8"}
	txt := run(t, append([]string{"export", "--weights", weights, "--out", out}, job...)...)
	if !strings.Contains(txt, "recipe.json") {
		t.Fatalf("export did not write a recipe: %s", txt)
	}
	rec, err := pipeline.LoadRecipe(out)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Sampler != "fewstep" || len(rec.Timesteps) != 2 || rec.Shift != 2 || rec.Frames != 4 || rec.Height != 4 || rec.TextDim != 8 {
		t.Fatalf("recipe %+v", rec)
	}
	sout := filepath.Join(dir, "samples")
	run(t, "sample", "--weights", filepath.Join(out, "diffusion_pytorch_model.safetensors"), "--prompts", held, "--count", "2",
		"--out", sout, "--device", "cpu", "--set", "data.text_len=8")
	b, err := os.ReadFile(filepath.Join(sout, "manifest.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var line manifestLine
	json.Unmarshal([]byte(strings.SplitN(string(b), "\n", 2)[0]), &line)
	if line.Sampler != "fewstep" || line.Steps != 2 || line.Shift != 2 || line.NFE != 2 {
		t.Fatalf("sample did not follow the recipe: %+v", line)
	}
	// prompts as an embeddings file: the latent shape is the recipe's
	emb := filepath.Join(dir, "emb.safetensors")
	ctx := make([]float32, 2*3*8)
	for i := range ctx {
		ctx[i] = float32(i%7) - 3
	}
	if err := models.WriteSafetensors(emb, []models.NamedTensor{{Name: "context", Shape: []int{2, 3, 8}, Data: ctx}}, kernels.F32, nil); err != nil {
		t.Fatal(err)
	}
	txt = run(t, "sample", "--weights", filepath.Join(out, "diffusion_pytorch_model.safetensors"), "--embeddings", emb,
		"--out", filepath.Join(dir, "emb-samples"), "--device", "cpu", "--set", "data.text_len=8")
	if !strings.Contains(txt, "2 videos [48, 4, 4, 4] with fewstep, 2 steps") {
		t.Fatalf("sample --embeddings: %s", txt)
	}
	// a job whose data does not fit the model: no recipe, said on stderr, the export still made
	resetFlags(rootCmd)
	var errb strings.Builder
	rootCmd.SetArgs([]string{"export", "--weights", weights, "--out", filepath.Join(dir, "norecipe"), "--set", "data.text_len=8"})
	rootCmd.SetOut(&strings.Builder{})
	rootCmd.SetErr(&errb)
	if err := rootCmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errb.String(), "no recipe.json") || fileExists(filepath.Join(dir, "norecipe", "recipe.json")) {
		t.Fatalf("export with an unfitting job: %s", errb.String())
	}
}

// export --layout diffusers, then export of that folder back to Wan's layout: the same bytes as a
// Wan export of the original; the library opens the Diffusers folder and samples the same latents.
func TestExportDiffusersLayout(t *testing.T) {
	dir, _, weights, _ := sampleFixture(t)
	job := []string{"--set", "objective=dmd", "--set", "data.text_len=8", "--set", "data.synth.size=16", "--set", "data.synth.frames=4", "--set", "data.synth.text_dim=8"}
	wanDir, diffDir, backDir := filepath.Join(dir, "wan"), filepath.Join(dir, "diffusers"), filepath.Join(dir, "back")
	run(t, append([]string{"export", "--weights", weights, "--out", wanDir}, job...)...)
	run(t, append([]string{"export", "--weights", weights, "--out", diffDir, "--layout", "diffusers"}, job...)...)
	run(t, append([]string{"export", "--weights", filepath.Join(diffDir, "diffusion_pytorch_model.safetensors"), "--out", backDir}, job...)...)
	cfg, _ := os.ReadFile(filepath.Join(diffDir, "config.json"))
	if !strings.Contains(string(cfg), "WanTransformer3DModel") {
		t.Fatalf("diffusers config.json:\n%s", cfg)
	}
	for _, f := range []string{"diffusion_pytorch_model.safetensors", "config.json", "recipe.json"} {
		a, _ := os.ReadFile(filepath.Join(wanDir, f))
		b, _ := os.ReadFile(filepath.Join(backDir, f))
		if len(a) == 0 || !bytes.Equal(a, b) {
			t.Fatalf("%s: Wan → Diffusers → Wan differs from the Wan export (%d vs %d bytes)", f, len(b), len(a))
		}
	}
	req := pipeline.Request{Prompts: [][]float32{make([]float32, 3*8)}, Seeds: []int64{4}}
	req.Prompts[0][5] = 1
	var lat [][]float32
	for _, d := range []string{wanDir, diffDir} {
		p, err := pipeline.Open(d, "cpu")
		if err != nil {
			t.Fatal(err)
		}
		out, err := p.Generate(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		lat = append(lat, out.Latents)
	}
	for i := range lat[0] {
		if lat[0][i] != lat[1][i] {
			t.Fatalf("latent %d: Wan layout %g, Diffusers layout %g", i, lat[0][i], lat[1][i])
		}
	}
}
