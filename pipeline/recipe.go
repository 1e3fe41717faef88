// Package pipeline is fewstep's inference library: open an exported (or checkpointed) student on a
// device and generate videos from prompt embeddings, whole or streamed chunk by chunk, the way its
// recipe says (docs/library.md). The recipe (recipe.json beside config.json) comes from the
// objective that trained the student (objectives.Sampled) plus what the job knows: the latent
// shape, its normalisation and the causal window.
package pipeline

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/data"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/objectives"
	"github.com/fewstep/fewstep/sampler"
)

// RecipeFile is the recipe's file name inside a model folder.
const RecipeFile = "recipe.json"

// RecipeFormat is the version of recipe.json this package writes and reads.
const RecipeFormat = 1

// Recipe is how to sample a student: recipe.json. Timesteps are before the shift: the sampler
// visits σ_i = Shift(t_i/1000) (docs/objectives.md).
type Recipe struct {
	Format    int    `json:"format"`    // RecipeFormat
	Objective string `json:"objective"` // the objective that trained the weights
	// Sampler is sampler.Method's name: euler | fewstep | fewstep-ode | consistency | stream.
	Sampler   string    `json:"sampler"`
	Timesteps []float64 `json:"denoising_timesteps,omitempty"` // few-step samplers: the list, t in (0, 1000]
	Steps     int       `json:"steps,omitempty"`               // euler: the number of steps
	Shift     float64   `json:"shift"`                         // schedule shift s (1 = none)
	CFG       float64   `json:"cfg"`                           // guidance w when sampling (1 = none)
	// TeacherCFG is the guidance the teacher was distilled with (for its rows of the distillation table).
	TeacherCFG float64 `json:"teacher_cfg,omitempty"`
	GridN      int     `json:"grid_n,omitempty"` // consistency: snap σ to this training grid
	// Causal students run block-causally over chunks of ChunkFrames latent frames, streaming with a
	// KV cache of LocalFrames (0 = every frame) plus SinkFrames; finished chunks are re-encoded at
	// σ = ContextNoise.
	Causal       bool    `json:"causal"`
	ChunkFrames  int     `json:"chunk_frames,omitempty"`
	LocalFrames  int     `json:"local_attn_frames,omitempty"`
	SinkFrames   int     `json:"sink_frames,omitempty"`
	ContextNoise float64 `json:"context_noise,omitempty"`
	// The latent video the student was trained on: [LatentChannels, Frames, Height, Width], and its
	// prompts' embeddings [TextLen, TextDim].
	LatentChannels int `json:"latent_channels"`
	Frames         int `json:"frames"`
	Height         int `json:"height"`
	Width          int `json:"width"`
	TextLen        int `json:"text_len"` // = the model's text_len: every context is zero-padded to it (Wan's padding)
	TextDim        int `json:"text_dim"`
	// LatentSpace is "synthetic" (the embedded dataset's 48-channel space: decodes to pixels, and
	// captions encode with its toy text encoder) or "vae" (decode with the dataset's VAE).
	LatentSpace string `json:"latent_space"`
	// Mean and Std (per channel; absent = none): the network samples y, the data is y·std + mean.
	Mean []float64 `json:"mean,omitempty"`
	Std  []float64 `json:"std,omitempty"`
}

