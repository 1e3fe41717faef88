package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/eval"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/pipeline"
	"github.com/fewstep/fewstep/sampler"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// `fewstep eval`: docs/data.md's metrics of a samples file against the held-out split, or (with
// --teacher) the whole distillation table.

var evalCmd = &cobra.Command{
	Use:   "eval",
	Short: "Score a samples file against the held-out split, or make the distillation table (--teacher)",
	Long: `Two modes.

fewstep eval --samples OUT/samples.safetensors [--heldout PATH]
  Decodes the samples (synthetic 48-channel latents) and reports CondAcc (dominant colour and
  centre-of-mass direction match the caption of manifest.jsonl), FD (Fréchet distance to the held-out
  videos in eval.Features' fixed space; only for videos of the held-out length), and the temporal
  stability (object size and colour drift). Writes --out (default: metrics.json beside the samples).

fewstep eval --teacher T.safetensors [--student S.safetensors] [--heldout PATH]
  The distillation table: teacher (Euler) at eval.teacher_steps and at each k of eval.steps, at the
  guidance the student was distilled from (--teacher-cfg; default the student's recipe's
  teacher_cfg, else the job's params.cfg) and, when that is not 1, also without guidance; student at
  each k with --student-sampler; CondAcc, FD, stability, NFE, ms/video. With a recipe.json beside
  the student (fewstep export and every checkpoint write one), the student's sampler, list, shift,
  guidance, causal chunk and normalisation and the teacher's guidance and shift come from it; the
  flags override. Prints the table and writes OUT_DIR/eval/table.txt and table.json (or --out DIR).
  --students LABEL=PATH (repeatable) adds students sampled the same way (e.g. one per training seed).

fewstep eval --merge A/table.json --merge B/table.json --out DIR
  One table from the tables of separate runs of the same evaluation (e.g. the students of training
  seed 0 from one run, of seeds 1 and 2 from another): the rows they share (data, teacher) must
  have measured the same in each (the CPU evaluation is deterministic), else it refuses; the other
  rows join in the order one run of all the students writes them (eval.MergeTables). Writes
  DIR/table.txt and table.json; the first table's wall times are kept for the shared rows.

A measurement that can tell a win from noise: --precise samples 512 prompts per row (at most half
the held-out split) against the other held-out videos as FD reference, at 4 evaluation seeds
(--seeds N), and reports mean ± sample std over the seeds; give it a held-out split of ≥ 1024
videos (fewstep data synth --heldout-count 1024). --fd-blocks adds the FD of each feature block apart
(pixel statistics, colour, x, y, area, motion, projection): what a model gets wrong.`,
	Args: cobra.NoArgs,
	RunE: runEval,
}

func init() {
	f := evalCmd.Flags()
	f.String("samples", "", "samples file written by fewstep sample (score mode)")
	f.String("manifest", "", "manifest.jsonl of the samples (default: beside them)")
	f.String("heldout", "", "held-out dataset (default: data.heldout)")
	f.String("out", "", "metrics JSON (score mode) or output folder (table mode)")
	f.String("teacher", "", "teacher checkpoint (table mode)")
	f.String("student", "", "student checkpoint (table mode; omit for teacher rows only)")
	f.String("model-config", "", "Wan config.json of both checkpoints (default: beside each, else the job's model)")
	f.Float64("teacher-cfg", 0, "the guidance w the student was distilled from; teacher rows at it and at w = 1 (default: the student's recipe's teacher_cfg, else params.cfg, else sample.cfg)")
	f.Float64("teacher-shift", 0, "teacher Euler shift (default: the student's recipe's shift, else sample.shift)")
	f.String("student-sampler", "", "fewstep | fewstep-ode | consistency | stream (default: the student's recipe, else fewstep)")
	f.Float64("student-cfg", 1, "student guidance w (distilled students: 1)")
	f.Float64("student-shift", 0, "student denoising-list shift (default: sample.shift)")
	f.String("student-timesteps", "", "the student's denoising list as timesteps, e.g. 1000,750,500,250; k steps use its first k... (default: DenoisingList(k))")
	f.Int("grid-n", 0, "consistency: snap σ to this grid")
	f.Int("long-frames", 0, "stream: add a row at this many latent frames (e.g. 4× the training length), with its drift frame by frame (OUT/drift.png)")
	f.Int("count", 0, "prompts (default: eval.count; --precise: 512)")
	f.StringArray("students", nil, "more students sampled like --student, as LABEL=PATH (repeatable)")
	f.Bool("precise", false, "512 prompts (at most half the held-out split; the rest is the FD reference) at 4 evaluation seeds, mean ± std")
	f.Int("seeds", 0, "evaluation seeds seed, seed+1, … (default 1; --precise: 4)")
	f.Bool("fd-blocks", false, "also the FD of each feature block apart (the diagnosis tool)")
	f.Int("batch", 8, "batch size: videos per sampler call")
	f.String("device", "", "cpu | cuda | cuda:N (default: the job's device)")
	f.StringArray("merge", nil, "table.json of a run of the same evaluation (repeatable; merge mode: --out DIR)")
	addJobFlags(evalCmd)
	rootCmd.AddCommand(evalCmd)
}

