package main

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/eval"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/trainer"
	"github.com/spf13/cobra"
)

// fromRun is what a self-describing checkpoint folder gives `sample --from` and `export --from`
// (trainer/describe.go): the weights of one role, the job that trained them (job.yaml, absolute
// paths), the architecture (config.json beside the weights) and the latent space (latent.json).
type fromRun struct {
	dir     string // the checkpoint folder
	weights string // dir/<role>.safetensors
	job     *config.Job
	latent  *trainer.Latent // nil for a checkpoint written before latent.json existed
}

// resolveFrom opens --from (a run folder, its checkpoints folder or one checkpoint folder) and
// --role (default: ema when the checkpoint has one, else student). The job is the checkpoint's
// own job.yaml unless --config is given; --set applies on top of either.
func resolveFrom(cmd *cobra.Command, from, role string) (*fromRun, error) {
	dir, err := trainer.ResolveCheckpoint(from)
	if err != nil {
		return nil, fmt.Errorf("--from: %w", err)
	}
	w, err := resolveWeights("", dir, role)
	if err != nil {
		return nil, err
	}
	r := &fromRun{dir: dir, weights: w}
	jp := filepath.Join(dir, "job.yaml")
	switch {
	case cmd.Flags().Changed("config"):
		r.job, err = loadJob(cmd)
	case !fileExists(jp): // a checkpoint from elsewhere: the defaults and --set
		fmt.Fprintf(cmd.ErrOrStderr(), "%s: checkpoint %s has no job.yaml: using the default job and --set (give --config JOB for its own)\n", cmd.Name(), dir)
		r.job, err = loadJob(cmd)
	default:
		sets, _ := cmd.Flags().GetStringArray("set")
		if r.job, err = config.Load(jp, sets); err == nil {
			err = printJob(cmd, r.job, jp)
		}
	}
	if err != nil {
		return nil, err
	}
	l, err := trainer.ReadLatent(dir)
	switch {
	case err == nil:
		r.latent = &l
	case !errors.Is(err, fs.ErrNotExist):
		return nil, err
	}
	return r, nil
}

// fitContext zero-pads the prompts' text embeddings (and the null prompt) to the model's text_len,
// as Wan2.1 does (models.PadContext), so that sampling a network sees the contexts it was trained
// on; more tokens than text_len is an error.
func fitContext(set *eval.Set, cfg models.Config) error { return trainer.FitContext(set, cfg) }