// Validate checks every field; errors name the field.
func (r *Recipe) Validate() error {
	bad := func(format string, a ...any) error { return fmt.Errorf("recipe: "+format, a...) }
	switch {
	case r.Format != RecipeFormat:
		return bad("format %d, this fewstep reads format %d", r.Format, RecipeFormat)
	case !slices.Contains(sampler.Methods, sampler.Method(r.Sampler)):
		return bad("sampler %q is not one of %v", r.Sampler, sampler.Methods)
	case !(r.Shift > 0) || math.IsInf(r.Shift, 0):
		return bad("shift %g, must be > 0", r.Shift)
	case !(r.CFG >= 0) || math.IsInf(r.CFG, 0):
		return bad("cfg %g, must be finite and ≥ 0", r.CFG)
	case r.LatentChannels < 1 || r.Frames < 1 || r.Height < 2 || r.Width < 2 || r.Height%2 != 0 || r.Width%2 != 0:
		return bad("latent [C=%d, F=%d, H=%d, W=%d]: sizes must be positive, H and W even", r.LatentChannels, r.Frames, r.Height, r.Width)
	case r.TextLen < 1 || r.TextDim < 1:
		return bad("text_len %d, text_dim %d: must be positive", r.TextLen, r.TextDim)
	case r.LatentSpace != "synthetic" && r.LatentSpace != "vae":
		return bad("latent_space %q is not synthetic or vae", r.LatentSpace)
	case r.LatentSpace == "synthetic" && r.LatentChannels != data.LatentChannels:
		return bad("latent_space synthetic has %d channels, not %d", data.LatentChannels, r.LatentChannels)
	case r.GridN < 0:
		return bad("grid_n %d, must be ≥ 0", r.GridN)
	case r.ContextNoise < 0 || r.ContextNoise >= 1:
		return bad("context_noise %g outside [0, 1)", r.ContextNoise)
	case r.Causal && r.ChunkFrames < 1:
		return bad("causal: chunk_frames %d, must be ≥ 1", r.ChunkFrames)
	case !r.Causal && r.ChunkFrames != 0:
		return bad("chunk_frames %d on a bidirectional student (causal false)", r.ChunkFrames)
	case r.Sampler == string(sampler.Stream) && !r.Causal:
		return bad("sampler stream needs a causal student")
	}
	if err := models.CheckWindow(r.LocalFrames, r.SinkFrames); err != nil {
		return bad("%v", err)
	}
	if r.Sampler == string(sampler.Euler) {
		if r.Steps < 1 {
			return bad("euler: steps %d, must be ≥ 1", r.Steps)
		}
		if len(r.Timesteps) > 0 {
			return bad("euler takes steps, not denoising_timesteps")
		}
	} else {
		if len(r.Timesteps) == 0 {
			return bad("sampler %s needs denoising_timesteps", r.Sampler)
		}
		for i, t := range r.Timesteps {
			if !(t > 0 && t <= 1000) || (i > 0 && t >= r.Timesteps[i-1]) {
				return bad("denoising_timesteps %v: want strictly descending values in (0, 1000]", r.Timesteps)
			}
		}
	}
	if len(r.Mean) != len(r.Std) || (len(r.Mean) > 0 && len(r.Mean) != r.LatentChannels) {
		return bad("mean/std have %d/%d values for %d latent channels", len(r.Mean), len(r.Std), r.LatentChannels)
	}
	for i, s := range r.Std {
		if !(s > 0) || math.IsInf(s, 0) || math.IsNaN(r.Mean[i]) || math.IsInf(r.Mean[i], 0) {
			return bad("std[%d] = %g, mean[%d] = %g: std must be > 0, both finite", i, s, i, r.Mean[i])
		}
	}
	return nil
}

// CheckModel reports whether the recipe's latents and embeddings fit a model's config.
func (r *Recipe) CheckModel(c models.Config) error {
	if c.InDim != r.LatentChannels || c.OutDim != r.LatentChannels || c.TextDim != r.TextDim || c.TextLen != r.TextLen {
		return fmt.Errorf("recipe: %d latent channels, text_len %d, text_dim %d, but the model has in/out %d/%d, text_len %d, text_dim %d",
			r.LatentChannels, r.TextLen, r.TextDim, c.InDim, c.OutDim, c.TextLen, c.TextDim)
	}
	return nil
}

// Sigmas is the recipe's full schedule: the shifted denoising list, or euler's grid.
func (r *Recipe) Sigmas() []float64 {
	if r.Sampler == string(sampler.Euler) {
		return sampler.EulerSigmas(r.Steps, r.Shift)
	}
	s := make([]float64, len(r.Timesteps))
	for i, t := range r.Timesteps {
		s[i] = sampler.Shift(t/1000, r.Shift)
	}
	return s
}