func runEval(cmd *cobra.Command, _ []string) error {
	fl := cmd.Flags()
	if err := checkEvalFlags(fl); err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	if merge, _ := fl.GetStringArray("merge"); len(merge) > 0 {
		return mergeTables(cmd, merge)
	}
	job, err := loadJob(cmd)
	if err != nil {
		return err
	}
	samples, _ := fl.GetString("samples")
	teacher, _ := fl.GetString("teacher")
	if (samples == "") == (teacher == "") {
		return fmt.Errorf("eval: give --samples (score a samples file) or --teacher (the distillation table)")
	}
	heldPath, _ := fl.GetString("heldout")
	if heldPath == "" {
		heldPath = job.Data.Heldout
	}
	if heldPath == "" {
		return fmt.Errorf("eval: no held-out split: give --heldout PATH (e.g. RUN/data/heldout.arrow) or a job whose data.heldout is set (e.g. --config RUN/job.yaml)")
	}
	held, err := eval.LoadSet(heldPath, job.Data.TextLen)
	if err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	if samples != "" {
		return scoreSamples(cmd, job, samples, held)
	}
	return distillTable(cmd, job, held)
}

func scoreSamples(cmd *cobra.Command, job *config.Job, samples string, held *eval.Set) error {
	fl := cmd.Flags()
	st, meta, err := models.ReadSafetensors(samples)
	if err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	lat, ok := st["latents"]
	if !ok || len(lat.Shape) != 5 {
		return fmt.Errorf("eval: %s: want a tensor latents [N, C, F, H, W]", samples)
	}
	N, C, F, H, W := lat.Shape[0], lat.Shape[1], lat.Shape[2], lat.Shape[3], lat.Shape[4]
	man, _ := fl.GetString("manifest")
	if man == "" {
		man = filepath.Join(filepath.Dir(samples), "manifest.jsonl")
	}
	caps, err := readManifest(man, N)
	if err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	gen, err := eval.DecodeLatents(lat.Data, N, C, F, H, W)
	if err != nil {
		return fmt.Errorf("eval: %s: %w", samples, err)
	}
	gen.DirFrames = held.F / 2 // the direction over the bounce-free half of the training length
	real, err := held.Videos()
	if err != nil {
		return fmt.Errorf("eval: held-out: %w", err)
	}
	noFD := ""
	switch {
	case real.F != gen.F || real.H != gen.H || real.W != gen.W:
		noFD = fmt.Sprintf("samples are [F=%d, %d×%d], held-out [F=%d, %d×%d]", gen.F, gen.H, gen.W, real.F, real.H, real.W)
	case N < 2:
		noFD = fmt.Sprintf("FD needs ≥ 2 videos, the samples have %d", N)
	}
	if noFD != "" {
		fmt.Fprintf(cmd.ErrOrStderr(), "eval: %s: no FD\n", noFD)
		real = eval.Videos{}
	}
	blocks, _ := fl.GetBool("fd-blocks")
	var ref [][]float64
	if len(real.Pix) > 0 {
		ref = eval.RealFeatures(real)
	}
	m, err := eval.ScoreBlocks(gen, caps, ref, blocks)
	if err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	out, _ := fl.GetString("out")
	if out == "" {
		out = filepath.Join(filepath.Dir(samples), "metrics.json")
	}
	rec := map[string]any{"samples": samples, "heldout_n": held.N, "metrics": m, "sampler": meta}
	if math.IsNaN(m.FD) {
		rec["fd_note"] = "no FD: " + noFD
		m.FD = -1
		rec["metrics"] = m
	}
	b, _ := json.MarshalIndent(rec, "", "  ")
	if err := os.WriteFile(out, append(b, '\n'), 0o644); err != nil {
		return err
	}
	if err := config.Save(job, strings.TrimSuffix(out, ".json")+".job.yaml"); err != nil {
		return err
	}
	fd := fmt.Sprintf("%.3f", m.FD)
	if noFD != "" {
		fd = "-"
	}
	fmt.Fprintf(cmd.OutOrStdout(), "eval: %d videos %s (steps %s, cfg %s): CondAcc %.3f (colour %.3f, direction %.3f)  FD %s  stability %.4f (size %.4f, colour %.4f)\n  %s\n",
		N, meta["sampler"], meta["steps"], meta["cfg"], m.CondAcc, m.ColourAcc, m.DirAcc, fd, m.Stability, m.SizeDrift, m.ColourDrift, out)
	if m.FDBlocks != nil {
		fmt.Fprint(cmd.OutOrStdout(), "  FD by feature block:")
		for i, b := range eval.FeatureBlocks(gen.F) {
			fmt.Fprintf(cmd.OutOrStdout(), " %s %.3f", b.Name, m.FDBlocks[i])
		}
		fmt.Fprintln(cmd.OutOrStdout())
	}
	return nil
}

