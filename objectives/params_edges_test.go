package objectives

import (
	"strings"
	"testing"
)

// The objectives' parameter checks at their edges: the first value refused names its key, the
// last value accepted is accepted (docs/objectives.md lists the knobs).
func TestParamEdges(t *testing.T) {
	cases := []struct {
		objective string
		params    map[string]any
		want      string // "" = accepted
	}{
		// consistency: grid_n ≥ 1, 1 ≤ skip ≤ grid_n, shift > 0, 0 ≤ cfg_min ≤ cfg_max, huber_c > 0 under huber
		{"consistency", map[string]any{"grid_n": 0, "skip": 0}, "params.grid_n"},
		{"consistency", map[string]any{"grid_n": 1, "skip": 1}, ""},
		{"consistency", map[string]any{"grid_n": 4, "skip": 0}, "params.skip"},
		{"consistency", map[string]any{"grid_n": 4, "skip": 4}, ""},
		{"consistency", map[string]any{"grid_n": 4, "skip": 5}, "params.skip"},
		{"consistency", map[string]any{"shift": 0}, "params.shift"},
		{"consistency", map[string]any{"shift": 1e-3}, ""},
		{"consistency", map[string]any{"cfg_min": 2, "cfg_max": 1.99}, "params.cfg_min"},
		{"consistency", map[string]any{"cfg_min": 2, "cfg_max": 2}, ""},
		{"consistency", map[string]any{"cfg_min": -0.01, "cfg_max": 2}, "params.cfg_min"},
		{"consistency", map[string]any{"cfg_min": 0, "cfg_max": 0}, ""},
		{"consistency", map[string]any{"loss": "l1"}, "params.loss"},
		{"consistency", map[string]any{"loss": "huber", "huber_c": 0}, "params.huber_c"},
		{"consistency", map[string]any{"loss": "huber", "huber_c": 1e-9}, ""},
		{"consistency", map[string]any{"loss": "l2", "huber_c": 0}, ""},
		// selfforcing: context_noise in [0, 1), chunk_frames ≥ 0, kv_cache_dtype fp32 | bf16
		{"selfforcing", map[string]any{"context_noise": -0.01}, "params.context_noise"},
		{"selfforcing", map[string]any{"context_noise": 0}, ""},
		{"selfforcing", map[string]any{"context_noise": 0.99}, ""},
		{"selfforcing", map[string]any{"context_noise": 1}, "params.context_noise"},
		{"selfforcing", map[string]any{"chunk_frames": -1}, "params.chunk_frames"},
		{"selfforcing", map[string]any{"chunk_frames": 0}, ""},
		{"selfforcing", map[string]any{"kv_cache_dtype": "fp16"}, "params.kv_cache_dtype"},
		{"selfforcing", map[string]any{"kv_cache_dtype": "bf16"}, ""},
		// odeinit: chunk_frames ≥ 0
		{"odeinit", map[string]any{"chunk_frames": -1}, "params.chunk_frames"},
		{"odeinit", map[string]any{"chunk_frames": 0}, ""},
		// adversarial: gen_gan_weight, dmd_weight, r1_weight ≥ 0; disc_gan_weight, r1_sigma > 0;
		// head_dim ≥ 0; tap_layer ≥ −1
		{"adversarial", map[string]any{"mode": "gan"}, "params.mode"},
		{"adversarial", map[string]any{"mode": "standalone"}, ""},
		{"adversarial", map[string]any{"gen_gan_weight": -1e-9}, "gen_gan_weight"},
		{"adversarial", map[string]any{"gen_gan_weight": 0, "dmd_weight": 0, "r1_weight": 0}, ""},
		{"adversarial", map[string]any{"dmd_weight": -1e-9}, "dmd_weight"},
		{"adversarial", map[string]any{"disc_gan_weight": 0}, "disc_gan_weight"},
		{"adversarial", map[string]any{"disc_gan_weight": 1e-9, "r1_sigma": 1e-9}, ""},
		{"adversarial", map[string]any{"r1_weight": -1e-9}, "r1_weight"},
		{"adversarial", map[string]any{"r1_sigma": 0}, "r1_sigma"},
		{"adversarial", map[string]any{"head_dim": -1}, "params.head_dim"},
		{"adversarial", map[string]any{"head_dim": 0}, ""},
		{"adversarial", map[string]any{"tap_layer": -2}, "params.tap_layer"},
		{"adversarial", map[string]any{"tap_layer": -1}, ""},
		// the DMD block (dmd, adversarial, selfforcing): generator_update_ratio ≥ 1, cfg ≥ 0 and
		// finite, timesteps strictly descending in (0, 1000]; DMD's uniform σ law 0 ≤ min < max ≤ 1
		{"dmd", map[string]any{"generator_update_ratio": 0}, "params.generator_update_ratio"},
		{"dmd", map[string]any{"generator_update_ratio": 1, "cfg": 0}, ""},
		{"dmd", map[string]any{"cfg": -1e-9}, "params.cfg"},
		{"dmd", map[string]any{"denoising_timesteps": []any{}}, "params.denoising_timesteps"},
		{"dmd", map[string]any{"denoising_timesteps": []any{1000.001}}, "params.denoising_timesteps"},
		{"dmd", map[string]any{"denoising_timesteps": []any{1000, 0.5}}, ""},
		{"dmd", map[string]any{"denoising_timesteps": []any{1000, 0}}, "params.denoising_timesteps"},
		{"dmd", map[string]any{"denoising_timesteps": []any{500, 500}}, "params.denoising_timesteps"},
		{"dmd", map[string]any{"sigma_min": 0, "sigma_max": 1}, ""},
		{"dmd", map[string]any{"sigma_min": -1e-9, "sigma_max": 1}, "params.sigma_min"},
		{"dmd", map[string]any{"sigma_min": 0, "sigma_max": 1.000001}, "params.sigma_min"},
		{"dmd", map[string]any{"sigma_min": 0.5, "sigma_max": 0.5}, "params.sigma_min"},
		{"dmd", map[string]any{"shift": 0}, "params.shift"},
		{"dmd", map[string]any{"shift": 1e-3}, ""},
		// flowmatch's σ law: logit_normal with sigma_std > 0, or uniform
		{"flowmatch", map[string]any{"sigma_std": 0}, "params.sigma_std"},
		{"flowmatch", map[string]any{"sigma_std": 1e-9}, ""},
		{"flowmatch", map[string]any{"sigma_law": "uniform", "sigma_min": 0, "sigma_max": 1}, ""},
		{"flowmatch", map[string]any{"sigma_law": "beta"}, "params.sigma_law"},
	}
	for _, c := range cases {
		_, err := New(c.objective, c.params)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s %v: refused (%v), want accepted", c.objective, c.params, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s %v: %v, want an error naming %s", c.objective, c.params, err, c.want)
		}
	}
}