// Options are the sampler options of the recipe at k steps (0 = the recipe's own count): for the
// few-step samplers, k levels of the list spread evenly from its first (SubLists), or
// DenoisingList(k, shift) when k exceeds the list.
func (r *Recipe) Options(k int) sampler.Options {
	o := sampler.Options{Method: sampler.Method(r.Sampler), Steps: r.Steps, CFG: r.CFG, Shift: r.Shift, GridN: r.GridN,
		ChunkFrames: r.ChunkFrames, LocalFrames: r.LocalFrames, SinkFrames: r.SinkFrames, ContextNoise: r.ContextNoise}
	if o.Method == sampler.Euler {
		if k > 0 {
			o.Steps = k
		}
		return o
	}
	list := r.Sigmas()
	if k <= 0 {
		k = len(list)
	}
	o.Steps = k
	o.Sigmas = SubLists(list, []int{k})[k]
	return o
}

// JobWindow sets o's KV-cache window (the stream sampler's LocalFrames and SinkFrames) to the job's
// model.local_attn_frames and model.sink_frames when the job sets a window (local_attn_frames > 0).
// A recipe records the training run's window, usually unbounded; a video longer than the training
// length is streamed with a window of its own (docs/objectives-diagnosis.md: a window that keeps
// frame distances within the training length removes the drift peaks of RoPE beyond it).
func JobWindow(o *sampler.Options, job *config.Job) error {
	if job.Model.LocalAttnFrames <= 0 {
		return nil
	}
	if err := models.CheckWindow(job.Model.LocalAttnFrames, job.Model.SinkFrames); err != nil {
		return err
	}
	o.LocalFrames, o.SinkFrames = job.Model.LocalAttnFrames, job.Model.SinkFrames
	return nil
}

// SubLists picks, for each k, k levels of a denoising list spread evenly from its first entry
// (list 1000,750,500,250: k=4 all, k=2 → 1000,500, k=1 → 1000); a k longer than the list is left out
// (the sampler then uses DenoisingList(k)).
func SubLists(list []float64, ks []int) map[int][]float64 {
	out := map[int][]float64{}
	for _, k := range ks {
		if k < 1 || k > len(list) {
			continue
		}
		for i := 0; i < k; i++ {
			out[k] = append(out[k], list[i*len(list)/k])
		}
	}
	return out
}

// NetChunkFrames is the block-causal chunk the network runs with (0 = bidirectional).
func (r *Recipe) NetChunkFrames() int {
	if r.Causal {
		return r.ChunkFrames
	}
	return 0
}

// Decodes reports whether the latent space decodes to pixels here (the synthetic one).
func (r *Recipe) Decodes() bool { return r.LatentSpace == "synthetic" }

