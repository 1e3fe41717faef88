package models

import (
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// Wan2.1-T2V-1.3B's config.json as published (no text_dim: the default 4096 applies).
const wan13bConfig = `{
  "_class_name": "WanModel",
  "_diffusers_version": "0.30.0",
  "dim": 1536,
  "eps": 1e-06,
  "ffn_dim": 8960,
  "freq_dim": 256,
  "in_dim": 16,
  "model_type": "t2v",
  "num_heads": 12,
  "num_layers": 30,
  "out_dim": 16,
  "text_len": 512
}`

func TestReadWanConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(s), 0o644)
		return p
	}
	got, err := ReadWanConfig(write("c.json", wan13bConfig))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := Preset("wan2.1-1.3b")
	if got != want {
		t.Fatalf("config.json %+v, preset %+v", got, want)
	}
	// round trip through WriteWanConfig, for every preset
	for _, name := range PresetNames {
		c, _ := Preset(name)
		p := filepath.Join(dir, name+".json")
		if err := WriteWanConfig(p, c); err != nil {
			t.Fatal(err)
		}
		if back, err := ReadWanConfig(p); err != nil || back != c {
			t.Errorf("%s: %+v, %v", name, back, err)
		}
	}
	bad := []struct{ json, want string }{
		{`{"dim": 64}`, "missing keys ffn_dim, freq_dim, in_dim, out_dim, num_heads, num_layers, text_len, eps"},
		{strings.Replace(wan13bConfig, `"t2v"`, `"i2v"`, 1), "model_type"},
		{strings.Replace(wan13bConfig, `"num_heads": 12`, `"num_heads": 7`, 1), "not a multiple of num_heads"},
		{strings.Replace(wan13bConfig, `"num_heads": 12`, `"num_heads": 512`, 1), "head_dim = dim/num_heads = 3 must be even"},
		{strings.Replace(wan13bConfig, `"dim": 1536`, `"dim": "big"`, 1), "key dim"},
		{`[1]`, "not a JSON object"},
	}
	for i, b := range bad {
		_, err := ReadWanConfig(write("bad.json", b.json))
		if err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("case %d: error %v, want %q", i, err, b.want)
		}
	}
	if _, err := ReadWanConfig(filepath.Join(dir, "nope.json")); err == nil || !strings.Contains(err.Error(), "nope.json") {
		t.Errorf("missing file: %v", err)
	}
	if _, err := Preset("huge"); err == nil {
		t.Error("unknown preset accepted")
	}
}

func TestParamTable(t *testing.T) {
	for _, name := range PresetNames {
		c, _ := Preset(name)
		ps, P := c.Params()
		seen := map[string]bool{}
		end, n := 0, 0
		for _, p := range ps {
			if seen[p.Name] {
				t.Fatalf("%s: duplicate %s", name, p.Name)
			}
			seen[p.Name] = true
			if p.Offset < end || p.Offset%paramAlign != 0 {
				t.Fatalf("%s: %s at %d overlaps or is unaligned (previous end %d)", name, p.Name, p.Offset, end)
			}
			end = p.Offset + numel(p.Shape)
			n += numel(p.Shape)
			isMatrix := strings.HasSuffix(p.Name, ".weight") && !strings.Contains(p.Name, "norm")
			if p.Decay != isMatrix {
				t.Errorf("%s: %s decay %v", name, p.Name, p.Decay)
			}
		}
		if end > P || len(ps) != 15+c.Layers*27 {
			t.Fatalf("%s: end %d > P %d or %d entries", name, end, P, len(ps))
		}
		t.Logf("%-12s %d tensors, %d parameters (%.3fB), buffer %d", name, len(ps), n, float64(n)/1e9, P)
	}
	// Wan2.1-T2V-1.3B counted independently of the table, layer by layer:
	c, _ := Preset("wan2.1-1.3b")
	D, Fd, T := 1536, 8960, 4096
	want := D*16*4 + D + (T*D + D) + (D*D + D) + (256*D + D) + (D*D + D) + (D*6*D + 6*D) +
		30*(2*(4*(D*D+D)+2*D)+2*D+(D*Fd+Fd)+(Fd*D+D)+6*D) + (D*64 + 64) + 2*D
	if got := c.NumParams(); got != want {
		t.Errorf("1.3B: %d parameters, want %d", got, want)
	}
	m := New(kernels.CPU(), Config{Dim: 8, FFNDim: 16, FreqDim: 256, Heads: 2, Layers: 1, InDim: 4, OutDim: 4, TextDim: 4, TextLen: 3, Eps: 1e-6}, true)
	if got := m.Param("blocks.0.modulation").Shape; !slices.Equal(got, []int{1, 6, 8}) {
		t.Errorf("Param shape %v", got)
	}
	m.Dev.Fill(m.Grad("head.head.bias"), 3)
	if g := host(m.Dev, m.G); g[m.Table[len(m.Table)-2].Offset] != 3 {
		t.Error("Grad is not a view of G")
	}
}

