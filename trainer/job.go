package trainer

// From a resolved job to a running trainer: the dataset (the synthetic one is generated on the spot
// when data.path is empty), the loader, the model config, the batch shape and the null embedding.

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/data"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
)

// LoaderSource adapts a data.Loader to Source. The loader's batch buffers are read once, into the
// trainer's device tensors.
type LoaderSource struct{ L *data.Loader }

func (s LoaderSource) Next() (*HostBatch, error) {
	b, err := s.L.Next()
	if err != nil {
		return nil, err
	}
	hb := &HostBatch{Ctx: b.Text.F32, Drop: b.Dropped, Captions: b.Captions, IDs: b.IDs}
	if b.Latents != nil {
		hb.X0 = b.Latents.F32
	}
	if b.TrajLatents != nil { // ODE pairs: timesteps t → σ = t/1000
		hb.TrajX = b.TrajLatents.F32
		hb.TrajSigma = make([]float32, len(b.TrajTimesteps))
		for i, t := range b.TrajTimesteps {
			hb.TrajSigma[i] = t / 1000
		}
	}
	return hb, nil
}

func (s LoaderSource) Cursor() ([]byte, error) { return json.Marshal(s.L.Cursor()) }

func (s LoaderSource) Restore(c []byte) error {
	var cur data.Cursor
	if err := json.Unmarshal(c, &cur); err != nil {
		return fmt.Errorf("loader cursor %q: %w", c, err)
	}
	return s.L.Restore(cur)
}

// EnsureData makes sure the job's dataset exists: with data.path empty it writes the synthetic set
// of data.synth to dir (unless dir already holds one made with the same options) and points
// data.path / data.heldout at it. progress (may be nil) gets (done, total) videos.
func EnsureData(job *config.Job, dir string, progress func(done, total int)) error {
	if job.Data.Path != "" {
		return nil
	}
	s := job.Data.Synth
	o := data.SynthOptions{Count: s.Count, Heldout: s.HeldoutCount, Frames: s.Frames, Size: s.Size, TextDim: s.TextDim, Seed: s.Seed}
	files := data.SynthPaths(dir)
	if have, err := os.ReadFile(files.Meta); err == nil {
		var got data.SynthOptions
		if json.Unmarshal(have, &got) == nil && got == o {
			job.Data.Path, job.Data.Heldout = files.Train, files.Heldout
			return nil
		}
	}
	total := o.Count + o.Heldout
	files, err := data.WriteSynth(dir, o, func(done int) {
		if progress != nil {
			progress(done, total)
		}
	})
	if err != nil {
		return fmt.Errorf("data.synth: %w", err)
	}
	job.Data.Path, job.Data.Heldout = files.Train, files.Heldout
	return nil
}

// ModelConfig is the job's architecture: model.config (a Wan config.json) if set, else the preset
// with in/out channels and text_dim taken from the data (C, textDim) and text_len from data.text_len.
func ModelConfig(job *config.Job, C, textDim int) (models.Config, error) {
	var cfg models.Config
	var err error
	if job.Model.Config != "" {
		if cfg, err = models.ReadWanConfig(job.Model.Config); err != nil {
			return cfg, fmt.Errorf("model.config: %w", err)
		}
	} else {
		if cfg, err = models.Preset(job.Model.Preset); err != nil {
			return cfg, fmt.Errorf("model.preset: %w", err)
		}
		cfg.InDim, cfg.OutDim, cfg.TextDim, cfg.TextLen = C, C, textDim, job.Data.TextLen
	}
	if cfg.InDim != C || cfg.OutDim != C {
		return cfg, fmt.Errorf("model: in_dim %d / out_dim %d, but the data's latents have %d channels", cfg.InDim, cfg.OutDim, C)
	}
	if cfg.TextDim != textDim {
		return cfg, fmt.Errorf("model: text_dim %d, but the data's text embeddings have %d", cfg.TextDim, textDim)
	}
	return cfg, nil
}

// FromJob builds a trainer for a resolved job on dev: loads the data (generating the synthetic set
// into out_dir/data when data.path is empty), the loader with its CFG dropout, the model config and
// the roles. The caller closes the returned loader when done.
func FromJob(job *config.Job, dev kernels.Device, progress, log io.Writer, validate func(int, *Trainer) error) (*Trainer, *data.Loader, error) {
	if err := EnsureData(job, filepath.Join(job.OutDir, "data"), nil); err != nil {
		return nil, nil, err
	}
	ds, err := data.Open(job.Data.Path)
	if err != nil {
		return nil, nil, err
	}
	lc, err := data.FromJob(job, 0, 1)
	if err != nil {
		return nil, nil, err
	}
	lc.Dev = kernels.CPU()
	loader, err := data.NewLoader(ds, lc)
	if err != nil {
		return nil, nil, err
	}
	ls := loader.LatentShape() // [C, F, H, W]
	cfg, err := ModelConfig(job, ls[0], loader.TextDim())
	if err != nil {
		loader.Close()
		return nil, nil, err
	}
	shape := models.Shape{B: job.Data.BatchSize, F: ls[1], H: ls[2], W: ls[3], L: job.Data.TextLen, Recompute: job.Model.Recompute}
	if job.Model.Causal {
		shape.ChunkFrames = job.Model.ChunkFrames
	}
	tr, err := New(Options{
		Job: job, Dev: dev, Model: cfg, Shape: shape,
		Null:     data.EncodeText("", cfg.TextDim, job.Data.TextLen),
		Source:   LoaderSource{loader},
		Progress: progress, Log: log, Validate: validate,
	})
	if err != nil {
		loader.Close()
		return nil, nil, err
	}
	return tr, loader, nil
}
