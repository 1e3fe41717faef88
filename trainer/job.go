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
	"github.com/fewstep/fewstep/dist"
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

// Restore takes a cursor saved by any rank of any world size (a checkpoint holds rank 0's). The
// loader's global order does not depend on the world size (rank r of N takes every N-th sample of
// the epoch's permutation, from r), so the cursor is carried over by the samples of the epoch
// already used: with the same global batch (batch_size × world) the data continue exactly; with
// another, from the first whole batch after the same count of samples.
func (s LoaderSource) Restore(c []byte) error {
	var cur data.Cursor
	if err := json.Unmarshal(c, &cur); err != nil {
		return fmt.Errorf("loader cursor %q: %w", c, err)
	}
	own := s.L.Cursor()
	if cur.World > 0 && cur.Size > 0 && (cur.Rank != own.Rank || cur.World != own.World || cur.Size != own.Size) {
		used := cur.Batch * cur.Size * cur.World // samples of epoch cur.Epoch already used
		cur.Batch = used / (own.Size * own.World)
		cur.Rank, cur.World, cur.Size = own.Rank, own.World, own.Size
		if cur.Batch >= s.L.BatchesPerEpoch() {
			cur.Epoch, cur.Batch = cur.Epoch+1, 0
		}
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
	if cfg.TextLen != job.Data.TextLen { // Wan pads every context to text_len; the loader pads to data.text_len
		return cfg, fmt.Errorf("model.config: text_len %d, but data.text_len is %d: set data.text_len: %d (Wan zero-pads every context to its text_len)",
			cfg.TextLen, job.Data.TextLen, cfg.TextLen)
	}
	return cfg, nil
}

// FromJob builds a trainer for a resolved job on dev: loads the data (generating the synthetic set
// into out_dir/data when data.path is empty), the loader with its CFG dropout, the model config and
// the roles. The caller closes the returned loader when done.
func FromJob(job *config.Job, dev kernels.Device, progress, log io.Writer, validate func(int, *Trainer) error) (*Trainer, *data.Loader, error) {
	return FromJobComm(job, dev, nil, progress, log, validate)
}

// FromJobComm is FromJob for one rank of a data-parallel job (comm nil: a single rank): the loader
// takes the rank's shard of every epoch; rank 0 makes the synthetic data set while the others wait;
// with data.ode_pairs the ranks make the teacher's pairs together (EnsureODEPairs).
// Every rank calls it with its own copy of the job (it fills in data.path).
func FromJobComm(job *config.Job, dev kernels.Device, comm dist.Comm, progress, log io.Writer, validate func(int, *Trainer) error) (*Trainer, *data.Loader, error) {
	rank, world := 0, 1
	if comm != nil {
		rank, world = comm.Rank(), comm.Size()
	}
	if rank == 0 {
		if err := EnsureData(job, filepath.Join(job.OutDir, "data"), nil); err != nil {
			return nil, nil, err // dist.Run closes the rank's handle: the others stop waiting
		}
	}
	if comm != nil {
		bt := &Trainer{opt: Options{Dev: dev}, comm: comm}
		if err := bt.barrier("waiting for rank 0's data set"); err != nil {
			return nil, nil, err
		}
		if rank != 0 {
			if err := EnsureData(job, filepath.Join(job.OutDir, "data"), nil); err != nil {
				return nil, nil, err
			}
		}
	}
	// data.ode_pairs: the teacher's pairs, made by the ranks together, become the data.
	if err := EnsureODEPairs(progress, job, dev, comm); err != nil {
		return nil, nil, err
	}
	ds, err := data.Open(job.Data.Path)
	if err != nil {
		return nil, nil, fmt.Errorf("data.path: %w", err)
	}
	lc, err := data.FromJob(job, rank, world)
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
	// BF16Operands: on a bf16-GEMM GPU the GEMM-only activations are stored in bf16 (the same
	// numbers, less memory, fewer bytes moved), and the FFN's GELU pre-activation (within bf16
	// rounding: models.Shape); nothing changes on the CPU.
	shape := models.Shape{B: job.Data.BatchSize, F: ls[1], H: ls[2], W: ls[3], L: job.Data.TextLen, Recompute: job.Model.Recompute,
		BF16Operands: true}
	if job.Model.Causal {
		shape.ChunkFrames = job.Model.ChunkFrames
	}
	tr, err := New(Options{
		Job: job, Dev: dev, Model: cfg, Shape: shape,
		Null:     data.EncodeText("", cfg.TextDim, job.Data.TextLen),
		Source:   LoaderSource{loader},
		Progress: progress, Log: log, Validate: validate, Comm: comm,
	})
	if err != nil {
		loader.Close()
		return nil, nil, err
	}
	return tr, loader, nil
}
