package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/data"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/pipeline"
	"github.com/fewstep/fewstep/trainer"
	"github.com/spf13/cobra"
)

// `fewstep export`: a trained student (its EMA or raw weights) as a Wan2.1 model folder —
// diffusion_pytorch_model.safetensors in Wan's key layout plus config.json — that Wan's loader and
// shared/reference/wan_ref.py read (scripts/check_export.py compares the two on the same inputs).

var exportCmd = &cobra.Command{
	Use:   "export",
	Short: "Export a student (EMA or raw) as Wan2.1 safetensors + config.json",
	Long: `Export a student checkpoint as a Wan2.1 model folder:
  OUT/diffusion_pytorch_model.safetensors   Wan2.1 state-dict keys (--dtype float32 | bfloat16 | float16),
                                            or with --layout diffusers WanTransformer3DModel's
  OUT/config.json                           dim, ffn_dim, freq_dim, in_dim, out_dim, num_heads,
                                            num_layers, text_len, eps, text_dim, model_type "t2v"
                                            (--layout diffusers: WanTransformer3DModel's config)
  OUT/fewstep_job.yaml                      the job that trained the student (with --from: the
                                            checkpoint's job.yaml; else this command's job)
  OUT/latent.json                           the latent shape, text context and normalization
                                            (with --from)
  OUT/recipe.json                           how to sample it (docs/library.md): the recipe.json beside
                                            the weights, else the job's objective's (sampler, denoising
                                            list, shift, guidance, causal chunk, latent shape, ...)
The weights come from --from RUN|CHECKPOINT (a run folder, its checkpoints folder or one checkpoint
folder; OUT defaults to RUN/export) and --role (ema by default when the checkpoint has one, else
student), or from --weights FILE (then --out is required).
The architecture: --model-config, else config.json beside the weights, else read off the tensor
shapes (num_heads from --heads, or the preset of that width; text_len from data.text_len). Weights
and config.json of either layout are read (the layout is detected from the keys).`,
	Args: cobra.NoArgs,
	RunE: runExport,
}

func init() {
	f := exportCmd.Flags()
	f.String("weights", "", "a checkpoint file (safetensors, Wan2.1 keys)")
	f.String("from", "", "a run folder or checkpoint folder (instead of --weights)")
	f.String("role", "", "the role to export from --from: ema (default when present) or student, or any role")
	f.String("model-config", "", "Wan config.json of the weights")
	f.Int("heads", 0, "num_heads when the architecture is read off the tensor shapes")
	f.String("dtype", "float32", "float32 | bfloat16 | float16")
	f.String("layout", "wan", "key layout of the weights and config.json: wan (Wan2.1's WanModel) or diffusers (WanTransformer3DModel)")
	f.String("out", "", "output folder (default with --from: RUN/export; required with --weights)")
	addJobFlags(exportCmd)
	rootCmd.AddCommand(exportCmd)
}

// resolveWeights turns --weights / --from + --role into a file.
func resolveWeights(weights, from, role string) (string, error) {
	switch {
	case weights != "" && from != "":
		return "", fmt.Errorf("give --weights or --from, not both")
	case weights != "":
		return weights, nil
	case from == "":
		return "", fmt.Errorf("--weights FILE or --from RUN|CHECKPOINT is required")
	}
	dir, err := trainer.ResolveCheckpoint(from)
	if err != nil {
		return "", fmt.Errorf("--from: %w", err)
	}
	if role == "" {
		role = "student"
		if fileExists(filepath.Join(dir, "ema.safetensors")) {
			role = "ema"
		}
	}
	p := filepath.Join(dir, role+".safetensors")
	if !fileExists(p) {
		return "", fmt.Errorf("checkpoint %s has no role %q (%s missing)", dir, role, filepath.Base(p))
	}
	return p, nil
}

