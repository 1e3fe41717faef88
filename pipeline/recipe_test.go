package pipeline

import (
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/sampler"
)

func jobFor(objective string, params map[string]any) *config.Job {
	j := config.Defaults()
	j.Objective, j.Params = objective, params
	return &j
}

func TestRecipeFor(t *testing.T) {
	j := jobFor("dmd", map[string]any{"denoising_timesteps": []any{1000, 500}, "shift": 3, "cfg": 2.5})
	r, err := RecipeFor(j)
	if err != nil {
		t.Fatal(err)
	}
	want := &Recipe{Format: 1, Objective: "dmd", Sampler: "fewstep", Timesteps: []float64{1000, 500}, Shift: 3, CFG: 1, TeacherCFG: 2.5,
		LatentChannels: 48, Frames: 8, Height: 8, Width: 8, TextLen: 8, TextDim: 32, LatentSpace: "synthetic"}
	if !reflect.DeepEqual(r, want) {
		t.Fatalf("recipe\n %+v\nwant\n %+v", r, want)
	}
	// σ = Shift(t/1000, 3): 1 and 3·0.5/(1 + 2·0.5) = 0.75
	if s := r.Sigmas(); len(s) != 2 || s[0] != 1 || math.Abs(s[1]-0.75) > 1e-12 {
		t.Fatalf("sigmas %v, want [1 0.75]", s)
	}
	// sample.sampler picks an alternative the student allows, and only such a one
	j.Sample.Sampler = "fewstep-ode"
	if r, _ := RecipeFor(j); r.Sampler != "fewstep-ode" {
		t.Fatalf("sample.sampler fewstep-ode: recipe sampler %s", r.Sampler)
	}
	j.Sample.Sampler = "stream"
	if r, _ := RecipeFor(j); r.Sampler != "fewstep" {
		t.Fatalf("sample.sampler stream for a bidirectional dmd student: recipe sampler %s", r.Sampler)
	}

	sf := jobFor("selfforcing", nil)
	sf.Model.ChunkFrames, sf.Model.LocalAttnFrames, sf.Model.SinkFrames = 2, 4, 2
	sf.Data.Normalize, sf.Data.Mean, sf.Data.Std = "custom", make([]float64, 48), make([]float64, 48)
	for i := range sf.Data.Std {
		sf.Data.Mean[i], sf.Data.Std[i] = float64(i), 1+float64(i)
	}
	r, err = RecipeFor(sf)
	if err != nil {
		t.Fatal(err)
	}
	if r.Sampler != "stream" || !r.Causal || r.ChunkFrames != 2 || r.LocalFrames != 4 || r.SinkFrames != 2 || r.Shift != 5 ||
		len(r.Mean) != 48 || r.Std[3] != 4 || r.NetChunkFrames() != 2 {
		t.Fatalf("selfforcing recipe %+v", r)
	}

	fm := jobFor("flowmatch", nil)
	fm.Sample.Steps, fm.Sample.CFG, fm.Sample.Shift = 30, 3, 2
	r, err = RecipeFor(fm)
	if err != nil {
		t.Fatal(err)
	}
	if r.Sampler != "euler" || r.Steps != 30 || r.CFG != 3 || r.Shift != 2 || r.Timesteps != nil || r.NetChunkFrames() != 0 {
		t.Fatalf("flowmatch recipe %+v", r)
	}
	if o := r.Options(4); o.Method != sampler.Euler || o.Steps != 4 || o.Sigmas != nil {
		t.Fatalf("euler options at 4 steps: %+v", o)
	}
	if _, err := RecipeFor(jobFor("nonesuch", nil)); err == nil || !strings.Contains(err.Error(), "nonesuch") {
		t.Fatalf("unknown objective: %v", err)
	}
}

func TestRecipeOptions(t *testing.T) {
	r, err := RecipeFor(jobFor("dmd", nil))
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[int][]float64{0: {1, 0.75, 0.5, 0.25}, 4: {1, 0.75, 0.5, 0.25}, 2: {1, 0.5}, 1: {1}} {
		o := r.Options(k)
		if !reflect.DeepEqual(o.Sigmas, want) || o.Method != sampler.FewStep || o.CFG != 1 {
			t.Errorf("Options(%d) = %+v, want sigmas %v", k, o, want)
		}
	}
	if o := r.Options(8); o.Sigmas != nil || o.Steps != 8 { // longer than the list: DenoisingList(8)
		t.Errorf("Options(8) = %+v", o)
	}
}

