package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/data"
	"github.com/fewstep/fewstep/pipeline"
	"github.com/fewstep/fewstep/trainer"
	"github.com/spf13/cobra"
)

// `fewstep data ode-pairs`: teacher ODE trajectories for dmd's regression: ode and for odeinit
// (CausVid's ODE regression); data.ode_pairs makes the same before training.

var odePairsCmd = &cobra.Command{
	Use:   "ode-pairs",
	Short: "Teacher ODE trajectories (x at the levels of a denoising list + the final x0) for dmd's regression: ode and odeinit",
	Long: `For each prompt of --prompts (default: data.path), the teacher (--teacher) integrates the flow
ODE from noise with Euler (--steps, --cfg, --shift; the levels of --timesteps are inserted into the
grid so that the trajectory passes through them exactly) and the row stores, in the dataset schema:
  vae_latent            [C, F, H, W]     the final x0 (raw latent space, as a data row)
  trajectory_latents    [S, C, F, H, W]  x at each --timesteps level, then the final x0
  trajectory_timesteps  [S]              their timesteps t = 1000·σ (shifted), descending, last 0
  text_embedding, caption, id            copied from the prompt row
Trajectory latents are in the model's space (normalized when data.normalize is set).

The defaults are those of data.ode_pairs, which makes the same pairs inside a training run (dmd's
regression: ode, the demo): data.ode_pairs.steps Euler steps, no guidance (w = 1), recorded at the
denoising list and shift of the job's objective (docs/data.md). odeinit's pairs are the same rows.`,
	Args: cobra.NoArgs,
	RunE: runODEPairs,
}

func init() {
	f := odePairsCmd.Flags()
	f.String("teacher", "", "teacher checkpoint (required)")
	f.String("model-config", "", "Wan config.json of the teacher (default: beside it, else the job's model)")
	f.String("prompts", "", "dataset of prompts (captions + text embeddings) (default: data.path)")
	f.String("out", "", "output file, .arrow or .parquet (required)")
	f.Int("count", 0, "prompts (default: data.ode_pairs.count, else all)")
	f.Int("steps", 0, "Euler steps of the teacher's trajectory (default: data.ode_pairs.steps)")
	f.Float64("cfg", 1, "teacher guidance w, v = v_u + w·(v_c − v_u); 1 = none, as data.ode_pairs")
	f.Float64("shift", 0, "schedule shift (default: the objective's, as data.ode_pairs, else sample.shift)")
	f.String("timesteps", "", "the denoising list as timesteps before the shift (default: the objective's, else 1000,750,500,250)")
	f.Int("batch", 8, "prompts per batch")
	f.Int64("seed", 0, "noise seed; prompt i uses seed+i (default: the job's seed)")
	f.String("device", "", "cpu | cuda | cuda:N (default: the job's device)")
	f.String("dtype", "float32", "stored dtype of the latents: float32 | bfloat16 | float16")
	addJobFlags(odePairsCmd)
	dataCmd.AddCommand(odePairsCmd)
}

func runODEPairs(cmd *cobra.Command, _ []string) error {
	job, err := loadJob(cmd)
	if err != nil {
		return err
	}
	fl := cmd.Flags()
	teacher, _ := fl.GetString("teacher")
	out, _ := fl.GetString("out")
	var missing []string
	for _, f := range []struct{ name, v string }{{"--teacher", teacher}, {"--out", out}} {
		if f.v == "" {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("ode-pairs: missing %s (it needs --teacher CHECKPOINT and --out FILE)", strings.Join(missing, " and "))
	}
	prompts, _ := fl.GetString("prompts")
	if prompts == "" {
		prompts = job.Data.Path
	}
	if prompts == "" {
		return fmt.Errorf("ode-pairs: no prompts: --prompts DATASET or data.path")
	}
	var o trainer.ODEPairs
	o.Steps, _ = fl.GetInt("steps")
	if o.Steps <= 0 {
		o.Steps = job.Data.ODEPairs.Steps
	}
	o.CFG, _ = fl.GetFloat64("cfg")
	// the denoising list and shift: the objective's (what data.ode_pairs records at), else the
	// default list and sample.shift
	ts, shift := "1000,750,500,250", job.Sample.Shift
	if rec, err := pipeline.ObjectiveRecipe(job); err == nil && len(rec.Timesteps) > 0 {
		parts := make([]string, len(rec.Timesteps))
		for i, t := range rec.Timesteps {
			parts[i] = strconv.FormatFloat(t, 'g', -1, 64)
		}
		ts, shift = strings.Join(parts, ","), rec.Shift
	}
	o.Shift = shift
	if fl.Changed("shift") {
		o.Shift, _ = fl.GetFloat64("shift")
	}
	if !(o.Shift > 0) || math.IsInf(o.Shift, 0) {
		return fmt.Errorf("ode-pairs: --shift %g: want a finite number > 0", o.Shift)
	}
	if s, _ := fl.GetString("timesteps"); s != "" {
		ts = s
	}
	for _, f := range strings.Split(ts, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || v <= 0 || v > 1000 {
			return fmt.Errorf("ode-pairs: --timesteps %q: %q is not a timestep in (0, 1000]", ts, f)
		}
		o.Timesteps = append(o.Timesteps, v)
	}
	dts, _ := fl.GetString("dtype")
	if o.DType, err = data.ParseDType(dts); err != nil {
		return fmt.Errorf("ode-pairs: --dtype: %w", err)
	}
	o.Count, _ = fl.GetInt("count")
	if o.Count <= 0 {
		o.Count = job.Data.ODEPairs.Count // 0: all
	}
	o.Batch, _ = fl.GetInt("batch")
	if o.Seed, _ = fl.GetInt64("seed"); !fl.Changed("seed") {
		o.Seed = job.Seed
	}
	devName, _ := fl.GetString("device")
	if devName == "" {
		devName = job.Device
	}
	dev, err := pipeline.OpenBackend(devName)
	if err != nil {
		return fmt.Errorf("ode-pairs: %w", err)
	}
	mc, _ := fl.GetString("model-config")
	t0 := time.Now()
	r, err := trainer.WriteODEPairs(cmd.ErrOrStderr(), job, dev, nil, teacher, mc, prompts, out, o)
	if err != nil {
		return err
	}
	if err := config.Save(job, out+".job.yaml"); err != nil { // the resolved job, beside the file
		return err
	}
	el := time.Since(t0).Seconds()
	fmt.Fprintf(cmd.OutOrStdout(), "ode-pairs: %d trajectories of %d Euler steps (NFE %d per prompt with cfg %g, shift %g) at t = %v in %.1fs (%.2f s/prompt)\n  %s (+ .job.yaml)\n",
		r.Count, r.Steps, r.NFE, o.CFG, o.Shift, r.Times, el, el/float64(r.Count), out)
	return nil
}
