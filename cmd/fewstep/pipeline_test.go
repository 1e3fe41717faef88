package main

import (
	"context"
	"math"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/eval"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/pipeline"
	"github.com/fewstep/fewstep/trainer"
)

// The library on the demo student's export gives `fewstep sample`'s videos: a shortened demo, its
// export, then pipeline.Open + Generate for the held-out prompts at the seeds sample uses, against
// the samples file of `fewstep sample --weights EXPORT/...` (no sampler flag: both read recipe.json).
func TestLibraryMatchesSample(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a shortened demo")
	}
	work := t.TempDir()
	t.Chdir(work)
	shortDemo(t, "run", "[1]")
	runDir := filepath.Join(work, "run")
	exp := filepath.Join(work, "export")
	run(t, "export", "--from", runDir, "--out", exp)
	ckpt, err := trainer.ResolveCheckpoint(runDir)
	if err != nil {
		t.Fatal(err)
	}
	job, err := config.Load(filepath.Join(ckpt, "job.yaml"), nil)
	if err != nil {
		t.Fatal(err)
	}
	const n, seed = 5, 11
	sout := filepath.Join(work, "samples")
	run(t, "sample", "--weights", filepath.Join(exp, "diffusion_pytorch_model.safetensors"), "--prompts", job.Data.Heldout,
		"--count", strconv.Itoa(n), "--batch", "2", "--seed", strconv.Itoa(seed), "--out", sout, "--device", "cpu", "--set", "data.text_len=8")
	st, _, err := models.ReadSafetensors(filepath.Join(sout, "samples.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	want := st["latents"]

	p, err := pipeline.Open(exp, "cpu")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	held, err := eval.LoadSet(job.Data.Heldout, p.Recipe.TextLen)
	if err != nil {
		t.Fatal(err)
	}
	lt := held.L * held.TextDim
	gen := func(lo, hi int) *pipeline.Output {
		req := pipeline.Request{}
		for i := lo; i < hi; i++ {
			req.Prompts = append(req.Prompts, held.Text[i*lt:i*lt+held.Tokens[i]*held.TextDim])
			req.Seeds = append(req.Seeds, seed+int64(i))
		}
		out, err := p.Generate(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		if p.Recipe.Sampler != "fewstep" || out.NFE != 4 || len(out.Pixels) != hi-lo {
			t.Fatalf("library: sampler %s, NFE %d, %d pixel videos", p.Recipe.Sampler, out.NFE, len(out.Pixels))
		}
		return out
	}
	// batched as sample batches (--batch 2): bit for bit
	var lat []float32
	for lo := 0; lo < n; lo += 2 {
		lat = append(lat, gen(lo, min(lo+2, n)).Latents...)
	}
	if len(lat) != len(want.Data) {
		t.Fatalf("library: %d latent values, sample: %d %v", len(lat), len(want.Data), want.Shape)
	}
	for i, v := range lat {
		if v != want.Data[i] {
			t.Fatalf("latent %d: library %g, fewstep sample %g", i, v, want.Data[i])
		}
	}
	// all in one batch: a video's noise does not depend on its neighbours; the CPU GEMM's blocking
	// over the batch rows may move the last bits
	one := gen(0, n).Latents
	worst := 0.0
	for i, v := range one {
		worst = max(worst, math.Abs(float64(v-want.Data[i])))
	}
	if worst > 1e-4 {
		t.Fatalf("one batch of %d vs batches of 2: max |Δ| = %g", n, worst)
	}
	t.Logf("one batch of %d vs sample's batches of 2: max |Δ| = %.2g", n, worst)
}