// A recipe carries the training run's KV window (here 8 + sink 2); the job's model.local_attn_frames
// replaces it when set, is refused when not a window, and leaves it alone when 0.
func TestJobWindow(t *testing.T) {
	rec := &Recipe{Sampler: "stream", LocalFrames: 8, SinkFrames: 2, ChunkFrames: 2}
	for _, c := range []struct {
		local, sink       int
		wantLocal, wantSk int
		bad               bool
	}{{0, 0, 8, 2, false}, {0, 3, 8, 2, false}, {6, 0, 6, 0, false}, {6, 2, 6, 2, false}, {4, 4, 0, 0, true}} {
		j := config.Defaults()
		j.Model.LocalAttnFrames, j.Model.SinkFrames = c.local, c.sink
		o := rec.Options(0)
		err := JobWindow(&o, &j)
		if c.bad {
			if err == nil || !strings.Contains(err.Error(), "sink_frames") {
				t.Errorf("window %d+%d: err %v, want the sink refused", c.local, c.sink, err)
			}
			continue
		}
		if err != nil || o.LocalFrames != c.wantLocal || o.SinkFrames != c.wantSk || o.Method != sampler.Stream {
			t.Errorf("window %d+%d: %+v, %v; want %d+%d", c.local, c.sink, o, err, c.wantLocal, c.wantSk)
		}
	}
}

func TestSubLists(t *testing.T) {
	l := SubLists([]float64{1, 0.75, 0.5, 0.25}, []int{1, 2, 4, 8})
	if len(l[1]) != 1 || l[1][0] != 1 || len(l[2]) != 2 || l[2][1] != 0.5 || len(l[4]) != 4 || l[8] != nil {
		t.Fatalf("SubLists = %v", l)
	}
}

func TestRecipeSaveLoad(t *testing.T) {
	dir := t.TempDir()
	j := jobFor("selfforcing", map[string]any{"context_noise": 0.05})
	r, err := WriteRecipe(dir, j)
	if err != nil {
		t.Fatal(err)
	}
	back, err := LoadRecipe(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(r, back) {
		t.Fatalf("round trip\n %+v\n %+v", r, back)
	}
	p := filepath.Join(dir, RecipeFile)
	raw, _ := os.ReadFile(p)
	for _, c := range []struct{ from, to, want string }{
		{`"format": 1`, `"format": 2`, "format 2"},
		{`"sampler": "stream"`, `"sampler": "dpm"`, `sampler "dpm"`},
		{`"shift": 5`, `"shift": 0`, "shift 0"},
		{`"chunk_frames": 2`, `"chunk_frames": 0`, "chunk_frames 0"},
		{`"causal": true`, `"causal": false`, "chunk_frames 2 on a bidirectional"},
		{`"frames": 8`, `"frames": 0`, "latent [C=48, F=0"},
		{`"height": 8`, `"height": 7`, "H and W even"},
		{`"text_dim": 32`, `"text_dim": 32, "colour": 1`, `unknown field "colour"`},
		{`"denoising_timesteps": [`, `"denoising_timesteps": [100, `, "denoising_timesteps"},
		{`"context_noise": 0.05`, `"context_noise": 1`, "context_noise 1"},
		{`"latent_space": "synthetic"`, `"latent_space": "pixels"`, "latent_space"},
		{`"latent_channels": 48`, `"latent_channels": 16`, "synthetic has 48 channels"},
		{`"cfg": 1`, `"cfg": -2`, "cfg -2"},
	} {
		bad := strings.Replace(string(raw), c.from, c.to, 1)
		if bad == string(raw) {
			t.Fatalf("mutation %q not applied to\n%s", c.from, raw)
		}
		os.WriteFile(p, []byte(bad), 0o644)
		if _, err := LoadRecipe(p); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s → %s: error %v, want one with %q", c.from, c.to, err, c.want)
		}
	}
	if _, err := LoadRecipe(filepath.Join(dir, "none.json")); err == nil {
		t.Fatal("a missing recipe loaded")
	}
	r.Mean, r.Std = []float64{1}, []float64{1}
	if err := r.Validate(); err == nil || !strings.Contains(err.Error(), "mean/std") {
		t.Fatalf("mean/std of 1 channel for 48: %v", err)
	}
}

func TestRecipeCheckModel(t *testing.T) {
	r, _ := RecipeFor(jobFor("dmd", nil))
	c, _ := models.Preset("tiny")
	if err := r.CheckModel(c); err == nil || !strings.Contains(err.Error(), "48 latent channels") {
		t.Fatalf("16-channel model for a 48-channel recipe: %v", err)
	}
	c.InDim, c.OutDim = 48, 48
	if err := r.CheckModel(c); err == nil || !strings.Contains(err.Error(), "text_len 512") {
		t.Fatalf("text_len 512 for a recipe of 8: %v", err)
	}
	c.TextLen = 8
	if err := r.CheckModel(c); err != nil {
		t.Fatal(err)
	}
}
