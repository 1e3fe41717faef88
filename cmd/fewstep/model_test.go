package main

import (
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/models"
)

func modelRelErr(got, want []float32) float64 {
	var num, den float64
	for i := range want {
		d := float64(got[i]) - float64(want[i])
		num += d * d
		den += float64(want[i]) * float64(want[i])
	}
	return math.Sqrt(num / den)
}

// TestModelVJPGolden runs `fewstep model vjp` and `model forward` end to end on committed goldens
// (dumped from wan_ref.py with Wan's context padding, scripts/dump_goldens.py) and matches every
// output tensor to 1e-5 relative error; tiny_short (a context of 5 tokens, text_len 8: the command
// zero-pads it as Wan does) out and grad.x to 1e-6.
func TestModelVJPGolden(t *testing.T) {
	td := filepath.Join("..", "..", "models", "testdata")
	for _, c := range []struct{ name, arch, chunk string }{{"tiny_causal", "tiny", "2"}, {"odd_bidir", "odd", "0"}, {"tiny_short", "tiny", "0"}} {
		cfgPath, tol := filepath.Join(td, c.arch+".config.json"), 1e-5
		if p := filepath.Join(td, c.name+".config.json"); fileExists(p) {
			cfgPath, tol = p, 1e-6
		}
		want, _, err := models.ReadSafetensors(filepath.Join(td, c.name+".expect.safetensors"))
		if err != nil {
			t.Fatal(err)
		}
		for _, verb := range []string{"vjp", "forward"} {
			out := filepath.Join(t.TempDir(), "out.safetensors")
			rootCmd.SetArgs([]string{"model", verb, "--weights", filepath.Join(td, c.arch+".weights.safetensors"),
				"--model-config", cfgPath, "--inputs", filepath.Join(td, c.name+".inputs.safetensors"),
				"--chunk-frames", c.chunk, "--device", "cpu", "--out", out})
			var sb strings.Builder
			rootCmd.SetOut(&sb)
			if err := rootCmd.Execute(); err != nil {
				t.Fatalf("%s %s: %v", verb, c.name, err)
			}
			got, _, err := models.ReadSafetensors(out)
			if err != nil {
				t.Fatal(err)
			}
			wantN := 1
			if verb == "vjp" {
				wantN = len(want) // out, grad.x, grad.<every param>
			}
			if len(got) != wantN {
				t.Fatalf("%s %s: %d tensors written, want %d", verb, c.name, len(got), wantN)
			}
			worst, worstName := 0.0, ""
			for name, g := range got {
				w, ok := want[name]
				if !ok {
					t.Fatalf("%s: unexpected tensor %s", verb, name)
				}
				lim := tol
				if name != "out" && name != "grad.x" {
					lim = 1e-5 // parameter gradients: as every golden (models/golden_test.go)
				}
				if e := modelRelErr(g.Data, w.Data); e > lim || math.IsNaN(e) {
					t.Errorf("%s %s: %s relative error %.3g > %g", verb, c.name, name, e, lim)
				} else if e > worst {
					worst, worstName = e, name
				}
			}
			t.Logf("%s %s: %d tensors, worst %s %.2e; %s", verb, c.name, len(got), worstName, worst, strings.TrimSpace(sb.String()))
		}
	}
}

func TestModelCommandErrors(t *testing.T) {
	td := filepath.Join("..", "..", "models", "testdata")
	w, cfg, in := filepath.Join(td, "tiny.weights.safetensors"), filepath.Join(td, "tiny.config.json"), filepath.Join(td, "tiny_bidir.inputs.safetensors")
	out := filepath.Join(t.TempDir(), "o.safetensors")
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"model", "forward", "--weights", w, "--inputs", in, "--out", out, "--model-config", "", "--preset", ""}, "--model-config config.json or --preset"},
		{[]string{"model", "forward", "--weights", w, "--inputs", in, "--out", out, "--model-config", "", "--preset", "small"}, "mis-shaped keys"},
		{[]string{"model", "forward", "--weights", w, "--inputs", w, "--out", out, "--model-config", cfg, "--preset", ""}, `no tensor "x"`},
		{[]string{"model", "vjp", "--weights", w, "--inputs", in, "--out", out, "--model-config", cfg, "--device", "tpu"}, "--device"},
	}
	for _, c := range cases {
		rootCmd.SetArgs(c.args)
		err := rootCmd.Execute()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want it to mention %q", c.args[1:], err, c.want)
		}
	}
}