func runExport(cmd *cobra.Command, _ []string) error {
	fl := cmd.Flags()
	weights, _ := fl.GetString("weights")
	from, _ := fl.GetString("from")
	role, _ := fl.GetString("role")
	out, _ := fl.GetString("out")
	var job *config.Job
	var src, ckpt string
	var err error
	if from != "" && weights == "" {
		r, err := resolveFrom(cmd, from, role)
		if err != nil {
			return fmt.Errorf("export: %w", err)
		}
		job, src, ckpt = r.job, r.weights, r.dir
		if out == "" { // RUN/export: the run folder is the checkpoint's grandparent
			out = filepath.Join(filepath.Dir(filepath.Dir(ckpt)), "export")
		}
	} else {
		if out == "" {
			return fmt.Errorf("export: --out is required with --weights")
		}
		if src, err = resolveWeights(weights, from, role); err != nil {
			return fmt.Errorf("export: %w", err)
		}
		if job, err = loadJob(cmd); err != nil {
			return err
		}
	}
	dts, _ := fl.GetString("dtype")
	dt, err := data.ParseDType(dts)
	if err != nil {
		return fmt.Errorf("export: --dtype: %w", err)
	}
	mc, _ := fl.GetString("model-config")
	if mc == "" && fileExists(filepath.Join(filepath.Dir(src), "config.json")) {
		mc = filepath.Join(filepath.Dir(src), "config.json")
	}
	var cfg models.Config
	if mc != "" {
		cfg, err = models.ReadWanConfig(mc)
	} else {
		var ts map[string]models.NamedTensor
		if ts, _, err = models.ReadSafetensors(src); err == nil {
			heads, _ := fl.GetInt("heads")
			cfg, err = pipeline.InferConfig(ts, heads, job.Data.TextLen)
		}
	}
	if err != nil {
		return fmt.Errorf("export: %s: %w", src, err)
	}
	m := models.New(kernels.CPU(), cfg, false)
	if err := m.Load(src); err != nil { // strict: every key present, no extra, every shape right
		return fmt.Errorf("export: %w", err)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	wp := filepath.Join(out, "diffusion_pytorch_model.safetensors")
	ls, _ := fl.GetString("layout")
	layout, err := models.ParseLayout(ls)
	if err != nil {
		return fmt.Errorf("export: --layout: %w", err)
	}
	if err := m.SaveLayout(wp, dt, layout); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	cp := filepath.Join(out, "config.json")
	writeConfig := models.WriteWanConfig
	if layout == models.LayoutDiffusers {
		writeConfig = models.WriteDiffusersConfig
	}
	if err := writeConfig(cp, cfg); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if err := config.Save(job, filepath.Join(out, "fewstep_job.yaml")); err != nil {
		return err
	}
	if ckpt != "" {
		if l, err := trainer.ReadLatent(ckpt); err == nil {
			if err := trainer.WriteLatent(out, l); err != nil {
				return fmt.Errorf("export: %w", err)
			}
		}
	}
	rec, how, err := exportRecipe(job, src, cfg)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if rec == nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "export: no %s: %s\n", pipeline.RecipeFile, how)
	} else if err := rec.Save(filepath.Join(out, pipeline.RecipeFile)); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "export: %s → %s (%s, %d parameters; dim %d, ffn %d, heads %d, layers %d, in/out %d/%d, text_dim %d)\n  %s\n  %s\n  %s\n",
		src, out, strings.ToLower(dt.String()), cfg.NumParams(), cfg.Dim, cfg.FFNDim, cfg.Heads, cfg.Layers, cfg.InDim, cfg.OutDim, cfg.TextDim,
		wp, cp, filepath.Join(out, "fewstep_job.yaml"))
	if rec != nil {
		fmt.Fprintf(cmd.OutOrStdout(), "  %s (%s: %s)\n", filepath.Join(out, pipeline.RecipeFile), how, rec.Sampler)
	}
	return nil
}

// exportRecipe is the recipe to export beside the weights: the recipe.json already beside the
// source (a checkpoint folder's), else the job's (pipeline.RecipeFor). A job whose latents do not
// fit the model (the default job exporting an unrelated checkpoint) gives none, and says why.
func exportRecipe(job *config.Job, src string, cfg models.Config) (*pipeline.Recipe, string, error) {
	if p := filepath.Join(filepath.Dir(src), pipeline.RecipeFile); fileExists(p) {
		r, err := pipeline.LoadRecipe(p) // a bad recipe beside the weights is an error, not a silent fallback
		if err != nil {
			return nil, "", err
		}
		if err := r.CheckModel(cfg); err != nil {
			return nil, "", fmt.Errorf("%s: %w", p, err)
		}
		return r, "copied from " + p, nil
	}
	r, err := pipeline.RecipeFor(job)
	if err != nil {
		return nil, fmt.Sprintf("the job gives no recipe (%v)", err), nil
	}
	if err := r.CheckModel(cfg); err != nil {
		return nil, fmt.Sprintf("the job's data does not fit the model (%v); pass the training job with --config", err), nil
	}
	return r, "from the job's objective " + job.Objective, nil
}