// Save writes the recipe as indented JSON (validated first).
func (r *Recipe) Save(path string) error {
	if err := r.Validate(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// LoadRecipe reads a recipe.json (path, or a folder holding one), strictly: an unknown key is an
// error, and so is any field Validate rejects.
func LoadRecipe(path string) (*Recipe, error) {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		path = filepath.Join(path, RecipeFile)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("recipe: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	r := &Recipe{}
	if err := dec.Decode(r); err != nil {
		return nil, fmt.Errorf("recipe %s: %w", path, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("recipe %s: trailing data after the JSON object", path)
	}
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

// ErrNotSampled: the objective does not say how its product is sampled (no objectives.Sampled).
var ErrNotSampled = errors.New("the objective does not say how its product is sampled (objectives.Sampled)")

// ObjectiveRecipe is the sampling recipe the job's objective declares for its product, with the
// job's sample section filling a teacher's (euler) steps, cfg and shift, and sample.sampler
// choosing among the student's alternative samplers.
func ObjectiveRecipe(job *config.Job) (objectives.Recipe, error) {
	o, err := objectives.New(job.Objective, job.Params)
	if err != nil {
		return objectives.Recipe{}, err
	}
	s, ok := o.(objectives.Sampled)
	if !ok {
		return objectives.Recipe{}, fmt.Errorf("objective %s: %w", job.Objective, ErrNotSampled)
	}
	r := s.Recipe()
	if m := job.Sample.Sampler; m != r.Sampler && slices.Contains(r.Alternatives, m) {
		r.Sampler = m
	}
	if r.Sampler == string(sampler.Euler) {
		if r.CFG == 0 {
			r.CFG = job.Sample.CFG
		}
		if r.Shift == 0 {
			r.Shift = job.Sample.Shift
		}
	}
	return r, nil
}

// RecipeFor is the recipe of the job's product: the objective's recipe (ObjectiveRecipe) with the
// job's model (the causal chunk and window) and data (the latent shape from data.synth or the
// first row of data.path, text_len, the normalisation).
func RecipeFor(job *config.Job) (*Recipe, error) {
	var sh Latents
	if job.Data.Path == "" {
		s := job.Data.Synth
		sh = Latents{C: data.LatentChannels, F: s.Frames, H: s.Size / 4, W: s.Size / 4, TextDim: s.TextDim}
	} else {
		var err error
		if sh, err = latentShapeOf(job.Data.Path); err != nil {
			return nil, err
		}
	}
	return RecipeWith(job, sh)
}

// Latents is the shape a student was trained on: one video's latent [C, F, H, W] and the width of
// its prompts' embeddings.
type Latents struct{ C, F, H, W, TextDim int }

// RecipeWith is RecipeFor with the latent shape given (the trainer knows it without reading data).
func RecipeWith(job *config.Job, sh Latents) (*Recipe, error) {
	or, err := ObjectiveRecipe(job)
	if err != nil {
		return nil, err
	}
	r := &Recipe{Format: RecipeFormat, Objective: job.Objective, Sampler: or.Sampler, Shift: or.Shift, CFG: or.CFG,
		TeacherCFG: or.TeacherCFG, GridN: or.GridN, Causal: or.Causal, ContextNoise: or.ContextNoise, TextLen: job.Data.TextLen,
		LatentChannels: sh.C, Frames: sh.F, Height: sh.H, Width: sh.W, TextDim: sh.TextDim}
	if r.Sampler == string(sampler.Euler) {
		r.Steps = job.Sample.Steps
	} else {
		r.Timesteps = or.Timesteps
	}
	if r.Causal {
		r.ChunkFrames = or.ChunkFrames
		if r.ChunkFrames == 0 {
			r.ChunkFrames = job.Model.ChunkFrames
		}
		r.LocalFrames, r.SinkFrames = job.Model.LocalAttnFrames, job.Model.SinkFrames
	}
	r.LatentSpace = "vae"
	if r.LatentChannels == data.LatentChannels {
		r.LatentSpace = "synthetic"
	}
	mean, std, err := job.Data.MeanStd(r.LatentChannels)
	if err != nil {
		return nil, err
	}
	r.Mean, r.Std = clone(mean), clone(std)
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("job %s (objective %s): %w", job.Name, job.Objective, err)
	}
	return r, nil
}

// latentShapeOf reads the latent shape and text_dim of a dataset's first row.
func latentShapeOf(path string) (Latents, error) {
	ds, err := data.Open(path)
	if err != nil {
		return Latents{}, fmt.Errorf("recipe: the latent shape of data.path: %w", err)
	}
	defer ds.Close()
	if ds.NumRows() == 0 {
		return Latents{}, fmt.Errorf("recipe: data.path %s has no rows to read the latent shape from", path)
	}
	row, err := ds.Row(0)
	if err != nil {
		return Latents{}, err
	}
	lat, err := row.Tensor(data.Latent)
	if err != nil {
		return Latents{}, err
	}
	emb, err := row.Tensor(data.TextEmb)
	if err != nil {
		return Latents{}, err
	}
	if len(lat.Shape) != 4 || len(emb.Shape) != 2 {
		return Latents{}, fmt.Errorf("recipe: data.path %s: latent %v, text embedding %v: want [C, F, H, W] and [L, text_dim]", path, lat.Shape, emb.Shape)
	}
	return Latents{C: lat.Shape[0], F: lat.Shape[1], H: lat.Shape[2], W: lat.Shape[3], TextDim: emb.Shape[1]}, nil
}

// WriteRecipe writes RecipeFor(job) as dir/recipe.json and returns it.
func WriteRecipe(dir string, job *config.Job) (*Recipe, error) {
	r, err := RecipeFor(job)
	if err != nil {
		return nil, err
	}
	return r, r.Save(filepath.Join(dir, RecipeFile))
}

func clone(s []float64) []float64 {
	if s == nil {
		return nil
	}
	return append([]float64(nil), s...)
}
