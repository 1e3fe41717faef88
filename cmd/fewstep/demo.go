package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/configs"
	"github.com/fewstep/fewstep/eval"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/objectives"
	"github.com/fewstep/fewstep/pipeline"
	"github.com/fewstep/fewstep/sampler"
	"github.com/fewstep/fewstep/trainer"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
)

var demoCmd = &cobra.Command{
	Use:   "demo",
	Short: "The main job: synthetic data → the shipped teacher → DMD distillation → the distillation table (CPU, minutes)",
	Long: `Runs the whole product on the embedded synthetic dataset, on the CPU in a few minutes (or on a
GPU with --set device=cuda):

  1. writes the synthetic dataset (docs/data.md) into the run folder,
  2. loads the shipped teacher (configs/teacher/diffusion_pytorch_model.safetensors, made by
     configs/teacher.yaml) and, with data.ode_pairs set, has it make ODE pairs of the first training
     prompts (for dmd's regression: ode),
  3. distills it into a few-step student with dmd (student and critic start as the teacher),
  4. evaluates teacher and student (its EMA when roles.student.ema_decay > 0) on held-out prompts
     and prints the distillation table (teacher at 50 and k steps, student at k ∈ {1, 2, 4}:
     CondAcc, FD, stability, NFE, ms/video).

The job is configs/demo.yaml and the teacher configs/teacher/, both built into the binary, so the
demo runs from any directory (override keys with --set, or give another job with --config). The
run folder (printed at the start; runs/demo-<time> unless --out) keeps job.yaml (the resolved job,
absolute paths; -v prints it), teacher/ (the shipped teacher), data/, metrics.jsonl, plots/,
checkpoints/ (each self-describing: fewstep sample --from RUN, fewstep export --from RUN),
samples/ (student previews) and eval/ (table.txt, table.json, teacher and student previews).`,
	Args: cobra.NoArgs,
	RunE: runDemo,
}

func init() {
	addJobFlags(demoCmd)
	demoCmd.Flags().Lookup("config").Usage = "YAML job file (default: configs/demo.yaml, built into the binary)"
	demoCmd.Flags().String("out", "", "run folder (default runs/demo-YYYYMMDD-HHMMSS)")
	addLaunchFlags(demoCmd)
	rootCmd.AddCommand(demoCmd)
}

func runDemo(cmd *cobra.Command, _ []string) error {
	t0 := time.Now()
	out, _ := cmd.Flags().GetString("out")
	if out == "" {
		out = filepath.Join("runs", "demo-"+t0.UTC().Format("20060102-150405"))
	}
	job, err := loadDemoJob(cmd, out)
	if err != nil {
		return err
	}
	lf, err := getLaunchFlags(cmd)
	if err != nil {
		return err
	}
	if m := job.Sample.Sampler; m != string(sampler.FewStep) && m != string(sampler.FewStepODE) { // before training, not after
		return fmt.Errorf("demo: sample.sampler %q: the dmd student samples with fewstep or fewstep-ode", m)
	}
	if _, err := pipeline.ObjectiveRecipe(job); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	w := cmd.ErrOrStderr()
	job.OutDir = out
	fmt.Fprintf(w, "demo: run folder %s\n", out)

	// 1. data
	dir := filepath.Join(out, "data")
	bar := progressbar.NewOptions(job.Data.Synth.Count+job.Data.Synth.HeldoutCount, progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription("data synth"), progressbar.OptionShowCount(), progressbar.OptionThrottle(trainer.BarThrottle(w, 100*time.Millisecond)),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }))
	bar.StartWithoutRender() // the clock starts now, not at the first block's update (runSynth)
	if err := trainer.EnsureData(job, dir, func(done, _ int) { bar.Set(done) }); err != nil {
		return err
	}
	bar.Finish()

	// 2-3. distill
	tr, err := train(w, job, false, lf)
	if err != nil {
		return err
	}
	tTrain := time.Since(t0)
	if tr == nil { // a process without global rank 0: process 0 evaluates
		fmt.Fprintf(cmd.OutOrStdout(), "demo: this process's ranks are done (%.1fs); process 0 makes the table in %s\n", tTrain.Seconds(), out)
		return nil
	}

	// 4. evaluate
	tab, err := demoTable(w, job, tr)
	if err != nil {
		return err
	}
	txt := tab.Text()
	edir := filepath.Join(out, "eval")
	if err := os.MkdirAll(edir, 0o755); err != nil {
		return err
	}
	js, err := tab.JSON()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(edir, "table.txt"), []byte(txt), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(edir, "table.json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	o := cmd.OutOrStdout()
	fmt.Fprintf(o, "\nDistillation table (%s → dmd student, %d held-out prompts, %s):\n%s", job.Roles[objectives.Teacher].Weights, tab.Count, job.Device, txt)
	fmt.Fprint(o, verdict(tab))
	fmt.Fprintf(o, "demo: %.1fs in all (data + distillation %.1fs, evaluation %.1fs); run folder %s\n",
		time.Since(t0).Seconds(), tTrain.Seconds(), (time.Since(t0) - tTrain).Seconds(), out)
	fmt.Fprintf(o, "  student: %s\n  table:   %s\n  previews: %s, %s\n",
		filepath.Join(tr.CheckpointDir(tr.Step), "student.safetensors"), filepath.Join(edir, "table.txt"),
		filepath.Join(out, "samples"), filepath.Join(edir, "previews"))
	return nil
}

