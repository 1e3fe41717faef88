// Package models is the Wan2.1-compatible video DiT (docs/architecture.md): its configuration,
// the parameter table (Wan2.1 state-dict keys) carving one buffer, Wan's init, safetensors I/O,
// and the model's forward and backward written against kernels.Device (dit.go, forward.go).
package models

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
)

// Config is the architecture (Wan2.1's config.json fields).
type Config struct {
	Dim, FFNDim, FreqDim, Heads, Layers, InDim, OutDim, TextDim, TextLen int
	Eps                                                                  float32
}

// HeadDim is Dim/Heads.
func (c Config) HeadDim() int { return c.Dim / c.Heads }

// MaxParams bounds a model's parameter count (2^37, ten times Wan2.1-14B).
const MaxParams = 1 << 37

// Validate checks the sizes the model relies on, within limits.
func (c Config) Validate() error {
	var bad []string
	pos := map[string]int{"dim": c.Dim, "ffn_dim": c.FFNDim, "freq_dim": c.FreqDim, "num_heads": c.Heads,
		"num_layers": c.Layers, "in_dim": c.InDim, "out_dim": c.OutDim, "text_dim": c.TextDim, "text_len": c.TextLen}
	keys := make([]string, 0, len(pos))
	for k := range pos {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if pos[k] <= 0 {
			bad = append(bad, fmt.Sprintf("%s = %d must be > 0", k, pos[k]))
		}
	}
	// Upper limits, so that sizes computed from them cannot overflow and an absurd config.json is an
	// error, not an out-of-memory crash (Wan2.1-14B: dim 5120, ffn 13824, 40 layers, 40 heads).
	lim := map[string][2]int{"dim": {c.Dim, 1 << 16}, "ffn_dim": {c.FFNDim, 1 << 18}, "freq_dim": {c.FreqDim, 1 << 14},
		"num_heads": {c.Heads, 1 << 10}, "num_layers": {c.Layers, 1 << 10}, "in_dim": {c.InDim, 1 << 12},
		"out_dim": {c.OutDim, 1 << 12}, "text_dim": {c.TextDim, 1 << 16}, "text_len": {c.TextLen, 1 << 16}}
	for _, k := range keys {
		if v := lim[k]; v[0] > v[1] {
			bad = append(bad, fmt.Sprintf("%s = %d is above the limit %d", k, v[0], v[1]))
		}
	}
	if len(bad) == 0 {
		if n := c.NumParams(); n > MaxParams {
			bad = append(bad, fmt.Sprintf("%d parameters (%.0f GiB in fp32) is above the limit of %d", n, float64(n)*4/(1<<30), MaxParams))
		}
	}
	if len(bad) == 0 {
		if c.Dim%c.Heads != 0 {
			bad = append(bad, fmt.Sprintf("dim %d is not a multiple of num_heads %d", c.Dim, c.Heads))
		} else if c.HeadDim()%2 != 0 {
			bad = append(bad, fmt.Sprintf("head_dim = dim/num_heads = %d must be even (RoPE pairs)", c.HeadDim()))
		}
		if c.FreqDim%2 != 0 {
			bad = append(bad, fmt.Sprintf("freq_dim %d must be even ([cos, sin])", c.FreqDim))
		}
	}
	if !(c.Eps > 0 && c.Eps < 1) {
		bad = append(bad, fmt.Sprintf("eps = %g must be in (0, 1)", c.Eps))
	}
	if len(bad) > 0 {
		return fmt.Errorf("models: invalid config: %s", strings.Join(bad, "; "))
	}
	return nil
}

// Preset returns a named architecture (docs/architecture.md): in/out 16 channels, freq_dim 256,
// text_len 512, eps 1e-6.
func Preset(name string) (Config, error) {
	c := Config{FreqDim: 256, InDim: 16, OutDim: 16, TextLen: 512, Eps: 1e-6}
	switch name {
	case "tiny":
		c.Dim, c.FFNDim, c.Heads, c.Layers, c.TextDim = 64, 256, 2, 2, 32
	case "small":
		c.Dim, c.FFNDim, c.Heads, c.Layers, c.TextDim = 384, 1536, 6, 8, 384
	case "wan2.1-1.3b":
		c.Dim, c.FFNDim, c.Heads, c.Layers, c.TextDim = 1536, 8960, 12, 30, 4096
	case "wan2.1-14b":
		c.Dim, c.FFNDim, c.Heads, c.Layers, c.TextDim = 5120, 13824, 40, 40, 4096
	default:
		return Config{}, fmt.Errorf("models: unknown preset %q (tiny, small, wan2.1-1.3b, wan2.1-14b)", name)
	}
	return c, nil
}

// PresetNames lists the presets.
var PresetNames = []string{"tiny", "small", "wan2.1-1.3b", "wan2.1-14b"}