// Wan's init: the laws of each parameter group, and determinism by seed.
func TestInit(t *testing.T) {
	cfg, _ := Preset("small")
	cfg.Layers = 2
	dev := kernels.CPU()
	m := New(dev, cfg, false)
	m.Init(42)
	stats := func(name string) (mean, std, lo, hi float64) {
		v := host(dev, m.Param(name))
		lo, hi = math.Inf(1), math.Inf(-1)
		for _, x := range v {
			mean += float64(x)
			lo, hi = math.Min(lo, float64(x)), math.Max(hi, float64(x))
		}
		mean /= float64(len(v))
		for _, x := range v {
			std += (float64(x) - mean) * (float64(x) - mean)
		}
		return mean, math.Sqrt(std / float64(len(v))), lo, hi
	}
	D := float64(cfg.Dim)
	check := func(name string, wantStd, bound float64) {
		_, std, lo, hi := stats(name)
		if math.Abs(std-wantStd) > 0.05*wantStd+1e-12 || (bound > 0 && (hi > bound || lo < -bound)) {
			t.Errorf("%s: std %.4g (want %.4g), range [%.3g, %.3g] (bound %.3g)", name, std, wantStd, lo, hi, bound)
		}
	}
	xav := func(in, out float64) (float64, float64) { b := math.Sqrt(6 / (in + out)); return b / math.Sqrt(3), b }
	s, b := xav(D, D)
	check("blocks.1.self_attn.q.weight", s, b)
	s, b = xav(D, float64(cfg.FFNDim))
	check("blocks.0.ffn.2.weight", s, b)
	s, b = xav(D, 6*D)
	check("time_projection.1.weight", s, b)
	s, b = xav(64, D)
	check("patch_embedding.weight", s, b)
	check("patch_embedding.bias", 1/math.Sqrt(64)/math.Sqrt(3), 1/math.Sqrt(64))
	check("text_embedding.0.weight", 0.02, 0)
	check("time_embedding.2.weight", 0.02, 0)
	check("blocks.1.modulation", 1/math.Sqrt(D), 0)
	check("head.modulation", 1/math.Sqrt(D), 0)
	for _, z := range []string{"head.head.weight", "head.head.bias", "blocks.1.ffn.0.bias", "text_embedding.0.bias", "blocks.1.norm3.bias"} {
		if _, std, lo, hi := stats(z); std != 0 || lo != 0 || hi != 0 {
			t.Errorf("%s not zero", z)
		}
	}
	for _, o := range []string{"blocks.0.self_attn.norm_q.weight", "blocks.1.cross_attn.norm_k.weight", "blocks.1.norm3.weight"} {
		if _, _, lo, hi := stats(o); lo != 1 || hi != 1 {
			t.Errorf("%s not one", o)
		}
	}
	m2 := New(dev, cfg, false)
	m2.Init(42)
	if relErr(host(dev, m2.W), host(dev, m.W)) != 0 {
		t.Error("same seed, different weights")
	}
	m2.Init(43)
	if relErr(host(dev, m2.W), host(dev, m.W)) == 0 {
		t.Error("different seeds, same weights")
	}
}

// Sizes beyond the limits are refused before anything is allocated or multiplied out, saying the
// limit or what the model would need.
func TestConfigLimits(t *testing.T) {
	base, _ := Preset("wan2.1-1.3b")
	for _, c := range []struct {
		edit func(*Config)
		want string
	}{
		{func(c *Config) { c.Dim = 1 << 30 }, "dim = 1073741824 is above the limit"},
		{func(c *Config) { c.Layers = 1 << 40 }, "num_layers"},
		{func(c *Config) { c.TextLen = 1 << 20 }, "text_len"},
		{func(c *Config) { c.Dim, c.FFNDim, c.Heads, c.Layers = 1<<16, 1<<18, 1<<9, 1<<10 }, "GiB in fp32"},
	} {
		cfg := base
		c.edit(&cfg)
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", cfg, err, c.want)
		}
	}
}
