package objectives

import (
	"reflect"
	"strings"
	"testing"
)

// Every registered objective says how its product is sampled, from its own params.
func TestRecipes(t *testing.T) {
	for _, name := range Names() {
		o, err := New(name, nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, ok := o.(Sampled); !ok {
			t.Errorf("objective %s does not implement Sampled", name)
		}
	}
	cases := []struct {
		name   string
		params map[string]any
		want   Recipe
	}{
		{"dmd", map[string]any{"denoising_timesteps": []any{1000, 500}, "shift": 3, "cfg": 2.5},
			Recipe{Sampler: "fewstep", Alternatives: []string{"fewstep-ode"}, Timesteps: []float64{1000, 500}, Shift: 3, CFG: 1, TeacherCFG: 2.5}},
		{"dmd", nil, Recipe{Sampler: "fewstep", Alternatives: []string{"fewstep-ode"}, Timesteps: []float64{1000, 750, 500, 250}, Shift: 1, CFG: 1, TeacherCFG: 4}},
		{"adversarial", map[string]any{"mode": "standalone", "denoising_timesteps": []any{1000}, "shift": 2},
			Recipe{Sampler: "fewstep", Alternatives: []string{"fewstep-ode"}, Timesteps: []float64{1000}, Shift: 2, CFG: 1, TeacherCFG: 4}},
		{"selfforcing", map[string]any{"context_noise": 0.1, "chunk_frames": 3},
			Recipe{Sampler: "stream", Timesteps: []float64{1000, 750, 500, 250}, Shift: 5, CFG: 1, TeacherCFG: 4, Causal: true, ChunkFrames: 3, ContextNoise: 0.1}},
		{"odeinit", nil, Recipe{Sampler: "stream", Alternatives: []string{"fewstep", "fewstep-ode"}, Timesteps: []float64{1000, 750, 500, 250}, Shift: 1, CFG: 1, TeacherCFG: 1, Causal: true}},
		{"consistency", map[string]any{"grid_n": 20, "shift": 3, "cfg_min": 2, "cfg_max": 4},
			Recipe{Sampler: "consistency", Timesteps: []float64{1000, 750, 500, 250}, Shift: 3, CFG: 1, TeacherCFG: 3, GridN: 20}},
		{"flowmatch", nil, Recipe{Sampler: "euler"}},
	}
	for _, c := range cases {
		o, err := New(c.name, c.params)
		if err != nil {
			t.Fatalf("%s %v: %v", c.name, c.params, err)
		}
		if got := o.(Sampled).Recipe(); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s %v: recipe\n %+v\nwant\n %+v", c.name, c.params, got, c.want)
		}
	}
}

// The shared DMD block decodes squashed into each objective, strictly, and validates once.
func TestDMDParamsBlock(t *testing.T) {
	for _, name := range []string{"dmd", "adversarial", "selfforcing"} {
		for _, c := range []struct {
			params map[string]any
			want   string
		}{
			{map[string]any{"bogus": 1}, "params.bogus"},
			{map[string]any{"generator_update_ratio": 0}, "params.generator_update_ratio"},
			{map[string]any{"denoising_timesteps": []any{250, 500}}, "params.denoising_timesteps"},
			{map[string]any{"sigma_min": 0.9, "sigma_max": 0.1}, "params.sigma_min"},
			{map[string]any{"cfg": -1}, "params.cfg"},
			{map[string]any{"shift": 0}, "params.shift"},
		} {
			_, err := New(name, c.params)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s %v: error %v, want one naming %s", name, c.params, err, c.want)
			}
		}
	}
}