// mergeTables is --merge: eval.MergeTables of the table.json files into --out's table.txt and
// table.json.
func mergeTables(cmd *cobra.Command, paths []string) error {
	fl := cmd.Flags()
	out, _ := fl.GetString("out")
	if out == "" {
		return fmt.Errorf("eval: --merge: give --out DIR")
	}
	for _, name := range []string{"samples", "teacher", "student"} {
		if v, _ := fl.GetString(name); v != "" {
			return fmt.Errorf("eval: --merge joins tables already made: --%s has no use with it", name)
		}
	}
	var ts []*eval.Table
	for _, p := range paths {
		t, err := eval.ReadTable(p)
		if err != nil {
			return fmt.Errorf("eval: --merge: %w", err)
		}
		ts = append(ts, t)
	}
	tab, err := eval.MergeTables(ts...)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	return writeTable(cmd, tab, out)
}

// writeTable writes tab as out/table.txt and out/table.json and prints the text.
func writeTable(cmd *cobra.Command, tab *eval.Table, out string) error {
	js, err := tab.JSON()
	if err != nil {
		return err
	}
	txt := tab.Text()
	if err := os.WriteFile(filepath.Join(out, "table.txt"), []byte(txt), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "table.json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Fprint(cmd.OutOrStdout(), txt)
	fmt.Fprintf(cmd.OutOrStdout(), "  %s/table.txt, table.json\n", out)
	return nil
}

// checkEvalFlags refuses, before anything is loaded, flag values that eval cannot use: a negative
// count (0 is the default), a batch below 1, an unknown student sampler, a guidance or shift that is
// negative or not finite.
func checkEvalFlags(f *pflag.FlagSet) error {
	if err := intFlagsAtLeast(f, 0, "count", "seeds", "long-frames", "grid-n"); err != nil {
		return err
	}
	if err := intFlagsAtLeast(f, 1, "batch"); err != nil {
		return err
	}
	for _, name := range []string{"teacher-cfg", "teacher-shift", "student-cfg", "student-shift"} {
		if v, _ := f.GetFloat64(name); !(v >= 0) || math.IsInf(v, 0) {
			return fmt.Errorf("--%s %g: want a finite number ≥ 0", name, v)
		}
	}
	return samplerFlag(f, "student-sampler")
}

// readManifest returns the captions of manifest.jsonl lines 0..n−1 (by their index field).
func readManifest(path string, n int) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	defer f.Close()
	caps := make([]string, n)
	seen := make([]bool, n)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var m manifestLine
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
		if m.Index < 0 || m.Index >= n {
			return nil, fmt.Errorf("%s:%d: index %d outside the %d samples", path, line, m.Index, n)
		}
		caps[m.Index], seen[m.Index] = m.Caption, true
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for i, ok := range seen {
		if !ok {
			return nil, fmt.Errorf("%s: no line for sample %d", path, i)
		}
	}
	return caps, nil
}

