package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/data"
	"github.com/fewstep/fewstep/eval"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/pipeline"
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
	var o odePairs
	o.steps, _ = fl.GetInt("steps")
	o.cfg, _ = fl.GetFloat64("cfg")
	o.shift = job.Sample.Shift
	if s, _ := fl.GetString("shift"); s != "" {
		if o.shift, err = strconv.ParseFloat(s, 64); err != nil {
			return fmt.Errorf("ode-pairs: --shift %q: %w", s, err)
		}
	}
	ts, _ := fl.GetString("timesteps")
	for _, f := range strings.Split(ts, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || v <= 0 || v > 1000 {
			return fmt.Errorf("ode-pairs: --timesteps %q: %q is not a timestep in (0, 1000]", ts, f)
		}
		o.timesteps = append(o.timesteps, v)
	}
	dts, _ := fl.GetString("dtype")
	if o.dtype, err = data.ParseDType(dts); err != nil {
		return fmt.Errorf("ode-pairs: --dtype: %w", err)
	}
	o.count, _ = fl.GetInt("count")
	o.batch, _ = fl.GetInt("batch")
	if o.seed, _ = fl.GetInt64("seed"); o.seed < 0 {
		o.seed = job.Seed
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
	t0 := time.Now()
	r, err := writeODEPairs(cmd.ErrOrStderr(), job, dev, teacher, mc, prompts, out, o)
	if err != nil {
		return err
	}
	if err := config.Save(job, out+".job.yaml"); err != nil { // the resolved job, beside the file
		return err
	}
	el := time.Since(t0).Seconds()
	fmt.Fprintf(cmd.OutOrStdout(), "ode-pairs: %d trajectories of %d Euler steps (NFE %d per prompt with cfg %g, shift %g) at t = %v in %.1fs (%.2f s/prompt)\n  %s (+ .job.yaml)\n",
		r.count, r.steps, r.nfe, o.cfg, o.shift, r.times, el, el/float64(r.count), out)
	return nil
}

// odePairs are the settings of a teacher ODE-pairs dataset.
type odePairs struct {
	count, steps, batch int       // prompts (0 = all), Euler steps, prompts per sampler call (0 = 8)
	cfg, shift          float64   // teacher guidance w, schedule shift
	timesteps           []float64 // the denoising list, before the shift
	seed                int64     // prompt i's noise uses seed+i
	dtype               kernels.DType
}

// odePairsResult says what writeODEPairs wrote.
type odePairsResult struct {
	count, steps, nfe int
	times             []float32 // recorded timesteps, descending, last 0
}

// writeODEPairs integrates the teacher's flow ODE from noise for the first o.count prompts of the
// dataset prompts and writes the trajectories (x at the list's levels, then the final x0) to out.
func writeODEPairs(w io.Writer, job *config.Job, dev kernels.Device, teacher, modelConfig, prompts, out string, o odePairs) (odePairsResult, error) {
	var res odePairsResult
	set, err := eval.LoadSet(prompts, job.Data.TextLen)
	if err != nil {
		return res, fmt.Errorf("ode-pairs: %w", err)
	}
	if o.steps < 1 {
		return res, fmt.Errorf("ode-pairs: %d Euler steps, need ≥ 1", o.steps)
	}
	var levels []float64
	for _, t := range o.timesteps {
		levels = append(levels, sampler.Shift(t/1000, o.shift))
	}
	grid := sampler.MergeGrid(sampler.EulerSigmas(o.steps, o.shift), levels)
	record := make([]float64, 0, len(levels)+1)
	for _, l := range levels {
		record = append(record, sampler.OnGrid(grid, l))
	}
	record = append(record, 0)
	for i := 1; i < len(record); i++ {
		if record[i] >= record[i-1] {
			return res, fmt.Errorf("ode-pairs: timesteps %v must decrease strictly", o.timesteps)
		}
	}
	m, mcfg, err := loadModel(dev, job, teacher, modelConfig, set.C, set.TextDim)
	if err == nil {
		err = fitContext(set, mcfg) // Wan: every context zero-padded to text_len
	}
	if err != nil {
		return res, fmt.Errorf("ode-pairs: %w", err)
	}
	count := o.count
	if count <= 0 || count > set.N {
		count = set.N
	}
	batch := o.batch
	if batch <= 0 {
		batch = 8
	}
	mean, std := normStats(job, set.C)

	wr, err := data.NewWriter(out, []string{data.Latent, data.TextEmb, data.TrajLatent, data.TrajTimes}, 64)
	if err != nil {
		return res, fmt.Errorf("ode-pairs: %w", err)
	}
	net := sampler.NewDiTNet(m, 0)
	defer net.Free()
	bar := progressbar.NewOptions(count, progressbar.OptionSetWriter(w), progressbar.OptionSetDescription("ode-pairs"),
		progressbar.OptionShowCount(), progressbar.OptionThrottle(trainer.BarThrottle(w, 100*time.Millisecond)), progressbar.OptionClearOnFinish())
	so := sampler.Options{Method: sampler.Euler, Sigmas: grid, CFG: o.cfg, Record: record}
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
			b.Seeds = append(b.Seeds, o.seed+int64(i))
		}
		r, err := sampler.Sample(net, b, so)
		if err != nil {
			wr.Abort()
			return res, fmt.Errorf("ode-pairs: %w", err)
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
				wr.Abort()
				return res, fmt.Errorf("ode-pairs: %w", err)
			}
			text := set.Text[i*lt : i*lt+set.Tokens[i]*set.TextDim]
			err := wr.Append(set.IDs[i], set.Captions[i],
				data.F32Tensor(data.Latent, []int{set.C, set.F, set.H, set.W}, x0, o.dtype),
				data.F32Tensor(data.TextEmb, []int{set.Tokens[i], set.TextDim}, text, kernels.F32),
				data.F32Tensor(data.TrajLatent, []int{S, set.C, set.F, set.H, set.W}, traj, o.dtype),
				data.F32Tensor(data.TrajTimes, []int{S}, times, kernels.F32))
			if err != nil {
				wr.Abort()
				return res, fmt.Errorf("ode-pairs: %w", err)
			}
		}
		bar.Set(hi)
	}
	bar.Finish()
	if err := wr.Close(); err != nil {
		return res, fmt.Errorf("ode-pairs: %w", err)
	}
	return odePairsResult{count: count, steps: len(grid) - 1, nfe: nfe, times: times}, nil
}

