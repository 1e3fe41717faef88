package models

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/kernels"
)

// Every key of the table has a Diffusers name, distinct, mapping back to itself; the names are
// diffusers' WanTransformer3DModel's (a few spelled out here from its module tree).
func TestDiffusersKeys(t *testing.T) {
	cfg, _ := Preset("tiny")
	table, _ := cfg.Params()
	seen := map[string]string{}
	for _, p := range table {
		d := DiffusersKey(p.Name)
		if d == "" {
			t.Fatalf("%s has no Diffusers name", p.Name)
		}
		if prev, dup := seen[d]; dup {
			t.Fatalf("%s and %s both map to %s", prev, p.Name, d)
		}
		seen[d] = p.Name
		if back := WanKey(d); back != p.Name {
			t.Fatalf("%s → %s → %s", p.Name, d, back)
		}
	}
	for wan, diff := range map[string]string{
		"blocks.1.self_attn.o.weight":       "blocks.1.attn1.to_out.0.weight",
		"blocks.0.cross_attn.norm_k.weight": "blocks.0.attn2.norm_k.weight",
		"blocks.1.norm3.bias":               "blocks.1.norm2.bias",
		"blocks.0.ffn.0.weight":             "blocks.0.ffn.net.0.proj.weight",
		"blocks.0.ffn.2.bias":               "blocks.0.ffn.net.2.bias",
		"blocks.1.modulation":               "blocks.1.scale_shift_table",
		"head.modulation":                   "scale_shift_table",
		"head.head.weight":                  "proj_out.weight",
		"time_projection.1.bias":            "condition_embedder.time_proj.bias",
		"text_embedding.2.weight":           "condition_embedder.text_embedder.linear_2.weight",
		"time_embedding.0.weight":           "condition_embedder.time_embedder.linear_1.weight",
		"patch_embedding.weight":            "patch_embedding.weight",
	} {
		if got := DiffusersKey(wan); got != diff {
			t.Errorf("DiffusersKey(%s) = %s, want %s", wan, got, diff)
		}
	}
	if WanKey("blocks.0.attn2.add_k_proj.weight") != "" || DiffusersKey("img_emb.proj.0.weight") != "" {
		t.Error("an image-to-video key got a name")
	}
}

// original → Diffusers → original: the weights and the file bytes come back exactly, in F32 and
// BF16; the Diffusers file is detected and loads to the same weights; the config round-trips.
func TestDiffusersRoundTrip(t *testing.T) {
	dir := t.TempDir()
	cfg, _ := Preset("tiny")
	cfg.Layers, cfg.InDim, cfg.OutDim, cfg.TextLen = 3, 12, 12, 7
	m := New(kernels.CPU(), cfg, false)
	m.InitRandom(11, 0.5)
	for _, dt := range []kernels.DType{kernels.F32, kernels.BF16} {
		orig := filepath.Join(dir, "orig.safetensors")
		diff := filepath.Join(dir, "diffusers.safetensors")
		back := filepath.Join(dir, "back.safetensors")
		if err := m.Save(orig, dt); err != nil {
			t.Fatal(err)
		}
		a := New(kernels.CPU(), cfg, false)
		if err := a.Load(orig); err != nil {
			t.Fatal(err)
		}
		if err := a.SaveLayout(diff, dt, LayoutDiffusers); err != nil {
			t.Fatal(err)
		}
		ts, _, err := ReadSafetensors(diff)
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		for k := range ts {
			keys = append(keys, k)
		}
		if DetectLayout(keys) != LayoutDiffusers || ts["blocks.2.attn1.to_q.weight"].Data == nil || ts["scale_shift_table"].Data == nil {
			t.Fatalf("%v: the Diffusers file's keys: %v", dt, keys[:5])
		}
		b := New(kernels.CPU(), cfg, false)
		if err := b.Load(diff); err != nil {
			t.Fatal(err)
		}
		if err := b.SaveLayout(back, dt, LayoutWan); err != nil {
			t.Fatal(err)
		}
		for i := range a.W.F32 {
			if a.W.F32[i] != b.W.F32[i] {
				t.Fatalf("%v: weight %d: %g after the round trip, %g before", dt, i, b.W.F32[i], a.W.F32[i])
			}
		}
		x, _ := os.ReadFile(orig)
		y, _ := os.ReadFile(back)
		if !bytes.Equal(x, y) {
			t.Fatalf("%v: the round-tripped file differs from the original (%d vs %d bytes)", dt, len(y), len(x))
		}
	}
	cp := filepath.Join(dir, "config.json")
	if err := WriteDiffusersConfig(cp, cfg); err != nil {
		t.Fatal(err)
	}
	got, err := ReadWanConfig(cp)
	if err != nil || got != cfg {
		t.Fatalf("Diffusers config.json: %+v (%v), want %+v", got, err, cfg)
	}
	raw, _ := os.ReadFile(cp)
	for _, k := range []string{`"_class_name": "WanTransformer3DModel"`, `"attention_head_dim": 32`, `"num_attention_heads": 2`, `"in_channels": 12`} {
		if !bytes.Contains(raw, []byte(k)) {
			t.Errorf("config.json lacks %s:\n%s", k, raw)
		}
	}
	os.WriteFile(cp, bytes.Replace(raw, []byte(`"image_dim": null`), []byte(`"image_dim": 1280`), 1), 0o644)
	if _, err := ReadWanConfig(cp); err == nil || !strings.Contains(err.Error(), "image_dim") {
		t.Fatalf("an image-to-video config: %v", err)
	}
	// a Diffusers file with a key of another model is refused, naming it
	ts := m.Tensors(m.W, "")
	for i := range ts {
		ts[i].Name = DiffusersKey(ts[i].Name)
	}
	ts = append(ts, NamedTensor{Name: "blocks.0.attn2.add_k_proj.weight", Shape: []int{1}, Data: []float32{0}})
	bad := filepath.Join(dir, "bad.safetensors")
	WriteSafetensors(bad, ts, kernels.F32, nil)
	if err := New(kernels.CPU(), cfg, false).Load(bad); err == nil || !strings.Contains(err.Error(), "add_k_proj") {
		t.Fatalf("an extra key: %v", err)
	}
}