func distillTable(cmd *cobra.Command, job *config.Job, held *eval.Set) error {
	fl := cmd.Flags()
	devName, _ := fl.GetString("device")
	if devName == "" {
		devName = job.Device
	}
	dev, err := pipeline.OpenBackend(devName)
	if err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	mc, _ := fl.GetString("model-config")
	tPath, _ := fl.GetString("teacher")
	teacher, tcfg, err := pipeline.LoadModel(dev, job, tPath, mc, held.C, held.TextDim)
	if err == nil {
		err = fitContext(held, tcfg) // Wan: every context zero-padded to text_len
	}
	if err != nil {
		return fmt.Errorf("eval: teacher: %w", err)
	}
	var student *models.DiT
	if sPath, _ := fl.GetString("student"); sPath != "" {
		if student, _, err = pipeline.LoadModel(dev, job, sPath, mc, held.C, held.TextDim); err != nil {
			return fmt.Errorf("eval: student: %w", err)
		}
	}
	var rec *pipeline.Recipe
	sPath, _ := fl.GetString("student")
	if extra, _ := fl.GetStringArray("students"); sPath == "" && len(extra) > 0 {
		_, sPath, _ = strings.Cut(extra[0], "=") // the --students share one recipe
	}
	if sPath != "" {
		if p := filepath.Join(filepath.Dir(sPath), pipeline.RecipeFile); fileExists(p) {
			if rec, err = pipeline.LoadRecipe(p); err != nil {
				return fmt.Errorf("eval: student: %w", err)
			}
		}
	}
	var more []eval.Labeled
	extra, _ := fl.GetStringArray("students")
	for _, a := range extra {
		label, path, ok := strings.Cut(a, "=")
		if !ok || label == "" || path == "" || strings.ContainsAny(label, " \t") {
			return fmt.Errorf("eval: --students %q: want LABEL=PATH (a label without spaces)", a)
		}
		net, _, err := pipeline.LoadModel(dev, job, path, mc, held.C, held.TextDim)
		if err != nil {
			return fmt.Errorf("eval: student %s: %w", label, err)
		}
		more = append(more, eval.Labeled{Label: label, Net: net})
	}
	spec := eval.TableSpec{Steps: job.Eval.Steps, TeacherSteps: job.Eval.TeacherSteps, Count: job.Eval.Count, Seed: job.Seed, Students: more}
	spec.TeacherShift = job.Sample.Shift
	spec.TeacherCFG = job.Sample.CFG
	if or, err := pipeline.ObjectiveRecipe(job); err != nil { // the guidance the job's objective distils with
		return fmt.Errorf("eval: %w", err)
	} else if or.TeacherCFG > 0 {
		spec.TeacherCFG = or.TeacherCFG
	}
	spec.Student = sampler.Options{Method: sampler.FewStep, ChunkFrames: job.Model.ChunkFrames,
		LocalFrames: job.Model.LocalAttnFrames, SinkFrames: job.Model.SinkFrames, CFG: 1, Shift: job.Sample.Shift}
	spec.StudentCausal = job.Model.Causal
	spec.Mean, spec.Std = pipeline.NormStats(job, held.C)
	if rec != nil {
		if rec.TeacherCFG > 0 {
			spec.TeacherCFG = rec.TeacherCFG
		}
		spec.TeacherShift = rec.Shift
		spec.Student = rec.Options(0)
		if err := pipeline.JobWindow(&spec.Student, job); err != nil { // model.local_attn_frames over the recipe's
			return fmt.Errorf("eval: %w", err)
		}
		spec.Student.Steps, spec.Student.Sigmas = 0, nil
		spec.StudentCausal = rec.Causal
		spec.StudentLists = pipeline.SubLists(rec.Sigmas(), spec.Steps)
		spec.Mean, spec.Std = rec.Mean, rec.Std
	}
	if v, _ := fl.GetFloat64("teacher-cfg"); fl.Changed("teacher-cfg") && v != 0 {
		spec.TeacherCFG = v
	}
	if v, _ := fl.GetFloat64("teacher-shift"); fl.Changed("teacher-shift") && v != 0 {
		spec.TeacherShift = v
	}
	if sm, _ := fl.GetString("student-sampler"); sm != "" {
		spec.Student.Method = sampler.Method(sm)
	} else if rec == nil {
		spec.Student.Method = sampler.FewStep
	}
	if fl.Changed("student-cfg") || rec == nil {
		spec.Student.CFG, _ = fl.GetFloat64("student-cfg")
	}
	if v, _ := fl.GetFloat64("student-shift"); fl.Changed("student-shift") && v != 0 {
		spec.Student.Shift = v
		if rec != nil {
			r := *rec // the recipe's list under the new shift
			r.Shift = v
			spec.StudentLists = pipeline.SubLists(r.Sigmas(), spec.Steps)
		}
	}
	if fl.Changed("grid-n") || rec == nil {
		spec.Student.GridN, _ = fl.GetInt("grid-n")
	}
	if ts, _ := fl.GetString("student-timesteps"); ts != "" {
		var list []float64
		for _, f := range strings.Split(ts, ",") {
			v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
			if err != nil || v <= 0 || v > 1000 {
				return fmt.Errorf("eval: --student-timesteps %q: %q is not a timestep in (0, 1000]", ts, f)
			}
			list = append(list, sampler.Shift(v/1000, spec.Student.Shift))
		}
		spec.StudentLists = pipeline.SubLists(list, spec.Steps)
	}
	if n, _ := fl.GetInt("count"); n > 0 {
		spec.Count = n
	}
	if spec.TeacherCFG <= 0 || math.IsNaN(spec.TeacherCFG) {
		return fmt.Errorf("eval: teacher guidance %g: want w > 0 (1 = none)", spec.TeacherCFG)
	}
	precise, _ := fl.GetBool("precise")
	nSeeds, _ := fl.GetInt("seeds")
	if nSeeds < 0 {
		return fmt.Errorf("eval: --seeds %d: want ≥ 1", nSeeds)
	}
	if precise {
		spec.Count = min(512, held.N/2)
		if nSeeds == 0 {
			nSeeds = 4
		}
		if held.N < 1024 {
			fmt.Fprintf(cmd.ErrOrStderr(), "eval: --precise: the held-out split has %d videos, so %d prompts per row and %d reference videos (512 + 512 wants ≥ 1024: fewstep data synth --heldout-count 1024)\n", held.N, spec.Count, held.N-spec.Count)
		}
	}
	if n, _ := fl.GetInt("count"); n > 0 {
		spec.Count = n
	}
	for i := 0; i < nSeeds; i++ {
		spec.Seeds = append(spec.Seeds, job.Seed+int64(i))
	}
	spec.FDBlocks, _ = fl.GetBool("fd-blocks")
	spec.Batch, _ = fl.GetInt("batch")
	spec.LongFrames, _ = fl.GetInt("long-frames")
	bar := tableBar(cmd.ErrOrStderr(), progressbar.OptionClearOnFinish())
	spec.Progress = func(done, total int, row string) {
		bar.ChangeMax(total)
		bar.Describe("eval: " + row)
		bar.Set(done)
	}
	tab, err := eval.DistillTable(teacher, student, held, spec)
	bar.Finish()
	if err != nil {
		return err
	}
	out, _ := fl.GetString("out")
	if out == "" {
		out = filepath.Join(job.OutDir, "eval")
	}
	if _, err := saveJob(job, out); err != nil {
		return err
	}
	if err := writeTable(cmd, tab, out); err != nil {
		return err
	}
	var names []string
	var drifts []eval.FrameDrift
	for _, r := range tab.Rows {
		if r.Drift != nil {
			names = append(names, fmt.Sprintf("%s %d steps", r.Model, r.Steps))
			drifts = append(drifts, *r.Drift)
		}
	}
	if len(drifts) > 0 {
		png := filepath.Join(out, "drift.png")
		title := fmt.Sprintf("%d-frame streamed videos, frame by frame against their first %d (mean of %d videos)", len(drifts[0].Size), drifts[0].Ref, tab.Count)
		if err := eval.WriteDriftPNG(png, title, names, drifts); err != nil {
			return fmt.Errorf("eval: %w", err)
		}
		fmt.Fprintf(cmd.OutOrStdout(), "  %s: the long rows' drift per frame\n", png)
	}
	return nil
}
