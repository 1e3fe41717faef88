package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/fewstep/fewstep/data"
	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/models"
	"github.com/fewstep/fewstep/trainer"
	"github.com/spf13/cobra"
)

// `fewstep model init`: a checkpoint of random weights of a preset (for benchmarks and for checking
// a pipeline end to end at full size before any training).

var modelInitCmd = &cobra.Command{
	Use:   "init",
	Short: "Write a checkpoint of random weights of a preset: diffusion_pytorch_model.safetensors + config.json",
	Long: `Writes OUT/diffusion_pytorch_model.safetensors (random weights, N(0, std²)-like, drawn fast:
1M normal draws from --seed tiled over the buffer) and OUT/config.json, in --layout wan or diffusers.
For benchmarks and end-to-end checks at full size; the weights mean nothing.`,
	Example: `  fewstep model init --preset wan2.1-1.3b --dtype bfloat16 --out /tmp/wan-random`,
	Args:    cobra.NoArgs,
	RunE:    runModelInit,
}

func init() {
	f := modelInitCmd.Flags()
	f.String("preset", "wan2.1-1.3b", "architecture preset: "+fmt.Sprint(models.PresetNames))
	f.Int("text-len", 512, "text_len of the config")
	f.Int64("seed", 1, "seed of the draws")
	f.Float64("std", 0.02, "std (scale) of the normal draws")
	f.String("dtype", "bfloat16", "float32 | bfloat16 | float16")
	f.String("layout", "wan", "key layout of the weights and config.json: wan | diffusers")
	f.String("out", "", "output folder (required)")
	modelCmd.AddCommand(modelInitCmd)
}

func runModelInit(cmd *cobra.Command, _ []string) error {
	fl := cmd.Flags()
	out, _ := fl.GetString("out")
	if out == "" {
		return fmt.Errorf("model init: --out is required")
	}
	preset, _ := fl.GetString("preset")
	cfg, err := models.Preset(preset)
	if err != nil {
		return fmt.Errorf("model init: %w", err)
	}
	cfg.TextLen, _ = fl.GetInt("text-len")
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("model init: %w", err)
	}
	dts, _ := fl.GetString("dtype")
	dt, err := data.ParseDType(dts)
	if err != nil {
		return fmt.Errorf("model init: --dtype: %w", err)
	}
	ls, _ := fl.GetString("layout")
	layout, err := models.ParseLayout(ls)
	if err != nil {
		return fmt.Errorf("model init: --layout: %w", err)
	}
	seed, _ := fl.GetInt64("seed")
	std, _ := fl.GetFloat64("std")
	m := models.New(kernels.CPU(), cfg, false)
	trainer.RandomWeights(m.Dev, m.W, seed, float32(std))
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	if err := m.SaveLayout(filepath.Join(out, "diffusion_pytorch_model.safetensors"), dt, layout); err != nil {
		return fmt.Errorf("model init: %w", err)
	}
	write := models.WriteWanConfig
	if layout == models.LayoutDiffusers {
		write = models.WriteDiffusersConfig
	}
	if err := write(filepath.Join(out, "config.json"), cfg); err != nil {
		return fmt.Errorf("model init: %w", err)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "model init: %s, %d parameters, random (seed %d, std %g), %s, %s layout → %s\n",
		preset, cfg.NumParams(), seed, std, dts, layout, out)
	return nil
}
