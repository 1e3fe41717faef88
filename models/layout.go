package models

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/fewstep/fewstep/kernels"
)

// Two key layouts of the same weights (docs/library.md):
//
//   - Wan: Wan2.1's own WanModel state dict (blocks.N.self_attn.q, blocks.N.norm3, head.head,
//     time_embedding.0, ...), the layout of the parameter table;
//   - Diffusers: diffusers' WanTransformer3DModel (blocks.N.attn1.to_q, blocks.N.norm2 for Wan's
//     norm3, blocks.N.ffn.net.0.proj, blocks.N.scale_shift_table, condition_embedder.*, proj_out,
//     scale_shift_table), which FastVideo and most shared distilled Wan checkpoints use.
//
// The tensors are the same in both (shapes and values): only the names differ, one to one, so a
// round trip is exact. Load detects the layout from the keys; SaveLayout writes either.

// Layout names a key layout.
type Layout string

const (
	LayoutWan       Layout = "wan"
	LayoutDiffusers Layout = "diffusers"
)

// ParseLayout reads a --layout value.
func ParseLayout(s string) (Layout, error) {
	switch Layout(s) {
	case LayoutWan, LayoutDiffusers:
		return Layout(s), nil
	}
	return "", fmt.Errorf("layout %q: want wan or diffusers", s)
}

var (
	// whole-name prefixes outside the blocks, Wan → Diffusers
	diffusersTop = []struct{ wan, diff string }{
		{"time_embedding.0.", "condition_embedder.time_embedder.linear_1."},
		{"time_embedding.2.", "condition_embedder.time_embedder.linear_2."},
		{"text_embedding.0.", "condition_embedder.text_embedder.linear_1."},
		{"text_embedding.2.", "condition_embedder.text_embedder.linear_2."},
		{"time_projection.1.", "condition_embedder.time_proj."},
		{"head.head.", "proj_out."},
	}
	// names inside blocks.N., Wan → Diffusers (Wan's norm3 is the affine norm before the cross
	// attention, Diffusers' norm2)
	diffusersBlock = []struct{ wan, diff string }{
		{"self_attn.q.", "attn1.to_q."}, {"self_attn.k.", "attn1.to_k."}, {"self_attn.v.", "attn1.to_v."},
		{"self_attn.o.", "attn1.to_out.0."}, {"self_attn.norm_q.", "attn1.norm_q."}, {"self_attn.norm_k.", "attn1.norm_k."},
		{"cross_attn.q.", "attn2.to_q."}, {"cross_attn.k.", "attn2.to_k."}, {"cross_attn.v.", "attn2.to_v."},
		{"cross_attn.o.", "attn2.to_out.0."}, {"cross_attn.norm_q.", "attn2.norm_q."}, {"cross_attn.norm_k.", "attn2.norm_k."},
		{"norm3.", "norm2."}, {"ffn.0.", "ffn.net.0.proj."}, {"ffn.2.", "ffn.net.2."},
	}
	blockKey = regexp.MustCompile(`^blocks\.(\d+)\.(.*)$`)
)

// DiffusersKey is the Diffusers name of a Wan key ("" when the key is not one of the model's).
func DiffusersKey(wan string) string {
	switch wan {
	case "head.modulation":
		return "scale_shift_table"
	case "patch_embedding.weight", "patch_embedding.bias":
		return wan
	}
	for _, m := range diffusersTop {
		if strings.HasPrefix(wan, m.wan) {
			return m.diff + wan[len(m.wan):]
		}
	}
	if g := blockKey.FindStringSubmatch(wan); g != nil {
		if g[2] == "modulation" {
			return "blocks." + g[1] + ".scale_shift_table"
		}
		for _, m := range diffusersBlock {
			if strings.HasPrefix(g[2], m.wan) {
				return "blocks." + g[1] + "." + m.diff + g[2][len(m.wan):]
			}
		}
	}
	return ""
}

// WanKey is the Wan name of a Diffusers key ("" when the key is not one of the model's).
func WanKey(diff string) string {
	switch diff {
	case "scale_shift_table":
		return "head.modulation"
	case "patch_embedding.weight", "patch_embedding.bias":
		return diff
	}
	for _, m := range diffusersTop {
		if strings.HasPrefix(diff, m.diff) {
			return m.wan + diff[len(m.diff):]
		}
	}
	if g := blockKey.FindStringSubmatch(diff); g != nil {
		if g[2] == "scale_shift_table" {
			return "blocks." + g[1] + ".modulation"
		}
		for _, m := range diffusersBlock {
			if strings.HasPrefix(g[2], m.diff) {
				return "blocks." + g[1] + "." + m.wan + g[2][len(m.diff):]
			}
		}
	}
	return ""
}

