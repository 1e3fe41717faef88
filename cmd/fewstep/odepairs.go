package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/data"
	"github.com/fewstep/fewstep/eval"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/sampler"
	"github.com/fewstep/fewstep/trainer"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
)

// `fewstep data ode-pairs`: teacher ODE trajectories for odeinit (CausVid's ODE regression).

var odePairsCmd = &cobra.Command{
	Use:   "ode-pairs",
	Short: "Teacher ODE trajectories (x at the levels of a denoising list + the final x0) for odeinit",
	Long: `For each prompt of --prompts (default: data.path), the teacher (--teacher) integrates the flow
ODE from noise with Euler (--steps, --cfg, --shift; the levels of --timesteps are inserted into the
grid so that the trajectory passes through them exactly) and the row stores, in the dataset schema:
  vae_latent            [C, F, H, W]     the final x0 (raw latent space, as a data row)
  trajectory_latents    [S, C, F, H, W]  x at each --timesteps level, then the final x0
  trajectory_timesteps  [S]              their timesteps t = 1000·σ (shifted), descending, last 0
  text_embedding, caption, id            copied from the prompt row
Trajectory latents are in the model's space (normalized when data.normalize is set).`,
	Args: cobra.NoArgs,
	RunE: runODEPairs,
}

func init() {
	f := odePairsCmd.Flags()
	f.String("teacher", "", "teacher checkpoint (required)")
	f.String("model-config", "", "Wan config.json of the teacher (default: beside it, else the job's model)")
	f.String("prompts", "", "dataset of prompts (captions + text embeddings) (default: data.path)")
	f.String("out", "", "output file, .arrow or .parquet (required)")
	f.Int("count", 0, "prompts (default: all)")
	f.Int("steps", 48, "Euler steps of the teacher's trajectory")
	f.Float64("cfg", 4, "teacher guidance w")
	f.String("shift", "", "schedule shift (default: sample.shift)")
	f.String("timesteps", "1000,750,500,250", "the denoising list (timesteps before the shift)")
	f.Int("batch", 8, "prompts per batch")
	f.Int64("seed", -1, "noise seed; prompt i uses seed+i (default: the job's seed)")
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
	if teacher == "" || out == "" {
		return fmt.Errorf("ode-pairs: --teacher and --out are required")
	}
	prompts, _ := fl.GetString("prompts")
	if prompts == "" {
		prompts = job.Data.Path
	}
	if prompts == "" {
		return fmt.Errorf("ode-pairs: no prompts: --prompts DATASET or data.path")
	}
	set, err := eval.LoadSet(prompts, job.Data.TextLen)
	if err != nil {
		return fmt.Errorf("ode-pairs: %w", err)
	}
	steps, _ := fl.GetInt("steps")
	cfgW, _ := fl.GetFloat64("cfg")
	shift := job.Sample.Shift
	if s, _ := fl.GetString("shift"); s != "" {
		if shift, err = strconv.ParseFloat(s, 64); err != nil {
			return fmt.Errorf("ode-pairs: --shift %q: %w", s, err)
		}
	}
	ts, _ := fl.GetString("timesteps")
	var levels []float64
	for _, f := range strings.Split(ts, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || v <= 0 || v > 1000 {
			return fmt.Errorf("ode-pairs: --timesteps %q: %q is not a timestep in (0, 1000]", ts, f)
		}
		levels = append(levels, sampler.Shift(v/1000, shift))
	}
	if steps < 1 {
		return fmt.Errorf("ode-pairs: --steps %d, need ≥ 1", steps)
	}
	grid := sampler.MergeGrid(sampler.EulerSigmas(steps, shift), levels)
	record := make([]float64, 0, len(levels)+1)
	for _, l := range levels {
		record = append(record, sampler.OnGrid(grid, l))
	}
	record = append(record, 0)
	for i := 1; i < len(record); i++ {
		if record[i] >= record[i-1] {
			return fmt.Errorf("ode-pairs: --timesteps %q must decrease strictly", ts)
		}
	}
	dts, _ := fl.GetString("dtype")
	dt, err := data.ParseDType(dts)
	if err != nil {
		return fmt.Errorf("ode-pairs: --dtype: %w", err)
	}
	devName, _ := fl.GetString("device")
	if devName == "" {
		devName = job.Device
	}
	dev, err := openBackend(devName)
	if err != nil {
		return fmt.Errorf("ode-pairs: %w", err)
	}
	mc, _ := fl.GetString("model-config")
	m, _, err := loadModel(dev, job, teacher, mc, set.C, set.TextDim)
	if err != nil {
		return fmt.Errorf("ode-pairs: %w", err)
	}
	count, _ := fl.GetInt("count")
	if count <= 0 || count > set.N {
		count = set.N
	}
	batch, _ := fl.GetInt("batch")
	if batch <= 0 {
		batch = 8
	}
	seed, _ := fl.GetInt64("seed")
	if seed < 0 {
		seed = job.Seed
	}
	mean, std := normStats(job, set.C)

	w, err := data.NewWriter(out, []string{data.Latent, data.TextEmb, data.TrajLatent, data.TrajTimes}, 64)
	if err != nil {
		return fmt.Errorf("ode-pairs: %w", err)
	}
	net := sampler.NewDiTNet(m, 0)
	defer net.Free()
	bar := progressbar.NewOptions(count, progressbar.OptionSetWriter(cmd.ErrOrStderr()), progressbar.OptionSetDescription("ode-pairs"),
		progressbar.OptionShowCount(), progressbar.OptionThrottle(trainer.BarThrottle(cmd.ErrOrStderr(), 100*time.Millisecond)), progressbar.OptionClearOnFinish())
	t0 := time.Now()
	o := sampler.Options{Method: sampler.Euler, Sigmas: grid, CFG: cfgW, Record: record}
	times := make([]float32, len(record))
	for i, s := range record {
		times[i] = float32(1000 * s)
	}
	lt, per := set.L*set.TextDim, set.C*set.F*set.H*set.W
	S := len(record)
	nfe := 0
	for lo := 0; lo < count; lo += batch {
		hi := min(lo+batch, count)
		b := &sampler.Batch{C: set.C, F: set.F, H: set.H, W: set.W, L: set.L, TextDim: set.TextDim,
			Text: set.Text[lo*lt : hi*lt], Null: set.Null}
		for i := lo; i < hi; i++ {
			b.Seeds = append(b.Seeds, seed+int64(i))
		}
		r, err := sampler.Sample(net, b, o)
		if err != nil {
			w.Abort()
			return fmt.Errorf("ode-pairs: %w", err)
		}
		nfe = r.NFE
		for i := lo; i < hi; i++ {
			k := i - lo
			traj := make([]float32, 0, S*per) // [S, C, F, H, W]
			for _, x := range r.Traj {
				traj = append(traj, x[k*per:(k+1)*per]...)
			}
			x0 := append([]float32(nil), r.Latents[k*per:(k+1)*per]...)
			if err := eval.Denormalize(x0, 1, set.C, mean, std); err != nil {
				w.Abort()
				return fmt.Errorf("ode-pairs: %w", err)
			}
			text := set.Text[i*lt : i*lt+set.Tokens[i]*set.TextDim]
			err := w.Append(set.IDs[i], set.Captions[i],
				data.F32Tensor(data.Latent, []int{set.C, set.F, set.H, set.W}, x0, dt),
				data.F32Tensor(data.TextEmb, []int{set.Tokens[i], set.TextDim}, text, kernels.F32),
				data.F32Tensor(data.TrajLatent, []int{S, set.C, set.F, set.H, set.W}, traj, dt),
				data.F32Tensor(data.TrajTimes, []int{S}, times, kernels.F32))
			if err != nil {
				w.Abort()
				return fmt.Errorf("ode-pairs: %w", err)
			}
		}
		bar.Set(hi)
	}
	bar.Finish()
	if err := w.Close(); err != nil {
		return fmt.Errorf("ode-pairs: %w", err)
	}
	if err := config.Save(job, out+".job.yaml"); err != nil { // the resolved job, beside the file
		return err
	}
	el := time.Since(t0).Seconds()
	fmt.Fprintf(cmd.OutOrStdout(), "ode-pairs: %d trajectories of %d Euler steps (NFE %d per prompt with cfg %g, shift %g) at t = %v in %.1fs (%.2f s/prompt)\n  %s (+ .job.yaml)\n",
		count, len(grid)-1, nfe, cfgW, shift, times, el, el/float64(count), out)
	return nil
}