// loadDemoJob resolves the demo's job: --config FILE when given, else the built-in
// configs/demo.yaml, whose files under configs/ (the teacher) are written into the run folder out
// (out/teacher/...) and used from there, so the demo needs nothing from the working directory.
func loadDemoJob(cmd *cobra.Command, out string) (*config.Job, error) {
	if cmd.Flags().Changed("config") {
		return loadJob(cmd)
	}
	sets, _ := cmd.Flags().GetStringArray("set")
	const name = "configs/demo.yaml"
	doc, err := configs.Read(name)
	if err != nil {
		return nil, err
	}
	job, err := config.LoadBytes(name+" (built in)", filepath.Dir(name), doc, sets)
	if err != nil {
		return nil, err
	}
	builtin := func(p *string) error {
		if !configs.Has(*p) {
			return nil
		}
		var err error
		if *p, err = configs.Materialize(*p, out); err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		return nil
	}
	for _, p := range []*string{&job.Model.Config, &job.Data.Path, &job.Data.Heldout} {
		if err := builtin(p); err != nil {
			return nil, err
		}
	}
	for name, r := range job.Roles {
		if err := builtin(&r.Weights); err != nil {
			return nil, err
		}
		job.Roles[name] = r
	}
	return job, printJob(cmd, job, name+" (built in)")
}