// odePairsMeta identifies the pairs a run made (data/ode_pairs.arrow.json), so a resumed run reuses them.
type odePairsMeta struct {
	Count     int       `json:"count"`
	Steps     int       `json:"steps"`
	Timesteps []float64 `json:"timesteps"`
	Shift     float64   `json:"shift"`
	Teacher   string    `json:"teacher"`
	Seed      int64     `json:"seed"`
}

// ensureODEPairs honours data.ode_pairs: the teacher's ODE pairs for the first count prompts of
// data.path, made once into the run folder's data/ (reused when their settings match), become the
// training data.
func ensureODEPairs(w io.Writer, job *config.Job, dev kernels.Device) error {
	op := job.Data.ODEPairs
	if op.Count <= 0 {
		return nil
	}
	rec, err := pipeline.ObjectiveRecipe(job) // the pairs are recorded at the student's denoising list
	if err != nil {
		return fmt.Errorf("data.ode_pairs: %w", err)
	}
	ts, shift := rec.Timesteps, rec.Shift
	if len(ts) == 0 {
		return fmt.Errorf("data.ode_pairs: objective %s samples with %s, which has no denoising list to record pairs at", job.Objective, rec.Sampler)
	}
	meta := odePairsMeta{Count: op.Count, Steps: op.Steps, Timesteps: ts, Shift: shift,
		Teacher: job.Roles["teacher"].Weights, Seed: job.Seed}
	out := filepath.Join(job.OutDir, "data", "ode_pairs.arrow")
	want, _ := json.Marshal(meta)
	if have, err := os.ReadFile(out + ".json"); err == nil && bytes.Equal(have, want) {
		if _, err := os.Stat(out); err == nil {
			job.Data.Path = out
			return nil
		}
	}
	if job.Data.Path == "" || job.Data.Path == out {
		return fmt.Errorf("data.ode_pairs: no prompts to make the pairs from (data.path %q)", job.Data.Path)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	t0 := time.Now()
	r, err := writeODEPairs(w, job, dev, meta.Teacher, "", job.Data.Path, out,
		odePairs{count: op.Count, steps: op.Steps, cfg: 1, shift: shift, timesteps: ts, seed: job.Seed, dtype: kernels.F32})
	if err != nil {
		return fmt.Errorf("data.ode_pairs: %w", err)
	}
	if err := os.WriteFile(out+".json", want, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(w, "data: %d teacher ODE pairs (%d Euler steps, t = %v) in %.1fs: %s\n", r.count, r.steps, r.times, time.Since(t0).Seconds(), out)
	job.Data.Path = out
	return nil
}
