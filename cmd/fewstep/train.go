package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/data"
	"github.com/fewstep/fewstep/dist"
	"github.com/fewstep/fewstep/eval"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/objectives"
	"github.com/fewstep/fewstep/pipeline"
	"github.com/fewstep/fewstep/sampler"
	"github.com/fewstep/fewstep/trainer"
	"github.com/spf13/cobra"
)

var trainCmd = &cobra.Command{
	Use:   "train",
	Short: "Train a job: an objective (flowmatch, dmd, ...) over its roles, with checkpoints, metrics and validation samples",
	Long: `Train the job's objective. The run folder (out_dir) receives job.yaml (the resolved job),
metrics.jsonl (one JSON object per logged step), checkpoints/step-NNNNNN/ (every role's weights,
optimizer states, loader cursor; checkpoints/latest names the newest) and, every train.sample_every
steps and at the end, samples/step-NNNNNN/ (GIF and PNG previews of the student, or its EMA, on
held-out prompts, with their CondAcc in metrics.jsonl as val/cond_acc).

--resume DIR continues exactly from a checkpoint folder, or from a run folder's latest checkpoint
(with no --config, the run's own job.yaml). SIGINT or SIGTERM stops after the step in flight with a
checkpoint of it, so an interrupted run resumes exactly from there (a second signal quits at once).`,
	Args: cobra.NoArgs,
	RunE: runTrain,
}

func init() {
	addJobFlags(trainCmd)
	f := trainCmd.Flags()
	f.String("resume", "", "continue from a checkpoint folder or a run folder (its checkpoints/latest)")
	f.Bool("dry-run", false, "validate the job (config, dataset rows and shapes against the model, roles) and exit; the synthetic set and data.ode_pairs are made first, as training would (kept in the run folder)")
	f.String("device", "", "override the job's device (cpu, cuda, cuda:N)")
	addLaunchFlags(trainCmd)
	rootCmd.AddCommand(trainCmd)
}

func runTrain(cmd *cobra.Command, _ []string) error {
	fl := cmd.Flags()
	// --resume without --config continues the run's own job (job.yaml in the run folder and in
	// every checkpoint folder).
	if r, _ := fl.GetString("resume"); r != "" {
		if c, _ := fl.GetString("config"); c == "" {
			if p := filepath.Join(r, "job.yaml"); fileExists(p) {
				if err := fl.Set("config", p); err != nil {
					return err
				}
			}
		}
	}
	job, err := loadJob(cmd)
	if err != nil {
		return err
	}
	if r, _ := fl.GetString("resume"); r != "" {
		// --resume takes a run (or checkpoint) folder and continues it there, whatever out_dir the
		// job names (a copied run folder's job.yaml still names the original).
		ck, err := trainer.ResolveCheckpoint(r)
		if err != nil {
			return fmt.Errorf("--resume: %w", err)
		}
		if run := trainer.RunOfCheckpoint(ck); run != "" {
			job.OutDir = run
		}
		job.Train.Resume = r
	}
	if d, _ := fl.GetString("device"); d != "" {
		job.Device = d
	}
	lf, err := getLaunchFlags(cmd)
	if err != nil {
		return err
	}
	dry, _ := fl.GetBool("dry-run")
	_, err = train(cmd.ErrOrStderr(), job, dry, lf)
	return err
}