// demoTable runs eval.DistillTable on the job's held-out split: the teacher with Euler + CFG
// (sample.cfg, sample.shift) and the student with the few-step sampler on the levels of its dmd
// denoising list, and writes previews of the first videos of the teacher at 50 steps and the
// student at 1 and 4 steps.
func demoTable(w io.Writer, job *config.Job, tr *trainer.Trainer) (*eval.Table, error) {
	held, err := eval.LoadSet(job.Data.Heldout, job.Data.TextLen)
	if err != nil {
		return nil, err
	}
	teacher, student := tr.Net(objectives.Teacher), tr.Net(objectives.Student)
	if ema := tr.Net(objectives.EMA); ema != nil { // roles.student.ema_decay > 0: the EMA is the product
		student = ema
	}
	if teacher == nil || student == nil {
		return nil, fmt.Errorf("demo: the job's objective %s has no teacher and student", job.Objective)
	}
	rec, err := pipeline.ObjectiveRecipe(job) // how the student is sampled (sample.sampler picks fewstep-ode)
	if err != nil {
		return nil, err
	}
	shift := rec.Shift
	list := (&pipeline.Recipe{Sampler: rec.Sampler, Timesteps: rec.Timesteps, Shift: shift}).Sigmas()
	w4 := rec.TeacherCFG // the guidance the teacher distilled with is the one it is sampled with
	method := sampler.Method(rec.Sampler)
	spec := eval.TableSpec{Steps: job.Eval.Steps, TeacherSteps: job.Eval.TeacherSteps, Count: job.Eval.Count, Seed: job.Seed,
		TeacherCFG: w4, TeacherShift: shift,
		Student:      sampler.Options{Method: method, Shift: shift, CFG: rec.CFG},
		StudentLists: pipeline.SubLists(list, job.Eval.Steps)}
	spec.Mean, spec.Std = pipeline.NormStats(job, held.C)
	bar := tableBar(w, progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }))
	spec.Progress = func(done, total int, row string) {
		bar.ChangeMax(total)
		bar.Describe("eval: " + row)
		bar.Set(done)
	}
	tab, err := eval.DistillTable(teacher, student, held, spec)
	bar.Finish()
	if err != nil {
		return nil, err
	}
	// previews: 8 prompts, teacher at TeacherSteps, student at 1 and the largest k
	pdir := filepath.Join(job.OutDir, "eval", "previews")
	n := min(8, held.N)
	kmax := job.Eval.Steps[len(job.Eval.Steps)-1]
	for _, p := range []struct {
		name string
		net  *models.DiT
		o    sampler.Options
	}{
		{fmt.Sprintf("teacher-euler%d", job.Eval.TeacherSteps), teacher, sampler.Options{Method: sampler.Euler, Steps: job.Eval.TeacherSteps, CFG: w4, Shift: shift}},
		{"student-1step", student, sampler.Options{Method: method, Steps: 1, Shift: shift, Sigmas: spec.StudentLists[1]}},
		{fmt.Sprintf("student-%dstep", kmax), student, sampler.Options{Method: method, Steps: kmax, Shift: shift, Sigmas: spec.StudentLists[kmax]}},
	} {
		if err := previews(filepath.Join(pdir, p.name), p.net, held, n, job, p.o); err != nil {
			return nil, err
		}
	}
	return tab, nil
}

func previews(dir string, net *models.DiT, held *eval.Set, n int, job *config.Job, o sampler.Options) error {
	dn := sampler.NewDiTNet(net, 0)
	defer dn.Free()
	lat, _, _, err := eval.Generate(dn, held, n, 0, job.Seed, o, 0)
	if err != nil {
		return err
	}
	mean, std := pipeline.NormStats(job, held.C)
	if err := eval.Denormalize(lat, n, held.C, mean, std); err != nil {
		return err
	}
	vids, err := eval.DecodeLatents(lat, n, held.C, held.F, held.H, held.W)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var caps strings.Builder
	for i, pix := range vids.Pix {
		base := filepath.Join(dir, fmt.Sprintf("%04d", i))
		if err := sampler.WriteGIF(base+".gif", pix, vids.F, vids.H, vids.W, 8, 250); err != nil {
			return err
		}
		if err := sampler.WritePNGStrip(base+".png", pix, vids.F, vids.H, vids.W, 8); err != nil {
			return err
		}
		fmt.Fprintf(&caps, "%04d %s\n", i, held.Captions[i])
	}
	return os.WriteFile(filepath.Join(dir, "captions.txt"), []byte(caps.String()), 0o644)
}

// verdict says, per k, whether the student beats the teacher at the same steps on CondAcc and FD.
func verdict(t *eval.Table) string {
	var b strings.Builder
	teacher := map[int]eval.Row{}
	for _, r := range t.Rows {
		if r.Model == "teacher" {
			teacher[r.Steps] = r
		}
	}
	for _, r := range t.Rows {
		if r.Model != "student" {
			continue
		}
		te, ok := teacher[r.Steps]
		if !ok {
			continue
		}
		acc, fd := "beats", "beats"
		if r.CondAcc <= te.CondAcc {
			acc = "does not beat"
		}
		if !(r.FD < te.FD) {
			fd = "does not beat"
		}
		fmt.Fprintf(&b, "  %d step(s): student %s the teacher on CondAcc (%.3f vs %.3f) and %s it on FD (%.3f vs %.3f)\n",
			r.Steps, acc, r.CondAcc, te.CondAcc, fd, r.FD, te.FD)
	}
	return b.String()
}