// DetectLayout tells the layout of a state dict from its keys: Diffusers when any key is one
// only Diffusers has (condition_embedder.*, proj_out.*, the top-level scale_shift_table, a block's
// attn1/attn2), else Wan.
func DetectLayout(keys []string) Layout {
	for _, k := range keys {
		if strings.HasPrefix(k, "condition_embedder.") || strings.HasPrefix(k, "proj_out.") || k == "scale_shift_table" ||
			strings.Contains(k, ".attn1.") || strings.Contains(k, ".attn2.") {
			return LayoutDiffusers
		}
	}
	return LayoutWan
}

// SaveLayout writes the weights as safetensors in the given key layout and dtype, atomically, in
// the table's order.
func (m *DiT) SaveLayout(path string, dt kernels.DType, layout Layout) error {
	ts := m.Tensors(m.W, "")
	switch layout {
	case LayoutWan:
	case LayoutDiffusers:
		for i := range ts {
			ts[i].Name = DiffusersKey(ts[i].Name)
		}
	default:
		return fmt.Errorf("models: save %s: unknown layout %q", path, layout)
	}
	return WriteSafetensors(path, ts, dt, map[string]string{"format": "pt"})
}

// WriteDiffusersConfig writes c as diffusers' WanTransformer3DModel config.json. text_len, which
// diffusers does not read (its pipeline pads prompts to 512 tokens), is kept for fewstep.
func WriteDiffusersConfig(path string, c Config) error {
	m := map[string]any{"_class_name": "WanTransformer3DModel", "_diffusers_version": "0.33.0",
		"patch_size": []int{1, 2, 2}, "num_attention_heads": c.Heads, "attention_head_dim": c.HeadDim(),
		"in_channels": c.InDim, "out_channels": c.OutDim, "text_dim": c.TextDim, "freq_dim": c.FreqDim,
		"ffn_dim": c.FFNDim, "num_layers": c.Layers, "cross_attn_norm": true, "qk_norm": "rms_norm_across_heads",
		"eps": c.Eps, "image_dim": nil, "added_kv_proj_dim": nil, "rope_max_seq_len": 1024, "text_len": c.TextLen}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(path, func(f *os.File) error { _, err := f.Write(append(b, '\n')); return err })
}

// readDiffusersConfig reads a WanTransformer3DModel config.json (already parsed into raw).
func readDiffusersConfig(path string, raw map[string]json.RawMessage) (Config, error) {
	c := Config{TextLen: 512}
	ints := []struct {
		key string
		dst *int
	}{{"num_attention_heads", &c.Heads}, {"in_channels", &c.InDim}, {"out_channels", &c.OutDim}, {"text_dim", &c.TextDim},
		{"freq_dim", &c.FreqDim}, {"ffn_dim", &c.FFNDim}, {"num_layers", &c.Layers}, {"text_len", &c.TextLen}}
	var headDim int
	ints = append(ints, struct {
		key string
		dst *int
	}{"attention_head_dim", &headDim})
	var missing []string
	for _, f := range ints {
		v, ok := raw[f.key]
		if !ok {
			if f.key != "text_len" {
				missing = append(missing, f.key)
			}
			continue
		}
		if err := json.Unmarshal(v, f.dst); err != nil {
			return Config{}, fmt.Errorf("models: config %s: key %s = %s: want an integer", path, f.key, v)
		}
	}
	if v, ok := raw["eps"]; !ok {
		missing = append(missing, "eps")
	} else if err := json.Unmarshal(v, &c.Eps); err != nil {
		return Config{}, fmt.Errorf("models: config %s: key eps = %s: want a number", path, v)
	}
	if len(missing) > 0 {
		return Config{}, fmt.Errorf("models: config %s: WanTransformer3DModel config lacks %s", path, strings.Join(missing, ", "))
	}
	c.Dim = c.Heads * headDim
	for _, k := range []string{"image_dim", "added_kv_proj_dim"} {
		if v, ok := raw[k]; ok && string(v) != "null" {
			return Config{}, fmt.Errorf("models: config %s: %s %s: only the text-to-video model (null) is supported", path, k, v)
		}
	}
	if v, ok := raw["qk_norm"]; ok {
		var s string
		if json.Unmarshal(v, &s) != nil || s != "rms_norm_across_heads" {
			return Config{}, fmt.Errorf("models: config %s: qk_norm %s: only rms_norm_across_heads is supported", path, v)
		}
	}
	if v, ok := raw["cross_attn_norm"]; ok {
		var b bool
		if json.Unmarshal(v, &b) != nil || !b {
			return Config{}, fmt.Errorf("models: config %s: cross_attn_norm %s: only true is supported", path, v)
		}
	}
	if v, ok := raw["patch_size"]; ok {
		var ps []int
		if json.Unmarshal(v, &ps) != nil || len(ps) != 3 || ps[0] != 1 || ps[1] != 2 || ps[2] != 2 {
			return Config{}, fmt.Errorf("models: config %s: patch_size %s: only [1, 2, 2] is supported", path, v)
		}
	}
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("models: config %s: %w", path, err)
	}
	return c, nil
}
