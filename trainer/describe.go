package trainer

// Self-describing checkpoints: besides the weights, states and job.yaml (checkpoint.go), every
// checkpoint folder holds
//
//	config.json   the Wan2.1 config.json of the job's DiT roles (student, teacher, critic, ema share it)
//	latent.json   the latent shape [C, F, H, W] the networks were trained on, the text context
//	              (text_len, text_dim), the normalization and whether the space is the synthetic one
//	recipe.json   how the job's product is sampled (pipeline.Recipe: the objective's sampler,
//	              denoising list, shift, guidance, causal chunk and window, and the latent space)
//
// so that `fewstep sample --from RUN` and `fewstep export --from RUN` need no other flag
// (docs/README.md).
//
// recipe.json repeats latent.json's facts (shape, text context, normalisation, whether synthetic)
// so that an export folder stands alone for pipeline.Open, and where it exists it is what sample,
// eval and the library read. latent.json is written for every checkpoint, recipe or not: an
// objective of one's own that declares no recipe (objectives.Sampled, docs/new-objective.md) gets
// none, and `fewstep sample --from` takes the latent shape and text context from latent.json.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/data"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/pipeline"
)

// LatentFile is the name of the latent description in a checkpoint or export folder.
const LatentFile = "latent.json"

// Latent describes the latent space a checkpoint's networks were trained on.
type Latent struct {
	// Shape is one video's latent [C, F, H, W].
	Shape []int `json:"shape"`
	// TextLen is the context length every prompt is zero-padded to (the model's text_len);
	// TextDim the width of a text embedding.
	TextLen int `json:"text_len"`
	TextDim int `json:"text_dim"`
	// Normalize is data.normalize (none | wan | custom): the networks see (x − mean)/std per
	// channel; Mean and Std are set for custom.
	Normalize string    `json:"normalize"`
	Mean      []float64 `json:"mean,omitempty"`
	Std       []float64 `json:"std,omitempty"`
	// Synthetic: the latents are the synthetic dataset's fixed pixel map (docs/data.md), so
	// samples decode to pixels (data.DecodeLatent) and captions encode with the toy text encoder.
	Synthetic bool `json:"synthetic"`
}

// LatentOf is the latent description of a job trained on latents of shape [C, F, H, W] with the
// architecture cfg.
func LatentOf(job *config.Job, cfg models.Config, C, F, H, W int) Latent {
	l := Latent{Shape: []int{C, F, H, W}, TextLen: cfg.TextLen, TextDim: cfg.TextDim, Normalize: job.Data.Normalize,
		Synthetic: C == data.LatentChannels && job.Data.Normalize == "none"}
	if l.Normalize == "custom" {
		l.Mean, l.Std = job.Data.Mean, job.Data.Std
	}
	return l
}

// WriteLatent writes l as dir/latent.json.
func WriteLatent(dir string, l Latent) error {
	b, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return err
	}
	return writeFileSync(filepath.Join(dir, LatentFile), append(b, '\n'))
}

// ReadLatent reads dir/latent.json.
func ReadLatent(dir string) (Latent, error) {
	var l Latent
	p := filepath.Join(dir, LatentFile)
	b, err := os.ReadFile(p)
	if err != nil {
		return l, err
	}
	if err := json.Unmarshal(b, &l); err != nil {
		return l, fmt.Errorf("%s: %w", p, err)
	}
	if len(l.Shape) != 4 || l.Shape[0] <= 0 || l.Shape[1] <= 0 || l.Shape[2] <= 0 || l.Shape[3] <= 0 || l.TextLen <= 0 || l.TextDim <= 0 {
		return l, fmt.Errorf("%s: want shape [C, F, H, W] and text_len, text_dim > 0, got %v, %d, %d", p, l.Shape, l.TextLen, l.TextDim)
	}
	return l, nil
}

// describe writes config.json and latent.json into a checkpoint folder being made.
func (t *Trainer) describe(dir string) error {
	if err := models.WriteWanConfig(filepath.Join(dir, "config.json"), t.Env.Cfg); err != nil {
		return err
	}
	s := t.Env.Shape
	if err := WriteLatent(dir, LatentOf(t.Job, t.Env.Cfg, t.Env.Cfg.InDim, s.F, s.H, s.W)); err != nil {
		return err
	}
	r, err := pipeline.RecipeWith(t.Job, pipeline.Latents{C: t.Env.Cfg.InDim, F: s.F, H: s.H, W: s.W, TextDim: t.Env.Cfg.TextDim})
	if errors.Is(err, pipeline.ErrNotSampled) {
		return nil // an objective of its own that declares no recipe: the checkpoint has none
	}
	if err != nil {
		return fmt.Errorf("checkpoint %s: %w", dir, err)
	}
	return r.Save(filepath.Join(dir, pipeline.RecipeFile))
}
