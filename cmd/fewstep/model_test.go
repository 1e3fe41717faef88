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
// (dumped from wan_ref.py) and matches every output tensor to 1e-5 relative error.
func TestModelVJPGolden(t *testing.T) {
	td := filepath.Join("..", "..", "models", "testdata")
	for _, c := range []struct{ name, arch, chunk string }{{"tiny_causal", "tiny", "2"}, {"odd_bidir", "odd", "0"}} {
		want, _, err := models.ReadSafetensors(filepath.Join(td, c.name+".expect.safetensors"))
		if err != nil {
			t.Fatal(err)
		}
		for _, verb := range []string{"vjp", "forward"} {
			out := filepath.Join(t.TempDir(), "out.safetensors")
			rootCmd.SetArgs([]string{"model", verb, "--weights", filepath.Join(td, c.arch+".weights.safetensors"),
				"--config", filepath.Join(td, c.arch+".config.json"), "--inputs", filepath.Join(td, c.name+".inputs.safetensors"),
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
				if e := modelRelErr(g.Data, w.Data); e > 1e-5 || math.IsNaN(e) {
					t.Errorf("%s %s: %s relative error %.3g > 1e-5", verb, c.name, name, e)
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
		{[]string{"model", "forward", "--weights", w, "--inputs", in, "--out", out, "--config", "", "--preset", ""}, "--config config.json or --preset"},
		{[]string{"model", "forward", "--weights", w, "--inputs", in, "--out", out, "--config", "", "--preset", "small"}, "mis-shaped keys"},
		{[]string{"model", "forward", "--weights", w, "--inputs", w, "--out", out, "--config", cfg, "--preset", ""}, `no tensor "x"`},
		{[]string{"model", "vjp", "--weights", w, "--inputs", in, "--out", out, "--config", cfg, "--device", "tpu"}, "--device"},
	}
	for _, c := range cases {
		rootCmd.SetArgs(c.args)
		err := rootCmd.Execute()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want it to mention %q", c.args[1:], err, c.want)
		}
	}
}