// train runs (or with dry validates) a job on the ranks of lf (trainer/launch.go) and returns the
// finished trainer of global rank 0, or nil in a process that does not hold it.
func train(w io.Writer, job *config.Job, dry bool, lf launchFlags) (*trainer.Trainer, error) {
	// The objective and its params first: an unknown name or a bad knob is an error before any
	// device is opened or any data is written.
	if _, err := objectives.New(job.Objective, job.Params); err != nil {
		return nil, err
	}
	lo := lf.options(job)
	lo.Log = w
	ranks, err := trainer.OpenRanks(lo)
	if err != nil {
		return nil, err
	}
	defer ranks.Close()
	if lo.Ranked {
		job.Device = lo.Devices
	}
	lead := ranks.Lead()
	if lead && !dry { // one job per run folder: the process of global rank 0 holds it
		unlock, err := trainer.LockRun(job.OutDir, lf.takeOver)
		if err != nil {
			return nil, err
		}
		defer unlock()
	}
	if job.Data.Path == "" && lead { // the others wait for it in FromJobComm
		dir := filepath.Join(job.OutDir, "data")
		fmt.Fprintf(w, "data: synthetic set (%d + %d videos) in %s\n", job.Data.Synth.Count, job.Data.Synth.HeldoutCount, dir)
		if err := trainer.EnsureData(job, dir, nil); err != nil {
			return nil, err
		}
	}
	var vf func(int, *trainer.Trainer) error
	if job.Data.Heldout != "" && !dry && lead {
		val, err := newValidator(job)
		if err != nil {
			return nil, err
		}
		vf = val.run
	}
	if ranks.Comms != nil {
		fmt.Fprintf(w, "launch: %s\n", ranks)
	}
	// The first SIGINT/SIGTERM stops after the step in flight with a checkpoint (--resume continues
	// exactly); a second one kills at once.
	stop, done := make(chan struct{}), make(chan struct{})
	defer close(done)
	if !dry {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		go func() {
			defer signal.Stop(sig)
			select {
			case <-sig:
				fmt.Fprintln(w, "\ntrain: interrupted: stopping after this step with a checkpoint (again to quit at once)")
				close(stop)
			case <-done:
			}
		}()
	}
	trs := make([]*trainer.Trainer, len(ranks.Devs))
	t0 := time.Now()
	err = ranks.Run(func(i int, dev kernels.Device, c dist.Comm) error {
		j, lw, v := job, io.Discard, vf
		if c != nil {
			j = cloneJob(job)
		}
		first := i == 0 && lead // global rank 0 logs, validates and writes the run folder
		if first {
			lw = w
		} else {
			v = nil
		}
		tr, loader, err := trainer.FromJobComm(j, dev, c, lw, lw, v)
		if err != nil {
			return err
		}
		defer loader.Close()
		trs[i] = tr
		if first {
			cfg := tr.Env.Cfg
			fmt.Fprintf(lw, "train: %s on %s — model dim %d, %d layers, %d heads, in/out %d, text_dim %d (%d parameters); roles %v; batch %v per rank × %d rank(s); %d steps\n",
				tr.Obj.Name(), dev.Name(), cfg.Dim, cfg.Layers, cfg.Heads, cfg.InDim, cfg.TextDim, cfg.NumParams(), tr.RoleNames(), shapeString(tr), ranks.World, j.Train.Steps)
			*job = *j // data.path, as this rank resolved it
		}
		if dry {
			if first {
				for _, p := range []string{j.Data.Path, j.Data.Heldout} {
					if p == "" {
						continue
					}
					ds, err := data.Open(p)
					if err != nil {
						return err
					}
					err = data.CheckFinite(ds) // every value, not only shapes: a NaN row is named here
					ds.Close()
					if err != nil {
						return err
					}
				}
				fmt.Fprintln(lw, "train: --dry-run: the job, its data (every value finite) and its roles are valid")
			}
			return nil
		}
		if first {
			if err := os.MkdirAll(j.OutDir, 0o755); err != nil {
				return err
			}
			if _, err := saveJob(j, j.OutDir); err != nil {
				return err
			}
		}
		tr.StopOn(stop)
		return tr.Run()
	})
	if err != nil {
		return nil, err
	}
	if !dry && lead {
		fmt.Fprintf(w, "train: %d steps in %.1fs; run folder %s (metrics.jsonl, checkpoints/, samples/)\n", job.Train.Steps, time.Since(t0).Seconds(), job.OutDir)
	}
	if !lead {
		return nil, nil
	}
	return trs[0], nil
}

func shapeString(tr *trainer.Trainer) string {
	s := tr.Env.Shape
	return fmt.Sprintf("[B=%d, C=%d, F=%d, H=%d, W=%d] L=%d", s.B, tr.Env.Cfg.InDim, s.F, s.H, s.W, s.L)
}

// validator samples the student (its EMA when there is one) on the first sample.count held-out
// prompts with the job's sample: settings, writes previews, and logs val/cond_acc and val/fd.
type validator struct {
	job  *config.Job
	held *eval.Set
}

func newValidator(job *config.Job) (*validator, error) {
	held, err := eval.LoadSet(job.Data.Heldout, job.Data.TextLen)
	if err != nil {
		return nil, fmt.Errorf("validation set: %w", err)
	}
	return &validator{job: job, held: held}, nil
}

func (v *validator) run(step int, tr *trainer.Trainer) error {
	job, held := v.job, v.held
	net := tr.Net(objectives.EMA)
	if net == nil {
		net = tr.Net(objectives.Student)
	}
	if net == nil || job.Sample.Count <= 0 {
		return nil
	}
	o := sampler.Options{Method: sampler.Method(job.Sample.Sampler), Steps: job.Sample.Steps, CFG: job.Sample.CFG, Shift: job.Sample.Shift,
		ChunkFrames: job.Model.ChunkFrames, LocalFrames: job.Model.LocalAttnFrames, SinkFrames: job.Model.SinkFrames}
	chunk := 0
	if o.Method == sampler.Stream || job.Model.Causal { // a causal student samples block-causally
		chunk = o.ChunkFrames
	}
	dn := sampler.NewDiTNet(net, chunk)
	defer dn.Free()
	count := min(job.Sample.Count, held.N)
	lat, _, _, err := eval.Generate(dn, held, count, 0, job.Seed, o, 0)
	if err != nil {
		return err
	}
	mean, std := pipeline.NormStats(job, held.C)
	if err := eval.Denormalize(lat, count, held.C, mean, std); err != nil {
		return err
	}
	if held.C != data.LatentChannels {
		return nil // previews and pixel metrics need the synthetic latent space
	}
	vids, err := eval.DecodeLatents(lat, count, held.C, held.F, held.H, held.W)
	if err != nil {
		return err
	}
	sub := held.Slice(0, count)
	real, err := held.Videos()
	if err != nil {
		return err
	}
	m, err := eval.Score(vids, sub.Captions, real)
	if err != nil {
		return err
	}
	dir := filepath.Join(job.OutDir, "samples", fmt.Sprintf("step-%06d", step))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for i, pix := range vids.Pix {
		base := filepath.Join(dir, fmt.Sprintf("%04d", i))
		if err := sampler.WriteGIF(base+".gif", pix, vids.F, vids.H, vids.W, 4, 250); err != nil {
			return err
		}
		if err := sampler.WritePNGStrip(base+".png", pix, vids.F, vids.H, vids.W, 4); err != nil {
			return err
		}
	}
	return tr.LogMetrics(step, map[string]float64{"val/cond_acc": m.CondAcc, "val/fd": m.FD, "val/stability": m.Stability,
		"val/colour_acc": m.ColourAcc, "val/dir_acc": m.DirAcc})
}