// ReadWanConfig reads Wan2.1's config.json (or diffusers' WanTransformer3DModel config.json,
// told by its _class_name or num_attention_heads: layout.go): dim, ffn_dim, freq_dim, in_dim, out_dim, num_heads,
// num_layers, text_len, eps (all required) and text_dim (default 4096). Keys of Wan's own file
// that do not change this architecture (_class_name, _diffusers_version, window_size, ...) are
// ignored; a model_type other than t2v, a patch_size other than [1,2,2], or qk_norm /
// cross_attn_norm false describe a different network and are errors.
func ReadWanConfig(path string) (Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("models: config %s: %w", path, err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return Config{}, fmt.Errorf("models: config %s: not a JSON object: %w", path, err)
	}
	if v, ok := m["_class_name"]; ok && strings.Contains(string(v), "WanTransformer3DModel") || m["num_attention_heads"] != nil {
		return readDiffusersConfig(path, m) // diffusers' WanTransformer3DModel
	}
	c := Config{TextDim: 4096}
	ints := []struct {
		key string
		dst *int
	}{{"dim", &c.Dim}, {"ffn_dim", &c.FFNDim}, {"freq_dim", &c.FreqDim}, {"in_dim", &c.InDim},
		{"out_dim", &c.OutDim}, {"num_heads", &c.Heads}, {"num_layers", &c.Layers}, {"text_len", &c.TextLen},
		{"text_dim", &c.TextDim}}
	var missing []string
	for _, f := range ints {
		v, ok := m[f.key]
		if !ok {
			if f.key != "text_dim" {
				missing = append(missing, f.key)
			}
			continue
		}
		if err := json.Unmarshal(v, f.dst); err != nil {
			return Config{}, fmt.Errorf("models: config %s: key %s = %s: want an integer", path, f.key, v)
		}
	}
	if v, ok := m["eps"]; !ok {
		missing = append(missing, "eps")
	} else if err := json.Unmarshal(v, &c.Eps); err != nil {
		return Config{}, fmt.Errorf("models: config %s: key eps = %s: want a number", path, v)
	}
	if len(missing) > 0 {
		return Config{}, fmt.Errorf("models: config %s: missing keys %s (is it Wan2.1's config.json?)", path, strings.Join(missing, ", "))
	}
	if v, ok := m["model_type"]; ok {
		var s string
		if json.Unmarshal(v, &s) != nil || s != "t2v" {
			return Config{}, fmt.Errorf("models: config %s: model_type %s: only the t2v architecture is supported", path, v)
		}
	}
	if v, ok := m["patch_size"]; ok {
		var ps []int
		if json.Unmarshal(v, &ps) != nil || len(ps) != 3 || ps[0] != 1 || ps[1] != 2 || ps[2] != 2 {
			return Config{}, fmt.Errorf("models: config %s: patch_size %s: only [1, 2, 2] is supported", path, v)
		}
	}
	for _, k := range []string{"qk_norm", "cross_attn_norm"} {
		if v, ok := m[k]; ok {
			var b bool
			if json.Unmarshal(v, &b) != nil || !b {
				return Config{}, fmt.Errorf("models: config %s: %s %s: only true is supported", path, k, v)
			}
		}
	}
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("models: config %s: %w", path, err)
	}
	return c, nil
}

// WriteWanConfig writes c as a Wan2.1 config.json (with text_dim, which Wan's loader ignores).
func WriteWanConfig(path string, c Config) error {
	m := map[string]any{"_class_name": "WanModel", "model_type": "t2v", "patch_size": []int{1, 2, 2},
		"dim": c.Dim, "ffn_dim": c.FFNDim, "freq_dim": c.FreqDim, "in_dim": c.InDim, "out_dim": c.OutDim,
		"num_heads": c.Heads, "num_layers": c.Layers, "text_len": c.TextLen, "text_dim": c.TextDim,
		"eps": c.Eps, "qk_norm": true, "cross_attn_norm": true, "window_size": []int{-1, -1}}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(path, func(f *os.File) error { _, err := f.Write(append(b, '\n')); return err })
}

// Param is one entry of the parameter table: a Wan2.1 state-dict key, its shape, its offset
// (in elements) in the model's single buffer, and whether AdamW decays it.
type Param struct {
	Name   string
	Shape  []int
	Offset int
	Decay  bool
}

// paramAlign is the alignment of every parameter's offset, in elements (256 bytes in fp32), so that
// every parameter starts on a vector/cache-line boundary on every device. Padding stays zero.
const paramAlign = 64

// Params returns the parameter table in Wan2.1's state-dict order and the numel of the buffer.
// Matrices (linear and patch-embedding weights) decay; biases, norm weights and modulations do not.
func (c Config) Params() ([]Param, int) {
	var ps []Param
	off := 0
	add := func(name string, decay bool, shape ...int) {
		ps = append(ps, Param{Name: name, Shape: shape, Offset: off, Decay: decay})
		n := 1
		for _, s := range shape {
			n *= s
		}
		off += (n + paramAlign - 1) / paramAlign * paramAlign
	}
	linear := func(name string, out, in int) {
		add(name+".weight", true, out, in)
		add(name+".bias", false, out)
	}
	D := c.Dim
	add("patch_embedding.weight", true, D, c.InDim, 1, 2, 2)
	add("patch_embedding.bias", false, D)
	linear("text_embedding.0", D, c.TextDim)
	linear("text_embedding.2", D, D)
	linear("time_embedding.0", D, c.FreqDim)
	linear("time_embedding.2", D, D)
	linear("time_projection.1", 6*D, D)
	for i := 0; i < c.Layers; i++ {
		b := fmt.Sprintf("blocks.%d.", i)
		for _, a := range []string{"self_attn", "cross_attn"} {
			for _, l := range []string{"q", "k", "v", "o"} {
				linear(b+a+"."+l, D, D)
			}
			add(b+a+".norm_q.weight", false, D)
			add(b+a+".norm_k.weight", false, D)
			if a == "self_attn" {
				add(b+"norm3.weight", false, D)
				add(b+"norm3.bias", false, D)
			}
		}
		linear(b+"ffn.0", c.FFNDim, D)
		linear(b+"ffn.2", D, c.FFNDim)
		add(b+"modulation", false, 1, 6, D)
	}
	linear("head.head", 4*c.OutDim, D)
	add("head.modulation", false, 1, 2, D)
	return ps, off
}

// NumParams is the number of parameters (without the alignment padding).
func (c Config) NumParams() int {
	ps, _ := c.Params()
	n := 0
	for _, p := range ps {
		n += numel(p.Shape)
	}
	return n
}

func numel(shape []int) int {
	n := 1
	for _, s := range shape {
		n *= s
	}
	return n
}
